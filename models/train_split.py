"""``semlink train split``: fine-tune a pretrained ViT as a device/server split, every step across
the :class:`~models.split_learning.Boundary`, with the message compressed by ADC or a baseline.

The scenario: the shipped digits-vit (trained on digits-canvas) adapts to digits-shifted (larger
digits, three times the noise), where it starts at about 41 % test accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semlink.models import distributed
from semlink.models.checkpoint import load_selector_vit
from semlink.models.data import Dataset
from semlink.models.datasets import load_dataset
from semlink.models.progress import progress_bar
from semlink.models.split_learning import COMPRESSORS, Boundary, SplitViT

ZOO = Path(__file__).resolve().parent.parent / "zoo"
DEFAULT_PRETRAINED = ZOO / "digits-vit" / "1"
SCENE_PRETRAINED = ZOO / "scene-vit" / "1" / "checkpoint.pt"  # what the split bench adapts


@dataclass(kw_only=True)
class Finetuning:
    """What every fine-tuning run here shares: the pretrained model, the task, the schedule."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-4
    pretrained: str = str(DEFAULT_PRETRAINED / "checkpoint.pt")
    """Checkpoint of the model to adapt (the shipped digits-vit)."""
    dataset: str = "digits-shifted"
    """The task to adapt to: digits-shifted or digits-scene-shifted (embedded), cifar10 or
    imagefolder (--data-root)."""
    data_root: str | None = None
    """Folder of cifar10 batches or an ImageFolder tree."""
    seed: int = 0
    max_steps: int | None = None  # steps per epoch cap (smoke runs)
    progress: bool = True
    """Progress bars (quiet anyway when not a terminal)."""


@dataclass
class SplitConfig(Finetuning):
    method: str = "adc"  # adc | top-k | random-k | quantise | uncompressed
    xi: float = 0.1  # compression ratio of the forward (and backward) message
    snr_db: float | None = None  # AWGN on both directions of the boundary

    def __post_init__(self) -> None:
        if self.method not in COMPRESSORS:
            raise ValueError(f"method must be one of {sorted(COMPRESSORS)}, got {self.method!r}")
        if not 0.0 < self.xi <= 1.0:
            raise ValueError(f"xi must be in (0, 1], got {self.xi}")


def correct_of(model: torch.nn.Module, data: Dataset, batch: int = 256) -> np.ndarray:
    """1 where ``model`` labels a sample of ``data`` right, else 0 (int64, one per sample)."""
    model.eval()
    right = []
    with torch.no_grad():
        for i in range(0, len(data), batch):
            logits = model(torch.from_numpy(data.images[i : i + batch]))
            right.append(logits.argmax(-1).numpy() == data.labels[i : i + batch])
    return np.concatenate(right).astype(np.int64)


def accuracy(model: torch.nn.Module, data: Dataset, batch: int = 256) -> float:
    """The share of ``data`` that ``model`` labels right."""
    return float(correct_of(model, data, batch).mean())


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    size: int,
    rng: np.random.Generator,
    max_steps: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled full batches (so ADC's T/B is what xi says), at most ``max_steps`` of them."""
    order = rng.permutation(len(labels))
    starts = range(0, len(order) - size + 1, size)
    for i in list(starts)[:max_steps]:
        idx = order[i : i + size]
        yield torch.from_numpy(images[idx]), torch.from_numpy(labels[idx])


def train_split(cfg: SplitConfig) -> dict[str, Any]:
    """Fine-tunes across the boundary; returns test accuracy and the bytes sent both ways."""
    torch.manual_seed(cfg.seed)
    vit, _ = load_selector_vit(cfg.pretrained)
    model = SplitViT(vit)
    train = load_dataset(cfg.dataset, "train", root=cfg.data_root, seed=cfg.seed)
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root, seed=cfg.seed)
    boundary = Boundary(COMPRESSORS[cfg.method](cfg.xi), cfg.snr_db)
    # the two sides' optimisers: each updates only its own parameters
    device_params = [*vit.patch_embed.parameters(), vit.cls_token, vit.pos_embed]
    split = vit.cfg.split
    device_params += [vit.budget_lo, vit.budget_hi, *vit.selectors.parameters()]
    device_params += [p for b in vit.blocks[:split] for p in b.parameters()]
    server_params = [p for b in vit.blocks[split:] for p in b.parameters()]
    server_params += [vit.server_cls_token, *vit.norm.parameters(), *vit.head.parameters()]
    opts = [torch.optim.AdamW(ps, lr=cfg.lr) for ps in (device_params, server_params)]
    rng = np.random.default_rng(cfg.seed)
    dist = distributed.current()  # data-parallel under torchrun, else one process
    dist.sync_parameters(model)
    start = accuracy(model, test)
    t0 = time.perf_counter()
    history = []
    bar = progress_bar(
        range(cfg.epochs),
        desc=f"split {cfg.method} ξ={cfg.xi:g}",
        disable=None if cfg.progress and dist.is_main else True,
    )
    for epoch in bar:
        model.train()
        losses = []
        for images, labels in batches(
            train.epoch(epoch), train.labels, cfg.batch_size, rng, cfg.max_steps
        ):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            images, labels = dist.shard(images, labels)  # this rank's slice of the global batch
            loss, _ = boundary.step(model, images, labels, train.num_classes)
            dist.average_gradients(model.parameters())
            for opt in opts:
                opt.step()
            losses.append(float(loss))
        total_loss, count = dist.all_sum([sum(losses), len(losses)])
        history.append({"epoch": epoch, "loss": total_loss / max(count, 1)})
    dist.average_buffers(model)
    # every rank's messages crossed the boundary: the bytes of the whole run
    up, down = dist.all_sum([boundary.bytes_up, boundary.bytes_down])
    boundary.bytes_up, boundary.bytes_down = int(up), int(down)
    correct = correct_of(model, test)
    return {
        **{k: v for k, v in asdict(cfg).items() if k != "progress"},
        "accuracy": float(correct.mean()),
        "n": len(correct),
        "correct": correct.tolist(),  # per test sample: paired differences between runs
        "accuracy_before": start,
        "bytes_up": boundary.bytes_up,
        "bytes_down": boundary.bytes_down,
        "seconds": time.perf_counter() - t0,
        "history": history,
    }
