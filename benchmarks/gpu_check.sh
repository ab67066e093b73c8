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

source benchmarks/gpu_env.sh gpu_check

OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR"
timeout 500 "$PY" -m benchmarks.gpu_check --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
