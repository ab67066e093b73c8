#!/usr/bin/env bash
# GPU check of the trainer, one command, < 8 minutes on one GPU:
#   bash benchmarks/gpu_check.sh [--steps 30] [--batch 40] [--data DIR] [--compile]
# bf16 FSDP2 steps of vit_base/14 on 2x224 + 8x98 crops with DALI mixed decode from shards
# (xformers attention when it imports, else SDPA); prints images/s, the step time split and MFU,
# and writes gpu_check.json to $OUT (when set, e.g. on the device machine) or benchmarks/out/.
set -euo pipefail
cd "$(dirname "$0")/.."

# the first interpreter that sees a CUDA device: $PYTHON, the project venv, then python3
PY=""
for cand in "${PYTHON:-}" .venv/bin/python python3 python; do
  [ -n "$cand" ] || continue
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    PY="$cand"; break
  fi
done
if [ -z "$PY" ]; then
  echo "gpu_check: no Python with a CUDA-enabled torch found (set PYTHON=/path/to/python)" >&2
  exit 2
fi
"$PY" -c "import xformers.ops" 2>/dev/null && echo "gpu_check: xformers available" \
  || echo "gpu_check: xformers not importable: using SDPA"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 470 "$PY" -m benchmarks.gpu_check --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
