#!/usr/bin/env bash
# Fill .whl/ with the pure-Python wheels the lent GPU machine lacks (it has torch, torchvision, numpy,
# Pillow, transformers, safetensors, timm, scikit-learn, fsspec, tqdm; no omegaconf, no DALI, no network).
# Run here, before the device call; gpu_check.sh and gpu_study.sh install .whl/*.whl into /tmp/site there.
#   bash benchmarks/gpu_wheels.sh        # ~230 KB: omegaconf 2.3.0 + antlr4-python3-runtime 4.9.3 (its pin)
# webdataset is not needed there: the loader reads tars through its own index, never through webdataset.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
mkdir -p .whl
"$PY" -m pip wheel --no-deps -q -w .whl "omegaconf==2.3.0" "antlr4-python3-runtime==4.9.3"
ls -l .whl
du -sh .whl
