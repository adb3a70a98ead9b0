"""`helm test` for kloop: every service's gRPC health says SERVING, the registry
answers, the inference service makes a prediction with the test model's production
version (trained and promoted first when KLOOP_TEST_TRAIN=true), and then, through the
gateway, the way a user would: a prediction over HTTP and over gRPC with an API key, and
(when the worker is deployed) a batch scoring job POST /v1/jobs -> GET until succeeded.

The API key: the gateway's auth stays on. The test creates its own short-lived key
("helm-test", scope predict) in the gateway's key store in Redis (kloop_core.api_keys,
the same store `kloop keys create` writes; the pod gets the Redis URL and password like
the services do) and revokes it when it is done, pass or fail.
Runs in the registry image (grpcio, redis, kloop_core and the generated kloop protos)."""

import json
import os
import sys
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kloop.registry.v1 import registry_pb2 as reg
from kloop.registry.v1 import registry_pb2_grpc as reg_grpc
from kloop.training.v1 import training_pb2 as tr
from kloop.training.v1 import training_pb2_grpc as tr_grpc

SERVICES = json.loads(os.environ["KLOOP_TEST_SERVICES"])  # name -> {"grpc": addr?, "http": url}
MODEL = os.environ.get("KLOOP_TEST_MODEL", "sentiment")
TRAIN = os.environ.get("KLOOP_TEST_TRAIN", "false") == "true"
DEADLINE = time.monotonic() + float(os.environ.get("KLOOP_TEST_TIMEOUT", "300"))


def check(ok, message):
    print(("ok    " if ok else "FAIL  ") + message, flush=True)
    if not ok:
        sys.exit(1)


def serving(addr):
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            if time.monotonic() > DEADLINE:
                return False
            time.sleep(2)


for name, ep in SERVICES.items():
    if ep.get("grpc"):  # the worker serves no gRPC (its job path is tested below)
        check(serving(ep["grpc"]), f"{name}: gRPC health SERVING at {ep['grpc']}")

registry = reg_grpc.RegistryServiceStub(grpc.insecure_channel(SERVICES["registry"]["grpc"]))
models = registry.ListModels(reg.ListModelsRequest(), timeout=30).models
check(True, f"registry: ListModels answered ({len(models)} models)")

if TRAIN and "training" in SERVICES:
    training = tr_grpc.TrainingServiceStub(grpc.insecure_channel(SERVICES["training"]["grpc"]))
    run = training.SubmitRun(
        tr.SubmitRunRequest(
            model_name=MODEL, dataset=tr.DatasetSpec(builtin=True), tags={"source": "helm-test"}
        ),
        timeout=60,
    )
    while run.state not in (tr.RUN_STATE_SUCCEEDED, tr.RUN_STATE_FAILED):
        check(time.monotonic() < DEADLINE, f"training run {run.run_id} finishes in time")
        time.sleep(2)
        run = training.GetRun(tr.GetRunRequest(run_id=run.run_id), timeout=30)
    check(
        run.state == tr.RUN_STATE_SUCCEEDED,
        f"training: run {run.run_id} -> version {run.model_version} {run.error}",
    )
    decision = registry.Promote(
        reg.PromoteRequest(
            name=MODEL,
            version=run.model_version,
            target_alias="production",
            baseline_alias="production",
            actor="helm-test",
            reason="helm test trainAndPromote",
        ),
        timeout=120,
    )
    check(True, f"registry: promotion of v{run.model_version} approved={decision.approved}")

try:
    production = registry.ResolveAlias(
        reg.ResolveAliasRequest(name=MODEL, alias="production"), timeout=30
    )
except grpc.RpcError as e:
    if e.code() != grpc.StatusCode.NOT_FOUND:
        raise
    production = None
if production is None or "inference" not in SERVICES:
    print(f"skip  prediction: no production version of {MODEL!r} (or no inference service)")
    sys.exit(0)

body = json.dumps(
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a wonderful film"]}]}
).encode()
url = f"{SERVICES['inference']['http']}/v2/models/{MODEL}/infer"
while True:
    try:
        request = urllib.request.Request(  # noqa: S310 (an http URL built from chart values)
            url, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer = json.load(response)
        if answer.get("model_version") == production.version:
            break
    except OSError as e:
        answer = {"error": str(e)}
    check(time.monotonic() < DEADLINE, f"inference serves v{production.version} in time ({answer})")
    time.sleep(2)
check(
    True, f"inference: {MODEL} v{answer['model_version']} predicted {answer['outputs'][0]['data']}"
)

if "gateway" not in SERVICES:
    print("skip  gateway: not deployed")
    sys.exit(0)

from kloop_core.api_keys import ApiKeyStore  # noqa: E402 (after the checks above)
from kloop_core.redis import create_redis  # noqa: E402

keys = ApiKeyStore(create_redis(os.environ["KLOOP_TEST_REDIS_URL"]))
key, token = keys.create(["predict"], name="helm-test")
print(f"ok    created API key {key.id} (helm-test, scope predict; revoked at the end)")


def gateway_http(path, body=None):
    request = urllib.request.Request(  # noqa: S310 (an http URL built from chart values)
        SERVICES["gateway"]["http"] + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.load(response)


try:
    while True:
        try:
            predicted = gateway_http(f"/v1/models/{MODEL}/predict", {"text": "a wonderful film"})
            break
        except OSError as e:
            check(time.monotonic() < DEADLINE, f"gateway HTTP predicts in time ({e})")
            time.sleep(2)
    check(
        predicted["model"]["version"] != "",
        f"gateway HTTP: {predicted['label']} ({predicted['score']:.3f}) "
        f"from {predicted['model']['alias']} v{predicted['model']['version']}",
    )

    from kloop.gateway.v1 import gateway_pb2 as gw
    from kloop.gateway.v1 import gateway_pb2_grpc as gw_grpc

    with grpc.insecure_channel(SERVICES["gateway"]["grpc"]) as channel:
        reply = gw_grpc.GatewayServiceStub(channel).Predict(
            gw.PredictRequest(model=MODEL, text="a dull, boring film"),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=30,
        )
    check(bool(reply.id), f"gateway gRPC: {reply.label} ({reply.score:.3f}) v{reply.model.version}")

    if "worker" in SERVICES:
        accepted = gateway_http(
            "/v1/jobs", {"model": MODEL, "texts": ["great", "terrible", "fine"] * 10}
        )
        while True:
            job = gateway_http(f"/v1/jobs/{accepted['id']}")
            if job["status"] not in ("queued", "running"):
                break
            check(time.monotonic() < DEADLINE, f"batch job {accepted['id']} finishes in time")
            time.sleep(2)
        check(
            job["status"] == "succeeded" and job["counts"]["scored"] == 30,
            f"worker: batch job {job['id']} {job['status']} ({job['counts']})",
        )
finally:
    keys.revoke(key.id)
    print(f"ok    revoked API key {key.id}")
