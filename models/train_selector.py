"""Training of the budget-conditioned token-selection ViT (``semlink train selector``).

The recipe, written for the *hard* regime the device runs in (exactly ``ceil(alpha*N)`` tokens
leave the device, chosen by top-k of the learned key):

1. **Backbone** (``backbone_epochs``): the split ViT on all patch tokens (gates start open:
   score bias +5, threshold -5). No random token dropping here: it rewards the device blocks for
   spreading the answer over every token, which is exactly what makes selection pointless.
2. **Selector** (``selector_epochs``): a frozen copy of the backbone is the teacher. Each sample
   draws a budget ``alpha`` (stratified over ``[alpha_low, alpha_high]``); the student's forward
   pass keeps exactly the top-``ceil(alpha*N)`` tokens by key (the rest masked out of attention,
   equivalent to removal), and the loss is

   ``CE(hard) + w_kd * KD(teacher all tokens -> hard student) + w_rank * rank + budget loss``

   where ``rank`` is the cross-entropy between the teacher's class attention over patches (mean
   over the server blocks) and ``softmax(key / tau)`` of every gate: the ranking signal from the
   all-token model that the soft-mask recipe lacks (docs/methods.md#token-selection), and
   ``budget loss`` is the regulariser of docs/methods.md#token-selection on the soft masks.

Hard accuracy on the validation split at a few budgets is checked every epoch and shown on the
progress bar; the checkpoint keeps the best epoch by mean hard validation accuracy.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semlink.models import checkpoint, distributed
from semlink.models.data import Dataset, epochs_ahead
from semlink.models.datasets import training_splits
from semlink.models.progress import progress_bar
from semlink.models.selector import budget_loss, distillation_loss, hard_keep_mask, sample_budgets
from semlink.models.vit import SelectorViT, ViTConfig, num_kept

log = logging.getLogger(__name__)

VAL_BUDGETS = (0.1, 0.15, 0.25, 1.0)


@dataclass
class TrainSelectorConfig:
    dataset: str = "digits-canvas"
    """digits-canvas (embedded), cifar10 or imagefolder (from --data-root)."""
    data_root: str | None = None
    """Folder of the on-disk datasets."""
    image_size: int = 64
    """Resize target for imagefolder."""
    seed: int = 0
    """Seeds data splits, positions, budgets and initialisation."""
    backbone_epochs: int = 120
    """Epochs of all-token training (phase 1)."""
    selector_epochs: int = 30
    """Epochs of hard-budget selector training (phase 2)."""
    batch_size: int = 64
    lr: float = 1e-3
    selector_lr: float = 3e-4
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    augment: bool = True
    """digits-canvas: random rotation and scale of each training digit (see Dataset.epoch)."""
    train_placements: int = 1
    """digits-scene: fresh frames of each training digit per epoch (8: about 10k an epoch)."""
    curriculum_epochs: int = 0
    """digits-scene: epochs from big, uncluttered digits to the full recipe (0: none)."""
    alpha_low: float = 0.05
    alpha_high: float = 1.0
    w_kd: float = 1.0
    kd_temperature: float = 2.0
    w_rank: float = 1.0
    rank_tau: float = 0.1
    margin: float = 0.02
    w_out: float = 1.0
    w_in: float = 0.5
    restart_selector: bool = False
    """With ``--resume``: run the budget phase again from its start, the checkpoint's finished
    backbone (its teacher), under this run's selector settings."""
    device: str = "cpu"
    """cpu, cuda or auto (the GPU when there is one)."""
    data_workers: int = 0
    """digits-scene: processes composing training frames, the next epoch's while this one trains
    (0: composed in this process between epochs; the frames are the same either way)."""
    max_steps: int | None = None
    """Stop each phase after this many steps (smoke tests)."""
    limit_train: int | None = None
    """Use only the first N training images (smoke tests)."""
    model: ViTConfig = field(default_factory=ViTConfig)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def hard_accuracy(model: SelectorViT, data: Dataset, alpha: float, batch_size: int = 256) -> float:
    """Accuracy with exactly ``ceil(alpha*N)`` tokens physically removed from the transmission."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for x, y in data.batches(batch_size):
        logits = model(torch.from_numpy(x).to(device), alpha)
        correct += int((logits.argmax(1).cpu().numpy() == y).sum())
    return correct / len(data)


def teacher_importance(
    teacher: SelectorViT, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits on all tokens and its class attention over patches, mean over server blocks."""
    x = teacher.embed(images)
    attn = []
    for i, blk in enumerate(teacher.blocks):
        x, cls_attn = blk(x)
        if i >= teacher.cfg.split:
            attn.append(cls_attn[:, 1:])
    imp = torch.stack(attn).mean(0)
    return teacher.forward_head(teacher.norm(x)), imp / imp.sum(1, keepdim=True)


class Trainer:
    def __init__(self, cfg: TrainSelectorConfig, out: Path) -> None:
        self.cfg = cfg
        self.out = out
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.train, self.val = training_splits(cfg, cfg.image_size)
        c, h, _ = self.train.image_shape
        cfg.model.in_chans, cfg.model.image_size, cfg.model.num_classes = (
            c,
            h,
            self.train.num_classes,
        )
        cfg.model.__post_init__()
        self.device = distributed.training_device(cfg.device)
        self.model = SelectorViT(cfg.model).to(self.device)
        self.dist = distributed.current()  # data-parallel under torchrun, else one process
        self.dist.sync_parameters(self.model)
        self.teacher: SelectorViT | None = None
        self.phase, self.epoch = "backbone", 0
        self.metrics: dict = {"history": []}
        self.best = -1.0
        self.opt = self._optimizer(cfg.lr)
        self.state_dict_best: dict | None = None

    def _optimizer(self, lr: float) -> torch.optim.Optimizer:
        decay = [
            p for n, p in self.model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n
        ]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=lr,
        )

    # --- resume ----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        if not self.dist.is_main:  # one writer
            return
        checkpoint.save(
            path,
            config=asdict(self.cfg.model),
            train_config=asdict(self.cfg),
            state_dict=self.state_dict_best or self.model.state_dict(),
            metrics=self.metrics,
            resume={
                "phase": self.phase,
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "teacher": self.teacher.state_dict() if self.teacher is not None else None,
                "best": self.best,
                "rng": self.gen.get_state(),
            },
        )

    def resume(self, path: Path) -> None:
        ckpt = checkpoint.load(path)
        r = ckpt["resume"]
        if self.cfg.restart_selector:
            self._restart_selector(path, ckpt)
            return
        self.model.load_state_dict(r["model"])
        self.phase, self.epoch, self.best = r["phase"], r["epoch"], r["best"]
        self.metrics = ckpt["metrics"]
        self.gen.set_state(r["rng"])
        if self.phase == "selector":
            self._start_selector_phase(teacher_state=r["teacher"])
        self.opt.load_state_dict(r["optimizer"])
        self.state_dict_best = ckpt["state_dict"] if self.best >= 0 else None
        log.info("resumed %s at phase %s epoch %d", path, self.phase, self.epoch)

    def _restart_selector(self, path: Path, ckpt: dict) -> None:
        teacher = ckpt["resume"]["teacher"]
        if teacher is None:
            raise ValueError(f"{path} has not finished its backbone phase: nothing to restart from")
        self.model.load_state_dict(teacher)
        self.phase, self.epoch, self.best = "backbone", self.cfg.backbone_epochs, -1.0
        history = [h for h in ckpt["metrics"]["history"] if h["phase"] == "backbone"]
        # the backbone's training time (older checkpoints: everything they trained, the budget
        # phase discarded here included)
        seconds = ckpt["metrics"].get("backbone_seconds", ckpt["metrics"]["train_seconds"])
        self.metrics = {"history": history, "train_seconds": seconds, "backbone_seconds": seconds}
        log.info("restarting the budget phase of %s from its finished backbone", path)

    def _start_selector_phase(self, teacher_state: dict | None = None) -> None:
        self.teacher = copy.deepcopy(self.model).eval()
        if teacher_state is not None:
            self.teacher.load_state_dict(teacher_state)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.opt = self._optimizer(self.cfg.selector_lr)
        self.phase = "selector"

    # --- steps -----------------------------------------------------------------------------

    def _backbone_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_device(x, torch.ones(x.shape[0], device=x.device))
        logits = self.model.forward_tail(out.tokens[:, 1:])
        return F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)

    def _selector_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        assert self.teacher is not None
        with torch.no_grad():
            t_logits, importance = teacher_importance(self.teacher, x)
        alpha = sample_budgets(x.shape[0], cfg.alpha_low, cfg.alpha_high, self.gen).to(x.device)
        out = self.model.forward_device(x, alpha)
        keep = hard_keep_mask(out.key.detach(), alpha)  # dropped patches masked out = removed
        logits = self.model.forward_tail(out.tokens[:, 1:], keep)
        ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        kd = distillation_loss(logits, t_logits, cfg.kd_temperature)
        rank = sum(
            -(importance * F.log_softmax(k / cfg.rank_tau, 1)).sum(1).mean() for k in out.keys
        )
        reg = budget_loss(out.masks, alpha, cfg.margin, cfg.w_out, cfg.w_in)
        return ce + cfg.w_kd * kd + cfg.w_rank * rank + reg

    def _validate(self) -> dict[str, float]:
        budgets = VAL_BUDGETS if self.phase == "selector" else (1.0,)
        return {f"{a:g}": hard_accuracy(self.model, self.val, a) for a in budgets}

    def run(self) -> dict:
        cfg = self.cfg
        phases = [
            ("backbone", cfg.backbone_epochs, cfg.lr),
            ("selector", cfg.selector_epochs, cfg.selector_lr),
        ]
        n_train = (
            len(self.train) if cfg.limit_train is None else min(cfg.limit_train, len(self.train))
        )
        steps_per_epoch = math.ceil(n_train / cfg.batch_size)
        t0 = time.perf_counter()
        for name, epochs, base_lr in phases:
            if name == "backbone" and self.phase == "selector":
                continue
            if name == "selector" and self.phase == "backbone":
                self.metrics.setdefault(
                    "backbone_seconds",
                    self.metrics.get("train_seconds", 0.0) + time.perf_counter() - t0,
                )
                self._start_selector_phase()
                self.epoch = 0
            total = epochs * steps_per_epoch
            bar = progress_bar(
                range(self.epoch, epochs),
                desc=f"train {name}",
                unit="epoch",
                initial=self.epoch,
                total=epochs,
                disable=None if self.dist.is_main else True,
            )
            # the budget phase's frames go on from the backbone's (past its curriculum)
            offset = 0 if name == "backbone" else cfg.backbone_epochs
            frames = epochs_ahead(
                self.train,
                (offset + e for e in range(self.epoch, epochs)),
                cfg.augment,
                ahead=cfg.data_workers > 0,
            )
            for epoch, all_images in zip(bar, frames, strict=True):
                self.model.train()
                images = all_images[:n_train]
                labels = self.train.labels[:n_train]
                order = torch.randperm(n_train, generator=self.gen).numpy()
                losses = []
                for i in range(steps_per_epoch):
                    step = epoch * steps_per_epoch + i
                    if cfg.max_steps is not None and i >= cfg.max_steps:
                        break
                    for g in self.opt.param_groups:
                        g["lr"] = cosine_lr(
                            step, total, base_lr, warmup=min(5 * steps_per_epoch, total // 10 + 1)
                        )
                    idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                    x, y = self.dist.shard(  # this rank's slice of the global batch
                        torch.from_numpy(images[idx]), torch.from_numpy(labels[idx])
                    )
                    x, y = x.to(self.device), y.to(self.device)
                    loss = (
                        self._backbone_loss(x, y)
                        if name == "backbone"
                        else self._selector_loss(x, y)
                    )
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.dist.average_gradients(self.model.parameters())
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                    self.opt.step()
                    losses.append(loss.item())
                self.epoch = epoch + 1
                self.dist.average_buffers(self.model)
                total_loss, count = self.dist.all_sum([sum(losses), len(losses)])
                losses = [total_loss / max(count, 1)]  # the mean over every rank's steps
                val = self._validate()
                score = float(np.mean(list(val.values())))
                self.metrics["history"].append(
                    {"phase": name, "epoch": epoch, "loss": float(np.mean(losses)), "val": val}
                )
                bar.set_postfix(
                    loss=f"{np.mean(losses):.3f}",
                    **{f"val@{k}": f"{v:.3f}" for k, v in val.items()},
                )
                if self.dist.is_main:  # a line a run in the background leaves in its log
                    log.info(
                        "%s epoch %d/%d: loss %.3f, validation accuracy per budget %s",
                        name,
                        epoch + 1,
                        epochs,
                        np.mean(losses),
                        ", ".join(f"α {k} {v:.3f}" for k, v in val.items()),
                    )
                if name == "selector" and score >= self.best:
                    self.best = score
                    self.state_dict_best = copy.deepcopy(self.model.state_dict())
                self.metrics["val"] = val
                self.save(self.out)
        if self.state_dict_best is not None:
            self.model.load_state_dict(self.state_dict_best)
        self.metrics["train_seconds"] = (
            self.metrics.get("train_seconds", 0.0) + time.perf_counter() - t0
        )
        self.metrics["val_best"] = {
            f"{a:g}": hard_accuracy(self.model, self.val, a) for a in VAL_BUDGETS
        }
        self.save(self.out)
        return self.metrics


def train_selector(cfg: TrainSelectorConfig, out: str | Path, resume: bool = False) -> dict:
    """Trains (or resumes) and writes the checkpoint to ``out``. Returns the metrics."""
    out = Path(out)
    if cfg.restart_selector and not (resume and out.is_file()):
        raise ValueError(
            f"--restart-selector restarts the budget phase of an existing checkpoint: pass "
            f"--resume and an --out that exists (got {'no --resume' if not resume else out})"
        )
    trainer = Trainer(cfg, out)
    if resume and out.is_file():
        trainer.resume(out)
    return trainer.run()


__all__ = ["TrainSelectorConfig", "train_selector", "hard_accuracy", "num_kept"]
