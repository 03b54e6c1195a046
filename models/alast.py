"""``semlink train finetune [--alast]``: fine-tuning a pretrained ViT, in full or with ALaST
(docs/methods.md#alast, Devoto et al., 2024), and what each costs.

ALaST gives each block ``l`` a compute budget ``b_l`` in [0.5, 1] (start 0.9), updated every step
from how much the block changes the class token, ``Δ_l = ‖cls_out − cls_in‖²`` (batch mean):
``b_l += η (Δ_l − Δ_l^prev)``. During training block ``l`` processes only its top ``⌊b_l N⌋``
patch tokens by the previous block's class attention (the others pass it unchanged), and each step
only ``K`` blocks, sampled without replacement from ``softmax(b)``, are trainable: the others are
frozen for that step and get no weight gradient. Blocks below the lowest trainable one run without
autograd at all. The embedding stays frozen (``train_embedding``: it trains every step, and
autograd then runs through every block); the final norm and head always train. Inference uses
every token of every block.

The model is the shipped digits-vit's plain path (embedding, class token, all blocks, head), and
the task the shift to digits-shifted.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from semlink.models import distributed
from semlink.models.checkpoint import load_selector_vit
from semlink.models.datasets import load_dataset
from semlink.models.progress import progress_bar
from semlink.models.train_split import Finetuning, FlopMeter, accuracy, batches, correct_of
from semlink.models.vit import SelectorViT

BUDGET_RANGE = (0.5, 1.0)


class PlainViT(nn.Module):
    """The all-token path of a :class:`SelectorViT`: embedding, class token, blocks, head."""

    def __init__(self, vit: SelectorViT) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.vit.forward_features(images))


class ALaST:
    """Per-block budgets, token pruning by class attention, and the sampled trainable blocks."""

    def __init__(
        self,
        model: PlainViT,
        k: int = 2,
        eta: float = 0.005,
        seed: int = 0,
        train_embedding: bool = False,
    ) -> None:
        self.model = model
        self.train_embedding = train_embedding
        self.blocks = model.vit.blocks
        if not 1 <= k <= len(self.blocks):
            raise ValueError(f"K must be in [1, {len(self.blocks)}], got {k}")
        self.k, self.eta = k, eta
        self.budgets = torch.full((len(self.blocks),), 0.9)
        self.prev_delta: torch.Tensor | None = None
        self.g = torch.Generator().manual_seed(seed)

    def sample(self) -> list[int]:
        """The ``K`` blocks trainable this step, drawn from ``softmax(b)`` without replacement."""
        p = torch.softmax(self.budgets, dim=0)
        return sorted(torch.multinomial(p, self.k, replacement=False, generator=self.g).tolist())

    def freeze(self, trainable: list[int]) -> None:
        """Weight gradients only for the sampled blocks, the final norm and the head (and the
        embedding, class token and positions with ``train_embedding``)."""
        vit = self.model.vit
        for p in vit.parameters():
            p.requires_grad_(False)
        if self.train_embedding:
            vit.patch_embed.requires_grad_(True)
            vit.cls_token.requires_grad_(True)
            vit.pos_embed.requires_grad_(True)
        for i in trainable:
            self.blocks[i].requires_grad_(True)
        vit.norm.requires_grad_(True)
        vit.head.requires_grad_(True)

    def forward(self, images: torch.Tensor, trainable: list[int]) -> torch.Tensor:
        """Training forward: pruned blocks, no autograd below the lowest trainable block.
        Updates the budgets from this step's class-token changes."""
        vit = self.model.vit
        n = vit.cfg.num_patches
        deltas = torch.zeros(len(self.blocks))
        lowest = 0 if self.train_embedding else min(trainable)
        with contextlib.nullcontext() if self.train_embedding else torch.no_grad():
            x = vit.embed(images)
        attn: torch.Tensor | None = None
        for i, blk in enumerate(self.blocks):
            ctx = torch.no_grad() if i < lowest else contextlib.nullcontext()
            with ctx:
                cls_in = x[:, 0].detach()
                keep = math.floor(float(self.budgets[i]) * n)
                if attn is None or keep >= n:
                    x, attn_full = blk(x)
                    attn = attn_full[:, 1:]
                else:
                    top = attn.topk(keep, dim=1).indices + 1  # +1: after the class token
                    idx = torch.cat([torch.zeros_like(top[:, :1]), top], dim=1)
                    gather = idx[..., None].expand(-1, -1, x.shape[-1])
                    out, sub_attn = blk(x.gather(1, gather))
                    x = x.scatter(1, gather, out)  # the unkept tokens pass unchanged
                    attn = torch.zeros_like(attn).scatter(1, top - 1, sub_attn[:, 1:])
                deltas[i] = (x[:, 0].detach() - cls_in).pow(2).sum(dim=1).mean()
        self._update(deltas)
        return vit.forward_head(vit.norm(x))

    def _update(self, deltas: torch.Tensor) -> None:
        if self.prev_delta is not None:
            self.budgets = (self.budgets + self.eta * (deltas - self.prev_delta)).clamp(
                *BUDGET_RANGE
            )
        self.prev_delta = deltas


@dataclass
class FinetuneConfig(Finetuning):
    alast: bool = False
    k: int = 2  # ALaST: trainable blocks per step
    eta: float = 0.005  # ALaST: budget step
    train_embedding: bool = False
    """ALaST: the embedding (patches, class token, positions) trains every step instead of
    staying frozen (a variant: docs/methods.md#alast freezes it)"""


class Trainer:
    """One optimiser step of full fine-tuning or of ALaST."""

    def __init__(self, cfg: FinetuneConfig, model: PlainViT) -> None:
        self.cfg, self.model = cfg, model
        self.alast = (
            ALaST(model, cfg.k, cfg.eta, cfg.seed, cfg.train_embedding) if cfg.alast else None
        )
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)

    def plan(self) -> list[int] | None:
        """ALaST: the blocks trainable in the next step, sampled now (None for full
        fine-tuning)."""
        return None if self.alast is None else self.alast.sample()

    def step(
        self, images: torch.Tensor, labels: torch.Tensor, trainable: list[int] | None = None
    ) -> float:
        """One step; ALaST trains ``trainable`` (default: sampled now)."""
        self.opt.zero_grad(set_to_none=True)
        if self.alast is None:
            logits = self.model(images)
        else:
            trainable = self.alast.sample() if trainable is None else trainable
            self.alast.freeze(trainable)
            logits = self.alast.forward(images, trainable)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        distributed.current().average_gradients(self.model.parameters())
        self.opt.step()  # AdamW skips parameters without a gradient
        return float(loss.detach())


class FinetuneArm:
    """Full fine-tuning or ALaST as an :class:`~models.train_split.Arm` of the convergence
    protocol (no boundary: no bytes)."""

    bytes_up = bytes_down = 0

    def __init__(self, name: str, cfg: FinetuneConfig, vit: SelectorViT) -> None:
        self.name = name
        self.model = PlainViT(vit)
        self.trainer = Trainer(cfg, self.model)
        self.optimisers = [self.trainer.opt]
        self.meter = FlopMeter()

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One step. A step's FLOPs are set by the batch size and, for ALaST, by the blocks it
        trains and the tokens each block keeps, which are known before it runs."""
        trainable = self.trainer.plan()
        key: tuple[Any, ...] = (len(labels),)
        alast = self.trainer.alast
        if alast is not None and trainable is not None:
            n = alast.model.vit.cfg.num_patches
            keeps = tuple(math.floor(float(b) * n) for b in alast.budgets)
            key = (len(labels), tuple(trainable), keeps)
        self.meter.run(key, lambda: self.trainer.step(images, labels, trainable))


def saved_bytes(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one step (the activation memory, measured
    on the tensors themselves), plus the weight gradients it produces."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.step(images, labels)
    grads = sum(
        p.grad.numel() * p.grad.element_size()
        for p in trainer.model.parameters()
        if p.grad is not None
    )
    return total + grads


def step_flops(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one training step (forward and backward), counted by torch."""
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.step(images, labels)
    return int(counter.get_total_flops())


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tunes; returns accuracy, seconds per epoch, FLOPs and memory per step (means over
    ``probe`` steps taken after training, so they do not disturb the timing)."""
    torch.manual_seed(cfg.seed)
    vit, _ = load_selector_vit(cfg.pretrained)
    model = PlainViT(vit)
    train = load_dataset(cfg.dataset, "train", root=cfg.data_root, seed=cfg.seed)
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root, seed=cfg.seed)
    trainer = Trainer(cfg, model)
    dist = distributed.current()  # data-parallel under torchrun, else one process
    dist.sync_parameters(model)
    rng = np.random.default_rng(cfg.seed)
    before = accuracy(model, test)
    epoch_s = []
    name = "ALaST" if cfg.alast else "full"
    bar = progress_bar(
        range(cfg.epochs),
        desc=f"fine-tune ({name})",
        disable=None if cfg.progress and dist.is_main else True,
    )
    for epoch in bar:
        model.train()
        frames = train.epoch(epoch)  # composing scene frames is data work, not the step's
        t0 = time.perf_counter()
        for images, labels in batches(frames, train.labels, cfg.batch_size, rng, cfg.max_steps):
            trainer.step(*dist.shard(images, labels))  # this rank's slice of the global batch
        epoch_s.append(time.perf_counter() - t0)
    dist.average_buffers(model)
    correct = correct_of(model, test)
    model.train()
    probe = list(batches(train.epoch(cfg.epochs), train.labels, cfg.batch_size, rng, 4))
    flops = [step_flops(trainer, x, y) for x, y in probe]
    memory = [saved_bytes(trainer, x, y) for x, y in probe]
    return {
        **{k: v for k, v in asdict(cfg).items() if k != "progress"},
        "accuracy": float(correct.mean()),
        "n": len(correct),
        "correct": correct.tolist(),
        "accuracy_before": before,
        "epoch_seconds": float(np.median(epoch_s)),
        "step_flops": float(np.mean(flops)),
        "step_memory_bytes": float(np.mean(memory)),
        "budgets": trainer.alast.budgets.tolist() if trainer.alast else None,
    }
