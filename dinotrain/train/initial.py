"""The network a run starts from: its recipe (config + `train.seed`) at initialisation, before step 1.

"Random init" in this project means exactly this, never the schema's defaults: a baseline built
with DINOv2's LayerScale 1e-5 when the run trains at 0.1 is another network (at 1e-5 a ViT's CLS
token hardly depends on the image), not the one pretraining improved on. The study, the demo and
`dinotrain eval random:RUN_DIR` all build it here, with the trainer's own `build_networks`.

Built in one process on the CPU without FSDP (no process group needed): for a run trained in one
process that is its step-0 network bit for bit; a run trained on N ranks drew each shard from its
own rank's generator, so there it is the same recipe and seed, other draws.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dinotrain.train.distributed import DistEnv


def init_config(run_cfg: DictConfig) -> DictConfig:
    """The run's config as the initial network is built from it: no pretrained weights (a random
    init is the point), one CPU process, no FSDP or compile (neither changes the weights)."""
    cfg = OmegaConf.create(OmegaConf.to_container(run_cfg, resolve=True))
    cfg.model.pretrained = None
    cfg.model.pretrained_head = None
    cfg.train.device = "cpu"
    cfg.parallel.fsdp = False
    cfg.parallel.compile = False
    cfg.parallel.activation_checkpointing = "none"
    return cfg


def initial_teacher(run_cfg: DictConfig):
    """(teacher SSLNetwork, the config it was built from) at step 0 of a run of `run_cfg`."""
    from dinotrain.train.networks import build_networks

    cfg = init_config(run_cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"DTensor random operators")
        _, teacher = build_networks(cfg.model, cfg.ssl, cfg.parallel, int(cfg.train.seed), torch.device("cpu"), 1)
    return teacher, cfg


def describe_init(cfg: DictConfig) -> str:
    """Which init a network built by `initial_teacher(cfg)` is, in words (for tables and reports)."""
    return (f"{cfg.model.arch} initialised by the run's recipe (LayerScale {float(cfg.model.layerscale_init):g}, "
            f"seed {int(cfg.train.seed)}), untrained")


def save_initial_teacher(run_cfg: DictConfig, out_dir: str | Path) -> Path:
    """The run's teacher before its first step, as a run folder `dinotrain eval` loads:
    config.yaml + export/latest/, written by the trainer's own `export_teacher`."""
    from dinotrain.config import save_config
    from dinotrain.train.export import export_teacher

    out_dir = Path(out_dir)
    teacher, cfg = initial_teacher(run_cfg)
    cfg.output_dir = str(out_dir)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), created_group=False)
    export_teacher(teacher, cfg.model, cfg.ssl, out_dir, 0, env, data=cfg.data)
    save_config(cfg, out_dir)
    return out_dir


def initial_backbone(run_cfg: DictConfig):
    """The teacher backbone at step 0 of a run of `run_cfg` (a plain CPU module) and its config."""
    teacher, cfg = initial_teacher(run_cfg)
    return teacher.backbone, cfg
