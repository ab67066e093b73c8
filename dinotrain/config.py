"""The typed configuration schema: every default lives here, YAML files hold only deltas.

`load_config(path, overrides)` merges schema <- YAML <- dotlist and validates up front, raising
`ConfigError` with one line that names the key and the fix. Fields carry their help text and
allowed values in dataclass metadata so the CLI, the validator and the README's config
reference all read one source.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dinotrain.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad configuration: the message is one line naming the key and the fix."""


def opt(default: Any = MISSING, help: str = "", choices: tuple | None = None, factory=None, shape: bool = False,
        data: bool = False, probability: bool = False, warmup: str | None = None, cli: dict | None = None,
        not_training: bool = False) -> Any:
    """A schema field with help text, (for enums) the allowed values, and the key's roles, kept in
    the field's metadata so that code that needs the keys of a role reads them here (`keys_with`):
    `shape`: the tensors of a checkpoint depend on it (a resume with another value cannot load
    them); `data`: the loader's saved position depends on it; `probability`: must lie in [0, 1];
    `warmup`: a schedule's ramp length in steps, with what a ramp cut short never reaches;
    `not_training`: it does not change what a run learns (where it runs, what is evaluated, its
    folder, how often it logs or saves); on a section field it covers the whole section.
    `cli` holds argparse settings where a command-line flag generated from the field differs
    (flag, default, help)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if cli is not None:
        meta["cli"] = dict(cli)
    roles = {"shape": shape, "data": data, "probability": probability, "warmup": warmup,
             "not_training": not_training}
    meta.update({name: value for name, value in roles.items() if value})
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- data
@dataclass
class SourceConfig:
    name: str = opt(MISSING, "name of this shard set (used in logs and sweeps)")
    path: str = opt(MISSING, "folder or s3:// prefix holding the shards and manifest.json of `shards build`")
    weight: float = opt(1.0, "relative sampling weight in the mixture")
    max_samples: Optional[float] = opt(
        None, "use a deterministic nested subset: a count (>= 1) or a fraction (< 1); null = all"
    )
    split: str = opt("train", "which split's shards to read", choices=("train", "val", "test"))
    selection: Optional[str] = opt(
        None, "a `dinotrain curate` selection file: train only on the samples it keeps (shards unchanged)"
    )


@dataclass
class DataConfig:
    sources: list[SourceConfig] = opt(help="shard sets to train on (the diversity axis)", factory=list, data=True)
    batch_size_per_gpu: int = opt(40, "images per process and step (RAD-DINO: 40 per GPU)", data=True)
    num_threads: int = opt(4, "DALI CPU threads per process")
    device: str = opt("auto", "where DALI decodes and augments", choices=("auto", "cpu", "gpu"))
    backend: str = opt("auto", "training loader: dali, or torch (Pillow decode in data.num_threads worker processes, "
                       "batched torch augmentation on data.device); auto = dali when importable",
                       choices=("auto", "dali", "torch"))
    channels: int = opt(3, "channels fed to the model; grayscale is repeated (RAD-DINO: 3)", choices=(1, 3))
    seed: int = opt(0, "seed of sample order, subsets and augmentation", data=True)
    global_crops_number: int = opt(2, "global crops per image (DINO uses 2)")
    global_crops_size: int = opt(224, "global crop side in pixels")
    global_crops_scale: list[float] = opt(help="area fraction range of global crops", factory=lambda: [0.32, 1.0])
    local_crops_number: int = opt(8, "local crops per image")
    local_crops_size: int = opt(98, "local crop side in pixels")
    local_crops_scale: list[float] = opt(help="area fraction range of local crops", factory=lambda: [0.05, 0.32])
    flip_p: float = opt(0.5, "probability of a horizontal flip", probability=True)
    intensity_p: float = opt(0.8, "probability of brightness/contrast/gamma jitter", probability=True)
    brightness: float = opt(0.4, "brightness jitter amplitude (multiplicative)")
    contrast: float = opt(0.4, "contrast jitter amplitude")
    gamma: float = opt(0.2, "gamma jitter amplitude (gamma in [1-g, 1+g])")
    # dinov2's code hands `1 - p` to RandomApply: its "p=1.0 / 0.1" crops are blurred with 0.0 / 0.9,
    # which is what RAD-DINO's weights trained with (the paper's labels: 1.0 / 0.1 / 0.5)
    blur_p_global1: float = opt(0.0, "probability of Gaussian blur on the first global crop (dinov2's code; paper label 1.0)",
                                 probability=True)
    blur_p_global2: float = opt(0.9, "probability of Gaussian blur on the second global crop (dinov2's code; paper label 0.1)",
                                 probability=True)
    solarize_p_global2: float = opt(0.2, "probability of solarisation on the second global crop", probability=True)
    blur_p_local: float = opt(0.5, "probability of Gaussian blur on each local crop", probability=True)
    mean: float = opt(0.5307, "normalisation mean (RAD-DINO)")
    std: float = opt(0.2583, "normalisation std (RAD-DINO)")


# ----------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    arch: str = opt(
        "vit_base", "backbone size", choices=("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2"),
        shape=True)
    patch_size: int = opt(14, "patch side in pixels", shape=True)
    img_size: int = opt(518, "size the position embeddings are defined for (DINOv2: 518 = 37 x 14)", shape=True)
    in_chans: int = opt(3, "input channels (1 for grayscale-native models)", shape=True)
    num_register_tokens: int = opt(0, "register tokens (RAD-DINO: 0)", shape=True)
    ffn: str = opt("auto", "feed-forward layer (auto: swiglu for vit_giant2 as DINOv2, mlp otherwise)",
                   choices=("auto", "mlp", "swiglu"), shape=True)
    layerscale_init: float = opt(1e-5, "LayerScale initial value")
    drop_path_rate: float = opt(0.1, "stochastic depth rate of the student")
    drop_path_uniform: bool = opt(True, "same drop-path rate in every block (DINOv2); false = linear ramp")
    attn_backend: str = opt("auto", "attention kernel", choices=("auto", "sdpa", "xformers"))
    interpolate_offset: float = opt(0.1, "DINOv2's position-embedding resampling offset (0.0 for register models and HF)")
    interpolate_antialias: bool = opt(False, "antialiased position-embedding resampling (True for register models)")
    pretrained: Optional[str] = opt(None, "initial backbone weights: DINOv2 .pth/.safetensors or a HF folder")
    pretrained_head: Optional[str] = opt(None, "initial DINO head weights (dino_head.safetensors as RAD-DINO)")


# ----------------------------------------------------------------------------- ssl
@dataclass
class SSLConfig:
    dino_loss_weight: float = opt(1.0, "weight of the DINO (CLS) loss")
    ibot_loss_weight: float = opt(1.0, "weight of the iBOT (masked patch) loss")
    koleo_loss_weight: float = opt(0.1, "weight of the KoLeo regulariser")
    head_n_prototypes: int = opt(65536, "DINO head output dimension", shape=True)
    head_hidden_dim: int = opt(2048, "DINO head hidden dimension", shape=True)
    head_bottleneck_dim: int = opt(256, "DINO head bottleneck dimension", shape=True)
    head_nlayers: int = opt(3, "DINO head MLP layers", shape=True)
    ibot_separate_head: bool = opt(False, "give iBOT its own head (else shared with DINO)", shape=True)
    mask_ratio_min: float = opt(0.1, "minimum iBOT mask ratio")
    mask_ratio_max: float = opt(0.5, "maximum iBOT mask ratio")
    mask_sample_probability: float = opt(0.5, "fraction of global crops that get iBOT masks", probability=True)
    centering: str = opt("sinkhorn_knopp", "teacher centring", choices=("sinkhorn_knopp", "softmax_center"))
    sinkhorn_iterations: int = opt(3, "Sinkhorn-Knopp iterations (fp32)")
    center_momentum: float = opt(0.9, "momentum of the softmax centre")
    student_temp: float = opt(0.1, "student softmax temperature")
    teacher_temp: float = opt(0.07, "teacher temperature after warm-up")
    warmup_teacher_temp: float = opt(0.04, "teacher temperature at step 0")
    warmup_teacher_temp_steps: int = opt(
        30000, "steps of teacher temperature warm-up (DINOv2's 37,500 is longer than RAD-DINO's 35k steps; must fit "
        "in train.max_steps)", warmup="the teacher temperature would never reach ssl.teacher_temp")
    momentum_teacher: float = opt(0.992, "EMA momentum at step 0")
    final_momentum_teacher: float = opt(1.0, "EMA momentum at the last step (cosine)")


# ----------------------------------------------------------------------------- optim
@dataclass
class OptimConfig:
    lr: float = opt(0.004, "base learning rate for a global batch of 1024 (see lr_scaling)")
    lr_scaling: str = opt("sqrt_wrt_1024", "how lr scales with global batch", choices=("sqrt_wrt_1024", "none"))
    min_lr: float = opt(1e-6, "learning rate at the end of the cosine")
    warmup_steps: int = opt(12500, "linear lr warm-up steps", warmup="the learning rate would never reach its peak")
    weight_decay: float = opt(0.04, "weight decay at step 0")
    weight_decay_end: float = opt(0.4, "weight decay at the last step (cosine)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.999, "AdamW beta2")
    clip_grad: float = opt(3.0, "gradient norm clip (0 = off)")
    layerwise_decay: float = opt(0.9, "layer-wise lr decay")
    patch_embed_lr_mult: float = opt(0.2, "lr multiplier of the patch embedding")
    freeze_last_layer_steps: int = opt(
        1250, "steps with the heads' last layer at lr 0 (as DINOv2: its gradient still counts in the clipping norm "
        "and its AdamW moments accumulate)", warmup="the heads' last layer would never train")
    decay_tokens: bool = opt(
        True, "weight decay on cls_token, pos_embed, mask_token, register_tokens (DINOv2 decays them); false exempts them")


# ----------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    max_steps: int = opt(35000, "optimisation steps (RAD-DINO's released checkpoint: 35k)")
    seed: int = opt(0, "seed of model init and everything random outside the loader")
    device: str = opt("auto", "compute device", choices=("auto", "cpu", "cuda"))
    log_every: int = opt(10, "steps between metrics.jsonl lines", not_training=True)
    checkpoint_every: int = opt(1000, "steps between DCP checkpoints (and one at the end)", not_training=True)
    keep_checkpoints: int = opt(3, "how many checkpoints to keep", not_training=True)
    export_every: int = opt(5000, "steps between teacher exports (HF + DINOv2), 0 = only at the end", not_training=True)
    resume: bool = opt(True, "resume from the newest complete checkpoint in output_dir (false: a previous run "
                             "there is moved to output_dir/replaced/ and training starts over)")
    max_nonfinite_steps: int = opt(0, "skipped non-finite steps tolerated before stopping")
    deterministic: bool = opt(False, "deterministic kernels (slower; used for exact-resume tests)")
    progress: bool = opt(True, "progress bar on rank 0", not_training=True)


# ----------------------------------------------------------------------------- parallel
@dataclass
class ParallelConfig:
    fsdp: bool = opt(True, "shard student and teacher with FSDP2 when more than one process")
    mixed_precision: str = opt("auto", "param dtype (auto: bf16 on GPU, fp32 on CPU)", choices=("auto", "bf16", "fp16", "fp32"))
    activation_checkpointing: str = opt("none", "recompute activations", choices=("none", "selective", "full"))
    compile: bool = opt(False, "torch.compile the blocks")
    backend: str = opt("auto", "process group backend (auto: nccl on GPU, gloo on CPU)", choices=("auto", "nccl", "gloo"))
    reshard_after_forward: bool = opt(True, "FSDP2 frees unsharded params after forward")


# ----------------------------------------------------------------------------- launch
@dataclass
class LaunchConfig:
    cluster: str = opt("slurm", "where jobs run", choices=("slurm", "local", "debug"))
    nodes: int = opt(1, "SLURM nodes")
    tasks_per_node: int = opt(1, "processes per node (= GPUs per node on GPU clusters)")
    gpus_per_node: int = opt(0, "GPUs requested per node")
    cpus_per_task: int = opt(8, "CPU cores per process")
    mem_gb: int = opt(0, "memory per node in GB (0 = SLURM default)")
    partition: Optional[str] = opt(None, "SLURM partition")
    account: Optional[str] = opt(None, "SLURM account")
    qos: Optional[str] = opt(None, "SLURM QOS")
    time_minutes: int = opt(4320, "wall-clock limit per job (requeued jobs resume)")
    constraint: Optional[str] = opt(None, "SLURM node constraint")
    exclusive: bool = opt(False, "request whole nodes")
    signal_delay_s: int = opt(120, "seconds before the time limit at which SLURM signals the job")
    max_num_timeout: int = opt(20, "requeues allowed after time-outs/preemption")
    array_parallelism: int = opt(64, "sweep runs running at once")
    folder: Optional[str] = opt(None, "submitit job folder (default: <output_dir>/jobs); must be shared storage")
    additional_parameters: dict[str, Any] = opt(help="extra sbatch parameters", factory=dict)
    setup: list[str] = opt(help="shell lines run before the task (module load ...)", factory=list)
    run_eval: bool = opt(True, "evaluate the exported teacher after training")


# ----------------------------------------------------------------------------- eval
@dataclass
class EvalConfig:
    tasks: list[str] = opt(help="task specs (built-in names or YAML paths) run after training", factory=list, cli={
        "default": None, "help": "comma-separated built-in task names or YAML spec paths, or 'all' (see --list-tasks)"})
    data_root: Optional[str] = opt(None, "root folder of the eval data sets (e.g. ../shared/data)", cli={
        "flag": "--data", "help": "root folder holding the datasets the specs name"})
    batch_size: int = opt(32, "feature extraction batch size")
    resolution: int = opt(518, "eval input size (RAD-DINO: resize 518 + centre crop 518)", cli={
        "default": None, "help": "input size (resize + centre crop); default: the global crop size a run MODEL "
        "trained at, else 518 (RAD-DINO's)"})
    knn_k: int = opt(20, "k of the kNN classifier")
    knn_temperature: float = opt(0.07, "kNN vote temperature (DINO)")
    bootstrap: int = opt(1000, "bootstrap resamples for 95% CIs")
    cache_dir: Optional[str] = opt(None, "feature cache folder (default: <out>/cache)")
    max_samples: Optional[int] = opt(None, "deterministic stratified subset per task (quick runs); null = all")
    seg_steps: int = opt(300, "training steps of the linear segmentation head")
    align_steps: int = opt(300, "training steps of the image-to-text linear map")
    device: str = opt("auto", "where features are extracted", choices=("auto", "cpu", "cuda"))
    threads: int = opt(0, "CPU threads for torch (0 = torch's default; 1 on busy shared machines)")
    loader: str = opt("plain", "eval preprocessing: plain (PIL + numpy) or dali (same recipe, GPU when extracting on CUDA)",
                      choices=("plain", "dali"))
    split: str = opt("test", "the split scored: test, or val for decisions (the test split is then not read; "
                     "a fifth of train's groups stand in for val in the probes' choices)", choices=("test", "val"))


@dataclass
class Config:
    output_dir: str = opt("runs/dinotrain", "run directory: config.yaml, metrics.jsonl, ckpt/, export/",
                          not_training=True)
    data: DataConfig = opt(help="data pipeline", factory=DataConfig)
    model: ModelConfig = opt(help="backbone", factory=ModelConfig)
    ssl: SSLConfig = opt(help="self-supervised objectives", factory=SSLConfig)
    optim: OptimConfig = opt(help="optimiser and schedules", factory=OptimConfig)
    train: TrainConfig = opt(help="training loop", factory=TrainConfig)
    parallel: ParallelConfig = opt(help="distribution and precision", factory=ParallelConfig)
    launch: LaunchConfig = opt(help="job submission", factory=LaunchConfig, not_training=True)
    eval: EvalConfig = opt(help="frozen-feature evaluation", factory=EvalConfig, not_training=True)


def default_of(section: type, name: str) -> Any:
    """The schema's default of field `name` of a section dataclass: what code that mirrors a
    section (EvalSettings, the eval loader) uses as its own defaults."""
    f = section.__dataclass_fields__[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


# ----------------------------------------------------------------------------- loading
def schema() -> DictConfig:
    return OmegaConf.structured(Config)


def _dataclass_of(tp: Any):
    """The dataclass a field holds, directly or as list elements (for `data.sources`)."""
    if dataclasses.is_dataclass(tp):
        return tp, False
    args = getattr(tp, "__args__", None)
    if args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    return None, False


def _flow_hint(key: str) -> str:
    """A key like 'name:x' is YAML flow syntax without the space after the colon: `{name:x}` is the
    one key 'name:x', not name = x. Say so, since the schema's own message cannot."""
    m = re.search(r"([A-Za-z_]\w*):(\S+)", key)
    if not m:
        return ""
    return (f" (YAML flow syntax needs a space after each colon: write '{m.group(1)}: {m.group(2)}', "
            "e.g. data.sources=[{name: cxr, path: /data/shards}])")


def _check_key(dotted: str) -> None:
    """Raise ConfigError for a key the schema does not have, suggesting the nearest one."""
    cls = Config
    parts = dotted.split(".")
    i = 0
    while i < len(parts):
        hints = typing.get_type_hints(cls)
        if parts[i] not in hints:
            if ":" in parts[i]:
                raise ConfigError(f"unknown config key '{dotted}'{_flow_hint(parts[i])}")
            all_keys = [k for k, _ in iter_fields()]
            near = difflib.get_close_matches(dotted, all_keys, n=1, cutoff=0.6)
            hint = f"did you mean '{near[0]}'?" if near else "run `dinotrain train --print-config` to list the keys"
            raise ConfigError(f"unknown config key '{dotted}': {hint}")
        inner, is_list = _dataclass_of(hints[parts[i]])
        if inner is None:
            return  # a leaf, or a free-form dict such as launch.additional_parameters
        cls = inner
        i += 1
        if is_list and i < len(parts) and parts[i].isdigit():
            i += 1


def _walk_yaml(node: Any, prefix: str = ""):
    """Dotted keys of a YAML delta, descending into sections (and list items of dataclasses)."""
    if isinstance(node, (dict, DictConfig)):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            yield key
            yield from _walk_yaml(v, key)
    elif isinstance(node, (list, ListConfig)):
        for i, v in enumerate(node):
            if isinstance(v, (dict, DictConfig)):
                yield from _walk_yaml(v, f"{prefix}.{i}")


def keys_with(role: str) -> tuple[str, ...]:
    """The dotted keys whose fields have `role` (see `opt`: shape, data, probability, warmup,
    not_training), in schema order; a section with the role is one key (e.g. `launch`)."""
    return tuple(key for key, f in iter_fields(stop_at=role) if f.metadata.get(role))


def iter_fields(cls=Config, prefix: str = "", stop_at: str | None = None):
    """(dotted key, Field) for every leaf of the schema, in declaration order; a section whose
    field has the role `stop_at` is yielded whole instead of its leaves."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        inner, is_list = _dataclass_of(hints[f.name])
        if inner is not None and not is_list and not (stop_at and f.metadata.get(stop_at)):
            yield from iter_fields(inner, key, stop_at)
        else:
            yield key, f


def _omegaconf_message(e: OmegaConfBaseException, origin: str) -> str:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0]
    return f"{origin}: invalid value for '{key}': {msg}{_flow_hint(str(key))}"


def yaml_problem(e: Exception, override: str | None = None) -> str:
    """A YAML syntax error as 'line L, column C: problem' (1-based, as editors count), or its
    first line when PyYAML gave no position. For an `override` (key=value, one line: PyYAML
    parsed its value) the column is counted in the whole override, its end where PyYAML ran out."""
    import yaml

    mark = getattr(e, "problem_mark", None) if isinstance(e, yaml.MarkedYAMLError) else None
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is None:
        return what
    if override is not None:
        key, value = override.split("=", 1)
        return f"column {len(key) + 1 + min(mark.index, len(value)) + 1}: {what}"
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


def _paths_as_sources(value: Any) -> Any:
    """`data.sources` given as bare paths ([/x, /y], or one: /x) as the source list it means: each
    path a source named after its folder (made unique with its position when two folders share a name)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, ListConfig)) or not value or not all(isinstance(v, str) for v in value):
        return value
    names = [Path(str(v).rstrip("/")).name or f"source{i}" for i, v in enumerate(value)]
    return [{"name": n if names.count(n) == 1 else f"{n}{i}", "path": str(v)}
            for i, (n, v) in enumerate(zip(names, value))]


def _load_delta(path: Path) -> DictConfig:
    import yaml

    try:
        delta = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML at {yaml_problem(e)}: fix the indentation, quotes or brackets there "
                          "(sections and keys are written 'key: value', nested keys indented by the same spaces)") from e
    except Exception as e:  # not a mapping, unreadable
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    sources = OmegaConf.select(delta, "data.sources", default=None) if isinstance(delta, DictConfig) else None
    if sources is not None:
        delta.data.sources = _paths_as_sources(OmegaConf.to_container(sources))
    return delta


def _make_room_for_source(cfg: DictConfig, item: str, key: str) -> None:
    """`data.sources.N.field=...` with N the next free index: add an empty source N for it (its
    name then defaults to its folder's); an index past that is refused in one line."""
    m = re.match(r"data\.sources\.(\d+)\.", key)
    have = len(cfg.data.sources)
    if not m or int(m.group(1)) < have:
        return
    if int(m.group(1)) > have:
        raise ConfigError(f"override '{item}': the config has {have} data source(s), so no data.sources.{m.group(1)}: "
                          f"number new ones in order from data.sources.{have}, or give the list: "
                          "data.sources=[{name: cxr, path: /data/shards}]")
    cfg.data.sources.append(OmegaConf.structured(SourceConfig))


def _apply_override(cfg: DictConfig, item: str) -> None:
    import yaml

    if "=" not in item:
        raise ConfigError(f"override '{item}' is not key=value: write e.g. optim.lr=1e-3")
    key = item.split("=", 1)[0].lstrip("+")
    _check_key_origin(key, "override")
    try:
        # update() walks list indices (data.sources.0.path=...), which a dotlist merge cannot
        value = OmegaConf.from_dotlist([item.lstrip("+")])
        for part in key.split("."):
            value = value[part]
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if key == "data.sources":
            value = _paths_as_sources(value)
        _make_room_for_source(cfg, item, key)
        OmegaConf.update(cfg, key, value, merge=True)
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': not valid YAML at {yaml_problem(e, item)}: close every bracket and "
                          "quote, e.g. data.sources=[{name: cxr, path: /data/shards}]") from e
    except OmegaConfBaseException as e:
        raise ConfigError(_omegaconf_message(e, f"override '{item}'")) from e
    except (IndexError, KeyError) as e:
        raise ConfigError(f"override '{item}': '{key}' does not exist in this config ({e}); "
                          "list items must exist before they are overridden") from e


def _name_sources_after_folders(cfg: DictConfig, first: int) -> None:
    """Sources from index `first` on (added by overrides) without a name are named after their folder."""
    for src in list(cfg.data.sources)[first:]:
        if OmegaConf.is_missing(src, "name") and not OmegaConf.is_missing(src, "path"):
            src.name = Path(str(src.path).rstrip("/")).name or "source"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Schema defaults <- YAML file <- dotlist overrides, then validated. Raises ConfigError."""
    cfg = schema()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' not found: give a YAML path such as configs/pretrain/vitb14_cxr.yaml")
        delta = _load_delta(path)
        for key in _walk_yaml(delta):
            _check_key_origin(key, str(path))
        try:
            cfg = OmegaConf.merge(cfg, delta)
        except OmegaConfBaseException as e:
            raise ConfigError(_omegaconf_message(e, str(path))) from e
    first_new = len(cfg.data.sources)  # sources from here on come from the overrides
    for item in overrides or []:
        _apply_override(cfg, item)
        if item.split("=", 1)[0].lstrip("+") == "data.sources":
            first_new = 0
    _name_sources_after_folders(cfg, first_new)
    validate(cfg)
    return cfg


def _check_key_origin(key: str, origin: str) -> None:
    try:
        _check_key(key)
    except ConfigError as e:
        raise ConfigError(f"{origin}: {e}") from None


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def validate(cfg: DictConfig) -> None:
    """Semantic checks the types cannot express. Raises ConfigError naming the key and the fix."""
    for key, f in iter_fields():
        choices = f.metadata.get("choices")
        value = _get(cfg, key)
        if choices is not None and value not in choices:
            allowed = ", ".join(str(c) for c in choices)
            raise ConfigError(f"invalid value {value!r} for '{key}': allowed values are {allowed}")

    def need(cond: bool, key: str, fix: str) -> None:
        if not cond:
            raise ConfigError(f"invalid value {_get(cfg, key)!r} for '{key}': {fix}")

    for key in keys_with("probability"):
        need(0.0 <= _get(cfg, key) <= 1.0, key, "a probability must be in [0, 1]")
    for key in ("data.global_crops_scale", "data.local_crops_scale"):
        v = list(_get(cfg, key))
        need(len(v) == 2 and 0 < v[0] <= v[1] <= 1, key, "write [min, max] with 0 < min <= max <= 1")
    need(0 <= cfg.ssl.mask_ratio_min <= cfg.ssl.mask_ratio_max < 1, "ssl.mask_ratio_max",
         "need 0 <= ssl.mask_ratio_min <= ssl.mask_ratio_max < 1")
    for key in ("data.global_crops_size", "data.local_crops_size", "model.img_size"):
        need(_get(cfg, key) % cfg.model.patch_size == 0, key,
             f"must be a multiple of model.patch_size={cfg.model.patch_size} (e.g. 224, 98, 518 for 14)")
    need(cfg.data.global_crops_number >= 1, "data.global_crops_number", "must be >= 1")
    need(cfg.data.local_crops_number >= 0, "data.local_crops_number", "must be >= 0")
    need(cfg.data.batch_size_per_gpu >= 1, "data.batch_size_per_gpu", "must be >= 1")
    need(cfg.data.std > 0, "data.std", "must be > 0")
    need(cfg.optim.lr > 0 and math.isfinite(cfg.optim.lr), "optim.lr", "must be a positive number such as 1e-3")
    need(0 < cfg.optim.layerwise_decay <= 1, "optim.layerwise_decay", "must be in (0, 1]")
    need(cfg.optim.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 disables clipping)")
    need(cfg.train.max_steps >= 1, "train.max_steps", "must be >= 1")
    _check_warmups_fit(cfg)
    need(cfg.train.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
    need(cfg.train.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
    need(cfg.train.log_every >= 1, "train.log_every", "must be >= 1")
    need(0 <= cfg.model.drop_path_rate < 1, "model.drop_path_rate", "must be in [0, 1)")
    need(0 <= cfg.ssl.momentum_teacher <= cfg.ssl.final_momentum_teacher <= 1, "ssl.momentum_teacher",
         "need 0 <= ssl.momentum_teacher <= ssl.final_momentum_teacher <= 1")
    for key in ("launch.nodes", "launch.tasks_per_node", "launch.cpus_per_task", "launch.time_minutes"):
        need(_get(cfg, key) >= 1, key, "must be >= 1")
    for i, src in enumerate(cfg.data.sources):
        for name in ("name", "path"):
            if OmegaConf.is_missing(src, name):
                raise ConfigError(f"data.sources.{i}.{name} is missing: every source needs name and path")
        need(src.weight > 0, f"data.sources.{i}.weight", "must be > 0")
        if src.max_samples is not None:
            need(src.max_samples > 0, f"data.sources.{i}.max_samples", "a count >= 1 or a fraction in (0, 1)")
            need(src.max_samples < 1 or float(src.max_samples).is_integer(), f"data.sources.{i}.max_samples",
                 "a count must be a whole number; a fraction must be < 1")


# every schedule that ramps over a number of steps, and what it never reaches when cut short
# (the fields' `warmup` metadata; read-only)
WARMUPS = MappingProxyType({key: f.metadata["warmup"] for key, f in iter_fields() if "warmup" in f.metadata})


def _check_warmups_fit(cfg: DictConfig) -> None:
    """A warm-up longer than the run silently changes the recipe (DINOv2's 37,500-step teacher
    warm-up in a 35,000-step run never reaches 0.07): refuse it up front."""
    total = int(cfg.train.max_steps)
    for key, consequence in WARMUPS.items():
        n = int(_get(cfg, key))
        if n < 0:
            raise ConfigError(f"invalid value {n} for '{key}': must be >= 0")
        if n > total:
            raise ConfigError(
                f"{key}={n} is longer than train.max_steps={total}: {consequence}; "
                f"set {key}<={total} or raise train.max_steps")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Write the resolved config beside the run (`<run_dir>/config.yaml`), atomically."""
    from dinotrain.atomic import write_text
    from dinotrain.run_layout import config_path

    return write_text(config_path(run_dir), to_yaml(cfg))


def reference_markdown() -> str:
    """The config reference table for README.md, generated from the schema (a test keeps it in sync)."""
    defaults = OmegaConf.to_container(schema(), resolve=False)
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, f in iter_fields():
        node: Any = defaults
        for part in key.split("."):
            node = node[part]
        default = "???" if node == "???" else ("null" if node is None else node)
        if isinstance(default, bool):
            default = str(default).lower()
        text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            text += " (" + " \\| ".join(str(c) for c in choices) + ")"
        lines.append(f"| `{key}` | `{default}` | {text} |")
    return "\n".join(lines) + "\n"
