#!/usr/bin/env bash
# The laptop study (issue 14): pretraining on the real images of $DINOTRAIN_TEST_DATA (default
# ../shared/data) beats random init, continues from a checkpoint, and scales with data.
#   scripts/laptop_study.sh OUT [SEED] [dinotrain study options, e.g. --quick or --steps 100]
# Writes OUT/study.json, OUT/report.md and the plots; see `dinotrain study --help`.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: scripts/laptop_study.sh OUT [SEED] [--quick | --steps N | --sizes A,B,C ...]" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$1"; shift
SEED=0
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then SEED="$1"; shift; fi
export DINOTRAIN_TEST_DATA="${DINOTRAIN_TEST_DATA:-$REPO/../shared/data}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m dinotrain study "$OUT" --seed "$SEED" --data "$DINOTRAIN_TEST_DATA" "$@"
