"""Training of the recursive early-exit network in the three regimes of Kubaty et al. (2024),
``semlink train early-exit --regime joint|disjoint|mixed`` (docs/methods.md#early-exits).

Every regime gets the same epoch budget, ``epochs``:

- **joint**: backbone and every exit head together from scratch for ``epochs`` epochs; the loss is
  the mean cross-entropy over the exits.
- **disjoint**: the backbone with its final classifier alone for ``backbone_epochs``, then the
  backbone *frozen* (weights and BatchNorm statistics) while the intermediate heads and the mixing
  matrices train for the remaining epochs.
- **mixed**: the same backbone phase, then everything jointly (mean cross-entropy over the exits)
  for the remaining epochs, at ``finetune_lr``.

The backbone phase of disjoint and mixed is identical for one seed, so ``--from-backbone PATH`` starts
the second phase from a finished backbone phase (a checkpoint this command wrote) instead of
training it again; the epochs it cost are counted in the checkpoint's metrics all the same.

The checkpoint is written after every epoch with what it takes to go on (phase, epoch, optimizer,
random state, backbone phase); ``--resume`` continues an interrupted run from it, to the same
weights an uninterrupted run reaches.
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
from semlink.models.early_exit import (
    EarlyExitConfig,
    EarlyExitNet,
    ViTBackbone,
    config_dict,
    config_from_dict,
)
from semlink.models.progress import progress_bar
from semlink.models.train_selector import cosine_lr

log = logging.getLogger(__name__)

REGIMES = ("joint", "disjoint", "mixed")


@dataclass
class TrainEarlyExitConfig:
    regime: str = "mixed"
    """joint, disjoint or mixed (see the module docstring)."""
    dataset: str = "digits-canvas"
    """digits-canvas (embedded), cifar10 or imagefolder (from --data-root)."""
    data_root: str | None = None
    """Folder of cifar10 batches or an ImageFolder tree."""
    image_size: int = 64
    """Resize target for imagefolder."""
    seed: int = 0
    """Seeds data, placements and initialisation."""
    epochs: int = 90
    """Total epochs, the same for every regime."""
    backbone_epochs: int = 60
    """disjoint / mixed: epochs of the backbone phase (the rest train the exits)."""
    batch_size: int = 64
    lr: float = 1e-3
    finetune_lr: float = 1e-3
    """mixed: learning rate of the joint second phase (the others' rate: at 3e-4 the mixed
    regime ended 1.5 points lower on the test split)."""
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    augment: bool = True
    train_placements: int = 1
    """digits-scene: fresh frames of each training digit per epoch (8: about 10k an epoch)."""
    curriculum_epochs: int = 0
    """digits-scene: epochs from big, uncluttered digits to the full recipe (0: none)."""
    init_from: str | None = None
    """Selector ViT checkpoint (``semlink train selector``): start the ViT backbone from its stem,
    class token, positions and blocks (a warm start; the model's sizes must match it)."""
    from_backbone: str | None = None
    """Checkpoint path: start the second phase from its finished backbone phase (disjoint /
    mixed; same seed and model)."""
    device: str = "cpu"
    """cpu, cuda or auto (the GPU when there is one)."""
    data_workers: int = 0
    """digits-scene: processes composing training frames, the next epoch's while this one trains
    (0: composed in this process between epochs; the frames are the same either way)."""
    max_steps: int | None = None
    """Stop each epoch after this many steps (smoke tests)."""
    limit_train: int | None = None
    """Use only this many training images (smoke tests)."""
    model: EarlyExitConfig = field(default_factory=EarlyExitConfig)

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {self.regime!r}")
        if self.regime != "joint" and not 0 < self.backbone_epochs < self.epochs:
            raise ValueError(
                f"backbone_epochs must be in [1, epochs-1] = [1, {self.epochs - 1}], got {self.backbone_epochs}"
            )
        if self.init_from is not None and self.from_backbone is not None:
            raise ValueError(
                "--init-from and --from-backbone both set the backbone's weights: pass one"
            )


def multi_exit_loss(
    outs: list[torch.Tensor], y: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Mean cross-entropy over the exits (``outs`` are log-probabilities)."""
    return torch.stack(
        [
            F.nll_loss(o, y) * (1 - label_smoothing) - o.mean(1).mean() * label_smoothing
            for o in outs
        ]
    ).mean()


@torch.no_grad()
def exit_accuracies(model: EarlyExitNet, data: Dataset, batch_size: int = 256) -> list[float]:
    """Accuracy of every exit on ``data``."""
    model.eval()
    device = next(model.parameters()).device
    correct = np.zeros(model.num_exits)
    for x, y in data.batches(batch_size):
        outs = model(torch.from_numpy(x).to(device))
        correct += [(o.argmax(1).cpu().numpy() == y).sum() for o in outs]
    return (correct / len(data)).tolist()


def freeze_backbone(model: EarlyExitNet) -> None:
    """Disjoint second phase: no gradients into the backbone or final classifier, and BatchNorm
    statistics fixed (eval mode), so the backbone computes exactly what it did."""
    for p in model.backbone_parameters():
        p.requires_grad_(False)
    model.backbone.eval()


class Trainer:
    def __init__(self, cfg: TrainEarlyExitConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.train, self.val = training_splits(cfg, cfg.image_size)
        c, h, _ = self.train.image_shape
        cfg.model.in_chans, cfg.model.image_size = c, h
        cfg.model.num_classes = self.train.num_classes
        cfg.model.__post_init__()
        self.device = distributed.training_device(cfg.device)
        self.model = EarlyExitNet(cfg.model).to(self.device)
        self.dist = distributed.current()  # data-parallel under torchrun, else one process
        self.dist.sync_parameters(self.model)
        self.metrics: dict = {"history": [], "regime": cfg.regime}
        self.backbone_state: dict | None = None
        self.start = (0, 0)  # (phase, epoch in it) to train from: (0, 0), or where a run stopped
        self.optimizer_state: dict | None = None  # the stopped phase's, for its next epoch
        self.elapsed_before = 0.0  # training seconds of the runs this one resumes

    def _phases(self) -> list[tuple[str, int, float]]:
        cfg = self.cfg
        if cfg.regime == "joint":
            return [("joint", cfg.epochs, cfg.lr)]
        second = ("heads", cfg.lr) if cfg.regime == "disjoint" else ("all", cfg.finetune_lr)
        phases = [("backbone", cfg.backbone_epochs, cfg.lr)]
        return phases + [(second[0], cfg.epochs - cfg.backbone_epochs, second[1])]

    def _optimizer(self, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        ids = {id(p) for p in params}
        named = [(n, p) for n, p in self.model.named_parameters() if id(p) in ids]
        decay = [p for n, p in named if p.ndim >= 2 and "pos_embed" not in n and "mix" not in n]
        rest = [
            p for n, p in named if not (p.ndim >= 2 and "pos_embed" not in n and "mix" not in n)
        ]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.cfg.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=lr,
        )

    def _loss(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ls = self.cfg.label_smoothing
        if phase == "backbone":
            return multi_exit_loss([self.model.forward_final(x)], y, ls)
        return multi_exit_loss(self.model(x), y, ls)

    def _init_from_selector(self, path: str) -> None:
        if not isinstance(self.model.backbone, ViTBackbone):
            raise ValueError("--init-from needs the vit backbone: drop --model.backbone cnn")
        state = checkpoint.load(path)["state_dict"]
        own = self.model.backbone.state_dict()
        shared = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(shared))
        if missing:
            raise ValueError(f"{path} lacks backbone weights {missing[:3]}: not a selector ViT")
        wrong = [k for k, v in shared.items() if v.shape != own[k].shape]
        if wrong:
            raise ValueError(
                f"{path} does not fit this model ({wrong[0]}: {tuple(shared[wrong[0]].shape)} "
                f"against {tuple(own[wrong[0]].shape)}): match --model.embed-dim, depth, "
                "heads and patch size to it"
            )
        self.model.backbone.load_state_dict(shared)
        log.info("backbone starts from the selector ViT %s", path)

    def _load_backbone(self, path: str) -> None:
        ckpt = checkpoint.load(path)
        state = ckpt.get("backbone_state")
        if state is None:
            raise ValueError(
                f"{path} holds no finished backbone phase; train a disjoint or mixed regime first"
            )
        # Strict loading is the compatibility check: recursive and plain networks of one
        # architecture share a backbone phase (it never uses the mixing).
        checkpoint.load_weights(self.model, state, path)
        self.backbone_state = state
        self.metrics["history"] = [
            h for h in ckpt["metrics"]["history"] if h["phase"] == "backbone"
        ]
        self.metrics["backbone_seconds"] = ckpt["metrics"].get("backbone_seconds", 0.0)
        log.info("second phase starts from the backbone phase of %s", path)

    def save(self, phase: int, epoch: int, opt: torch.optim.Optimizer | None, t0: float) -> None:
        """The checkpoint so far, to resume at epoch ``epoch`` of phase ``phase`` (a phase's
        length: its next phase's start); ``opt`` is the optimizer that epoch continues with."""
        if not self.dist.is_main:  # one writer
            return
        self._write(
            resume={
                "phase": phase,
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": opt.state_dict() if opt is not None else None,
                "rng": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "elapsed_s": self.elapsed_before + time.perf_counter() - t0,
            }
        )

    def _write(self, **extra: object) -> None:
        checkpoint.save(
            self.out,
            kind="early-exit",
            config=config_dict(self.cfg.model),
            train_config=asdict(self.cfg) | {"model": config_dict(self.cfg.model)},
            state_dict=self.model.state_dict(),
            backbone_state=self.backbone_state,
            metrics=self.metrics,
            **extra,
        )

    def resume(self) -> bool:
        """Continues from the checkpoint at ``out`` when it is an unfinished run of this
        regime; returns whether it was finished already (nothing left to train)."""
        ckpt = checkpoint.load(self.out)
        if ckpt.get("metrics", {}).get("regime") != self.cfg.regime:
            raise ValueError(
                f"{self.out} holds a {ckpt.get('metrics', {}).get('regime')!r} run, not "
                f"{self.cfg.regime!r}: resume with its own regime or write to another --out"
            )
        r = ckpt.get("resume")
        if r is None:
            checkpoint.load_weights(self.model, ckpt["state_dict"], self.out)
            self.metrics = ckpt["metrics"]
            return True
        checkpoint.load_weights(self.model, r["model"], self.out)
        self.start, self.optimizer_state = (r["phase"], r["epoch"]), r["optimizer"]
        self.backbone_state, self.metrics = ckpt.get("backbone_state"), ckpt["metrics"]
        self.gen.set_state(r["rng"])
        torch.set_rng_state(r["torch_rng"])
        self.elapsed_before = r["elapsed_s"]
        log.info("resumed %s at phase %d, epoch %d", self.out, *self.start)
        return False

    def run(self, resume: bool = False) -> dict:
        """Trains the regime's phases (from where ``out``'s run stopped, with ``resume``) and
        writes the finished checkpoint. Returns the metrics."""
        cfg = self.cfg
        if resume and self.out.is_file() and self.resume():
            log.info("%s is finished already: nothing to resume", self.out)
            return self.metrics
        n_train = (
            len(self.train) if cfg.limit_train is None else min(cfg.limit_train, len(self.train))
        )
        steps = math.ceil(n_train / cfg.batch_size)
        if cfg.max_steps is not None:
            steps = min(steps, cfg.max_steps)
        first_phase, first_epoch = self.start
        fresh = self.start == (0, 0)
        if fresh and cfg.from_backbone is not None and cfg.regime != "joint":
            self._load_backbone(cfg.from_backbone)
        if fresh and cfg.init_from is not None:
            self._init_from_selector(cfg.init_from)
        t0 = time.perf_counter()
        epoch0 = 0
        val: list[float] = []
        for index, (phase, epochs, base_lr) in enumerate(self._phases()):
            done = index < first_phase or (phase == "backbone" and self.backbone_state is not None)
            if done:
                epoch0 += epochs
                continue
            start = first_epoch if index == first_phase else 0
            if phase == "heads":
                freeze_backbone(self.model)
            params = {
                "backbone": self.model.backbone_parameters(),
                "heads": self.model.exit_parameters(),
            }.get(phase, [p for p in self.model.parameters() if p.requires_grad])
            opt = self._optimizer(params, base_lr)
            if start and self.optimizer_state is not None:
                opt.load_state_dict(self.optimizer_state)
            total = epochs * steps
            warmup = min(5 * steps, total // 10 + 1)
            bar = progress_bar(
                range(start, epochs),
                desc=f"{cfg.regime}: {phase}",
                unit="epoch",
                initial=start,
                total=epochs,
                disable=None if self.dist.is_main else True,
            )
            frames = epochs_ahead(
                self.train,
                (epoch0 + e for e in range(start, epochs)),
                cfg.augment,
                ahead=cfg.data_workers > 0,
            )
            for epoch, all_images in zip(bar, frames, strict=True):
                self.model.train()
                if phase == "heads":
                    self.model.backbone.eval()
                images = all_images[:n_train]
                labels = self.train.labels[:n_train]
                order = torch.randperm(n_train, generator=self.gen).numpy()
                losses = []
                for i in range(steps):
                    for g in opt.param_groups:
                        g["lr"] = cosine_lr(epoch * steps + i, total, base_lr, warmup)
                    idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                    x, y = self.dist.shard(  # this rank's slice of the global batch
                        torch.from_numpy(images[idx]), torch.from_numpy(labels[idx])
                    )
                    loss = self._loss(phase, x.to(self.device), y.to(self.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.dist.average_gradients(params)
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    losses.append(loss.item())
                self.dist.average_buffers(self.model)
                total_loss, count = self.dist.all_sum([sum(losses), len(losses)])
                losses = [total_loss / max(count, 1)]  # the mean over every rank's steps
                val = exit_accuracies(self.model, self.val)
                log.info(
                    "%s %s epoch %d/%d: loss %.3f, validation accuracy per exit %s",
                    cfg.regime,
                    phase,
                    epoch + 1,
                    epochs,
                    losses[0],
                    np.round(val, 3),
                )
                self.metrics["history"].append(
                    {
                        "phase": phase,
                        "epoch": epoch0 + epoch,
                        "loss": float(np.mean(losses)),
                        "val": val,
                    }
                )
                if epoch + 1 < epochs:
                    self.save(index, epoch + 1, opt, t0)
            epoch0 += epochs
            if phase == "backbone":
                self.backbone_state = copy.deepcopy(self.model.state_dict())
                self.metrics["backbone_seconds"] = self.elapsed_before + time.perf_counter() - t0
            self.save(index + 1, 0, None, t0)
            log.info("%s %s: validation accuracy per exit %s", cfg.regime, phase, np.round(val, 3))
        elapsed = self.elapsed_before + time.perf_counter() - t0
        if cfg.from_backbone is not None:  # the reused backbone phase cost its time in another run
            elapsed += self.metrics.get("backbone_seconds", 0.0)
        self.metrics["train_seconds"] = elapsed
        self.metrics["val"] = exit_accuracies(self.model, self.val)
        self.metrics["epochs"] = cfg.epochs
        if self.dist.is_main:  # one writer; finished: no resume state
            self._write()
        return self.metrics


def train_early_exit(cfg: TrainEarlyExitConfig, out: str | Path, resume: bool = False) -> dict:
    """Trains one regime and writes the checkpoint to ``out`` (after every epoch, and finished
    at the end); with ``resume``, continues the run a checkpoint at ``out`` stopped. Returns
    the metrics."""
    return Trainer(cfg, Path(out)).run(resume)


def load_early_exit(path: str | Path) -> tuple[EarlyExitNet, dict]:
    """Rebuilds the network from its stored config and loads the weights strictly."""
    ckpt = checkpoint.load(path)
    model = EarlyExitNet(config_from_dict(ckpt["config"]))
    checkpoint.load_weights(model, ckpt["state_dict"], path)
    return model.eval(), ckpt
