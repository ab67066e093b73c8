#!/usr/bin/env bash
# The GPU check, one command, planned for <= 8 minutes on one GPU (the run stops starting sections
# at --budget-s, 420 s by default, and is killed at 500 s):
#   bash benchmarks/gpu_check.sh [--only attention,loader,...] [--archs vit_small,vit_base] [--steps 20] ...
# Sections, tolerances and the JSON: `python -m benchmarks.gpu_check --help`, benchmarks/gpu/report.py.
# A section whose packages are missing (DALI, xFormers) is skipped with the reason; the others run.
# Writes gpu_check.json and gpu_check.log to $OUT (when set, e.g. on a device machine) or benchmarks/out/.
# Exit status: 0 every check that ran passed, 1 numerical mismatch, 2 no GPU / missing base package,
# 3 a section failed, 124 killed. A machine without the project's packages: `bash benchmarks/gpu_wheels.sh`
# fills .whl/ (omegaconf + antlr4, ~230 KB); they are installed to /tmp/site first. Recipe: README, "GPU check".
set -euo pipefail
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 500 "$PY" -m benchmarks.gpu_check --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
