"""The sweep file's typed schema: every key it may hold, its type and what to write.

`read_spec` merges a sweep YAML into `SweepSpec` (OmegaConf.structured), so a typo or a value
of the wrong type stops with one line that names the key and what to write there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dinotrain.config import ConfigError

REPORT_FORMS = ("power", "saturating")


def _key(default: Any = None, help: str = "", factory=None) -> Any:
    """A schema field whose metadata holds what to write there (quoted by the errors)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SweepSource:
    """A source given as a mapping; a plain string is its path alone."""

    path: Optional[str] = _key(None, "a shards folder or s3:// prefix")
    weight: Optional[float] = _key(None, "relative sampling weight in the mixture, e.g. 2.0")
    split: Optional[str] = _key(None, "which split's shards to read: train, val or test")
    selection: Optional[str] = _key(None, "a `dinotrain curate` selection file (a curated arm)")


@dataclass
class ReportSettings:
    metric: Optional[str] = _key(None, "the metric to fit, as task/metric, e.g. jsrt_nodule/linear/auroc")
    form: str = _key("power", f"the fitted curve: one of {', '.join(REPORT_FORMS)}")


@dataclass
class SweepSpec:
    name: Optional[str] = _key(None, "the sweep's name (job name; default output folder runs/<name>)")
    base: Optional[str] = _key(None, "the run config every run starts from, e.g. ../pretrain/tiny_cpu.yaml")
    output_dir: Optional[str] = _key(None, "the sweep folder, e.g. runs/smoke")
    overrides: Any = _key(None, "run-config keys for every run: {key: value} or [key=value, ...]")
    sources: dict[str, Any] = _key(help="named shard sets: NAME: PATH or NAME: {path, weight, split, selection}",
                                   factory=dict)
    diversity: dict[str, list[str]] = _key(help="named lists of sources, e.g. {cxr: [mimic], all: [mimic, us]}",
                                           factory=dict)
    sizes: list[Any] = _key(help="a list of counts (>= 1), fractions (< 1) or all, e.g. [100, 0.5, all]",
                            factory=list)
    models: list[str] = _key(help="a list of model.arch values, e.g. [vit_small, vit_base]", factory=list)
    steps: list[int] = _key(help="a list of train.max_steps values, e.g. [1000, 5000]", factory=list)
    grid: dict[str, list[Any]] = _key(help="run-config key -> list of values, e.g. {optim.lr: [1e-4, 1e-3]}",
                                      factory=dict)
    zip: dict[str, list[Any]] = _key(help="run-config keys -> lists of equal length varied together",
                                     factory=dict)
    report: ReportSettings = _key(help="{metric: task/metric, form: power | saturating}", factory=ReportSettings)


SWEEP_KEYS = tuple(f.name for f in fields(SweepSpec))


def _help(cls: type, name: str) -> str:
    return next((f.metadata.get("help", "") for f in fields(cls) if f.name == name), "")


def _hint(key: str) -> str:
    """What to write at a dotted key of the schema, or '' when the key is deeper than the schema."""
    top, _, rest = key.split("[")[0].partition(".")
    if top == "report" and rest in {f.name for f in fields(ReportSettings)}:
        return _help(ReportSettings, rest)
    return _help(SweepSpec, top) if top in SWEEP_KEYS else ""


def typed(*nodes: Any, where: str) -> DictConfig:
    """`nodes` merged in order into the schema; an unknown key or a wrong type is one ConfigError line."""
    unknown = [str(k) for node in nodes for k in (node or {}) if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown sweep key '{unknown[0]}': allowed keys are {', '.join(SWEEP_KEYS)}")
    try:
        spec = OmegaConf.merge(OmegaConf.structured(SweepSpec), *[node or {} for node in nodes])
    except OmegaConfBaseException as e:
        raise ConfigError(_message(e, where, nodes)) from None
    except TypeError:  # a list where a mapping belongs or the reverse: OmegaConf names no key
        key = _misshapen(nodes)
        raise ConfigError(f"{where}: invalid value for '{key}': write {_hint(key)}") from None
    if spec.report.form not in REPORT_FORMS:
        raise ConfigError(f"{where}: invalid value for 'report.form': {spec.report.form!r}: write "
                          + _hint("report.form"))
    return spec


def _misshapen(nodes: tuple[Any, ...]) -> str:
    """The first top-level key whose value cannot merge into the schema on its own."""
    for node in nodes:
        for key in node or {}:
            try:
                OmegaConf.merge(OmegaConf.structured(SweepSpec), {key: node[key]})
            except (TypeError, OmegaConfBaseException):
                return str(key)
    return "?"


def _allowed(key: str) -> str:
    cls = ReportSettings if key.startswith("report.") else SweepSpec
    return ", ".join(f.name for f in fields(cls))


def _message(e: OmegaConfBaseException, where: str, nodes: tuple[Any, ...]) -> str:
    key = str(getattr(e, "full_key", None) or _misshapen(nodes))
    first = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError):
        return f"{where}: unknown sweep key '{key}': allowed keys are {_allowed(key)}"
    hint = _hint(key)
    return f"{where}: invalid value for '{key}': {first}" + (f": write {hint}" if hint else "")


def source_entry(name: str, value: Any) -> dict[str, Any]:
    """One sweep source as a dict {path, [weight, split, selection]}: a string is its path; a
    mapping is checked against SweepSource; unset keys stay out (the run config's defaults apply)."""
    where = f"sweep sources.{name}"
    if value is None or isinstance(value, (str, Path)):
        d: dict[str, Any] = {"path": value}
    else:
        try:
            merged = OmegaConf.merge(OmegaConf.structured(SweepSource), value)
        except OmegaConfBaseException as e:
            key = str(getattr(e, "full_key", None) or "?")
            allowed = ", ".join(f.name for f in fields(SweepSource))
            raise ConfigError(f"{where}: invalid entry '{key}': {str(e).splitlines()[0]}: a source is a path "
                              f"or a mapping of {allowed}") from None
        d = {k: v for k, v in OmegaConf.to_container(merged, resolve=True).items() if v is not None}
    if not d.get("path"):
        raise ConfigError(f"{where}: give a path (a shards folder or s3:// prefix)")
    return d
