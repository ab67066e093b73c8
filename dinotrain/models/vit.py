"""The DINOv2 Vision Transformer (patch 14): registers, LayerScale, drop path, MLP or SwiGLU.

Parameter names are DINOv2's own (`cls_token`, `pos_embed`, `register_tokens`, `mask_token`,
`patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1|w12,...}`,
`norm`), so a published DINOv2 state dict loads as is and `to_dinov2` is the identity.

Build with `build_backbone(cfg.model, device)`: parameters are created on the meta device and
initialised explicitly (`init_weights`), so ViT-g costs nothing until it is placed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dinotrain.models.attention import Attention, PackedLayout, xformers_available

# DINOv2's dimensions; vit_tiny is an extra for tests and laptops. All heads are 64 wide.
ARCHS: dict[str, dict[str, int]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_giant2": dict(embed_dim=1536, depth=40, num_heads=24),
}


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input {H}x{W} is not a multiple of the patch size {p}: crop or resize to e.g. "
                             f"{H // p * p}x{W // p * p}")
        return self.proj(x).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """DINOv2's fused SwiGLU: `w12` projects to gate and value halves, `w3` back."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """DINOv2's SwiGLUFFNFused width: 2/3 of the MLP width, rounded up to a multiple of 8."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def drop_path(x: torch.Tensor, p: float, training: bool, layout: PackedLayout | None = None) -> torch.Tensor:
    """Stochastic depth on a residual branch: drop whole images with probability p, rescale the rest.

    In a packed sequence one decision is drawn per image (not per packed sequence), so the
    list forward drops exactly what separate forwards would.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    if layout is None:
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    else:
        per_image = x.new_empty(layout.n_images).bernoulli_(keep)
        mask = per_image[layout.token_image_index(x.device)].view(1, -1, 1)
    return x * mask / keep


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, ffn: str, layerscale_init: float | None,
                 drop_path_rate: float, attn_backend: str, xformers_importable: bool,
                 ffn_hidden_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, backend=attn_backend, xformers_importable=xformers_importable)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        if ffn == "mlp":
            self.mlp = Mlp(dim, ffn_hidden_dim or int(dim * mlp_ratio))
        elif ffn == "swiglu":
            self.mlp = SwiGLUFFN(dim, ffn_hidden_dim or swiglu_hidden(dim, mlp_ratio))
        else:
            raise ValueError(f"ffn={ffn!r}: allowed values are mlp, swiglu")
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, layout: PackedLayout | None = None) -> torch.Tensor:
        x = x + drop_path(self.ls1(self.attn(self.norm1(x), layout)), self.drop_path_rate, self.training, layout)
        x = x + drop_path(self.ls2(self.mlp(self.norm2(x))), self.drop_path_rate, self.training, layout)
        return x


class VisionTransformer(nn.Module):
    """DINOv2's ViT. `forward_features` returns DINOv2's dict; `forward(x)` the normalised CLS token.

    `interpolate_offset` / `interpolate_antialias` reproduce DINOv2's position-embedding
    resampling (0.1 / False for the original ViTs; 0.0 / True for the register models; 0.0 /
    False is what the Hugging Face `Dinov2Model` does).
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        ffn: str = "mlp",
        num_register_tokens: int = 0,
        layerscale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        attn_backend: str = "auto",
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        ffn_hidden_dim: int | None = None,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.ffn = ffn
        self.n_blocks = depth
        self.num_register_tokens = num_register_tokens
        self.layerscale_init = layerscale_init
        self.attn_backend = attn_backend
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        # DINOv2 trains with the same rate in every block (drop_path_uniform); else a linear ramp
        if drop_path_uniform:
            rates = [drop_path_rate] * depth
        else:
            rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        xf = xformers_available()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, ffn, layerscale_init, rates[i], attn_backend, xf, ffn_hidden_dim)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        if self.cls_token.device.type != "meta":
            self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        init_weights(self)

    def arch_kwargs(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this architecture (for export and configs)."""
        hidden = self.blocks[0].mlp.fc1.out_features if self.ffn == "mlp" else self.blocks[0].mlp.w3.in_features
        return dict(
            img_size=self.img_size, patch_size=self.patch_size, in_chans=self.in_chans, embed_dim=self.embed_dim,
            depth=self.n_blocks, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, ffn=self.ffn,
            num_register_tokens=self.num_register_tokens, layerscale_init=self.layerscale_init,
            interpolate_offset=self.interpolate_offset, interpolate_antialias=self.interpolate_antialias,
            ffn_hidden_dim=hidden,
        )

    # ------------------------------------------------------------------ tokens
    def interpolate_pos_encoding(self, n_patches: int, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w pixel input, resampled bicubically as DINOv2 does."""
        pos = self.pos_embed
        N = pos.shape[1] - 1
        if n_patches == N and h == w:
            return pos
        dtype = pos.dtype
        pos = pos.float()
        dim = pos.shape[-1]
        h0, w0 = h // self.patch_size, w // self.patch_size
        M = int(math.sqrt(N))
        if M * M != N:
            raise ValueError(f"pos_embed holds {N} patch positions, not a square grid")
        kwargs: dict[str, Any] = {}
        if self.interpolate_offset:
            # DINOv2's historical offset: it passes scale factors, not sizes, to the resampler
            kwargs["scale_factor"] = ((h0 + self.interpolate_offset) / M, (w0 + self.interpolate_offset) / M)
        else:
            kwargs["size"] = (h0, w0)
        patch_pos = F.interpolate(
            pos[:, 1:].reshape(1, M, M, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.interpolate_antialias,
            **kwargs,
        )
        if patch_pos.shape[-2:] != (h0, w0):
            raise RuntimeError(f"position embedding resampling gave {tuple(patch_pos.shape[-2:])}, wanted {(h0, w0)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((pos[:, :1], patch_pos), dim=1).to(dtype)

    def prepare_tokens_with_masks(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        B, _, h, w = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            if masks.shape != x.shape[:2]:
                raise ValueError(f"masks have shape {tuple(masks.shape)}, expected [batch, patches] = "
                                 f"{tuple(x.shape[:2])}")
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(B, -1, -1).to(x.dtype), x), dim=1)
        x = x + self.interpolate_pos_encoding(x.shape[1] - 1, h, w).to(x.dtype)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(B, -1, -1).to(x.dtype), x[:, 1:]), dim=1)
        return x

    def _output(self, x: torch.Tensor, masks: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1:],
            "x_prenorm": x,
            "masks": masks,
        }

    # ------------------------------------------------------------------ forwards
    def forward_features(self, x: torch.Tensor | Sequence[torch.Tensor], masks: torch.Tensor | None = None):
        if isinstance(x, (list, tuple)):
            return self.forward_features_list(x, masks)
        x = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            x = blk(x)
        return self._output(x, masks)

    def forward_features_list(self, x_list: Sequence[torch.Tensor],
                              masks_list: Sequence[torch.Tensor | None] | None = None) -> list[dict]:
        """Crops of different sizes in one pass: all tokens packed into one sequence of batch 1.

        Token-wise layers (norms, MLP, projections) run once over every crop; attention stays
        within each image (grouped SDPA, or one xformers call with a block-diagonal mask).
        """
        if masks_list is None:
            masks_list = [None] * len(x_list)
        if len(masks_list) != len(x_list):
            raise ValueError(f"forward_features_list: {len(x_list)} inputs but {len(masks_list)} masks")
        tokens = [self.prepare_tokens_with_masks(x, m) for x, m in zip(x_list, masks_list)]
        layout = PackedLayout([(t.shape[0], t.shape[1]) for t in tokens])
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in tokens], dim=0).unsqueeze(0)
        for blk in self.blocks:
            x = blk(x, layout)
        offs = layout.offsets
        return [
            self._output(x[0, offs[g]:offs[g + 1]].reshape(b, n, -1), m)
            for g, ((b, n), m) in enumerate(zip(layout.groups, masks_list))
        ]

    def get_intermediate_layers(self, x: torch.Tensor, n: int | Sequence[int] = 1, reshape: bool = False,
                                return_class_token: bool = False, norm: bool = True):
        """Outputs of the last `n` blocks (or of the blocks whose indices are listed), DINOv2's way."""
        B, _, H, W = x.shape
        x = self.prepare_tokens_with_masks(x)
        wanted = set(range(self.n_blocks - n, self.n_blocks)) if isinstance(n, int) else set(n)
        bad = [i for i in wanted if not 0 <= i < self.n_blocks]
        if bad:
            raise ValueError(f"get_intermediate_layers: block indices {sorted(bad)} out of range 0..{self.n_blocks - 1}")
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in wanted:
                outs.append(x)
        if norm:
            outs = [self.norm(o) for o in outs]
        r = self.num_register_tokens
        class_tokens = [o[:, 0] for o in outs]
        outs = [o[:, 1 + r:] for o in outs]
        if reshape:
            h, w = H // self.patch_size, W // self.patch_size
            outs = [o.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous() for o in outs]
        if return_class_token:
            return tuple(zip(outs, class_tokens))
        return tuple(outs)

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.forward_features(x, masks)["x_norm_clstoken"])


def init_weights(model: VisionTransformer) -> VisionTransformer:
    """DINOv2's initialisation, explicitly, in place (works after `to_empty` from the meta device).

    pos_embed trunc-normal(0.02); cls and register tokens normal(1e-6); mask token 0; every
    Linear trunc-normal(0.02) with zero bias; LayerNorm (1, 0); LayerScale = layerscale_init;
    the patch convolution keeps PyTorch's default (DINOv2 leaves it untouched).
    """
    with torch.no_grad():
        nn.init.trunc_normal_(model.pos_embed, std=0.02)
        nn.init.normal_(model.cls_token, std=1e-6)
        if model.register_tokens is not None:
            nn.init.normal_(model.register_tokens, std=1e-6)
        nn.init.zeros_(model.mask_token)
        model.patch_embed.proj.reset_parameters()
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
            elif isinstance(m, LayerScale):
                m.gamma.fill_(m.init_values)
    return model


def vit_arch_kwargs(arch: str) -> dict[str, int]:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: allowed values are {', '.join(ARCHS)}")
    return dict(ARCHS[arch])


def _factory(arch: str, **defaults):
    def make(**kwargs) -> VisionTransformer:
        return VisionTransformer(**{**vit_arch_kwargs(arch), **defaults, **kwargs})

    make.__name__ = arch
    make.__doc__ = f"DINOv2's {arch} ({ARCHS[arch]}), patch 14 unless overridden."
    return make


vit_tiny = _factory("vit_tiny")
vit_small = _factory("vit_small")
vit_base = _factory("vit_base")
vit_large = _factory("vit_large")
vit_giant2 = _factory("vit_giant2", ffn="swiglu")  # DINOv2's giant2 uses the fused SwiGLU


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def resolve_ffn(arch: str, ffn: str) -> str:
    """`auto` is what DINOv2 released for the size: fused SwiGLU for giant2, a plain MLP otherwise."""
    if ffn == "auto":
        return "swiglu" if arch == "vit_giant2" else "mlp"
    return ffn


def backbone_kwargs(model_cfg: Any) -> dict[str, Any]:
    """VisionTransformer arguments from the `cfg.model` section (a DictConfig, dataclass or dict)."""
    kw: dict[str, Any] = vit_arch_kwargs(_cfg_get(model_cfg, "arch", "vit_base"))
    kw.update(
        img_size=int(_cfg_get(model_cfg, "img_size", 518)),
        patch_size=int(_cfg_get(model_cfg, "patch_size", 14)),
        in_chans=int(_cfg_get(model_cfg, "in_chans", 3)),
        num_register_tokens=int(_cfg_get(model_cfg, "num_register_tokens", 0)),
        ffn=resolve_ffn(str(_cfg_get(model_cfg, "arch", "vit_base")), str(_cfg_get(model_cfg, "ffn", "auto"))),
        layerscale_init=_cfg_get(model_cfg, "layerscale_init", 1e-5),
        drop_path_rate=float(_cfg_get(model_cfg, "drop_path_rate", 0.0)),
        drop_path_uniform=bool(_cfg_get(model_cfg, "drop_path_uniform", True)),
        attn_backend=str(_cfg_get(model_cfg, "attn_backend", "auto")),
        interpolate_offset=float(_cfg_get(model_cfg, "interpolate_offset", 0.1)),
        interpolate_antialias=bool(_cfg_get(model_cfg, "interpolate_antialias", False)),
    )
    return kw


def build_backbone(model_cfg: Any, device: torch.device | str | None = None, **overrides) -> VisionTransformer:
    """The backbone of `cfg.model`, created on the meta device, then (unless device="meta")
    materialised on `device` (default CPU) and initialised with `init_weights`.

    `overrides` replace constructor arguments (e.g. drop_path_rate=0.0 for the teacher).
    """
    kwargs = {**backbone_kwargs(model_cfg), **overrides}
    with torch.device("meta"):
        model = VisionTransformer(**kwargs)
    if device is not None and torch.device(device).type == "meta":
        return model
    model.to_empty(device=device if device is not None else "cpu")
    return init_weights(model)
