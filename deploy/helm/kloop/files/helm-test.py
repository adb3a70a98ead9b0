"""`helm test` for kloop: every service's gRPC health says SERVING, the registry
answers, and the inference service makes a prediction with the test model's
production version (trained and promoted first when KLOOP_TEST_TRAIN=true).
Runs in the registry image (grpcio + the generated kloop protos)."""

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

SERVICES = json.loads(os.environ["KLOOP_TEST_SERVICES"])  # name -> {"grpc": addr, "http": url}
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
