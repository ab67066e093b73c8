"""Benchmark `shards build`: images/s with 1 and N workers against the floor, same run, same files;
and the J2K codec's build cost and shard size against PNG's.

The floor is the bare per-image work (read bytes, decode, window, resize, PNG encode) in a plain
loop in this process: what any builder must pay. `build_shards` adds sources, metadata, hashing,
tar writing, index, checkpoints and manifest on top, and spreads the work over processes.

Targets (issue 3): workers=1 >= 0.9 x floor; per-worker efficiency with N workers >= 0.9
(so >= 1.8x speed-up with 2 workers).

    .venv/bin/python -m benchmarks.shards_build [--quick] [--data ../shared/data --n 240 --size 518]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Skip, format_table, ratio_row, result, write_json  # noqa: E402
from shards.build import TASKS_PER_CHUNK, WORKER_MODULES, build_shards  # noqa: E402
from shards.codecs import CODECS  # noqa: E402
from shards.parallel import _context  # noqa: E402
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


def _floor_part(args: tuple[list[str], int]) -> float:
    return floor(*args)[1]


def parallel_floor(files: list[str], size: int, workers: int) -> float:
    """Wall seconds of the floor loop split over `workers` processes: the machine's ceiling.

    No builder can beat the same work divided perfectly between processes with nothing else to
    do, so (floor / this) is the speed-up that `workers` cores of this machine allow.
    """
    parts = [(files[k::workers], size) for k in range(workers)]
    with _context(WORKER_MODULES).Pool(workers) as pool:  # started as the build starts its workers
        pool.map(_floor_part, [([], size)] * workers)  # workers started before the clock
        t = time.perf_counter()
        pool.map(_floor_part, parts, chunksize=1)
        return time.perf_counter() - t


def timed_build(files: list[str], size: int, workers: int, codec: str = "png",
                bits: int | None = None) -> tuple[float, float, dict]:
    with tempfile.TemporaryDirectory() as out:
        t, c = time.perf_counter(), cpu_seconds()
        man = build_shards(files, out, name="bench", size=size, workers=workers, samples_per_shard=100,
                           codec=codec, bits=bits, progress=False)
        return time.perf_counter() - t, cpu_seconds() - c, man


def radiographs(data: Path, n: int) -> list[str]:
    """Real chest radiographs: JSRT PNGs and COVID-CXR JPEGs, half each (8-bit, shorter side 518)."""
    half = max(1, n // 2)
    files = sorted((data / "jsrt" / "images").glob("*.png"))[:half]
    files += sorted((data / "covid_cxr" / "images").glob("*.jpg"))[: n - len(files)]
    return [str(p) for p in files]


# (label, --size, --bits): as stored, and resampled to 16 bits (what DICOM radiographs give: 12-16-bit values)
CODEC_VARIANTS = (("8-bit, size 518", 518, 8), ("16-bit, resampled to 448", 448, 16))


def measure_codecs(files: list[str], repeat: int, variants=CODEC_VARIANTS) -> dict:
    """{variant: {codec: best wall s, best CPU s, shard bytes, samples}} of 1-worker builds.

    One worker: the CPU seconds are then this process's own, the cost a cluster pays per image.
    """
    out: dict = {}
    for codec in CODECS:  # imports, decoder and encoder start-up outside the timings
        timed_build(files[:2], variants[0][1], 1, codec, variants[0][2])
    for _ in range(repeat):  # interleaved, as in measure()
        for label, size, bits in variants:
            for codec in CODECS:
                wall, cpu, man = timed_build(files, size, 1, codec, bits)
                best = out.setdefault(label, {}).get(codec)
                out[label][codec] = {"wall_s": min(wall, best["wall_s"]) if best else wall,
                                     "cpu_s": min(cpu, best["cpu_s"]) if best else cpu,
                                     "bytes": sum(s["bytes"] for s in man["shards"]),
                                     "samples": man["totals"]["samples"]}
    return out


def codec_rows(m: dict) -> list[dict]:
    """Per variant, J2K against PNG: build wall time, build CPU time, shard bytes (ratios > 1 favour J2K)."""
    rows = []
    for label, v in m.items():
        png, j2k = v["png"], v["j2k"]
        rows += [
            ratio_row(f"build --codec j2k vs png: {png['samples']} radiographs, {label}, workers=1 (wall)",
                      png["wall_s"], j2k["wall_s"], baseline_name="png", candidate_name="j2k", unit="s"),
            ratio_row(f"same, CPU seconds ({label})", png["cpu_s"], j2k["cpu_s"], baseline_name="png",
                      candidate_name="j2k", unit="cpu s"),
            ratio_row(f"shard bytes: j2k vs png ({label}, lossless both)", png["bytes"] / 2**20, j2k["bytes"] / 2**20,
                      baseline_name="png", candidate_name="j2k", unit="MiB"),
        ]
    return rows


def measure(data: Path, n: int, size: int, workers: int, repeat: int) -> dict:
    """Best-of-`repeat` wall and CPU seconds of the floor, a 1-worker build and an N-worker build.

    Best of several, not the median: on a shared virtual machine the neighbours' load only ever
    slows a run down, so the fastest run is the closest to what the code itself costs.
    """
    files = corpus(data, n)
    if not files:
        raise Skip(f"no images under {data}: pass --data or set DINOTRAIN_TEST_DATA")
    floor(files[:10], size)  # warm imports and caches, for both sides
    timed_build(files[:10], size, 1)
    timed_build(files[:10], size, workers)  # a fork server, if one is used, starts here, not in the timing
    floors, ceilings, runs1, runsn = [], [], [], []
    for _ in range(repeat):  # interleaved rounds: a slow spell of the machine hits every case alike
        floors.append(floor(files, size))
        ceilings.append(parallel_floor(files, size, workers))
        runs1.append(timed_build(files, size, 1))
        runsn.append(timed_build(files, size, workers))
    ceiling = min(ceilings)
    t1, c1, man = min(runs1, key=lambda r: r[0])
    # (no CPU seconds for N workers: a fork server's workers are not this process's children)
    tn = min(r[0] for r in runsn)
    return {"inputs": man["totals"]["inputs"], "samples": man["totals"]["samples"], "size": size,
            "workers": workers, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
            "floor_s": min(f[0] for f in floors), "floor_parallel_s": ceiling, "floor_cpu_s": min(f[1] for f in floors),
            "workers1_s": t1, "workers1_cpu_s": c1, "workersN_s": tn}


def run(quick: bool = False, data: str | None = None, n: int | None = None, size: int = 518,
        workers: int = 2, repeat: int | None = None) -> dict:
    root = Path(data or os.environ.get("DINOTRAIN_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    m = measure(root, n or (40 if quick else 240), size, workers, repeat or (1 if quick else 5))
    codecs = measure_codecs(radiographs(root, 16 if quick else 100), repeat or (1 if quick else 3))
    m["codecs"] = codecs
    k = m["inputs"]
    rows = [
        ratio_row("build workers=1 vs bare floor loop (wall)", k / m["floor_s"], k / m["workers1_s"],
                  baseline_name="floor", candidate_name="build w=1", unit="img/s", higher_is_better=True,
                  target=">= 0.9"),
        ratio_row("build workers=1 vs floor (CPU seconds, load-independent)", m["floor_cpu_s"], m["workers1_cpu_s"],
                  baseline_name="floor", candidate_name="build w=1", unit="cpu s", target=">= 0.9"),
        ratio_row(f"build workers={workers} vs workers=1 (speed-up)", m["workers1_s"], m["workersN_s"],
                  baseline_name="w=1", candidate_name=f"w={workers}", unit="s", target=f">= {0.9 * workers:.1f}"),
        ratio_row(f"ceiling: floor loop split over {workers} processes vs 1 (what this machine allows)",
                  m["floor_s"], m["floor_parallel_s"], baseline_name="floor, 1 process",
                  candidate_name=f"floor, {workers} processes", unit="s"),
        *codec_rows(codecs),
    ]
    return result("shards_build", "shards build images/s vs the decode+resize+encode floor", rows,
                  notes="floor = read, decode, window, resize and PNG-encode the same files in a bare loop in the "
                  "same process. Wall-clock ratios need an otherwise idle machine; the CPU-seconds row is robust "
                  "to load. Targets (issue 3): w=1 >= 0.9 x floor, >= 1.8x speed-up with 2 workers. The ceiling row "
                  "divides the floor's work perfectly between processes that do nothing else: a build's speed-up "
                  "can come close to it, not really pass it, so on a machine whose ceiling is below 1.8x the "
                  "target cannot be shown there. Workers are forked (a fork server if this process runs other threads) and get "
                  f"{TASKS_PER_CHUNK} inputs per round trip. Codec rows: the same files built with --codec j2k "
                  "(lossless JPEG 2000, which DALI decodes on the GPU) against PNG; ratio > 1 = J2K cheaper or "
                  "smaller.",
                  params=m)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 files, one repeat")
    ap.add_argument("--data", default=None, help="folder with jsrt/, covid_cxr/, brain_mri/ (default ../shared/data)")
    ap.add_argument("--n", type=int, default=None, help="input files (default 240)")
    ap.add_argument("--size", type=int, default=518, help="shorter side, as `shards build --size` (default 518, RAD-DINO)")
    ap.add_argument("--workers", type=int, default=2, help="the multi-worker run")
    ap.add_argument("--repeat", type=int, default=None, help="best of R runs each")
    args = ap.parse_args()
    res = run(args.quick, args.data, args.n, args.size, args.workers, args.repeat)
    print(format_table(res))
    print(f"wrote {write_json('shards_build', res)}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
