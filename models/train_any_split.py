"""Training of the any-split network (``semlink train any-split``), docs/methods.md#any-split.

Two phases, one checkpoint (written after every epoch; ``--resume`` goes on from it):

1. **Network** (``epochs``): everything but the coders, from an early-exit ViT's weights
   (``--init-from``, grown to a wider and deeper configuration when asked:
   :func:`models.any_split.grow_from_early_exit`) or from scratch. Each step runs the whole
   network on every token once, which gives the full network's loss, every device exit's loss,
   the activations at every split and the class attention the selectors learn from; then the
   batch is cut into ``budget_groups`` groups, each with its own split and budget (stratified over
   ``[alpha_low, alpha_high]``, so every step trains every split at budgets across the range), and
   each group's kept tokens (exactly ``ceil(alpha N)`` by the selector's key) go through that
   split's tail. Loss::

       CE(full) + w_exit * mean_k CE(exit k)
         + w_tail * mean_groups [CE(tail) + w_kd * KD(full -> tail)] + w_rank * rank

   The tail's tokens are scaled by ``sigmoid(key) / sigmoid(key).detach()`` (exactly 1 in the
   forward pass): the straight-through gradient that lets the task loss rank tokens at each
   budget; ``rank`` is the cross-entropy between the full network's class attention over patches
   in the blocks after the split and ``softmax(key / rank_tau)`` (the ranking signal of
   docs/methods.md#token-selection's "known trap").
2. **Coders** (``jscc_epochs``): everything frozen but each split's nested, SNR-adaptive JSCC
   coder. Each group draws its split and budget as above, each sample its SNR (uniform in
   ``[snr_low, snr_high]`` dB) and its kept symbols per token (log-uniform in ``[d_c/32, d_c]``);
   loss: CE + KD from the noiseless tail on the same tokens + ``w_rec`` times the relative
   reconstruction error, as ``semlink train jscc``.

Validation each epoch (the first ``val_limit`` validation frames): the full network, every exit,
and every split's tail at budgets 0.1, 0.25 and 0.5 (after the channel at 10 dB, rate 1/8 in the
coders' phase); the best epoch by their mean is the checkpoint's weights.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from semlink.models import checkpoint, distributed
from semlink.models.any_split import (
    AnySplitConfig,
    AnySplitViT,
    config_dict,
    config_from_dict,
    gather_patches,
    grow_from_early_exit,
    keep_top,
    masked_mean_attention,
)
from semlink.models.data import epochs_ahead
from semlink.models.datasets import training_splits
from semlink.models.jscc import symbols_kept, transmit
from semlink.models.progress import progress_bar
from semlink.models.selector import distillation_loss
from semlink.models.train_jscc import sample_symbols
from semlink.models.train_selector import cosine_lr
from semlink.models.vit import num_kept

log = logging.getLogger(__name__)

KIND = "any-split"
VAL_BUDGETS = (0.1, 0.25, 0.5)
VAL_CHANNEL = (10.0, 1 / 8)  # SNR (dB) and rate of the coders' validation point


@dataclass
class TrainAnySplitConfig:
    dataset: str = "digits-canvas"
    """digits-canvas (embedded), digits-scene, cifar10 or imagefolder (from --data-root)."""
    data_root: str | None = None
    """Folder of the on-disk datasets."""
    image_size: int = 64
    """Resize target for imagefolder."""
    seed: int = 0
    init_from: str | None = None
    """An early-exit checkpoint (``semlink train early-exit``, or a zoo ``*-ee`` folder's
    checkpoint.pt) to start from, grown to ``--model.*`` when that is wider or deeper; or an
    any-split checkpoint of the same configuration. None: from scratch."""
    grow_noise: float = 1e-3
    """Relative noise on grown weights, to break the symmetry between repeated channels."""
    epochs: int = 10
    """Epochs of the network phase (0: start from --init-from's network, coders only)."""
    jscc_epochs: int = 5
    """Epochs of the coders' phase."""
    jscc_rec_epochs: int = 2
    """The coders' phase's first epochs train on the reconstruction loss alone (no tail: several
    times quicker), a start for the task loss that follows."""
    batch_size: int = 64
    lr: float = 3e-4
    jscc_lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    augment: bool = True
    """digits-canvas: random rotation and scale of each training digit."""
    train_placements: int = 1
    """digits-scene: fresh frames of each training digit per epoch (8: about 10k an epoch)."""
    curriculum_epochs: int = 0
    """digits-scene: epochs from big, uncluttered digits to the full recipe (0: none)."""
    alpha_low: float = 0.05
    alpha_high: float = 1.0
    budget_groups: int = 4
    """Groups a batch is cut into, each with its own split and budget."""
    w_exit: float = 1.0
    w_tail: float = 1.0
    w_kd: float = 1.0
    kd_temperature: float = 2.0
    w_rank: float = 1.0
    rank_tau: float = 0.1
    snr_low: float = -20.0
    snr_high: float = 20.0
    channel: str = "awgn"
    """Channel seen by the coders in training: awgn or rayleigh."""
    w_rec: float = 1.0
    """Weight of the coders' relative reconstruction loss."""
    val_limit: int = 1024
    """Validation frames checked each epoch (0: all)."""
    device: str = "cpu"
    """cpu, cuda or auto (the GPU when there is one)."""
    data_workers: int = 0
    """digits-scene: processes composing training frames ahead of the training loop."""
    max_steps: int | None = None
    """Stop each epoch after this many steps (smoke tests)."""
    limit_train: int | None = None
    """Use only the first N training images (smoke tests)."""
    model: AnySplitConfig = field(default_factory=AnySplitConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha_low < self.alpha_high <= 1.0:
            raise ValueError(
                f"budgets need 0 < alpha_low < alpha_high <= 1, got {self.alpha_low}, "
                f"{self.alpha_high}"
            )
        if self.budget_groups < 1 or self.batch_size < self.budget_groups:
            raise ValueError(
                f"budget_groups must be in [1, batch_size], got {self.budget_groups} "
                f"(batch {self.batch_size})"
            )
        if self.epochs < 0 or self.jscc_epochs < 0 or self.epochs + self.jscc_epochs == 0:
            raise ValueError("train at least one epoch: --epochs and --jscc-epochs are >= 0")
        if self.snr_low >= self.snr_high:
            raise ValueError(f"snr_low must be below snr_high, got {self.snr_low}, {self.snr_high}")


@dataclass
class Group:
    """One slice of a batch: its samples, the split they are offloaded at and their budget."""

    rows: slice
    split: int
    alpha: float


def budget_groups(
    batch: int, cfg: TrainAnySplitConfig, splits: tuple[int, ...], gen: torch.Generator
) -> list[Group]:
    """The batch cut into ``cfg.budget_groups`` groups; group g's budget is drawn in the g-th of
    as many equal stretches of ``[alpha_low, alpha_high]``, its split at random."""
    n = cfg.budget_groups
    width = (cfg.alpha_high - cfg.alpha_low) / n
    u = torch.rand(2 * n, generator=gen).tolist()
    bounds = np.linspace(0, batch, n + 1).round().astype(int)
    return [
        Group(
            slice(int(bounds[g]), int(bounds[g + 1])),
            splits[int(u[n + g] * len(splits)) % len(splits)],
            cfg.alpha_low + width * (g + u[g]),
        )
        for g in range(n)
    ]


def selected_tokens(
    model: AnySplitViT, acts: torch.Tensor, split: int, alpha: float, straight_through: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``ceil(alpha N)`` patch tokens the selector keeps from ``acts`` (B, 1+N, d), and the
    selector's keys (B, N). With ``straight_through`` the tokens carry the key's gradient
    (scaled by ``sigmoid(key) / sigmoid(key).detach()``, which is 1)."""
    a = torch.full((acts.shape[0],), alpha, device=acts.device)
    key = model.selector_key(split, acts, a)
    idx = keep_top(key.detach(), num_kept(alpha, model.cfg.num_patches))
    patches = gather_patches(acts, idx)
    if straight_through:
        w = torch.sigmoid(key.gather(1, idx))[..., None]
        patches = patches * (w / w.detach())
    return patches, key


class Trainer:
    """The two phases, resumable epoch by epoch."""

    def __init__(self, cfg: TrainAnySplitConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.train, self.val = training_splits(cfg, cfg.image_size)
        c, h, _ = self.train.image_shape
        m = cfg.model
        m.in_chans, m.image_size, m.num_classes = c, h, self.train.num_classes
        m.__post_init__()
        self.device = distributed.training_device(cfg.device)
        self.model = AnySplitViT(m).to(self.device)
        self.dist = distributed.current()
        self.metrics: dict[str, Any] = {"history": []}
        self.phase, self.epoch, self.best = "network", 0, -1.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.opt_state: dict | None = None
        self.seconds = 0.0

    # --- start: fresh, grown, or resumed --------------------------------------------------

    def initialise(self, resume: bool) -> None:
        """Resumes ``out`` when asked and present, else starts from ``init_from`` (or scratch)."""
        if resume and self.out.is_file():
            ckpt = checkpoint.load(self.out)
            r = ckpt["resume"]
            self.model.load_state_dict(r["model"])
            self.phase, self.epoch, self.best = r["phase"], r["epoch"], r["best"]
            self.opt_state, self.seconds = r["optimizer"], r["seconds"]
            self.metrics = ckpt["metrics"]
            self.best_state = ckpt["state_dict"] if self.best >= 0 else None
            self.gen.set_state(r["rng"])
            log.info("resumed %s at the %s phase, epoch %d", self.out, self.phase, self.epoch)
            return
        if self.cfg.init_from is not None:
            self._init_from(self.cfg.init_from)
        self.dist.sync_parameters(self.model)
        if self.cfg.epochs == 0:
            self.phase = "coders"

    def _init_from(self, path: str) -> None:
        ckpt = checkpoint.load(path)
        if ckpt.get("kind") == KIND:
            checkpoint.load_weights(self.model, ckpt["state_dict"], path)
            log.info("starting from the any-split network %s", path)
            return
        from semlink.models.train_early_exit import load_early_exit

        source, _ = load_early_exit(path)
        grow_from_early_exit(self.model, source, self.cfg.grow_noise)
        self._start_server_tokens()
        s, n = source.cfg, self.cfg.model
        log.info(
            "grown from %s (%d blocks of %d) to %d blocks of %d",
            path,
            s.depth,
            s.embed_dim,
            n.depth,
            n.embed_dim,
        )

    @torch.no_grad()
    def _start_server_tokens(self) -> None:
        """Each split's server class token starts as the mean class token there over a batch of
        training frames (the tail's blocks then see the kind of token they were trained on)."""
        self.model.eval()
        x = torch.from_numpy(self.train.images[: self.cfg.batch_size]).to(self.device)
        acts = self.model.forward_all(x).activations
        for s in self.model.cfg.splits:
            self.model.server_cls[s - 1].copy_(acts[s][:, :1].mean(0, keepdim=True))

    # --- losses ------------------------------------------------------------------------------

    def network_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The network phase's loss on one batch (see the module docstring)."""
        cfg, model = self.cfg, self.model
        out = model.forward_all(x)
        loss = F.cross_entropy(out.logits, y, label_smoothing=cfg.label_smoothing)
        exits = [F.nll_loss(lp, y) for lp in out.exits]
        loss = loss + cfg.w_exit * torch.stack(exits).mean()
        teacher = out.logits.detach()
        tails, ranks = [], []
        for g in budget_groups(len(y), cfg, model.cfg.splits, self.gen):
            acts = out.activations[g.split][g.rows]
            patches, key = selected_tokens(model, acts, g.split, g.alpha, straight_through=True)
            logits = model.tail(g.split, patches)
            importance = masked_mean_attention(out.cls_attn, g.split)[g.rows].detach()
            ranks.append(-(importance * F.log_softmax(key / cfg.rank_tau, 1)).sum(1).mean())
            tails.append(
                F.cross_entropy(logits, y[g.rows], label_smoothing=cfg.label_smoothing)
                + cfg.w_kd * distillation_loss(logits, teacher[g.rows], cfg.kd_temperature)
            )
        tail, rank = torch.stack(tails).mean(), torch.stack(ranks).mean()
        return loss + cfg.w_tail * tail + cfg.w_rank * rank

    def coder_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The coders' phase's loss on one batch (see the module docstring)."""
        cfg, model = self.cfg, self.model
        with torch.no_grad():
            acts = model.forward_all(x).activations
        losses = []
        d_c = model.cfg.symbols
        for g in budget_groups(len(y), cfg, model.cfg.splits, self.gen):
            with torch.no_grad():
                patches, _ = selected_tokens(model, acts[g.split][g.rows], g.split, g.alpha, False)
                teacher = model.tail(g.split, patches)
            b = patches.shape[0]
            snr = cfg.snr_low + (cfg.snr_high - cfg.snr_low) * torch.rand(b, generator=self.gen)
            m = sample_symbols(b, d_c, None, self.gen)
            coder = model.coder(g.split)
            received = transmit(
                coder, patches, m.to(x.device), snr.to(x.device), cfg.channel, self.gen
            )
            logits = model.tail(g.split, received)
            rec = (received - patches).pow(2).mean() / patches.pow(2).mean().clamp_min(1e-8)
            losses.append(
                F.cross_entropy(logits, y[g.rows])
                + cfg.w_kd * distillation_loss(logits, teacher, cfg.kd_temperature)
                + cfg.w_rec * rec
            )
        return torch.stack(losses).mean()

    # --- validation ---------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Accuracies on the first ``val_limit`` validation frames: ``full``, ``exit_k`` and
        ``s{s}@{alpha}`` (each split's tail; after the channel in the coders' phase)."""
        self.model.eval()
        limit = self.cfg.val_limit or len(self.val)
        hits: dict[str, int] = {}
        seen = 0
        gen = torch.Generator().manual_seed(1234)  # the same noise every epoch
        for images, labels in self.val.batches(128):
            if seen >= limit:
                break
            images, labels = images[: limit - seen], labels[: limit - seen]
            seen += len(labels)
            right = accuracy_counts(self.model, images, labels, self.phase == "coders", gen)
            for name, n in right.items():
                hits[name] = hits.get(name, 0) + n
        return {name: n / seen for name, n in hits.items()}

    # --- the loop -----------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Trains what is left of both phases and writes the finished checkpoint."""
        self.initialise(resume)
        if self.phase == "done":
            log.info("%s is finished already: nothing to resume", self.out)
            return self.metrics
        phases = [
            ("network", self.cfg.epochs, self.cfg.lr),
            ("coders", self.cfg.jscc_epochs, self.cfg.jscc_lr),
        ]
        for name, epochs, lr in phases:
            if name == "network" and self.phase == "coders":
                continue
            if name == "coders" and self.phase == "network":
                self._finish_network_phase()
            self._run_phase(name, epochs, lr)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.metrics["train_seconds"] = self.seconds
        self.phase = "done"
        self._save()
        return self.metrics

    def _finish_network_phase(self) -> None:
        """The best network of phase 1 goes on to the coders' phase."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.metrics["network_seconds"] = self.seconds
        self.phase, self.epoch, self.best, self.best_state, self.opt_state = (
            "coders",
            0,
            -1.0,
            None,
            None,
        )

    def _trainable(self, phase: str) -> list[torch.nn.Parameter]:
        coders = {id(p) for p in self.model.coders.parameters()}
        for p in self.model.parameters():
            p.requires_grad_((id(p) in coders) == (phase == "coders"))
        if not self.cfg.model.recursive:
            self.model.mix.requires_grad_(False)
        return [p for p in self.model.parameters() if p.requires_grad]

    def _run_phase(self, phase: str, epochs: int, base_lr: float) -> None:
        cfg = self.cfg
        params = self._trainable(phase)
        opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.weight_decay)
        if self.opt_state is not None:
            opt.load_state_dict(self.opt_state)
        n_train = (
            len(self.train) if cfg.limit_train is None else min(cfg.limit_train, len(self.train))
        )
        steps = math.ceil(n_train / cfg.batch_size)
        if cfg.max_steps is not None:
            steps = min(steps, cfg.max_steps)
        total, warmup = epochs * steps, min(steps, epochs * steps // 10 + 1)
        offset = cfg.epochs if phase == "coders" else 0  # fresh frames go on across phases
        bar = progress_bar(
            range(self.epoch, epochs),
            desc=f"train any-split: {phase}",
            unit="epoch",
            initial=self.epoch,
            total=epochs,
            disable=None if self.dist.is_main else True,
        )
        frames = epochs_ahead(
            self.train,
            (offset + e for e in range(self.epoch, epochs)),
            cfg.augment,
            ahead=cfg.data_workers > 0,
        )
        loss_fn = self.network_loss if phase == "network" else self.coder_loss
        for epoch, all_images in zip(bar, frames, strict=True):
            t0 = time.perf_counter()
            self.model.train()
            if phase == "coders":
                self.model.eval()  # BatchNorm statistics of the frozen stem stay as they are
            order = torch.randperm(n_train, generator=self.gen).numpy()
            losses = []
            for i in range(steps):
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(epoch * steps + i, total, base_lr, warmup)
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                x, y = self.dist.shard(
                    torch.from_numpy(all_images[:n_train][idx]),
                    torch.from_numpy(self.train.labels[:n_train][idx]),
                )
                loss = loss_fn(x.to(self.device), y.to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                self.dist.average_gradients(params)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(loss.item())
            self.dist.average_buffers(self.model)
            total_loss, count = self.dist.all_sum([sum(losses), len(losses)])
            self.seconds += time.perf_counter() - t0
            val = self.validate()
            score = float(np.mean(list(val.values())))
            mean_loss = total_loss / max(count, 1)
            self.metrics["history"].append(
                {
                    "phase": phase,
                    "epoch": epoch,
                    "loss": mean_loss,
                    "val": val,
                    "seconds": self.seconds,
                }
            )
            shown = {k: v for k, v in val.items() if k == "full" or k.endswith("@0.25")}
            bar.set_postfix(loss=f"{mean_loss:.3f}", **{k: f"{v:.3f}" for k, v in shown.items()})
            if self.dist.is_main:
                log.info(
                    "%s epoch %d/%d: loss %.3f, validation %s (%.0f s so far)",
                    phase,
                    epoch + 1,
                    epochs,
                    mean_loss,
                    ", ".join(f"{k} {v:.3f}" for k, v in val.items()),
                    self.seconds,
                )
            if score >= self.best:
                self.best, self.best_state = score, copy.deepcopy(self.model.state_dict())
            self.epoch, self.opt_state = epoch + 1, opt.state_dict()
            self.metrics["val"] = val
            self._save()
        self.epoch, self.opt_state = epochs, None

    def _save(self) -> None:
        if not self.dist.is_main:
            return
        checkpoint.save(
            self.out,
            kind=KIND,
            config=config_dict(self.cfg.model),
            train_config=asdict(self.cfg),
            state_dict=self.best_state or self.model.state_dict(),
            metrics=self.metrics,
            resume={
                "phase": self.phase,
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.opt_state,
                "best": self.best,
                "seconds": self.seconds,
                "rng": self.gen.get_state(),
            },
        )


@torch.no_grad()
def accuracy_counts(
    model: AnySplitViT,
    images: np.ndarray,
    labels: np.ndarray,
    coded: bool,
    gen: torch.Generator,
) -> dict[str, int]:
    """Right answers on one batch: ``full``, ``exit_k``, and ``s{s}@{alpha}`` per split and
    validation budget (through the split's coder at :data:`VAL_CHANNEL` when ``coded``)."""
    device = next(model.parameters()).device
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).to(device)
    out = model.forward_all(x)
    right = {"full": int((out.logits.argmax(1) == y).sum())}
    for k, lp in enumerate(out.exits, start=1):
        right[f"exit_{k}"] = int((lp.argmax(1) == y).sum())
    snr, rate = VAL_CHANNEL
    for s in model.cfg.splits:
        for alpha in VAL_BUDGETS:
            patches, _ = selected_tokens(model, out.activations[s], s, alpha, False)
            if coded:
                m = torch.full((len(y),), symbols_kept(model.cfg.symbols, rate), device=device)
                snrs = torch.full((len(y),), snr, device=device)
                patches = transmit(model.coder(s), patches, m, snrs, "awgn", gen)
            right[f"s{s}@{alpha:g}"] = int((model.tail(s, patches).argmax(1) == y).sum())
    return right


def train_any_split(cfg: TrainAnySplitConfig, out: str | Path, resume: bool = False) -> dict:
    """Trains (or resumes) the any-split network and writes its checkpoint to ``out``."""
    return Trainer(cfg, Path(out)).run(resume)


def load_any_split(path: str | Path) -> tuple[AnySplitViT, dict[str, Any]]:
    """The trained network of an any-split checkpoint (eval mode) and the checkpoint."""
    ckpt = checkpoint.load(path)
    if ckpt.get("kind") != KIND:
        raise ValueError(f"{path} is not an any-split checkpoint (kind {ckpt.get('kind')!r})")
    model = AnySplitViT(config_from_dict(ckpt["config"]))
    checkpoint.load_weights(model, ckpt["state_dict"], path)
    return model.eval(), ckpt


__all__ = ["TrainAnySplitConfig", "accuracy_counts", "load_any_split", "train_any_split"]
