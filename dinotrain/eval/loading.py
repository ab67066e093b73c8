"""MODEL arguments of `dinotrain eval`: what each string means and how it becomes a backbone.

- `random:RUN_DIR`, `random:CONFIG.yaml` (optionally `:SEED`)  the network a run of that recipe
  starts from: its arch, LayerScale init and `train.seed`, built by the trainer's own code
  (`dinotrain.train.initial`) and read with the run's input normalisation. The floor a trained
  model must beat is its own step 0.
- `random:ARCH` or `random:ARCH:SEED`  the schema's default init of ARCH (DINOv2's LayerScale
  1e-5), e.g. `random:vit_small`; `describe_random` says which init a `random:` name is.
- a run directory (holds `config.yaml`)  its teacher, via `dinotrain.run_layout.load_teacher`
  (newest complete checkpoint, else `export/latest`).
- a Hugging Face folder (holds `config.json`, e.g. a downloaded `microsoft/rad-dino`), or an
  export folder (`hf/` + `dinov2.safetensors`)  via `dinotrain.models.convert`.
- a checkpoint file (`.pth`, `.pt`, `.safetensors`, DINOv2 or HF naming)  via
  `dinotrain.models.convert.load_backbone`.

`default_resolution(models)`: the input size `dinotrain eval` uses without --resolution (a run's
global crop size, else 518).

Every model is put in eval mode with drop path off; its fingerprint (a hash of the weights)
keys the feature cache, so two names for the same weights share features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinotrain.eval.specs import SpecError
from dinotrain.run_layout import config_path


@dataclass
class LoadedModel:
    name: str
    model: Any  # a dinotrain VisionTransformer
    patch_size: int
    in_chans: int
    fingerprint: str
    mean: float  # the input normalisation the model was trained with
    std: float


def _from_state(state_dict: dict, model_cfg: Any, source: str):
    from dinotrain.models import build_backbone

    model = build_backbone(model_cfg, device="cpu", drop_path_rate=0.0)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise SpecError(f"model {source}: weights do not fit arch {getattr(model_cfg, 'arch', model_cfg)} "
                        f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}); check its config")
    return model


def _convert(path: Path):
    from dinotrain.models import convert
    from dinotrain.models.weights_file import check_weights_source

    if path.is_dir() and (path / "hf" / "config.json").is_file():
        check_weights_source(path / "hf", "model")
        return convert.from_hf(path / "hf")  # an export folder: hf/ + dinov2.safetensors
    check_weights_source(path, "model")  # a text file or a damaged one: one line, not torch's KeyError
    return convert.load_backbone(path)  # HF folder, or a file in HF or DINOv2 naming


def _recipe_source(rest: str) -> tuple[Path, int | None] | None:
    """(run config path, seed or None) of `RUN_DIR`, `CONFIG.yaml`, or either with `:SEED`."""
    cands = [(rest, None)]
    head, _, tail = rest.rpartition(":")
    if head and tail.isdigit():
        cands.append((head, int(tail)))
    for path, seed in cands:
        p = Path(path).expanduser()
        if p.is_dir() and (p / "config.yaml").is_file():
            return p / "config.yaml", seed
        if p.is_file() and p.suffix in (".yaml", ".yml"):
            return p, seed
    return None


def random_recipe(spec: str):
    """The run config (DictConfig) a `random:RUN_DIR` / `random:CONFIG.yaml[:SEED]` name builds
    from, or None when the name is `random:ARCH[:SEED]`."""
    found = _recipe_source(spec[len("random:"):])
    if found is None:
        return None
    from dinotrain.config import ConfigError, load_config

    path, seed = found
    try:
        return load_config(path, [f"train.seed={seed}"] if seed is not None else [])
    except ConfigError as e:
        raise SpecError(f"model '{spec}': {e}") from e


def _random_arch(spec: str) -> tuple[str, int]:
    from dinotrain.models.vit import ARCHS

    parts = spec.split(":")
    arch = parts[1] if len(parts) > 1 and parts[1] else "vit_small"
    if arch not in ARCHS:
        raise SpecError(f"model '{spec}': unknown arch '{arch}' and not a run folder or config file; use one of "
                        f"{', '.join(ARCHS)}, or random:RUN_DIR / random:CONFIG.yaml for the init a run starts from")
    try:
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise SpecError(f"model '{spec}': seed '{parts[2]}' is not an integer (random:ARCH:SEED)") from None
    return arch, seed


def describe_random(spec: str) -> str | None:
    """Which init a `random:` model is, in words (None for other models)."""
    if not spec.startswith("random:"):
        return None
    cfg = random_recipe(spec)
    if cfg is not None:
        from dinotrain.train.initial import describe_init

        return describe_init(cfg)
    from dinotrain.config import ModelConfig, default_of

    arch, seed = _random_arch(spec)
    return (f"{arch} at the schema's default init (LayerScale {float(default_of(ModelConfig, 'layerscale_init')):g}, "
            f"seed {seed}), not a run's recipe: random:RUN_DIR or random:CONFIG.yaml builds the network a run "
            "starts from")


def build_model(spec: str, device: str = "cpu"):
    """The backbone named by a MODEL argument (see the module docstring)."""
    import torch

    recipe = random_recipe(spec) if spec.startswith("random:") else None
    if recipe is not None:
        from dinotrain.train.initial import initial_backbone

        model, _ = initial_backbone(recipe)
    elif spec.startswith("random:"):
        arch, seed = _random_arch(spec)
        from dinotrain.config import ModelConfig
        from dinotrain.models import build_backbone

        torch.manual_seed(seed)  # the same name gives the same weights (and shares the feature cache)
        model = build_backbone(ModelConfig(arch=arch), device="cpu", drop_path_rate=0.0)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise SpecError(f"model '{spec}': no such file or folder, and not 'random:ARCH' "
                            "(give a run directory, a Hugging Face folder, a DINOv2 checkpoint or random:vit_small)")
        if path.is_dir() and config_path(path).is_file():
            from dinotrain.run_teacher import load_teacher

            state, model_cfg = load_teacher(path)
            model = _from_state(state, model_cfg, spec)
        elif path.is_dir() and any((path / n).is_file() for n in
                                   ("config.json", "hf/config.json", "dinov2.safetensors", "model.safetensors")):
            model = _convert(path)
        elif path.is_file() and path.suffix in (".pth", ".pt", ".safetensors"):
            model = _convert(path)
        else:
            raise SpecError(f"model '{spec}': not a run directory (config.yaml), a Hugging Face folder "
                            "(config.json) or a DINOv2 checkpoint (.pth/.pt/.safetensors)")
    return model.to(device).eval()


def _default_normalisation() -> tuple[float, float]:
    from dinotrain.config import DataConfig, default_of

    return float(default_of(DataConfig, "mean")), float(default_of(DataConfig, "std"))


def normalisation(spec: str) -> tuple[float, float]:
    """(mean, std) of the inputs: a run's (or a `random:` recipe's) `data.mean`/`data.std`, else the
    schema's (RAD-DINO's)."""
    mean, std = _default_normalisation()
    if spec.startswith("random:"):
        found = _recipe_source(spec[len("random:"):])
        run_cfg = found[0] if found else None
    else:
        run_cfg = config_path(Path(spec).expanduser())
    if run_cfg is not None and run_cfg.is_file():
        from omegaconf import OmegaConf

        data = OmegaConf.load(run_cfg).get("data") or {}
        mean, std = data.get("mean", mean), data.get("std", std)
    return float(mean), float(std)


def load_model(spec: str, device: str = "cpu") -> LoadedModel:
    from dinotrain.eval.features import model_fingerprint

    model = build_model(spec, device)
    mean, std = normalisation(spec)
    # the architecture (and the normalisation) enter the hash too: equal weights under another
    # forward would give other features
    extra = f"{type(model).__name__}:{getattr(model, 'interpolate_offset', '')}:{getattr(model, 'num_register_tokens', '')}"
    if (mean, std) != _default_normalisation():
        extra += f":{mean}:{std}"  # only when not the default: existing caches stay valid
    return LoadedModel(name=spec, model=model, patch_size=int(model.patch_size),
                       in_chans=int(getattr(model, "in_chans", 3)),
                       fingerprint=model_fingerprint(model.state_dict(), extra), mean=mean, std=std)


def trained_resolution(spec: str) -> int | None:
    """The global crop size a training run (a folder holding config.yaml) trained at; None for
    any other MODEL."""
    if spec.startswith("random:"):  # random:RUN_DIR / random:CONFIG.yaml: the recipe's size
        recipe = random_recipe(spec)
        return None if recipe is None else int(recipe.data.global_crops_size)
    run_cfg = config_path(Path(spec).expanduser())
    if not run_cfg.is_file():
        return None
    from omegaconf import OmegaConf

    from dinotrain.config import DataConfig, default_of

    size = OmegaConf.select(OmegaConf.load(run_cfg), "data.global_crops_size", default=None)
    return int(size if size is not None else default_of(DataConfig, "global_crops_size"))


def default_resolution(models: list[str]) -> tuple[int, str]:
    """The eval input size when none is given, and why: what the runs among `models` trained at
    (their global crop size; the largest when they differ), else RAD-DINO's 518."""
    from dinotrain.config import EvalConfig, default_of

    runs = {m: r for m in models if (r := trained_resolution(m)) is not None}
    if not runs:
        return int(default_of(EvalConfig, "resolution")), "RAD-DINO's input size, as no MODEL is a training run"
    sizes = sorted(set(runs.values()))
    if len(sizes) == 1:
        return sizes[0], f"the global crop size {', '.join(runs)} trained at"
    each = ", ".join(f"{m}: {r}" for m, r in runs.items())
    return sizes[-1], f"the largest global crop size the runs trained at ({each})"

