#!/usr/bin/env bash
# A new user's whole set-up, in one command: system packages for the test services (SLURM +
# munge, Debian/Ubuntu), then a virtualenv `.venv` with dinotrain and everything it needs.
#   bash scripts/setup.sh            # CPU machine: CPU torch 2.13.0
#   TORCH_SPEC='torch==2.13.0' bash scripts/setup.sh   # choose another torch build explicitly
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    echo "[setup] installing slurm-wlm and munge (local SLURM for the tests)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
else
  echo "[setup] no apt-get: install SLURM (slurmctld, slurmd, sbatch) and munge yourself to run the SLURM tests" >&2
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build on CPU machines.
.venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/pip install -q -e '.[test,hf]'
echo "[setup] done: run the tests with  .venv/bin/python -m pytest"
