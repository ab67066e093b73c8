"""Run one task on one model's frozen features and return result records.

`prepare_targets(task, settings)` reads what does not depend on the model (labels, masks,
text embeddings) once; `evaluate(task, targets, feats, model_name, settings)` fits the probes
on train (+ val for model selection) and scores the test split. Every record has the fields
documented in `dinotrain.eval.report`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinotrain.config import EvalConfig, ModelConfig, default_of
from dinotrain.eval import metrics
from dinotrain.eval.specs import SpecError, TaskData
from dinotrain.eval.threads import single_thread


@dataclass
class EvalSettings:
    """How one evaluation runs; the fields shared with the `eval` section default to the schema's."""

    resolution: int = default_of(EvalConfig, "resolution")
    patch_size: int = default_of(ModelConfig, "patch_size")
    batch_size: int = default_of(EvalConfig, "batch_size")
    knn_k: int = default_of(EvalConfig, "knn_k")
    knn_temperature: float = default_of(EvalConfig, "knn_temperature")
    bootstrap: int = default_of(EvalConfig, "bootstrap")
    seg_steps: int = default_of(EvalConfig, "seg_steps")
    align_steps: int = default_of(EvalConfig, "align_steps")
    seed: int = 0
    device: str = "cpu"  # resolved (the schema's "auto" is decided by `dinotrain eval`)
    threads: int = default_of(EvalConfig, "threads")
    loader: str = default_of(EvalConfig, "loader")
    cache_dir: str | None = None
    progress: bool = True


def needs_patch_tokens(task: TaskData) -> bool:
    return task.spec.kind == "segmentation"


# ----------------------------------------------------------------------------- targets
def class_targets(task: TaskData) -> tuple[np.ndarray, list[str]]:
    """One-/multi-hot targets [N, C] and the class names."""
    spec = task.spec
    raw = [v.strip() for v in task.column(spec.label_column)]
    if spec.multilabel:
        sets = [{p.strip() for p in v.split(spec.label_separator) if p.strip()} for v in raw]
        classes = spec.classes or sorted(set().union(*sets))
        Y = np.asarray([[c in s for c in classes] for s in sets], dtype=np.float32)
        return Y, list(classes)
    classes = spec.classes or sorted(set(raw))
    if len(classes) < 2:
        raise SpecError(f"task '{spec.name}': only one class ({classes}) after filtering; nothing to classify")
    pos = {c: i for i, c in enumerate(classes)}
    return metrics.one_hot(np.asarray([pos[v] for v in raw]), len(classes)), list(classes)


def load_masks(task: TaskData, resolution: int, out_size: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Boolean masks [N, S, out, out] (union of a structure's mask files) and which rows have all."""
    from dinotrain.eval.features import preprocess_mask, read_image

    spec = task.spec
    names = list(spec.structures)
    out = np.zeros((len(task.rows), len(names), out_size, out_size), dtype=bool)
    ok = np.ones(len(task.rows), dtype=bool)
    for i, row in enumerate(task.rows):
        paths = [p.strip() for p in row.get("mask_paths", "").split(";") if p.strip()]
        for s, name in enumerate(names):
            # a mask belongs to a structure when one of its folders is listed for it
            mine = [p for p in paths if set(Path(p).parts[:-1]) & set(spec.structures[name])]
            if not mine:
                ok[i] = False
                continue
            for p in mine:
                out[i, s] |= preprocess_mask(read_image(task.data_dir / p), resolution, out_size)
    return out, names, ok


@dataclass
class Targets:
    Y: np.ndarray | None = None
    classes: list[str] | None = None
    y: np.ndarray | None = None
    masks: np.ndarray | None = None
    structures: list[str] | None = None
    texts: list[str] | None = None
    text_emb: np.ndarray | None = None
    keep: np.ndarray | None = None  # rows usable by this task (e.g. with every mask)


def prepare_targets(task: TaskData, settings: EvalSettings) -> Targets:
    spec = task.spec
    if spec.kind == "classification":
        Y, classes = class_targets(task)
        return Targets(Y=Y, classes=classes)
    if spec.kind == "regression":
        return Targets(y=np.asarray([float(v) for v in task.column(spec.label_column)], dtype=np.float64))
    if spec.kind == "segmentation":
        grid = settings.resolution // settings.patch_size
        out_size = min(settings.resolution, 4 * grid)  # 4x the token grid: enough for Dice, small in memory
        masks, names, ok = load_masks(task, settings.resolution, out_size)
        return Targets(masks=masks, structures=names, keep=ok)
    texts = [t.strip() for t in task.column(spec.text_column)]
    if spec.kind == "alignment":
        from dinotrain.eval.text import encode_texts

        uniq = list(dict.fromkeys(texts))
        cache = Path(settings.cache_dir) / "text" if settings.cache_dir else None
        emb = encode_texts(uniq, cache_dir=cache, device=settings.device)
        return Targets(texts=texts, text_emb=emb)
    return Targets(texts=texts)


# ----------------------------------------------------------------------------- evaluation
@dataclass
class Scored:
    """One metric of one model on one task, as a function of the evaluated items.

    `fn(idx)` scores the items `idx` (positions in 0..n-1), so a bootstrap can resample them and
    two models scored on the same items can be compared with the same resamples (a paired CI).
    `fn=None` for a fixed value (chance rows); `max_boot` caps slow metrics' resamples (BLEU).
    """

    model: str
    task: str
    kind: str
    metric: str
    fn: Callable[[np.ndarray], float] | None
    n: int
    groups: np.ndarray | None = None
    value: float | None = None
    max_boot: int | None = None
    chance: float | None = None  # the metric's value for an uninformed predictor, when it has one
    probe: dict[str, Any] | None = None  # what the probe chose on train + val (e.g. the ridge penalty)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.metric}"

    def point(self) -> float:
        return float(self.fn(np.arange(self.n))) if self.fn is not None else float(self.value)


def to_record(s: Scored, settings: EvalSettings) -> dict[str, Any]:
    """A results.json record: the value on all items and its 95% (patient-grouped) bootstrap CI."""
    lo = hi = float("nan")
    if s.fn is not None:
        n_boot = settings.bootstrap if s.max_boot is None else min(settings.bootstrap, s.max_boot)
        lo, hi = metrics.bootstrap_ci(s.fn, s.n, n_boot, settings.seed, s.groups)
    rec = {"model": s.model, "task": s.task, "kind": s.kind, "metric": s.metric, "split": "test",
           "value": s.point(), "ci_low": lo, "ci_high": hi, "n": int(s.n)}
    if s.chance is not None:
        rec["chance"] = float(s.chance)
    if s.probe is not None:
        rec["probe"] = dict(s.probe)
    return rec


def _scored(model: str, task: TaskData, kind: str, metric: str, fn, idx: np.ndarray,
            groups: np.ndarray | None = None, max_boot: int | None = None, chance: float | None = None,
            probe: dict[str, Any] | None = None) -> Scored:
    return Scored(model, task.spec.name, kind, metric, fn, int(len(idx)), groups, max_boot=max_boot, chance=chance,
                  probe=probe)


def _splits(task: TaskData, keep: np.ndarray | None = None):
    out = []
    for s in ("train", "val", "test"):
        idx = task.indices(s)
        if keep is not None:
            idx = idx[keep[idx]]
        out.append(idx)
    tr, va, te = out
    if len(tr) == 0 or len(te) == 0:
        raise SpecError(f"task '{task.spec.name}': empty train or test split ({len(tr)} / {len(te)} samples); "
                        "use more samples (--max-samples) or other split_fractions")
    return tr, va, te


def evaluate(task: TaskData, targets: Targets, feats: dict[str, np.ndarray], model: str,
             settings: EvalSettings) -> list[dict[str, Any]]:
    """The task's result records for one model (values with bootstrap CIs)."""
    scored = score(task, targets, feats, model, settings)
    with single_thread():
        return [to_record(s, settings) for s in scored]


def score(task: TaskData, targets: Targets, feats: dict[str, np.ndarray], model: str,
          settings: EvalSettings) -> list[Scored]:
    """Fit the task's probes on one model's features; every metric as a function of the test items."""
    kind = task.spec.kind
    fn = {"classification": _classification, "regression": _regression, "segmentation": _segmentation,
          "alignment": _alignment, "report": _report}[kind]
    with single_thread():
        return fn(task, targets, feats, model, settings)


def _classification(task, t: Targets, feats, model, settings) -> list[dict]:
    from dinotrain.eval.knn import knn_scores
    from dinotrain.eval.linear import linear_probe

    x, Y = feats["cls"], t.Y
    tr, va, te = _splits(task)
    g = task.groups[te]
    chance = metrics.chance_levels(Y[te], task.spec.multilabel)
    out = []
    for probe in task.spec.probes:
        if probe == "knn":
            # kNN has no hyper-parameters to select: it uses train + val as its memory bank
            bank = np.concatenate([tr, va])
            S = knn_scores(x[bank], Y[bank], x[te], settings.knn_k, settings.knn_temperature)
        else:
            S, _ = linear_probe(x[tr], Y[tr], x[va], Y[va], x[te], task.spec.multilabel)
        for name, f in metrics.classification_metrics(Y[te], S, task.spec.multilabel).items():
            out.append(_scored(model, task, probe, name, f, te, g, chance=chance[name]))
    return out


def _regression(task, t: Targets, feats, model, settings) -> list[dict]:
    from dinotrain.eval.attributes import mean_baseline, ridge_probe

    x, y = feats["cls"], t.y
    tr, va, te = _splits(task)
    g = task.groups[te]
    pred, chosen = ridge_probe(x[tr], y[tr], x[va], y[va], x[te], groups=task.groups[np.concatenate([tr, va])])
    base = mean_baseline(y[tr], y[va], len(te))
    out = []
    for name, f in metrics.regression_metrics(y[te], pred).items():
        out.append(_scored(model, task, "ridge", name, f, te, g, probe=chosen))
    f = metrics.regression_metrics(y[te], base)["mae"]
    out.append(_scored(model, task, "mean_baseline", "mae", f, te, g))
    return out


def _segmentation(task, t: Targets, feats, model, settings) -> list[dict]:
    from dinotrain.eval.segmentation import constant_mask, dice_per_image, train_linear_head

    tr, va, te = _splits(task, t.keep)
    P, M = feats["patch"], t.masks
    predict = train_linear_head(P[tr], M[tr], P[va], M[va], steps=settings.seg_steps, seed=settings.seed,
                                device=settings.device)
    pred = predict(P[te])
    const = constant_mask(M[tr])
    g = task.groups[te]
    out, per_image = [], {"linear_head": [], "constant_mask": []}
    for s, name in enumerate(t.structures):
        d = dice_per_image(pred[:, s], M[te, s])
        dc = dice_per_image(np.broadcast_to(const[s], M[te, s].shape), M[te, s])
        for kind, v in (("linear_head", d), ("constant_mask", dc)):
            per_image[kind].append(v)
            out.append(_scored(model, task, kind, f"dice_{name}", lambda i, v=v: float(v[i].mean()), te, g))
    if len(t.structures) > 1:  # one number per method: Dice averaged over the structures, per image
        for kind, vs in per_image.items():
            m = np.mean(vs, axis=0)
            out.append(_scored(model, task, kind, "dice_mean", lambda i, m=m: float(m[i].mean()), te, g))
    return out


def _alignment(task, t: Targets, feats, model, settings) -> list[dict]:
    from dinotrain.eval.text import i2t_ranks, t2i_ranks, train_alignment, unique_ids

    x = feats["cls"]
    tr, va, te = _splits(task)
    emb_of = {s: e for s, e in zip(dict.fromkeys(t.texts), t.text_emb)}

    def part(idx):
        uniq, ids = unique_ids([t.texts[i] for i in idx])
        return np.stack([emb_of[u] for u in uniq]) if uniq else np.zeros((0, t.text_emb.shape[1]), np.float32), ids

    ttr, itr = part(tr)
    tva, iva = part(va)
    tte, ite = part(te)
    project = train_alignment(x[tr], ttr, itr, x[va], tva, iva, steps=settings.align_steps, seed=settings.seed)
    img = project(x[te])
    r_i2t, r_t2i = i2t_ranks(img, tte, ite), t2i_ranks(img, tte, ite)
    # text->image queries are the unique texts; their groups are the patient of their first image
    first = {}
    for j, i in zip(ite, te):
        first.setdefault(int(j), task.groups[i])
    g_text = np.asarray([first[j] for j in range(len(tte))])
    out = []
    for k in (1, 5, 10):
        out.append(_scored(model, task, "alignment", f"i2t_R@{k}", lambda i, k=k: float(np.mean(r_i2t[i] < k)),
                           te, task.groups[te]))
        out.append(_scored(model, task, "alignment", f"t2i_R@{k}", lambda i, k=k: float(np.mean(r_t2i[i] < k)),
                           np.arange(len(tte)), g_text))
        # chance: a random ranking finds the right text in the top k with probability k / gallery
        out.append(Scored(model, task.spec.name, "chance", f"i2t_R@{k}", None, int(len(te)),
                          value=min(1.0, k / len(tte))))
    return out


def _report(task, t: Targets, feats, model, settings) -> list[dict]:
    from dinotrain.eval.text import bleu4, nearest_texts, rouge_l

    x = feats["cls"]
    tr, va, te = _splits(task)
    bank = np.concatenate([tr, va])
    bank_texts = [t.texts[i] for i in bank]
    refs = [t.texts[i] for i in te]
    hyp = nearest_texts(x[bank], bank_texts, x[te])
    rng = np.random.default_rng(settings.seed)
    rand = [bank_texts[i] for i in rng.integers(0, len(bank), len(te))]
    g = task.groups[te]
    out = []
    for kind, h in (("report_retrieval", hyp), ("random_report", rand)):
        rl = rouge_l(h, refs)
        out.append(_scored(model, task, kind, "rougeL", lambda i, r=rl: float(r[i].mean()), te, g))
        # BLEU is a corpus statistic, so each resample recomputes it; capped for speed
        out.append(_scored(model, task, kind, "bleu4", lambda i, h=h: bleu4([h[j] for j in i], [refs[j] for j in i]),
                           te, g, max_boot=200))
    return out
