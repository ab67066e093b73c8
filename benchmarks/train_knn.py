"""Does training teach the teacher something? kNN accuracy of its CLS features, before vs after.

A short CPU run of the real trainer (vit_tiny/14, 56-px global crops) on shards of real
radiographs (JSRT + COVID-CXR X-rays from ../shared/data), then frozen-feature kNN (cosine,
k=10, stratified 5-fold cross-validation, balanced accuracy) on JSRT nodule labels and COVID-CXR
finding labels, with the teacher at initialisation (baseline) and after training (candidate).
Same seed, same images, same preprocessing. Takes minutes: `python -m benchmarks.train_knn`.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Skip, ratio_row, result, write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EVAL_SIZE = 56
COVID_LABELS = ("COVID-19", "other_pneumonia", "No Finding")


def _rows(folder: Path) -> list[dict]:
    with (folder / "metadata.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def eval_sets(data: Path, n_covid: int) -> dict[str, tuple[list[Path], np.ndarray]]:
    jsrt = [r for r in _rows(data / "jsrt") if r["label"]]
    covid = [r for r in _rows(data / "covid_cxr") if r["label"] in COVID_LABELS and r["modality"] == "X-ray"]
    covid = sorted(covid, key=lambda r: r["path"])[:n_covid]
    out = {}
    for name, folder, rows in (("jsrt_nodule", data / "jsrt", jsrt), ("covid_finding", data / "covid_cxr", covid)):
        labels = sorted({r["label"] for r in rows})
        out[name] = ([folder / r["path"] for r in rows], np.array([labels.index(r["label"]) for r in rows]))
    return out


def load_images(paths: list[Path], size: int, mean: float, std: float):
    """Resize the shorter side to `size`, centre crop, grayscale repeated to 3 channels, normalised."""
    import torch
    from PIL import Image

    arrs = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("L")
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        arrs.append((a - mean) / std)
    x = torch.from_numpy(np.stack(arrs))[:, None].repeat(1, 3, 1, 1)
    return x


def features(state_dict: dict, model_cfg, x) -> np.ndarray:
    import torch

    from dinotrain.models import build_backbone

    model = build_backbone(model_cfg, device="cpu", drop_path_rate=0.0)
    model.load_state_dict(state_dict)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)]).numpy()


def knn_balanced_accuracy(feats: np.ndarray, y: np.ndarray, k: int = 10, seed: int = 0) -> float:
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    pred = np.empty_like(y)
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(f, y):
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance").fit(f[tr], y[tr])
        pred[te] = clf.predict(f[te])
    return float(balanced_accuracy_score(y, pred))


def initial_teacher(cfg) -> dict:
    """The teacher a run of `cfg` starts from (same seed, same init code), as a plain state dict."""
    import torch
    import torch.distributed as dist

    from dinotrain.train.networks import build_networks

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        _, teacher = build_networks(cfg.model, cfg.ssl, cfg.parallel, cfg.train.seed, torch.device("cpu"), 1)
        sd = {k.removeprefix("backbone."): v.full_tensor().clone() if hasattr(v, "full_tensor") else v.clone()
              for k, v in teacher.state_dict().items() if k.startswith("backbone.")}
    finally:
        if created:
            dist.destroy_process_group()
    return sd


def run_check(steps: int, n_covid: int, batch: int, out_dir: Path) -> dict:
    if not (DATA / "jsrt" / "metadata.csv").is_file() or not (DATA / "covid_cxr" / "metadata.csv").is_file():
        raise Skip(f"real images missing under {DATA} (jsrt/, covid_cxr/)")
    from dinotrain.config import load_config
    from dinotrain.run_teacher import load_teacher
    from dinotrain.train import run
    from shards.build import build_shards

    work = Path(tempfile.mkdtemp(prefix="train_knn_"))
    sets = eval_sets(DATA, n_covid)
    t0 = time.perf_counter()
    srcs = []
    for name, (paths, _) in sets.items():
        out = work / name
        build_shards([str(p) for p in paths], str(out), name=name.split("_")[0], size=112, bits=8, workers=1,
                     modality="CR", samples_per_shard=64, progress=False)
        srcs.append(f"{{name: {name}, path: {out}}}")
    t_shards = time.perf_counter() - t0
    overrides = [
        f"output_dir={work / 'run'}", f"data.sources=[{', '.join(srcs)}]", f"data.batch_size_per_gpu={batch}",
        "data.global_crops_size=56", "data.local_crops_size=28", "data.local_crops_number=2", "data.num_threads=1",
        "model.arch=vit_tiny", "model.img_size=56", "model.drop_path_rate=0.0",
        "ssl.head_n_prototypes=1024", "ssl.head_hidden_dim=512", "ssl.head_bottleneck_dim=128",
        "ssl.warmup_teacher_temp_steps=30", "ssl.momentum_teacher=0.99",
        "optim.lr=0.01", "optim.warmup_steps=10", "optim.freeze_last_layer_steps=5",
        f"train.max_steps={steps}", "train.log_every=10", f"train.checkpoint_every={steps}", "train.export_every=0",
        "train.seed=0",
    ]
    cfg = load_config(None, overrides)
    before_sd = initial_teacher(cfg)
    t0 = time.perf_counter()
    summary = run(cfg)
    t_train = time.perf_counter() - t0
    after_sd, model_cfg = load_teacher(work / "run")
    rows, figures = [], {}
    for name, (paths, y) in sets.items():
        x = load_images(paths, EVAL_SIZE, cfg.data.mean, cfg.data.std)
        before = knn_balanced_accuracy(features(before_sd, model_cfg, x), y)
        after = knn_balanced_accuracy(features(after_sd, model_cfg, x), y)
        figures[name] = {"before": before, "after": after, "n": len(y), "classes": int(y.max() + 1)}
        rows.append(ratio_row(f"{name}: kNN balanced accuracy ({len(y)} images, {int(y.max() + 1)} classes)",
                              before, after, baseline_name="teacher at init", candidate_name=f"teacher after {steps} steps",
                              unit="bal. acc.", higher_is_better=True))
    return result(
        "train_knn", f"teacher kNN accuracy before vs after {steps} CPU training steps (vit_tiny/14, 56 px)", rows,
        notes="5-fold stratified CV, cosine kNN k=10 on frozen CLS features of the teacher; chance = 1/classes. "
              "Training images = evaluation images (self-supervised, labels unused in training).",
        params={"steps": steps, "batch": batch, "n_covid": n_covid, "train_s": t_train, "shard_build_s": t_shards,
                "final_losses": summary["losses"], "figures": figures},
    )


def run(quick: bool = False) -> dict:
    if quick:
        raise Skip("trains for minutes; run `python -m benchmarks.train_knn` to measure")
    return run_check(steps=100, n_covid=200, batch=8, out_dir=Path(__file__).resolve().parent / "out")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import format_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n-covid", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = ap.parse_args(argv)
    res = run_check(args.steps, args.n_covid, args.batch, args.out)
    print(format_table(res))
    print(f"\nwrote {write_json('train_knn', res, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
