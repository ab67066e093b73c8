"""Ratio benchmarks: each module compares a candidate with a baseline run in the same process.

Run them all with `python -m benchmarks [--quick]` (writes BENCHMARKS.md and benchmarks/out/*.json);
the convention a module follows is documented in `benchmarks/common.py`.
"""
