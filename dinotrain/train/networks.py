"""Student and teacher: created on the meta device, sharded, materialised, initialised (or loaded
from pretrained weights); the teacher starts as an exact copy of the student."""

from __future__ import annotations

from pathlib import Path

import torch

from dinotrain.train.distributed import rank
from dinotrain.train.meta_arch import SSLNetwork
from dinotrain.train.parallel import parallelize


def _make(model, ssl, drop_path: float) -> SSLNetwork:
    from dinotrain.models import build_backbone, build_head

    backbone = build_backbone(model, device="meta", drop_path_rate=drop_path)
    dim = backbone.embed_dim
    head = build_head(dim, ssl, device="meta")
    ibot = build_head(dim, ssl, device="meta") if ssl.ibot_separate_head else None
    return SSLNetwork(backbone, head, ibot)


def build_networks(model, ssl, parallel, seed: int, device: torch.device,
                   world_size: int) -> tuple[SSLNetwork, SSLNetwork]:
    """(student, teacher) from the config's `model`, `ssl` and `parallel` sections and
    `train.seed`."""
    student = parallelize(_make(model, ssl, float(model.drop_path_rate)), parallel, device, world_size, trainable=True)
    teacher = parallelize(_make(model, ssl, 0.0), parallel, device, world_size, trainable=False)
    with torch.random.fork_rng(devices=[]):
        # on CPU, DTensor random ops draw per shard from the local generator: offset by rank so
        # the shards of one parameter are not copies of each other
        torch.manual_seed(int(seed) * 7919 + rank())
        student.to_empty(device=device)
        _init(student)
    teacher.to_empty(device=device)
    load_pretrained(student, model, ssl)
    with torch.no_grad():
        for tp, sp in zip(teacher.parameters(), student.parameters()):
            tp.copy_(sp)
        for tb, sb in zip(teacher.buffers(), student.buffers()):
            tb.copy_(sb)
    teacher.requires_grad_(False)
    teacher.eval()
    student.train()
    return student, teacher


def _init(net: SSLNetwork) -> None:
    from dinotrain.models import init_weights

    init_weights(net.backbone)
    net.dino_head.init_weights()
    if net.ibot_head is not None:
        net.ibot_head.init_weights()


def _pretrained_backbone(model) -> dict[str, torch.Tensor]:
    from dinotrain.models import build_backbone, convert

    src = Path(model.pretrained)
    if not src.exists():
        raise FileNotFoundError(f"model.pretrained={src} does not exist: give a DINOv2 .pth/.safetensors or a HF folder")
    # loaded into a model of this config: position embeddings resampled, 3->1 channel kernels summed
    backbone = convert.load_backbone(src, model=build_backbone(model, device="cpu"))
    return backbone.state_dict()


def _pretrained_head(embed_dim: int, model, ssl) -> dict[str, torch.Tensor]:
    from dinotrain.models import build_head, convert

    src = Path(model.pretrained_head)
    if not src.exists():
        raise FileNotFoundError(f"model.pretrained_head={src} does not exist: give a dino_head.safetensors")
    try:
        head = convert.load_dino_head(src, head=build_head(embed_dim, ssl, device="cpu"))
    except RuntimeError as e:
        raise ValueError(f"model.pretrained_head={src} does not fit ssl.head_* sizes: {str(e).splitlines()[0]}") from e
    return head.state_dict()


def load_pretrained(student: SSLNetwork, model, ssl) -> None:
    """`model.pretrained` (DINOv2 file or HF folder) and `model.pretrained_head` into the student."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full: dict[str, torch.Tensor] = {}
    if model.pretrained:
        full.update({f"backbone.{k}": v for k, v in _pretrained_backbone(model).items()})
    if model.pretrained_head:
        head = _pretrained_head(student.backbone.embed_dim, model, ssl)
        full.update({f"dino_head.{k}": v for k, v in head.items()})
    if full:
        set_model_state_dict(student, full, options=StateDictOptions(full_state_dict=True, strict=False))
