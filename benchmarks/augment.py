"""DALI CPU multi-crop pipeline vs a PIL + numpy implementation of the same DINOv2 recipe.

Both decode the same real 518-px PNGs (../shared/data/jsrt) and make 2 global 224-px crops +
8 local 98-px crops per image with the same crop windows and apply-flags (drawn once by
`dinotrain.data.augment.sample_params`): bicubic resized crop + flip, brightness/contrast/gamma
jitter, Gaussian blur, solarisation, normalisation, grayscale repeated to 3 channels. The
baseline is what DINOv2's torchvision transforms do on PIL images, written with PIL + numpy
(torchvision does not import beside the CPU torch wheel here). Both use one thread, so the
ratio is images/s per core.

    python -m benchmarks.augment [--quick]
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from benchmarks.common import Skip, cli, ratio_row, result, timeit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MEAN, STD = 0.5307, 0.2583


def load_images(n: int) -> list[bytes]:
    files = sorted((DATA / "jsrt" / "images").glob("*.png"))[:n]
    if len(files) < n:
        raise Skip(f"need {n} real radiographs under {DATA}/jsrt/images (see shared/data/README.md)")
    out = []
    for f in files:  # re-encode as plain 8-bit grayscale PNG (the shard format)
        buf = io.BytesIO()
        from PIL import Image

        Image.open(f).convert("L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def baseline_one(data: bytes, params: np.ndarray, spec) -> list[np.ndarray]:
    """DINOv2's recipe on a PIL image: crop/flip/blur in PIL, jitter/solarise/normalise in numpy."""
    from PIL import Image, ImageFilter

    from dinotrain.data.augment import Col

    img = Image.open(io.BytesIO(data))
    img.load()
    w, h = img.size
    crops = []
    for c, p in enumerate(params):
        size = 224 if c < spec.global_crops_number else 98
        x0, x1 = sorted((p[Col.X0], p[Col.X1]))
        box = (x0 * w, p[Col.Y0] * h, x1 * w, p[Col.Y1] * h)
        im = img.resize((size, size), Image.BICUBIC, box=box)
        if p[Col.X0] > p[Col.X1]:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        x = np.asarray(im, dtype=np.float32) / 255.0
        x = np.clip(x * p[Col.BRIGHT], 0, 1)
        m = x.mean()
        x = np.clip((x - m) * p[Col.CONTRAST] + m, 0, 1) ** p[Col.GAMMA]
        if p[Col.BLUR]:
            im = Image.fromarray((x * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(float(p[Col.SIGMA])))
            x = np.asarray(im, dtype=np.float32) / 255.0
        if p[Col.SOLAR]:
            x = np.where(x >= 0.5, 1.0 - x, x)
        x = (x - MEAN) / STD
        crops.append(np.repeat(x[None], 3, 0))
    return crops


def cpu_seconds(fn, repeat: int) -> float:
    """Median process CPU time (user + system, all threads) of `fn()`."""
    import resource
    import statistics

    def now() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    runs = []
    for _ in range(repeat):
        t0 = now()
        fn()
        runs.append(now() - t0)
    return statistics.median(runs)


def decode_resize_pipeline(arrays, params, spec, n: int):
    """The train graph cut down to its decode and resized crops: a ceiling for the full graph on CPU."""
    from nvidia.dali import fn, pipeline_def, types

    from dinotrain.data.pipeline import _decode, _resized_crop

    @pipeline_def(batch_size=n, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_dynamic=True)
    def graph():
        enc, prm = fn.external_source(source=lambda: (arrays, params), num_outputs=2, batch=True,
                                      dtype=[types.UINT8, types.FLOAT], ndim=[1, 2])
        img = _decode(enc, gpu=False, gray=True, dtype=types.UINT16)
        return tuple(_resized_crop(img, prm, c, 224 if c < spec.global_crops_number else 98)
                     for c in range(spec.global_crops_number + spec.local_crops_number))

    pipe = graph()
    pipe.build()
    return pipe


def run(quick: bool = False) -> dict:
    from dinotrain.config import DataConfig
    from dinotrain.data.augment import sample_params
    from dinotrain.data.pipeline import GraphSpec, train_pipeline

    n = 8 if quick else 32
    images = load_images(n)
    spec = DataConfig()
    rng = np.random.default_rng(0)
    params = [sample_params(rng, 518, 518, spec) for _ in images]
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in images]
    graph = GraphSpec(224, 98, 3, True, MEAN, STD)
    pipe = train_pipeline(lambda: (arrays, params), spec, graph, n, num_threads=1, device="cpu",
                          device_id=None, prefetch=1)

    floor = decode_resize_pipeline(arrays, params, spec, n)

    def materialise(p):
        for o in p.run():
            np.asarray(o.as_tensor())  # like the loader does

    def dali():
        materialise(pipe)

    def base():
        for b, p in zip(images, params):
            baseline_one(b, p, spec)

    repeat = 2 if quick else 5
    t_base = timeit(base, repeat=repeat)
    t_dali = timeit(dali, repeat=repeat)
    cpu_base, cpu_dali = cpu_seconds(base, repeat), cpu_seconds(dali, repeat)
    cpu_floor = cpu_seconds(lambda: materialise(floor), repeat)
    rows = [
        ratio_row(f"{n} imgs 518px, 2x224 + 8x98 crops, 1 thread (wall clock)", n / t_base.median,
                  n / t_dali.median, baseline_name="PIL+numpy", candidate_name="DALI CPU", unit="img/s",
                  higher_is_better=True),
        # CPU seconds of this process: images per CPU-second is "per core", and other jobs on a
        # shared machine do not move it the way they move wall-clock time
        ratio_row(f"{n} imgs, same work (process CPU time)", n / cpu_base, n / cpu_dali,
                  baseline_name="PIL+numpy", candidate_name="DALI CPU", unit="img/cpu-s", higher_is_better=True),
        # the most the full graph could reach on this CPU: its decode and resize alone
        ratio_row(f"ceiling: DALI decode + the {spec.global_crops_number + spec.local_crops_number} resized crops only (CPU time)",
                  n / cpu_base, n / cpu_floor, baseline_name="PIL+numpy (whole recipe)",
                  candidate_name="DALI decode+resize", unit="img/cpu-s", higher_is_better=True),
    ]
    return result(
        "augment",
        "DALI CPU multi-crop vs a PIL+numpy DINOv2 recipe (images/s per core)",
        rows,
        notes="Same PNG bytes, crop windows and apply-flags on both sides; ratio > 1 = DALI faster. Target >= 3x, "
              "not met on CPU, and not reachable there: the ceiling row runs only DALI's decode and resized "
              "crops (no jitter, blur or normalisation), and even that is far from 3x the whole PIL recipe, "
              "because Pillow's PNG decode and fixed-point bicubic resize are as fast per core as DALI's. The "
              "graph keeps pixels as uint16 through decode and resize (DALI's CPU resize writes integers "
              "about 1.4x faster than float) and runs blur and solarisation only on the crops whose flag is "
              "set (DALI conditionals). The speed-up the design is for comes from the GPU path (decode "
              "'mixed', augment on the device), which a CPU-only machine cannot measure.",
        params={"images": n, "global": "2x224", "local": "8x98", "threads": 1},
    )


if __name__ == "__main__":
    cli(run)
