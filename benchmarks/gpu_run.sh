#!/usr/bin/env bash
# The prepared GPU run: ONE command that prints the whole speed/memory table (full-size random-weight SD1.5 and
# SDXL, ours vs vanilla diffusers, memory caps, --compile, lifecycle) and writes JSON + the printed text under
# $OUT (or /tmp). Installs nothing: it uses the repo's .venv (or $PYTHON). Estimated at about 7.5 minutes on an
# H100/H200 from PERF.md's figures (see benchmarks/README.md); a hard stop at $BENCH_LIMIT_S (default 570 s)
# keeps it inside a 10-minute device call; the JSON is rewritten after every side, so a stopped run keeps
# what it measured and its table is printed from it. Extra arguments go to speed_memory.py
# (e.g. --only sd15-512-b1,sd15-512-b4).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUTDIR="${OUT:-/tmp}"
mkdir -p "$OUTDIR"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'CUDA is not available to this python'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda)" || exit 2
# The 2048² workloads are compared with diffusers' tiled decode (their target); their own uncapped reference
# sides would cost about 80 s more, so they are skipped here (speed_memory.py runs them by default).
timeout --signal=INT --kill-after=20 "${BENCH_LIMIT_S:-570}" \
  "$PYTHON" benchmarks/speed_memory.py --device cuda --full-size --runs 3 --warmup-steps 2 \
    --skip-reference sd15-2048-8gb-cap8,sdxl-2048-8gb-cap8 \
    --json "$OUTDIR/speed_memory.json" --tmp-dir "${BENCH_TMP:-/tmp}" "$@" 2>&1 | tee "$OUTDIR/speed_memory.txt"
status=${PIPESTATUS[0]}
if [ "$status" = 124 ] && [ -f "$OUTDIR/speed_memory.json" ]; then
  echo "gpu_run.sh: stopped at ${BENCH_LIMIT_S:-570} s; the table of the sides finished so far:"
  "$PYTHON" benchmarks/speed_memory.py --print-json "$OUTDIR/speed_memory.json" 2>&1 | tee -a "$OUTDIR/speed_memory.txt"
fi
exit "$status"
