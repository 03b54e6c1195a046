"""A DeiT-style vision transformer with a budget token and gated selector blocks (docs/methods.md#token-selection).

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.{i}.attn.qkv``, ``norm``, ``head``, ...), so a DeiT state dict loads with
:func:`load_timm_state_dict`. The model is cut at ``split``: blocks ``0..split-1`` run on the
device, ``split..depth-1`` on the edge server. The seams:

- ``forward_device(images, alpha)``: the device part, with the budget token and the gated
  selector blocks ``1..split-1``; returns all tokens, the selection key and the soft masks.
- ``select(tokens, key, k)``: keeps the top-``k`` patch tokens by key; only these leave the
  device (docs/methods.md#token-selection). The device's class token stays home: after the device blocks it has
  attended to every patch, so sending it would leak what selection is meant to withhold (with it,
  random selection scored within a point of the learned selector at k = 2).
- ``forward_tail(patches, token_mask)``: the server part on whatever patches arrived, behind the
  server's own learned class token ``server_cls_token``.
- ``forward_features`` / ``forward_head``: the plain all-token model, as in timm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semlink.models.selector import Selector

NEG_INF = -1e9  # additive attention bias for masked keys (finite, so fp16/ONNX stay NaN-free)


@dataclass
class ViTConfig:
    image_size: int = 48
    patch_size: int = 8
    in_chans: int = 1
    num_classes: int = 10
    embed_dim: int = 96
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    split: int = 2  # blocks 0..split-1 run on the device; selector gates blocks 1..split-1
    stem: str = "conv"  # "conv": strided 3x3 convs (same N tokens); "patch": timm's linear patchify

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.stem not in ("conv", "patch"):
            raise ValueError(f"stem must be 'conv' or 'patch', got {self.stem!r}")
        if self.stem == "conv" and (self.patch_size & (self.patch_size - 1) or self.patch_size < 2):
            raise ValueError(
                f"the conv stem needs a power-of-two patch_size, got {self.patch_size}"
            )
        if not 1 <= self.split < self.depth:
            raise ValueError(
                f"split must be in [1, depth-1] = [1, {self.depth - 1}], got {self.split}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def num_kept(alpha: float, num_patches: int) -> int:
    """Patch tokens kept at budget ``alpha``: ``ceil(alpha * N)``, at least one.

    The 1e-6 guards against float error turning an exact product (0.25 * 36) into k + 1.
    """
    if not 0.0 < alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"budget alpha must be in (0, 1], got {alpha}")
    return max(1, math.ceil(alpha * num_patches - 1e-6))


class PatchEmbed(nn.Module):
    """Image -> one token per ``patch_size`` square, (B, N, d).

    ``stem="patch"`` is timm's linear patchify (a DeiT state dict loads into it). ``stem="conv"``
    is the convolutional stem of Xiao et al. 2021 ("Early convolutions help transformers see
    better"): log2(patch) stride-2 3x3 convs then a 1x1 ``proj``, still N tokens on the same grid.
    On digits-canvas, where a digit sits at any sub-patch offset, the linear patchify left the ViT
    on a chance-level plateau for 10-20 epochs and far from 98 %; the conv stem learns at once.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.stem: nn.Module = nn.Identity()
        if cfg.stem == "conv":
            layers: list[nn.Module] = []
            chans = cfg.in_chans
            n = int(math.log2(cfg.patch_size))
            for i in range(n):
                out = cfg.embed_dim // 2 ** (n - 1 - i)
                layers += [
                    nn.Conv2d(chans, out, 3, 2, 1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(),
                ]
                chans = out
            self.stem = nn.Sequential(*layers)
            self.proj = nn.Conv2d(chans, cfg.embed_dim, 1)
        else:
            self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # (B, N, d)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the output and the class token's attention over keys, mean over heads (B, T).

        ``key_mask`` (B, T), 1 = present, 0 = absent: absent tokens are never attended to, which
        makes the class token's output identical to physically removing them.
        """
        B, T, C = x.shape
        qkv = (
            self.qkv(x).reshape(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, T, hs)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, T)
        if key_mask is not None:
            attn = attn + (1.0 - key_mask)[:, None, None, :] * NEG_INF
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(out), attn[:, :, 0].mean(dim=1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the block output and the class attention of this block (B, T)."""
        a, cls_attn = self.attn(self.norm1(x), key_mask)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return x, cls_attn


@dataclass
class DeviceOutput:
    tokens: torch.Tensor  # (B, 1+N, d): class token then patch tokens, budget token removed
    keys: list[torch.Tensor]  # per gated block, score minus threshold (B, N); its mask is ReLU(key)
    cls_attn: torch.Tensor  # (B, N): class attention over patches at the last device block

    @property
    def key(self) -> torch.Tensor:
        """Selection key (B, N): the last gate's score minus threshold (all zeros if no gate)."""
        return self.keys[-1] if self.keys else torch.zeros_like(self.cls_attn)

    @property
    def masks(self) -> list[torch.Tensor]:
        return [F.relu(k) for k in self.keys]


class SelectorViT(nn.Module):
    """ViT with a budget token and selector gates on device blocks ``1..split-1``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))
        self.server_cls_token = nn.Parameter(torch.zeros(1, 1, d))  # the tail's class token
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.num_classes)
        # Budget token alpha * b_lo + (1 - alpha) * b_hi, appended after the positional embedding.
        self.budget_lo = nn.Parameter(torch.zeros(d))
        self.budget_hi = nn.Parameter(torch.zeros(d))
        self.selectors = nn.ModuleList(Selector(d) for _ in range(1, cfg.split))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.server_cls_token, std=0.02)
        nn.init.trunc_normal_(self.budget_lo, std=0.02)
        nn.init.trunc_normal_(self.budget_hi, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("selectors"):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # --- the plain all-token model (timm seams) -------------------------------------------

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + class tokens with positional embedding, (B, 1+N, d)."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """All blocks on all tokens, no budget token; returns normed tokens (B, 1+N, d)."""
        x = self.embed(images)
        for blk in self.blocks:
            x, _ = blk(x)
        return self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features[:, 0])

    # --- the split, budget-conditioned model ----------------------------------------------

    def budget_token(self, alpha: torch.Tensor) -> torch.Tensor:
        """(B,) budgets in (0, 1] -> budget tokens (B, 1, d)."""
        a = alpha.reshape(-1, 1)
        return (a * self.budget_lo + (1.0 - a) * self.budget_hi)[:, None, :]

    def forward_device(self, images: torch.Tensor, alpha: torch.Tensor) -> DeviceOutput:
        """Device blocks with gating: ``block(x * m) * m`` with cumulative masks m (docs/methods.md#token-selection)."""
        x = torch.cat([self.embed(images), self.budget_token(alpha)], dim=1)  # (B, 1+N+1, d)
        x, cls_attn = self.blocks[0](x)  # block 0 is never gated
        ones = torch.ones_like(x[:, :1, 0])
        cum = torch.ones_like(x[:, 1:-1, 0])  # (B, N)
        keys = []
        for sel, blk in zip(self.selectors, self.blocks[1 : self.cfg.split], strict=True):
            key = sel(x[:, 1:-1], x[:, -1])  # (B, N): score - threshold
            keys.append(key)
            cum = cum * F.relu(key)
            full = torch.cat([ones, cum, ones], dim=1)[..., None]  # class, patches, budget
            x, cls_attn = blk(x * full)
            x = x * full
        return DeviceOutput(x[:, :-1], keys, cls_attn[:, 1:-1])

    @staticmethod
    def select(
        tokens: torch.Tensor, key: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Physically keeps the top-``k`` patch tokens by ``key``.

        Returns kept patches (B, k, d) and their patch indices (B, k), highest key first.
        """
        idx = key.topk(k, dim=1).indices
        return tokens[:, 1:].gather(1, idx[..., None].expand(-1, -1, tokens.shape[-1])), idx

    def forward_tail(
        self, patches: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Server blocks on the patch tokens that arrived (B, T, d) -> logits (B, classes).

        ``token_mask`` (B, T) marks real patches (1) and padding or dropped patches (0).
        """
        cls = self.server_cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1)
        if token_mask is not None:
            token_mask = torch.cat([torch.ones_like(token_mask[:, :1]), token_mask], dim=1)
        for blk in self.blocks[self.cfg.split :]:
            x, _ = blk(x, token_mask)
        return self.forward_head(self.norm(x))

    def check_images(self, images: torch.Tensor) -> None:
        """Raises ``ValueError`` naming the expected form unless images are float (B, C, H, W)."""
        c, s = self.cfg.in_chans, self.cfg.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(
                f"images must have shape (B, {c}, {s}, {s}), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (normalised), got {images.dtype}")

    def forward(self, images: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """End-to-end inference at one budget, tokens physically removed. Returns logits."""
        k = num_kept(alpha, self.cfg.num_patches)
        self.check_images(images)
        a = torch.full((images.shape[0],), float(alpha), device=images.device)
        out = self.forward_device(images, a)
        kept, _ = self.select(out.tokens, out.key, k)
        return self.forward_tail(kept)


def config_from_dict(d: dict) -> ViTConfig:
    """Rebuilds a config from a checkpoint, rejecting unknown fields with a clear message."""
    known = set(ViTConfig.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise ValueError(
            f"checkpoint config has fields {sorted(unknown)} that ViTConfig does not know"
        )
    return ViTConfig(**d)


def load_timm_state_dict(model: SelectorViT, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Loads a timm DeiT/ViT state dict into the backbone; the selector parts stay as initialised.

    A ``pos_embed`` of another grid size is resized bicubically. Returns the keys that were not in
    ``state_dict`` (the budget token and selectors). Raises on shape mismatches, naming the key.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith(("head_dist", "dist_token"))}
    own = model.state_dict()
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        sd["pos_embed"] = _resize_pos_embed(sd["pos_embed"], model.cfg.num_patches)
    for k, v in sd.items():
        if k not in own:
            raise ValueError(
                f"unexpected key {k!r}: not a parameter of SelectorViT (is this a timm ViT/DeiT?)"
            )
        if own[k].shape != v.shape:
            raise ValueError(
                f"shape mismatch for {k!r}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}; "
                "build the ViTConfig with the checkpoint's embed_dim, depth, num_heads and patch_size"
            )
    missing = [k for k in own if k not in sd]
    backbone_missing = [
        k for k in missing if not k.startswith(("selectors", "budget_", "server_cls"))
    ]
    if backbone_missing:
        raise ValueError(f"state dict lacks backbone parameters {backbone_missing[:5]}...")
    model.load_state_dict(sd, strict=False)
    with torch.no_grad():  # the server's class token starts as the pretrained one
        model.server_cls_token.copy_(model.cls_token + model.pos_embed[:, :1])
    return missing


def _resize_pos_embed(pos: torch.Tensor, num_patches: int) -> torch.Tensor:
    cls, grid = pos[:, :1], pos[:, 1:]
    old = int(math.sqrt(grid.shape[1]))
    new = int(math.sqrt(num_patches))
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], dim=1)
