"""Task kinds: everything that depends on a spec's `kind`, one class per kind, one registry.

A kind says which rows have a target (`target_ok`), what splits are stratified on
(`strat_labels`), what it reads once per task (`targets`), how it scores one model's features
(`score`), whether it needs patch tokens, and which metric a study judges it by
(`headline_metric`). A new kind is one subclass of `TaskKind` added to `KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from dinotrain.eval import metrics
from dinotrain.eval.errors import SpecError
from dinotrain.eval.scored import Scored, scored, splits

if TYPE_CHECKING:
    from dinotrain.eval.specs import TaskData, TaskSpec
    from dinotrain.eval.tasks import EvalSettings

Feats = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- targets
@dataclass
class ClassTargets:
    Y: np.ndarray  # one-/multi-hot [N, C]
    classes: list[str]


@dataclass
class ValueTargets:
    y: np.ndarray  # float64 [N]


@dataclass
class MaskTargets:
    masks: np.ndarray  # bool [N, S, H, W]
    structures: list[str]
    keep: np.ndarray  # rows usable by this task (with every mask)


@dataclass
class TextTargets:
    texts: list[str]
    text_emb: np.ndarray | None = None  # one row per unique text (alignment only)


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


# ----------------------------------------------------------------------------- kinds
class TaskKind:
    """The default behaviour of a kind (a text target, no stratification, no headline metric)."""

    name: ClassVar[str]
    patch_tokens: ClassVar[bool] = False  # whether scoring needs the patch tokens, not just CLS

    def check(self, spec: TaskSpec) -> str | None:
        """What is wrong with a spec of this kind (the fix included), or None."""
        return None

    def target_ok(self, spec: TaskSpec, row: dict[str, str]) -> bool:
        return bool(row.get(spec.text_column, "").strip())

    def strat_labels(self, spec: TaskSpec, rows: list[dict[str, str]]) -> list[str]:
        """What to stratify subsets and splits on."""
        return ["all"] * len(rows)

    def headline_metric(self, spec: TaskSpec) -> str | None:
        """The `kind/metric` key a study judges the task by (higher is better), if it has one."""
        return None

    def targets(self, task: TaskData, settings: EvalSettings):
        return TextTargets(texts=[t.strip() for t in task.column(task.spec.text_column)])

    def score(self, task: TaskData, t, feats: Feats, model: str, settings: EvalSettings) -> list[Scored]:
        raise NotImplementedError


class Classification(TaskKind):
    name = "classification"

    def target_ok(self, spec: TaskSpec, row: dict[str, str]) -> bool:
        value = row.get(spec.label_column, "").strip()
        if spec.classes and not spec.multilabel:
            return value in spec.classes
        return bool(value)

    def strat_labels(self, spec: TaskSpec, rows: list[dict[str, str]]) -> list[str]:
        if spec.multilabel:
            return super().strat_labels(spec, rows)
        return [r[spec.label_column].strip() for r in rows]

    def headline_metric(self, spec: TaskSpec) -> str:
        return "linear/auroc" if "linear" in spec.probes else "knn/auroc"

    def targets(self, task: TaskData, settings: EvalSettings) -> ClassTargets:
        return ClassTargets(*class_targets(task))

    def score(self, task: TaskData, t: ClassTargets, feats: Feats, model: str, settings: EvalSettings) -> list[Scored]:
        from dinotrain.eval.knn import knn_scores
        from dinotrain.eval.linear import linear_probe

        x, Y = feats["cls"], t.Y
        tr, va, te = splits(task)
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
                out.append(scored(model, task, probe, name, f, te, g, chance=chance[name]))
        return out


class Regression(TaskKind):
    name = "regression"

    def target_ok(self, spec: TaskSpec, row: dict[str, str]) -> bool:
        try:
            return bool(np.isfinite(float(row.get(spec.label_column, "").strip())))
        except ValueError:  # empty or not a number
            return False

    def strat_labels(self, spec: TaskSpec, rows: list[dict[str, str]]) -> list[str]:
        # quartile bins keep the target's spread similar across splits
        v = np.asarray([float(r[spec.label_column]) for r in rows])
        bins = np.quantile(v, [0.25, 0.5, 0.75])
        return [str(b) for b in np.digitize(v, bins)]

    def headline_metric(self, spec: TaskSpec) -> str:
        return "ridge/r2"

    def targets(self, task: TaskData, settings: EvalSettings) -> ValueTargets:
        return ValueTargets(np.asarray([float(v) for v in task.column(task.spec.label_column)], dtype=np.float64))

    def score(self, task: TaskData, t: ValueTargets, feats: Feats, model: str, settings: EvalSettings) -> list[Scored]:
        from dinotrain.eval.attributes import mean_baseline, ridge_probe

        x, y = feats["cls"], t.y
        tr, va, te = splits(task)
        g = task.groups[te]
        pred, chosen = ridge_probe(x[tr], y[tr], x[va], y[va], x[te], groups=task.groups[np.concatenate([tr, va])])
        base = mean_baseline(y[tr], y[va], len(te))
        out = [scored(model, task, "ridge", name, f, te, g, probe=chosen)
               for name, f in metrics.regression_metrics(y[te], pred).items()]
        f = metrics.regression_metrics(y[te], base)["mae"]
        out.append(scored(model, task, "mean_baseline", "mae", f, te, g))
        return out


class Segmentation(TaskKind):
    name = "segmentation"
    patch_tokens = True

    def check(self, spec: TaskSpec) -> str | None:
        return None if spec.structures else "segmentation needs 'structures: {name: [mask folder, ...]}'"

    def target_ok(self, spec: TaskSpec, row: dict[str, str]) -> bool:
        return bool(row.get("mask_paths", "").strip())

    def headline_metric(self, spec: TaskSpec) -> str:
        return "linear_head/dice_mean" if len(spec.structures) > 1 else f"linear_head/dice_{next(iter(spec.structures))}"

    def targets(self, task: TaskData, settings: EvalSettings) -> MaskTargets:
        grid = settings.resolution // settings.patch_size
        out_size = min(settings.resolution, 4 * grid)  # 4x the token grid: enough for Dice, small in memory
        return MaskTargets(*load_masks(task, settings.resolution, out_size))

    def score(self, task: TaskData, t: MaskTargets, feats: Feats, model: str, settings: EvalSettings) -> list[Scored]:
        from dinotrain.eval.segmentation import constant_mask, dice_per_image, train_linear_head

        tr, va, te = splits(task, t.keep)
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
                out.append(scored(model, task, kind, f"dice_{name}", lambda i, v=v: float(v[i].mean()), te, g))
        if len(t.structures) > 1:  # one number per method: Dice averaged over the structures, per image
            for kind, vs in per_image.items():
                m = np.mean(vs, axis=0)
                out.append(scored(model, task, kind, "dice_mean", lambda i, m=m: float(m[i].mean()), te, g))
        return out


class Alignment(TaskKind):
    name = "alignment"

    def targets(self, task: TaskData, settings: EvalSettings) -> TextTargets:
        from dinotrain.eval.text import encode_texts

        texts = super().targets(task, settings).texts
        cache = Path(settings.cache_dir) / "text" if settings.cache_dir else None
        emb = encode_texts(list(dict.fromkeys(texts)), cache_dir=cache, device=settings.device)
        return TextTargets(texts, emb)

    def score(self, task: TaskData, t: TextTargets, feats: Feats, model: str, settings: EvalSettings) -> list[Scored]:
        from dinotrain.eval.text import i2t_ranks, t2i_ranks, train_alignment

        x = feats["cls"]
        tr, va, te = splits(task)
        (ttr, itr), (tva, iva), (tte, ite) = (_text_part(t, idx) for idx in (tr, va, te))
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
            out.append(scored(model, task, "alignment", f"i2t_R@{k}", lambda i, k=k: float(np.mean(r_i2t[i] < k)),
                              te, task.groups[te]))
            out.append(scored(model, task, "alignment", f"t2i_R@{k}", lambda i, k=k: float(np.mean(r_t2i[i] < k)),
                              np.arange(len(tte)), g_text))
            # chance: a random ranking finds the right text in the top k with probability k / gallery
            out.append(Scored(model, task.spec.name, "chance", f"i2t_R@{k}", None, int(len(te)),
                              value=min(1.0, k / len(tte))))
        return out


def _text_part(t: TextTargets, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unique texts of rows `idx` as embeddings, and each row's index into them."""
    from dinotrain.eval.text import unique_ids

    emb_of = {s: e for s, e in zip(dict.fromkeys(t.texts), t.text_emb)}
    uniq, ids = unique_ids([t.texts[i] for i in idx])
    return np.stack([emb_of[u] for u in uniq]) if uniq else np.zeros((0, t.text_emb.shape[1]), np.float32), ids


class Report(TaskKind):
    name = "report"

    def score(self, task: TaskData, t: TextTargets, feats: Feats, model: str, settings: EvalSettings) -> list[Scored]:
        from dinotrain.eval.text import bleu4, nearest_texts, rouge_l

        x = feats["cls"]
        tr, va, te = splits(task)
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
            out.append(scored(model, task, kind, "rougeL", lambda i, r=rl: float(r[i].mean()), te, g))
            # BLEU is a corpus statistic, so each resample recomputes it; capped for speed
            out.append(scored(model, task, kind, "bleu4",
                              lambda i, h=h: bleu4([h[j] for j in i], [refs[j] for j in i]), te, g, max_boot=200))
        return out


KINDS: dict[str, TaskKind] = {k.name: k() for k in (Classification, Regression, Segmentation, Alignment, Report)}


def kind_of(spec: TaskSpec) -> TaskKind:
    """The kind class of a (validated) spec."""
    return KINDS[spec.kind]
