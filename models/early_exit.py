"""Recursive early-exit networks (docs/methods.md#early-exits): a backbone with exit heads after a set of blocks.

Exit ``j`` sits after block ``exits[j]`` (a count of blocks, 1-based); the last exit sits after the
last block and is the full model's answer. Exit ``j`` produces logits ``z_j`` and, in the
*recursive* variant, combines them with the previous exit's prediction::

    log p_j = log_softmax(z_j + log p_{j-1} @ W_j^T),    W_j initialised to beta * I

so later exits refine rather than restart; the *plain* variant is ``log p_j = log_softmax(z_j)``.

The model is split-able at any exit that is not the last: the device runs blocks
``0..exits[j]-1`` (:meth:`EarlyExitNet.forward_device`), sends the activations and ``log p_j``
(the recursion's carry, ``C`` floats), and the server continues (:meth:`forward_server`). For a
device that stops, continues or offloads exit by exit, :meth:`segment` runs exactly one stretch
between two exits.

Two backbones behind one interface (``stem``, ``block(i, x)``, ``pool(i, x)``, ``dims``): the ViT
family of :mod:`models.vit` (the class token feeds each exit head), and a small CNN for a cheaper
device (global average pooling feeds each head).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from semlink.models.vit import Block, PatchEmbed, ViTConfig


@dataclass
class EarlyExitConfig:
    backbone: str = "vit"
    """"vit" (the DeiT-style family of models/vit.py) or "cnn" (a small conv net)."""
    image_size: int = 48
    in_chans: int = 1
    num_classes: int = 10
    patch_size: int = 8
    embed_dim: int = 64
    depth: int = 6
    """ViT blocks; the CNN has one block per entry of ``cnn_channels``."""
    num_heads: int = 4
    mlp_ratio: float = 4.0
    cnn_channels: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    exits: tuple[int, ...] | None = None
    """Blocks after which an exit head sits (1-based counts); default: after every block."""
    recursive: bool = True
    """Recursive exits (combine with the previous exit's prediction) or plain exits."""
    beta: float = 0.5
    """Initial scale of the mixing matrices ``W_j = beta * I``."""
    device_blocks: int = 4
    """The device holds blocks ``0..device_blocks-1``: its exits, and the splits it may offload at,
    are the exits at or before this block."""

    def __post_init__(self) -> None:
        if self.backbone not in ("vit", "cnn"):
            raise ValueError(f"backbone must be 'vit' or 'cnn', got {self.backbone!r}")
        self.cnn_channels = tuple(self.cnn_channels)
        n = self.num_blocks
        if self.exits is None:
            self.exits = tuple(range(1, n + 1))
        self.exits = tuple(int(e) for e in self.exits)
        if list(self.exits) != sorted(set(self.exits)) or not all(1 <= e <= n for e in self.exits):
            raise ValueError(
                f"exits must be increasing block counts in [1, {n}], got {list(self.exits)}"
            )
        if self.exits[-1] != n:
            raise ValueError(f"the last exit must sit after the last block ({n}), got {self.exits}")
        if not 1 <= self.device_blocks < n:
            raise ValueError(f"device_blocks must be in [1, {n - 1}], got {self.device_blocks}")
        if not any(e <= self.device_blocks for e in self.exits):
            raise ValueError(
                f"no exit at or before device block {self.device_blocks}; add one to exits"
            )

    @property
    def num_blocks(self) -> int:
        return self.depth if self.backbone == "vit" else len(self.cnn_channels)

    @property
    def device_exits(self) -> list[int]:
        """Indices ``j`` of the exits the device can evaluate (and split points it can offload at)."""
        assert self.exits is not None
        return [j for j, e in enumerate(self.exits) if e <= self.device_blocks]

    def vit_config(self) -> ViTConfig:
        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            num_classes=self.num_classes,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            split=1,
        )


class ViTBackbone(nn.Module):
    """Conv stem + class token + positional embedding, then transformer blocks; exits read the
    normalised class token."""

    def __init__(self, cfg: EarlyExitConfig) -> None:
        super().__init__()
        vc = cfg.vit_config()
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(vc)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, vc.num_patches + 1, d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.dims = [d] * cfg.depth
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)  # (B, N, d)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed  # (B, 1+N, d)

    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i](x)[0]

    def pool(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]  # (B, d): the class token


class CNNBackbone(nn.Module):
    """A small CNN for a cheaper device: a 3x3 stem, then one conv-BN-ReLU block per entry of
    ``cnn_channels`` (stride 2 on every other block); exits read the global average."""

    def __init__(self, cfg: EarlyExitConfig) -> None:
        super().__init__()
        c0 = cfg.cnn_channels[0]
        self.stem_conv = nn.Sequential(
            nn.Conv2d(cfg.in_chans, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU()
        )
        chans = [c0, *cfg.cnn_channels]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], 3, 2 if i % 2 == 0 else 1, 1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(),
            )
            for i in range(len(cfg.cnn_channels))
        )
        self.dims = list(cfg.cnn_channels)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        return self.stem_conv(images)

    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i](x)

    def pool(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # (B, C_i)


class ExitHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(features))


class EarlyExitNet(nn.Module):
    """Backbone + one exit head per entry of ``cfg.exits``; returns log-probabilities."""

    def __init__(self, cfg: EarlyExitConfig) -> None:
        super().__init__()
        self.cfg = cfg
        assert cfg.exits is not None
        self.exits: tuple[int, ...] = cfg.exits
        self.backbone: ViTBackbone | CNNBackbone = (
            ViTBackbone(cfg) if cfg.backbone == "vit" else CNNBackbone(cfg)
        )
        self.heads = nn.ModuleList(
            ExitHead(self.backbone.dims[e - 1], cfg.num_classes) for e in self.exits
        )
        # W_j mixes exit j-1's log-probabilities into exit j's logits (exits 1..E-1).
        eye = torch.eye(cfg.num_classes) * cfg.beta
        self.mix = nn.ParameterList(nn.Parameter(eye.clone()) for _ in self.exits[1:])
        if not cfg.recursive:
            self.mix.requires_grad_(False)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def exit_logp(self, j: int, x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """Exit ``j`` on activations ``x``; ``prev`` is exit ``j-1``'s log p, or ``None`` for no
        recursion (the first exit, the plain variant, backbone-only training)."""
        z = self.heads[j](self.backbone.pool(self.exits[j] - 1, x))  # (B, C)
        if self.cfg.recursive and prev is not None and j > 0:
            z = z + prev @ self.mix[j - 1].T
        return F.log_softmax(z, dim=-1)

    def segment(
        self, j: int, x: torch.Tensor, prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs the stretch from exit ``j-1`` to exit ``j`` (from the image when ``j == 0``).

        Returns the activations after block ``exits[j]`` and exit ``j``'s log p (B, C).
        """
        start = self.exits[j - 1] if j > 0 else 0
        if j == 0:
            x = self.backbone.stem(x)
        for i in range(start, self.exits[j]):
            x = self.backbone.block(i, x)
        return x, self.exit_logp(j, x, prev)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's log-probabilities, first to last: a list of (B, C)."""
        x, prev, outs = images, None, []
        for j in range(self.num_exits):
            x, prev = self.segment(j, x, prev)
            outs.append(prev)
        return outs

    def forward_final(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone alone with its final exit, no recursion (the backbone training phase)."""
        x = self.backbone.stem(images)
        for i in range(self.cfg.num_blocks):
            x = self.backbone.block(i, x)
        return self.exit_logp(self.num_exits - 1, x, None)

    def forward_device(
        self, images: torch.Tensor, split: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The device's part up to exit ``split``: activations and log p of exits ``0..split``."""
        self.check_split(split)
        x, prev, outs = images, None, []
        for j in range(split + 1):
            x, prev = self.segment(j, x, prev)
            outs.append(prev)
        return x, outs

    def forward_server(
        self, activations: torch.Tensor, prev: torch.Tensor | None, split: int
    ) -> torch.Tensor:
        """The server's part from the activations at exit ``split`` (and that exit's log p) to the
        final exit's log p (B, C). The intermediate exits run too: the recursion needs them."""
        self.check_split(split)
        x = activations
        for j in range(split + 1, self.num_exits):
            x, prev = self.segment(j, x, prev)
        assert prev is not None  # split < the last exit, so at least one stretch ran
        return prev

    def check_split(self, split: int) -> None:
        if split not in self.cfg.device_exits:
            raise ValueError(
                f"split must be one of the device's exits {self.cfg.device_exits}, got {split}"
            )

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The backbone and the final classifier: what the first phase of disjoint / mixed
        training trains, and what the disjoint regime then freezes."""
        return [*self.backbone.parameters(), *self.heads[-1].parameters()]

    def exit_parameters(self) -> list[nn.Parameter]:
        """The intermediate exit heads and the mixing matrices."""
        params = [p for h in self.heads[:-1] for p in h.parameters()]
        return params + ([*self.mix] if self.cfg.recursive else [])


def count_segment_flops(model: EarlyExitNet) -> list[int]:
    """FLOPs per image of each segment (stem+blocks+exit head), counted by torch's
    ``FlopCounterMode`` on one image (matmuls and convolutions, 2 per multiply-accumulate)."""
    cfg = model.cfg
    x: torch.Tensor = torch.zeros(1, cfg.in_chans, cfg.image_size, cfg.image_size)
    prev = None
    flops = []
    model.eval()
    with torch.no_grad():
        for j in range(model.num_exits):
            counter = FlopCounterMode(display=False)
            with counter:
                x, prev = model.segment(j, x, prev)
            flops.append(int(counter.get_total_flops()))
    return flops


def config_from_dict(d: dict) -> EarlyExitConfig:
    unknown = set(d) - set(EarlyExitConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"checkpoint config has fields {sorted(unknown)} that EarlyExitConfig does not know"
        )
    return EarlyExitConfig(**d)


def config_dict(cfg: EarlyExitConfig) -> dict:
    d = asdict(cfg)
    d["cnn_channels"] = list(cfg.cnn_channels)
    d["exits"] = list(cfg.exits or ())
    return d


__all__ = [
    "EarlyExitConfig",
    "EarlyExitNet",
    "count_segment_flops",
    "config_from_dict",
    "config_dict",
]
