#!/usr/bin/env bash
# The study's science question on one GPU, one command, planned for <= 8 minutes end to end
# (the run sizes its steps to --minutes 8 and is killed at 9.5 minutes):
#   bash benchmarks/gpu_study.sh prepare      # here, before the device call: .gpu_study/data (~MiB: README)
#   bash benchmarks/gpu_study.sh [--minutes 8] [--seed 0] [--set KEY=VALUE ...]    # on the GPU machine
#   bash benchmarks/gpu_study.sh --dry-run    # on a CPU, about a minute: the same phases, tiny (CI runs it)
# What it does and proves: launch/study/gpu_study.py, README "GPU study". Writes study.json, report.md and
# gpu_study.log to $OUT/gpu_study (when OUT is set, e.g. on a device machine) or benchmarks/out/gpu_study/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_SRC="${DINOTRAIN_TEST_DATA:-../shared/data}"
OUT_DIR="${OUT:-benchmarks/out}/gpu_study"

if [ "${1:-}" = "prepare" ]; then
  rm -rf .gpu_study/data
  exec "${PYTHON:-.venv/bin/python}" -m launch.study.gpu_study prepare --data "$DATA_SRC" --out .gpu_study/data "${@:2}"
fi
if [ "${1:-}" = "--dry-run" ]; then
  mkdir -p "$OUT_DIR"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "${PYTHON:-.venv/bin/python}" -m launch.study.gpu_study run --dry-run --data "$DATA_SRC" --out "$OUT_DIR" "${@:2}" \
    2>&1 | tee "$OUT_DIR/gpu_study.log"
  exit "${PIPESTATUS[0]}"
fi

source benchmarks/gpu_env.sh gpu_study
if [ ! -f .gpu_study/data/prepared.json ]; then
  echo "gpu_study: .gpu_study/data is missing: run 'bash benchmarks/gpu_study.sh prepare' before the device call" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
timeout 570 "$PY" -m launch.study.gpu_study run --data .gpu_study/data --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_study.log"
