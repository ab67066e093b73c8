"""Multi-head self-attention with three kernels, and the packed layout of a multi-crop forward.

Backends:
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention`. A packed multi-crop sequence is
  attended group by group (all crops of one size form one batched call), which needs no mask.
- `xformers`: `xformers.ops.memory_efficient_attention`; a packed sequence (every crop of every
  size concatenated into one sequence of batch 1) is attended in one call with a
  `BlockDiagonalMask`, as DINOv2 does. CUDA only.
- `sdpa_dense`: the xformers layout run through SDPA with the block-diagonal mask materialised as
  a dense additive bias. Quadratic memory in the packed length: it exists so that the layout the
  GPU path hands to xformers is checked on CPU, not for training.
`auto` picks xformers when it is importable and the input is on CUDA, else sdpa.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("auto", "sdpa", "xformers", "sdpa_dense")


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(backend: str, device: torch.device, xformers_importable: bool) -> str:
    """The kernel to use for a tensor on `device`. Raises with the fix for impossible choices."""
    if backend not in BACKENDS:
        raise ValueError(f"attn_backend={backend!r}: allowed values are {', '.join(BACKENDS)}")
    if backend == "auto":
        return "xformers" if xformers_importable and device.type == "cuda" else "sdpa"
    if backend == "xformers":
        if not xformers_importable:
            raise RuntimeError("attn_backend='xformers' but xformers is not installed: pip install xformers "
                               "(CUDA builds only) or set model.attn_backend=sdpa")
        if device.type != "cuda":
            raise RuntimeError(f"attn_backend='xformers' needs CUDA tensors, got {device}: "
                               "set model.attn_backend=auto or sdpa to run on CPU")
    return backend


def block_diagonal_bias(seqlens: list[int], dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Dense [T, T] additive bias: 0 inside each sequence's diagonal block, -inf elsewhere.

    Equal to xformers' `BlockDiagonalMask.from_seqlens(seqlens).materialize((T, T))`.
    """
    ids = torch.repeat_interleave(torch.arange(len(seqlens), device=device),
                                  torch.tensor(seqlens, device=device))
    same = ids[:, None] == ids[None, :]
    bias = torch.zeros(same.shape, dtype=dtype, device=device)
    return bias.masked_fill_(~same, float("-inf"))


@dataclass
class PackedLayout:
    """How crops of different sizes sit in one packed sequence of batch 1.

    `groups` holds (n_images, tokens_per_image) per crop size, in packing order; group g occupies
    tokens [offsets[g], offsets[g+1]) of the packed sequence, image after image. The masks the
    kernels need are built once per forward and reused by every block.
    """

    groups: list[tuple[int, int]]
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def seqlens(self) -> list[int]:
        """One entry per image: what `BlockDiagonalMask.from_seqlens` takes."""
        return [n for b, n in self.groups for _ in range(b)]

    @property
    def offsets(self) -> list[int]:
        out = [0]
        for b, n in self.groups:
            out.append(out[-1] + b * n)
        return out

    @property
    def n_images(self) -> int:
        return sum(b for b, _ in self.groups)

    def xformers_mask(self):
        if "xformers" not in self._cache:
            from xformers.ops import fmha

            self._cache["xformers"] = fmha.BlockDiagonalMask.from_seqlens(self.seqlens)
        return self._cache["xformers"]

    def dense_bias(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = ("dense", dtype, device)
        if key not in self._cache:
            self._cache[key] = block_diagonal_bias(self.seqlens, dtype, device)
        return self._cache[key]

    def token_image_index(self, device: torch.device) -> torch.Tensor:
        """Image index of every packed token (drop path draws one decision per image)."""
        key = ("index", device)
        if key not in self._cache:
            counts = torch.tensor(self.seqlens, device=device)
            self._cache[key] = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
        return self._cache[key]


class Attention(nn.Module):
    """DINOv2's attention: fused qkv projection (`qkv`), output projection (`proj`)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 backend: str = "auto", xformers_importable: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.backend = backend
        self.xformers_importable = xformers_importable
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, layout: PackedLayout | None = None) -> torch.Tensor:
        B, N, C = x.shape
        H = self.num_heads
        backend = resolve_backend(self.backend, x.device, self.xformers_importable)
        qkv = self.qkv(x).reshape(B, N, 3, H, C // H)
        if backend == "xformers":
            from xformers.ops import memory_efficient_attention

            q, k, v = qkv.unbind(2)  # [B, N, H, Dh], the layout xformers wants
            bias = layout.xformers_mask() if layout is not None else None
            out = memory_efficient_attention(q, k, v, attn_bias=bias).reshape(B, N, C)
        elif layout is None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        elif backend == "sdpa_dense":
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            bias = layout.dense_bias(q.dtype, q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(B, N, C)
        else:
            # group by crop size: each group is a dense batch, so no mask is needed. The output
            # projection runs per group too: projecting the concatenation would keep one more
            # [tokens, dim] copy alive for backward in every block.
            outs = []
            offs = layout.offsets
            for g, (b, n) in enumerate(layout.groups):
                part = qkv[0, offs[g]:offs[g + 1]].reshape(b, n, 3, H, C // H)
                q, k, v = part.permute(2, 0, 3, 1, 4)
                o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * n, C)
                outs.append(self.proj(o))
            return torch.cat(outs, dim=0).unsqueeze(0)
        return self.proj(out)
