"""The parts of `benchmarks/gpu_check.py`, one module per kind of check (a package, so the
benchmark runner does not take them for benchmarks). Each comparison is written as a function
of the device, so CI runs its CPU reference half (tests/test_gpu_check.py) and a GPU machine
runs both halves."""
