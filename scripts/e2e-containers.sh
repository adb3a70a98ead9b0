#!/usr/bin/env bash
# Starts the platform as containers (Redis, MLflow, every built service) on loopback
# ports, runs scripts/e2e_containers_smoke.py against it and removes every container
# it started, pass or fail. Service containers run as the chart runs them: read-only
# root filesystem, tmpfs for /tmp and the model cache, all capabilities dropped, no
# new privileges, uid 10001.
# Needs: `make images` (service images) and podman; builds the Redis and MLflow test
# images itself (cached).
# Env: IMAGE_REPO, IMAGE_TAG, PODMAN, E2E_PORT_BASE (default 26000), PYTHON (to run the
#      smoke test with the workspace installed; default `uv run --no-sync python`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
repo=${IMAGE_REPO:-localhost/kloop}
tag=${IMAGE_TAG:-dev}
podman=${PODMAN:-podman --runtime runc}
python=${PYTHON:-uv run --no-sync python}
base=${E2E_PORT_BASE:-26000}
prefix=kloop-e2e-$$
redis_port=$((base + 379)) mlflow_port=$((base + 500))
declare -A grpc_port=([registry]=$((base + 151)) [training]=$((base + 152)) [inference]=$((base + 153)) [gateway]=$((base + 154)) [drift-monitor]=$((base + 156)) [worker]=0)
declare -A http_port=([registry]=$((base + 181)) [training]=$((base + 182)) [inference]=$((base + 183)) [gateway]=$((base + 184)) [drift-monitor]=$((base + 186)) [worker]=$((base + 188)))
ca_mount=()
[[ -d /etc/ssl/certs ]] && ca_mount=(-v /etc/ssl/certs:/etc/ssl/certs:ro)

started=()
cleanup() {
  status=$?
  if ((status != 0)); then
    for c in "${started[@]}"; do
      echo "==== logs of $c (last 40 lines)"
      $podman logs --tail 40 "$c" 2>&1 || true
    done
  fi
  for c in "${started[@]}"; do $podman rm -f -t 5 "$c" >/dev/null 2>&1 || true; done
  echo "removed ${#started[@]} containers"
  exit $status
}
trap cleanup EXIT INT TERM

# Support images (Redis and MLflow servers), built once on the same base image.
mlflow_version=$(python3 -c "import re; t = open('uv.lock').read(); print(re.search(r'name = \"mlflow\"\nversion = \"([^\"]+)\"', t).group(1))")
declare -A support_image
for support in redis mlflow; do
  # Tagged by MLflow version and Dockerfile content: a changed Dockerfile rebuilds.
  digest=$(sha256sum "deploy/containers/$support.Dockerfile" | cut -c1-12)
  support_image[$support]=localhost/kloop-e2e/$support:$mlflow_version-$digest
  if ! $podman image exists "${support_image[$support]}"; then
    echo "== building ${support_image[$support]}"
    $podman build --pull=never --format docker "${ca_mount[@]}" \
      --build-arg "MLFLOW_VERSION=$mlflow_version" \
      -f "deploy/containers/$support.Dockerfile" -t "${support_image[$support]}" \
      deploy/containers >/dev/null
  fi
done

wait_http() {  # URL TIMEOUT NAME
  local deadline=$((SECONDS + $2))
  until python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "FAIL: $3 not ready at $1 within $2 s" >&2; return 1; fi
    if ! $podman container exists "$prefix-$3" || [[ $($podman inspect -f '{{.State.Running}}' "$prefix-$3") != true ]]; then
      echo "FAIL: container $3 exited" >&2; return 1
    fi
    sleep 0.5
  done
}

run() {  # NAME IMAGE [podman args...] -- [command args...]
  local name=$1 image=$2; shift 2
  local opts=()
  while (($#)) && [[ $1 != -- ]]; do opts+=("$1"); shift; done
  (($#)) && shift
  started+=("$prefix-$name")
  $podman run -d --name "$prefix-$name" --network host \
    --read-only --tmpfs /tmp:rw,mode=1777 --cap-drop ALL --security-opt no-new-privileges \
    "${opts[@]}" "$image" "$@" > /dev/null 2> >(grep -v 'systemd connection' >&2)
}

t0=$SECONDS
echo "== redis on 127.0.0.1:$redis_port"
run redis "${support_image[redis]}" -- --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no
echo "== mlflow on 127.0.0.1:$mlflow_port"
run mlflow "${support_image[mlflow]}" --tmpfs /mlflow:rw,U -e MLFLOW_PORT="$mlflow_port" -- \
  server --backend-store-uri sqlite:////mlflow/mlflow.db --artifacts-destination /mlflow/artifacts \
  --host 127.0.0.1 --port "$mlflow_port" --workers 1
wait_http "http://127.0.0.1:$mlflow_port/health" 90 mlflow

redis_url=redis://127.0.0.1:$redis_port/0
mlflow_url=http://127.0.0.1:$mlflow_port
service_env() {  # NAME -> -e args
  local s=$1 p=KLOOP_${1^^}_
  p=${p//-/_}
  local env=(-e "${p}GRPC_HOST=127.0.0.1" -e "${p}HTTP_HOST=127.0.0.1"
    -e "${p}GRPC_PORT=${grpc_port[$s]}" -e "${p}HTTP_PORT=${http_port[$s]}"
    -e "${p}REDIS_URL=$redis_url" -e "${p}LOG_LEVEL=INFO")
  case $s in
    registry) env+=(-e "${p}MLFLOW_TRACKING_URI=$mlflow_url") ;;
    training) env+=(-e "${p}MLFLOW_TRACKING_URI=$mlflow_url" -e "${p}REGISTRY_ADDR=127.0.0.1:${grpc_port[registry]}") ;;
    inference) env+=(-e "${p}REGISTRY_ADDR=127.0.0.1:${grpc_port[registry]}" -e "${p}MODELS={\"sentiment\": [\"production\", \"canary\"]}") ;;
    gateway) env+=(-e "${p}REGISTRY_ADDR=127.0.0.1:${grpc_port[registry]}" -e "${p}INFERENCE_ADDR=127.0.0.1:${grpc_port[inference]}") ;;
    drift-monitor) env+=(-e "${p}MLFLOW_TRACKING_URI=$mlflow_url" -e "${p}REGISTRY_ADDR=127.0.0.1:${grpc_port[registry]}") ;;
    worker) env+=(-e "${p}REGISTRY_ADDR=127.0.0.1:${grpc_port[registry]}" -e "${p}TRAINING_ADDR=127.0.0.1:${grpc_port[training]}"
      -e "${p}INFERENCE_ADDR=127.0.0.1:${grpc_port[inference]}" -e "${p}DRIFT_MONITOR_URL=http://127.0.0.1:${http_port[drift-monitor]}"
      -e "${p}CONCURRENCY=2") ;;
  esac
  printf '%s\n' "${env[@]}"
}

services=()
for s in registry training inference gateway drift-monitor worker; do
  $podman image exists "$repo/$s:$tag" && services+=("$s")
done
for s in registry training; do
  [[ " ${services[*]} " == *" $s "* ]] || { echo "FAIL: image $repo/$s:$tag missing: run make images" >&2; exit 1; }
done
metrics=()
for s in "${services[@]}"; do
  echo "== $s ($( ((grpc_port[$s])) && echo "gRPC :${grpc_port[$s]}, " )HTTP :${http_port[$s]})"
  mapfile -t env < <(service_env "$s")
  run "$s" "$repo/$s:$tag" --tmpfs /var/cache/kloop:rw,U --user 10001:10001 "${env[@]}"
  metrics+=(--metrics "http://127.0.0.1:${http_port[$s]}/metrics")
done
for s in registry training; do wait_http "http://127.0.0.1:${http_port[$s]}/readyz" 120 "$s"; done
# The worker serves only /metrics (no /readyz); the drift monitor is ready once its
# consumer group exists.
[[ " ${services[*]} " == *" worker "* ]] && wait_http "http://127.0.0.1:${http_port[worker]}/metrics" 120 worker
[[ " ${services[*]} " == *" drift-monitor "* ]] && wait_http "http://127.0.0.1:${http_port[drift-monitor]}/readyz" 120 drift-monitor
# The image's own HEALTHCHECK, run once by hand (podman schedules it with systemd, which
# these machines lack: podman logs "unable to get systemd connection", filtered above).
for s in "${services[@]}"; do
  # (The worker's is a Celery ping through Redis: it answers once the worker consumes.)
  tries=30
  until $podman healthcheck run "$prefix-$s" >/dev/null 2>&1; do
    ((--tries > 0)) || { echo "FAIL: HEALTHCHECK of $s" >&2; exit 1; }
    sleep 1
  done
done
echo "== platform up in $((SECONDS - t0)) s; HEALTHCHECK passes in ${services[*]}"

smoke=(--training "127.0.0.1:${grpc_port[training]}" --registry "127.0.0.1:${grpc_port[registry]}")
if [[ " ${services[*]} " == *" inference "* ]]; then
  smoke+=(--inference-http "http://127.0.0.1:${http_port[inference]}" --inference-grpc "127.0.0.1:${grpc_port[inference]}")
fi
if [[ " ${services[*]} " == *" gateway "* ]]; then
  smoke+=(--gateway-http "http://127.0.0.1:${http_port[gateway]}" --gateway-grpc "127.0.0.1:${grpc_port[gateway]}" --redis-url "$redis_url")
  [[ " ${services[*]} " == *" worker "* ]] && smoke+=(--batch-job)
fi
$python scripts/e2e_containers_smoke.py "${smoke[@]}" "${metrics[@]}"
echo "e2e-containers: passed in $((SECONDS - t0)) s"
