#!/usr/bin/env bash
# The GPU check: what a machine with a CUDA GPU runs, in under 8 minutes, with no
# internet and no weights (stand-in weights are built locally, as the tests build them).
#
#   bench/gpu_check.sh               # on a CUDA machine: writes bench/results/gpu.md
#   bench/gpu_check.sh --cpu-smoke   # anywhere: stages 1-2 on the CPU in float32 on the
#                                    # tiny models (checks the script end to end); writes
#                                    # .cache/gpu-check-smoke/gpu-smoke.md, never bench/results
#
# Stages (each under its own time limit, in its own process group, killed at the limit;
# a failed stage is reported and the next one still runs):
#   1. models      (MODELS_S, 140 s): every model's fp16/bf16 paths and `preprocess: tensor`
#                  against fp32 on stand-in weights (bench/gpu_check.py models)
#   2. serve       (SERVE_S, 100 s): `divreward serve` with `num_gpus` per model; the
#                  replicas must load on CUDA and answer /v1/rewards (bench/gpu_check.py serve)
#   3. throughput  (THROUGHPUT_S, 230 s): bench/throughput.py --device cuda --clients
#                  1,4,16,64 --out bench/results/throughput-gpu, plus GPU_CHECK_THROUGHPUT_ARGS
#                  (default --quick: short points, so that the whole check fits in 8 minutes;
#                  set it empty for the benchmark's own durations, ~15 min)
#   4. report      bench/results/gpu.md: every result and the machine (bench/gpu_check.py report)
# Exit status: 0 when every stage passed, 1 otherwise. Logs: $WORK/<stage>.log.
set -u
cd "$(dirname "$0")/.."

SMOKE=""
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE="--cpu-smoke"; fi
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
if [ -n "$SMOKE" ]; then
  WORK=${GPU_CHECK_WORK:-.cache/gpu-check-smoke}
  OUT=$WORK/gpu-smoke.md
else
  WORK=${GPU_CHECK_WORK:-.cache/gpu-check}
  OUT=bench/results/gpu.md
fi
mkdir -p "$WORK"
: > "$WORK/stages.txt"
FAILED=0

# run_stage NAME LIMIT_S CMD...: CMD in a new session (its own process group, with any
# Ray processes it starts); at the limit SIGTERM to the group, SIGKILL 20 s later.
run_stage() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  setsid "$@" > "$WORK/$name.log" 2>&1 &
  local pid=$!
  local rc=""
  while kill -0 "$pid" 2> /dev/null; do
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      echo "   $name: time limit reached, stopping its process group"
      kill -TERM -- "-$pid" 2> /dev/null
      for _ in $(seq 20); do kill -0 "$pid" 2> /dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2> /dev/null
      rc=124
      break
    fi
    sleep 1
  done
  wait "$pid" 2> /dev/null
  local waited=$?
  if [ -z "$rc" ]; then rc=$waited; fi
  tail -n 15 "$WORK/$name.log" | sed 's/^/   /'
  echo "$name $rc $((SECONDS - start))" >> "$WORK/stages.txt"
  if [ "$rc" != 0 ]; then
    echo "   $name: FAILED (exit $rc; log $WORK/$name.log)"
    FAILED=1
  fi
}

if [ -z "$SMOKE" ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA device visible to torch: run on a GPU machine, or use --cpu-smoke" >&2
  exit 2
fi

run_stage models "${MODELS_S:-140}" "$PY" bench/gpu_check.py models $SMOKE --work "$WORK"
run_stage serve "${SERVE_S:-100}" "$PY" bench/gpu_check.py serve $SMOKE --work "$WORK"
if [ -z "$SMOKE" ]; then
  # shellcheck disable=SC2086  # the extra arguments are meant to split
  run_stage throughput "${THROUGHPUT_S:-230}" "$PY" bench/throughput.py --device cuda \
    --clients 1,4,16,64 --patches 16 --no-peer --forms json,binary,grpc --endpoints score,rewards \
    --out bench/results/throughput-gpu ${GPU_CHECK_THROUGHPUT_ARGS---quick}
  if ! grep -q "^throughput 0 " "$WORK/stages.txt"; then
    echo "   throughput: the benchmark failed or did not finish; gpu.md says so (no numbers)"
  fi
fi
"$PY" bench/gpu_check.py report $SMOKE --work "$WORK" --out "$OUT" || FAILED=1
echo "== done in ${SECONDS}s: $OUT"
exit $FAILED
