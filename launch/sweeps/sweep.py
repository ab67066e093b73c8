"""Sweep files: a base run config and axes, expanded into one resolved config per run.

A sweep file (see configs/sweeps/data_scaling.yaml) holds these keys, typed by
launch/sweeps/sweep_schema.py's SweepSpec (a typo or a wrong type stops with one line naming the key):

  name:        sweep name (job name; default output folder runs/<name>)
  base:        the run config every run starts from (path relative to the sweep file)
  output_dir:  sweep folder: runs/<run>/ (one run dir each), jobs/ (submitit logs), the report
  overrides:   run-config keys applied to every run ({key: value} or ["key=value", ...])
  sources:     named shard sets: NAME: PATH or NAME: {path, weight, split, selection}; a `selection`
               (`dinotrain curate`) makes a curated arm: sizes then count its kept samples
  diversity:   the diversity axis: named sets of sources, e.g. {cxr: [mimic], all: [mimic, us]}
  sizes:       the data-size axis: training images per run, a count (>= 1), a fraction (< 1)
               of every chosen source, or `all`
  models:      the model-size axis (model.arch values), e.g. [vit_small, vit_base]
  steps:       the training-length axis (train.max_steps values)
  grid:        any other run-config key -> list of values (cartesian product with the above)
  zip:         run-config keys varied together (lists of equal length), e.g. steps with warm-up
  report:      {metric: "task/metric", form: power | saturating} for `sweep report`

A count is split over a diversity set's sources in proportion to their sizes (read from
each source's manifest.json), so every size keeps the set's natural mix; subsets are nested
because the data pipeline draws `max_samples` from one seed-fixed order.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dinotrain.config import ConfigError, load_config
from dinotrain.run_layout import RUN_RECORD
from launch.sweeps.sweep_schema import SWEEP_KEYS, source_entry, typed

# first-class axes that are shorthands for a grid key
AXIS_ALIASES = {"models": "model.arch", "steps": "train.max_steps"}


@dataclass
class RunSpec:
    """One point of the sweep: its name, axis values and what it changes in the base config."""

    name: str
    axes: dict[str, Any]
    sources: list[dict[str, Any]] = field(default_factory=list)
    n_images: int | None = None
    overrides: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- loading
def load_sweep(path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Read a sweep file; `overrides` whose first key is a sweep key (sources.x=..., sizes=[..])
    change the sweep, the others change every run's config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file '{path}' not found: give a YAML path such as configs/sweeps/smoke.yaml")
    try:
        spec = OmegaConf.load(path)
    except Exception as e:
        from dinotrain.config import yaml_problem

        raise ConfigError(f"{path}: not valid YAML at {yaml_problem(e)}") from e
    spec = typed(spec, where=str(path))
    run_overrides = _as_dotlist(spec.get("overrides"), f"{path}: overrides")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value: write e.g. sizes=[100,1000] or optim.lr=1e-3")
        if item.split("=", 1)[0].split(".")[0] in SWEEP_KEYS and not item.startswith("output_dir="):
            spec = typed(spec, OmegaConf.from_dotlist([item]), where=f"override '{item}'")
        elif item.startswith("output_dir="):
            spec.output_dir = item.split("=", 1)[1]
        else:
            run_overrides.append(item)
    spec.overrides = run_overrides
    if not spec.get("base"):
        raise ConfigError(f"{path}: 'base' is missing: name the run config the sweep varies, e.g. "
                          "base: ../pretrain/tiny_cpu.yaml")
    base = Path(str(spec.base))
    spec.base = str(base if base.is_absolute() else (path.parent / base).resolve())
    spec.name = str(spec.get("name") or path.stem)
    spec.output_dir = str(Path(str(spec.get("output_dir") or f"runs/{spec.name}")).absolute())
    return spec


def _as_dotlist(node: Any, where: str) -> list[str]:
    if node is None:
        return []
    if isinstance(node, (dict, DictConfig)):
        return [f"{k}={_yaml_value(v)}" for k, v in node.items()]
    if isinstance(node, (list, ListConfig)):
        return [str(x) for x in node]
    raise ConfigError(f"{where}: write a mapping {{key: value}} or a list of key=value strings")


def _yaml_value(v: Any) -> str:
    """A value as dotlist text that OmegaConf parses back to the same value."""
    if isinstance(v, (DictConfig, ListConfig)):
        v = OmegaConf.to_container(v, resolve=True)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


# ----------------------------------------------------------------------------- sizes
def parse_size(value: Any) -> float | None:
    """A sizes entry: None for all, a fraction in (0, 1), or a whole count >= 1."""
    if value is None or (isinstance(value, str) and value.lower() == "all"):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"sizes: invalid entry {value!r}: a count (>= 1), a fraction (< 1) or 'all'") from None
    if not (v > 0 and (v < 1 or v.is_integer())):
        raise ConfigError(f"sizes: invalid entry {value!r}: a count must be a whole number >= 1, a fraction < 1")
    return v


def size_label(size: float | None) -> str:
    if size is None:
        return "all"
    return f"f{size:g}" if size < 1 else str(int(size))


def allocate(total: int, available: list[int | None]) -> list[int | None]:
    """Split `total` images over sources in proportion to what each holds (largest remainder).

    None in the result means "all of that source". Unknown sizes (None) get equal shares.
    Every source keeps at least one image so the diversity set stays what it says.
    """
    k = len(available)
    if k == 0:
        return []
    if any(a is None for a in available):
        base, extra = divmod(total, k)
        return [max(1, base + (1 if i < extra else 0)) for i in range(k)]
    avail = [int(a) for a in available]
    whole = sum(avail)
    if total >= whole:
        return [None] * k
    exact = [total * a / whole for a in avail]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(k), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    for i in range(k):  # a tiny source still contributes one image, taken from the largest share
        if shares[i] == 0 and avail[i] > 0 and total >= k:
            shares[i] = 1
            shares[max(range(k), key=lambda j: shares[j])] -= 1
    return [None if s >= a else s for s, a in zip(shares, avail)]


def manifest_count(path: str, split: str) -> int | None:
    """Samples of `split` in a shard set's manifest.json (shards build's format), None if unreadable."""
    import fsspec

    try:
        with fsspec.open(f"{path.rstrip('/')}/manifest.json", "r") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list):
        return None
    counts = [s.get("samples") for s in shards if isinstance(s, dict) and s.get("split", split) == split]
    if not counts or not all(isinstance(c, int) for c in counts):
        return None
    return sum(counts)


def source_count(d: dict[str, Any]) -> int | None:
    """Samples a sweep source offers: its selection's kept ones when it has one, else its manifest's."""
    split = str(d.get("split", "train"))
    if d.get("selection"):
        from dinotrain.data.selection import kept_count

        return kept_count(str(d["selection"]), str(d["path"]), split)
    return manifest_count(d["path"], split)


# ----------------------------------------------------------------------------- expansion
def _sources(spec: DictConfig) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, v in (spec.get("sources") or {}).items():
        d = source_entry(str(name), v)
        for key in ("path", "selection"):
            p = d.get(key)
            if p:
                d[key] = str(p) if "://" in str(p) else str(Path(str(p)).absolute())
        d["name"] = str(name)
        out[str(name)] = d
    return out


def _axis_product(spec: DictConfig) -> list[dict[str, Any]]:
    """Cartesian product of grid keys, times the zipped groups."""
    grid = {AXIS_ALIASES[a]: list(spec[a]) for a in AXIS_ALIASES if spec.get(a)}
    grid.update({str(k): list(v) for k, v in (spec.get("grid") or {}).items()})
    for k, v in grid.items():
        if not v:
            raise ConfigError(f"sweep grid.{k}: give a non-empty list of values")
    zipped = {str(k): list(v) for k, v in (spec.get("zip") or {}).items()}
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise ConfigError(f"sweep zip: lists must have equal lengths (got {sorted(lengths)} for {list(zipped)})")
    zip_points = [dict(zip(zipped, vals)) for vals in zip(*zipped.values())] if zipped else [{}]
    grid_points = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    return [{**g, **z} for g in grid_points for z in zip_points]


def _short(key: str, value: Any) -> str:
    text = f"{key.split('.')[-1]}{_yaml_value(value)}"
    return re.sub(r"[^A-Za-z0-9._+=-]", "", text)


def expand(spec: DictConfig) -> list[RunSpec]:
    """Every run of the sweep, in a stable order (diversity, size, then the other axes)."""
    sources = _sources(spec)
    diversity = {str(k): [str(s) for s in v] for k, v in (spec.get("diversity") or {}).items()}
    if sources and not diversity:
        diversity = {"all": list(sources)}
    for div, names in diversity.items():
        missing = [n for n in names if n not in sources]
        if missing:
            raise ConfigError(f"sweep diversity.{div}: unknown source '{missing[0]}': define it under "
                              f"sources (have: {', '.join(sources) or 'none'})")
    sizes = [parse_size(s) for s in (spec.get("sizes") or [None])]
    if diversity == {} and any(s is not None for s in sizes):
        raise ConfigError("sweep sizes need sources: name the shard sets under 'sources' and 'diversity'")
    counts = {n: source_count(d) for n, d in sources.items()}
    runs: list[RunSpec] = []
    for div, names in (diversity or {"base": []}).items():
        for size in sizes:
            per_source = _per_source(size, [counts[n] for n in names])
            srcs = []
            for n, ms in zip(names, per_source):
                if ms == 0:
                    continue  # fewer images than sources: this one gets none
                s = {k: v for k, v in sources[n].items()}
                s["max_samples"] = ms
                srcs.append(s)
            n_images = _n_images(size, [counts[n] for n in names], per_source)
            for point in _axis_product(spec):
                parts = ([div] if diversity else []) + ([f"n{size_label(size)}"] if diversity else [])
                parts += [_short(k, v) for k, v in point.items()]
                runs.append(RunSpec(
                    name="-".join(parts) or "run",
                    axes={**({"diversity": div, "size": size_label(size)} if diversity else {}), **point},
                    sources=srcs, n_images=n_images,
                    overrides=[f"{k}={_yaml_value(v)}" for k, v in point.items()],
                ))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"sweep: two runs would share the folder '{dup}': make the axis values distinct")
    return runs


def _per_source(size: float | None, counts: list[int | None]) -> list[float | None]:
    if size is None:
        return [None] * len(counts)
    if size < 1:
        return [size] * len(counts)  # the same fraction of every source keeps the natural mix
    return allocate(int(size), counts)


def _n_images(size: float | None, counts: list[int | None], per_source: list[Any]) -> int | None:
    """Training images the run actually sees (None when a source's size is unknown)."""
    total = 0
    for c, ms in zip(counts, per_source):
        if ms == 0:
            continue
        if ms is None:
            if c is None:
                return None
            total += c
        elif ms < 1:
            if c is None:
                return None
            total += max(1, math.floor(ms * c))
        else:
            total += int(ms) if c is None else min(int(ms), c)
    return total


def run_config(spec: DictConfig, run: RunSpec) -> DictConfig:
    """The resolved, validated config of one run (its output_dir = <sweep>/runs/<name>)."""
    cfg = load_config(spec.base, [*spec.overrides, *run.overrides])
    if run.sources:
        sources = [{k: v for k, v in s.items() if k in ("name", "path", "weight", "max_samples", "split",
                                                             "selection")}
                   for s in run.sources]
        cfg = OmegaConf.merge(cfg, {"data": {"sources": sources}})  # lists are replaced, typed as SourceConfig
    cfg.output_dir = str(Path(spec.output_dir) / "runs" / run.name)
    from dinotrain.config import validate

    validate(cfg)
    return cfg


def run_dirs(sweep_dir: str | Path) -> list[Path]:
    """The run folders of a sweep folder (those with a run.json), sorted."""
    return sorted(p.parent for p in Path(sweep_dir).glob(f"runs/*/{RUN_RECORD}"))


def write_run_record(run_dir: Path, run: RunSpec) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"name": run.name, "axes": run.axes, "n_images": run.n_images,
              "sources": [{k: s.get(k) for k in ("name", "path", "max_samples")} for s in run.sources]}
    (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def read_run_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RUN_RECORD).read_text())
