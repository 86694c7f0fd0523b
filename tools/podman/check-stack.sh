#!/bin/sh
# Build the images and run docker/compose.yaml end to end under podman, CPU profile: PostgreSQL,
# the MLflow server, the Ray head and one CPU worker; a smoke-test sweep submitted in the head,
# its runs read back from MLflow, the analysis, and no object store on disk. Then everything
# it started is removed (images stay). Not part of CI: the Ray image is about 7 GB.
#
#   sh tools/podman/check-stack.sh            # from the repository root
#
# Needs podman and podman-compose >= 1.1 (PyPI; Debian 12's 1.0.3 lacks --env-file/--profile).
# Without registry access, build stand-in base images first (tools/podman/stand-ins.sh); in a
# sandbox like the development VM also install tools/podman/containers.conf
# (docs/deployment.md, "Podman").
set -eu
cd "$(dirname "$0")/../.."
COMPOSE=${PODMAN_COMPOSE:-podman-compose}
PROJECT=smartmixed-check
ENV_FILE=$(mktemp)
LOG=$(mktemp)
loop=""

secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
dc() { $COMPOSE --env-file "$ENV_FILE" -f docker/compose.yaml -p "$PROJECT" --profile cpu "$@"; }
step() { echo "== $*"; }
cleanup() {
    [ -n "$loop" ] && kill "$loop" 2>/dev/null
    dc down -v >/dev/null 2>&1 || true
    rm -f "$ENV_FILE" "$LOG"
}
trap cleanup EXIT INT TERM

cat > "$ENV_FILE" <<ENV
POSTGRES_USER=mlflow
POSTGRES_DB=mlflow
POSTGRES_PASSWORD=$(secret)
RAY_AUTH_TOKEN=$(secret)
RAY_HEAD_NUM_CPUS=0
RAY_SHM_SIZE=2gb
RAY_OBJECT_STORE_BYTES=
ENV

step "build (docker format keeps the images' HEALTHCHECK)"
podman build -q --format docker -f docker/Dockerfile -t smartmixed-ray:0.1.0 .
podman build -q --format docker -f docker/mlflow.Dockerfile -t smartmixed-mlflow:3.17.2 docker

# podman < 4.6 runs healthchecks from systemd timers; without systemd, run them here.
( while :; do
    for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
        podman healthcheck run "$c" >/dev/null 2>&1 || true
    done
    sleep 5
  done ) &
loop=$!

step "up: postgres, mlflow, ray-head, ray-cpu-worker (not the GPU worker)"
dc up -d --no-build postgres mlflow ray-head ray-cpu-worker >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    limit=$1; what=$2; shift 2; waited=0
    until "$@" >/dev/null 2>&1; do
        waited=$((waited + 5))
        if [ "$waited" -gt "$limit" ]; then echo "timed out waiting for $what"; exit 1; fi
        sleep 5
    done
    echo "   $what: after ${waited} s"
}
wait_for 180 "MLflow /health" curl -fsS http://127.0.0.1:5000/health
wait_for 240 "a Ray worker with CPUs" dc exec -T ray-head python -c \
    "import ray, sys; ray.init(address='auto', logging_level='ERROR'); sys.exit(ray.cluster_resources().get('CPU', 0) == 0)"

step "sweep (smoke test) submitted in the head"
dc exec -T ray-head smartmixed sweep run quick --address auto \
    --tracking-uri http://mlflow:5000 --smoke-test >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
cat "$LOG"
if grep -q "View run\|system_metrics_monitor" "$LOG"; then
    echo "the trials' MLflow notices reached the console"; exit 1
fi

step "runs in MLflow"
dc exec -T ray-head python - <<'PY'
from mlflow import MlflowClient
c = MlflowClient("http://mlflow:5000")
exp = c.get_experiment_by_name("smartmixed-quick")
runs = c.search_runs([exp.experiment_id], "tags.`smartmixed.kind` = 'seed'")
finished = [r for r in runs if r.info.status == "FINISHED"]
print(f"   {len(finished)} FINISHED seed runs of {len(runs)}")
assert runs and len(finished) == len(runs)
PY

step "analysis in the head"
dc exec -T ray-head smartmixed analyze --experiment smartmixed-quick --sweep quick-digits \
    --tracking-uri http://mlflow:5000 --out /shared/report

step "object store in /dev/shm on every node"
if dc logs ray-head ray-cpu-worker 2>&1 | grep -q "object store is using /tmp"; then
    echo "Ray put its object store on disk"; exit 1
fi
echo "PASS"
