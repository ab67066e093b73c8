"""`evaluate_models`: the whole evaluation as one function (the CLI and `launch` call it).

Specs and data are checked before any model is loaded, so a typo in a task name fails in a
second, not after an hour of feature extraction.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from dinotrain.eval.specs import SpecError, builtin_names, load_spec, load_task
from dinotrain.eval.tasks import EvalSettings, Scored, needs_patch_tokens, prepare_targets, score, to_record

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("device 'cuda' asked for but no CUDA device is visible; use --device cpu")
    return device


def task_names(tasks: list[str] | str) -> list[str]:
    """Comma-separated or list; 'all' means every built-in spec."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for t in (x.strip() for x in items):
        if t == "all":
            out += builtin_names()
        elif t:
            out.append(t)
    if not out:
        raise SpecError(f"no tasks given; built-in tasks: {', '.join(builtin_names())}")
    return list(dict.fromkeys(out))


def evaluate_models(models: list[str], tasks: list[str] | str, data_root: str | Path, out: str | Path,
                    eval_cfg: Any = None, max_samples: int | None = None, with_plot: bool = True,
                    compare_to: str | None = None, **overrides) -> dict[str, Any]:
    """Evaluate each MODEL on each task; write results.json/.md/.png under `out`; return the records.

    `eval_cfg` is the config's `eval` section (defaults from `EvalConfig`); `overrides` replace
    `EvalSettings` fields (resolution, batch_size, bootstrap, seg_steps, ...). With `compare_to`
    (one of `models`), every other model's metrics are also compared with that model's on the
    same test items: the difference and its paired bootstrap CI (the same resamples for both
    models) go to paired.json and the returned "paired" list.
    """
    from dinotrain.config import EvalConfig
    from dinotrain.eval.report import write_all

    if not models:
        raise SpecError("no MODEL given: pass a run directory, a Hugging Face folder, a checkpoint or random:vit_small")
    out = Path(out)
    settings = eval_settings(eval_cfg if eval_cfg is not None else EvalConfig(), out, max_samples, overrides)
    cache_dir, limit = settings.cache_dir, settings.max_samples

    if compare_to is not None and compare_to not in models:
        raise SpecError(f"compare_to '{compare_to}' is not one of the models ({', '.join(models)})")
    names = task_names(tasks)
    specs = [load_spec(t) for t in names]
    dup = [s.name for s in specs if sum(t.name == s.name for t in specs) > 1]
    if dup:
        raise SpecError(f"two task specs are named '{dup[0]}': give each YAML a distinct 'name'")
    data = [load_task(s, data_root, limit) for s in specs]
    if settings.split == "val":
        from dinotrain.eval.scored import as_validation

        data = [as_validation(t) for t in data]

    import torch

    threads_before = torch.get_num_threads()
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    try:
        scored = _run(models, data, settings, cache_dir)
        from dinotrain.eval.threads import single_thread

        with single_thread():
            records = [to_record(s, settings) for s in scored]
        paired = paired_differences(scored, compare_to, settings) if compare_to is not None else None
    finally:
        torch.set_num_threads(threads_before)
    # how the numbers were made; which tasks and where the data lay are recorded beside it
    settings_out = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("tasks", "data_root")}
    paths = write_all(out, list(models), [t.spec.name for t in data], records, settings_out, with_plot)
    result = {"records": records, "paths": paths}
    if paired is not None:
        from dinotrain.eval.report import write_paired

        paths["paired"] = write_paired(out, compare_to, paired)
        result["paired"] = paired
    return result


def eval_settings(cfg: Any, out: Path, max_samples: int | None, overrides: dict[str, Any]) -> EvalSettings:
    """The config's `eval` section with the call's overrides, the device resolved, the cache under `out`."""
    overrides = dict(overrides)
    cache_dir = overrides.pop("cache_dir", None) or getattr(cfg, "cache_dir", None) or str(out / "cache")
    fields = {f.name for f in dataclasses.fields(EvalSettings)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise SpecError(f"unknown evaluation setting(s) {bad}; allowed: {sorted(fields)}")
    # tasks and data_root are arguments of the call, not settings of how each task runs
    base = {k: getattr(cfg, k) for k in fields - {"tasks", "data_root"} if hasattr(cfg, k)}
    limit = max_samples if max_samples is not None else getattr(cfg, "max_samples", None)
    settings = EvalSettings(**{**base, **overrides, "cache_dir": cache_dir or None, "max_samples": limit})
    settings.device = resolve_device(settings.device)
    return settings


def paired_differences(scored: list[Scored], reference: str, settings: EvalSettings) -> list[dict[str, Any]]:
    """model - reference for every metric both have on a task, with a paired bootstrap CI.

    Both models are scored on the same test items of the same split, so one resample of the
    items (whole patients when the task has groups) scores both: the CI is that of the
    difference, much narrower than two overlapping CIs suggest when the models err together.
    """
    from dinotrain.eval.metrics import bootstrap_ci
    from dinotrain.eval.threads import single_thread

    ref = {(s.task, s.key): s for s in scored if s.model == reference}
    out = []
    with single_thread():
        for s in scored:
            r = ref.get((s.task, s.key))
            if s.model == reference or r is None or s.fn is None or r.fn is None or r.n != s.n:
                continue
            n_boot = settings.bootstrap if s.max_boot is None else min(settings.bootstrap, s.max_boot)
            def diff(i, a=s.fn, b=r.fn):
                return (a(i) - b(i))
            lo, hi = bootstrap_ci(diff, s.n, n_boot, settings.seed, s.groups)
            value, ref_value = s.point(), r.point()
            out.append({"model": s.model, "reference": reference, "task": s.task, "kind": s.kind,
                        "metric": s.metric, "value": value, "reference_value": ref_value,
                        "delta": value - ref_value, "ci_low": lo, "ci_high": hi, "n": int(s.n)})
    return out


def _run(models: list[str], data: list, settings: EvalSettings, cache_dir: str) -> list[Scored]:
    from dinotrain.eval.features import FeatureCache, extract_features
    from dinotrain.eval.loading import load_model

    records: list[Scored] = []
    targets_by: dict[tuple[str, int], Any] = {}
    for name in models:
        lm = load_model(name, settings.device)
        s = dataclasses.replace(settings, patch_size=lm.patch_size)
        if s.resolution % s.patch_size:
            raise SpecError(f"resolution {s.resolution} is not a multiple of {name}'s patch size {s.patch_size}; "
                            f"use e.g. {s.patch_size * round(s.resolution / s.patch_size)}")
        cache = FeatureCache(cache_dir, lm.fingerprint, s.resolution, s.loader)
        for task in data:
            key = (task.spec.name, s.patch_size)
            if key not in targets_by:
                targets_by[key] = prepare_targets(task, s)
            feats = extract_features(
                lm.model.forward_features, task.keys, task.images, resolution=s.resolution,
                patch_size=s.patch_size, cache=cache, need_patch=needs_patch_tokens(task),
                batch_size=s.batch_size, device=s.device, channels=lm.in_chans, progress=s.progress,
                desc=f"{task.spec.name} [{name}]", loader=s.loader, mean=lm.mean, std=lm.std,
            )
            recs = score(task, targets_by[key], feats, name, s)
            log.info("%s on %s: %d metrics", name, task.spec.name, len(recs))
            records += recs
        del lm
    return records
