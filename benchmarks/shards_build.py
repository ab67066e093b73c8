"""Benchmark `shards build`: images/s with 1 and N workers against the floor, same run, same files.

The floor is the bare per-image work (read bytes, decode, window, resize, PNG encode) in a plain
loop in this process: what any builder must pay. `build_shards` adds sources, metadata, hashing,
tar writing, index, checkpoints and manifest on top, and spreads the work over processes.

Targets (issue 3): workers=1 >= 0.9 x floor; per-worker efficiency with N workers >= 0.9
(so >= 1.8x speed-up with 2 workers).

    .venv/bin/python benchmarks/shards_build.py --data ../shared/data --n 240 --size 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.build import build_shards  # noqa: E402
from shards.process import ProcessOptions, encode_png, render  # noqa: E402
from shards.readers import ReadOptions, Reject, read  # noqa: E402


def corpus(data: Path, n: int) -> list[str]:
    """Real images: JSRT PNG, COVID JPEG, brain MRI JPEG, and the pydicom DICOM files."""
    import pydicom

    dcm = sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))
    per = max(1, (n - len(dcm)) // 3)
    files = []
    for folder, pat in (("jsrt", "*.png"), ("covid_cxr", "*.jpg"), ("brain_mri", "*.jpg")):
        files += sorted((data / folder / "images").glob(pat))[:per]
    return [str(p) for p in files + dcm][:n]


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children: robust on a shared, loaded machine."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def floor(files: list[str], size: int) -> tuple[float, float]:
    """(wall, cpu) seconds of the bare decode + resize + encode loop."""
    ropts, popts = ReadOptions(), ProcessOptions(size=size)
    t, c = time.perf_counter(), cpu_seconds()
    for f in files:
        try:
            with open(f, "rb") as fh:
                dec = read(fh.read(), f, ropts)
        except Reject:
            continue
        bits = 16 if dec.source_bits > 8 else 8
        for fr in dec.frames:
            try:
                encode_png(render(fr, popts, bits))
            except Exception:  # noqa: BLE001 - the builder rejects these too
                pass
    return time.perf_counter() - t, cpu_seconds() - c


def timed_build(files: list[str], size: int, workers: int) -> tuple[float, float, dict]:
    with tempfile.TemporaryDirectory() as out:
        t, c = time.perf_counter(), cpu_seconds()
        man = build_shards(files, out, name="bench", size=size, workers=workers, samples_per_shard=100,
                           progress=False)
        return time.perf_counter() - t, cpu_seconds() - c, man


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--n", type=int, default=240, help="input files")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="the multi-worker run")
    ap.add_argument("--repeat", type=int, default=2, help="best of R runs each")
    ap.add_argument("--json", default=str(Path(tempfile.gettempdir()) / "shards_build_benchmark.json"))
    args = ap.parse_args()
    files = corpus(Path(args.data), args.n)
    floor(files[:10], args.size)  # warm imports and caches, for both sides
    timed_build(files[:10], args.size, 1)
    floors = [floor(files, args.size) for _ in range(args.repeat)]
    t_floor, c_floor = min(f[0] for f in floors), min(f[1] for f in floors)
    runs1 = [timed_build(files, args.size, 1) for _ in range(args.repeat)]
    runsn = [timed_build(files, args.size, args.workers) for _ in range(args.repeat)]
    t1, c1, man = min(runs1, key=lambda r: r[0])
    tn, cn, _ = min(runsn, key=lambda r: r[0])
    n_in = man["totals"]["inputs"]
    print(f"{n_in} inputs ({man['totals']['samples']} samples, {man['totals']['rejected']} rejected), size {args.size}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'run':<22}{'wall s':>8}{'img/s':>9}{'x floor':>9}{'speed-up':>10}{'cpu s':>8}{'cpu eff':>9}")
    rows = [("floor (bare loop)", t_floor, c_floor, None), ("build workers=1", t1, c1, None),
            (f"build workers={args.workers}", tn, cn, t1 / tn)]
    for name, t, c, sp in rows:
        print(f"{name:<22}{t:>8.2f}{n_in / t:>9.1f}{t_floor / t:>9.2f}{'' if sp is None else f'{sp:.2f}':>10}"
              f"{c:>8.2f}{c_floor / c:>9.2f}")
    per_worker = (t_floor / tn) / args.workers
    print(f"targets: workers=1 >= 0.90 x floor ({t_floor / t1:.2f}); per-worker with {args.workers} >= 0.90 "
          f"({per_worker:.2f}); speed-up >= {0.9 * args.workers:.1f} ({t1 / tn:.2f})")
    print("cpu eff = floor CPU-seconds / run CPU-seconds (overhead of the builder, independent of machine load)")
    result = {"inputs": n_in, "samples": man["totals"]["samples"], "size": args.size, "cpus": os.cpu_count(),
              "load_average": os.getloadavg()[0], "floor_s": t_floor, "workers1_s": t1,
              f"workers{args.workers}_s": tn, "floor_cpu_s": c_floor, "workers1_cpu_s": c1,
              f"workers{args.workers}_cpu_s": cn, "ratio_workers1_vs_floor": t_floor / t1,
              "per_worker_efficiency": per_worker, "speedup": t1 / tn, "workers": args.workers}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
