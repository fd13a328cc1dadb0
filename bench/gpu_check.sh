#!/usr/bin/env bash
# Every GPU figure in one call on a CUDA machine, in under 8 minutes:
#   1. set-up: the missing wheels from ./.whl and EGL from ./.gl (prepared by bench/gpu_wheels.sh);
#   2. the tests that need CUDA (test/test_cuda.py; they skip, with the reason, elsewhere) and the
#      library's own tests on that machine;
#   3. the GPU benchmark: bench/run.py --device cuda (torch.cuda.synchronize around every timing);
#   4. a two-minute GPU training run (config/train/gpu_check.yaml, bf16) and its evaluation;
#   5. rendering throughput of training data on that machine's EGL (bench/render_throughput.py).
# Writes $OUT/gpu_check.json (what ran, how long, the exit status of each step) beside the logs,
# the benchmark JSON and the evaluation JSON.
#   OUT=/tmp/gpu bash bench/gpu_check.sh
set -Euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
START=$(date +%s)
declare -A RC SECONDS_OF
step() {  # step NAME TIMEOUT_S COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s)
  echo "== $name (limit ${limit} s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  RC[$name]=$?
  SECONDS_OF[$name]=$(( $(date +%s) - t0 ))
  tail -n 15 "$OUT/$name.log"
  echo "== $name: exit ${RC[$name]} in ${SECONDS_OF[$name]} s"
}

# 1. set-up (offline)
if compgen -G ".gl/*.deb" >/dev/null; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
step environment 60 "$PY" -c "import torch, e3nn, healpy, pose_core; assert torch.cuda.is_available(), 'no CUDA';
print(torch.__version__, torch.cuda.get_device_name(0))"
if [ "${RC[environment]}" != 0 ]; then  # nothing else can run: say so at once, spend no more device time
  echo "{\"environment\": {\"exit\": ${RC[environment]}}, \"log\": \"$OUT/environment.log\"}" > "$OUT/gpu_check.json"
  exit 1
fi

# 2. tests (ROS tests skip there: no rclpy)
step tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider test/test_cuda.py test/test_fast_paths.py \
    test/test_distribution.py test/test_summary.py test/test_pipeline.py test/test_coarse_to_fine.py

# 3. benchmark
step bench 150 "$PY" bench/run.py --device cuda --skip-ros --json "$OUT/bench_gpu.json"

# 4. training (max_seconds 120) and a held-out evaluation of its checkpoint
step train 200 "$PY" train/train.py --config config/train/gpu_check.yaml "checkpoint_dir=$OUT/ckpt"
CKPT=$(ls -t "$OUT"/ckpt/*.pt 2>/dev/null | head -n 1 || true)
if [ -n "$CKPT" ]; then
  step evaluate 60 "$PY" train/evaluate.py --checkpoint "$CKPT" --dataset config/train/gpu_check.yaml \
      --size 20 --grid-level 4 --json "$OUT/eval_gpu.json" --device cuda
fi

# 5. rendering throughput (plain and randomised, per process and per DataLoader worker)
step render 120 "$PY" bench/render_throughput.py --workers 1,4 --json "$OUT/render_gpu.json"

{
  echo "{"
  echo "  \"wall_s\": $(( $(date +%s) - START )),"
  for name in "${!RC[@]}"; do echo "  \"$name\": {\"exit\": ${RC[$name]}, \"seconds\": ${SECONDS_OF[$name]}},"; done
  echo "  \"checkpoint\": \"${CKPT:-}\""
  echo "}"
} > "$OUT/gpu_check.json"
cat "$OUT/gpu_check.json"
fail=0; for name in "${!RC[@]}"; do [ "${RC[$name]}" = 0 ] || fail=1; done
exit $fail
