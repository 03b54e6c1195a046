"""``semlink train split``: fine-tune a pretrained ViT as a device/server split, every step across
the :class:`~models.split_learning.Boundary`, with the message compressed by ADC or a baseline.

The scenario: the shipped digits-vit (trained on digits-canvas) adapts to digits-shifted (larger
digits, three times the noise), where it starts at about 41 % test accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from semlink.models import distributed
from semlink.models.checkpoint import load_selector_vit
from semlink.models.data import Dataset
from semlink.models.datasets import load_dataset
from semlink.models.progress import progress_bar
from semlink.models.split_learning import COMPRESSORS, Boundary, Compressor, SplitViT
from semlink.models.vit import SelectorViT

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


def side_parameters(vit: SelectorViT) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The device's parameters and the server's: each side's optimiser updates only its own."""
    split = vit.cfg.split
    device = [*vit.patch_embed.parameters(), vit.cls_token, vit.pos_embed]
    device += [vit.budget_lo, vit.budget_hi, *vit.selectors.parameters()]
    device += [p for b in vit.blocks[:split] for p in b.parameters()]
    server = [p for b in vit.blocks[split:] for p in b.parameters()]
    server += [vit.server_cls_token, *vit.norm.parameters(), *vit.head.parameters()]
    return device, server


def train_split(cfg: SplitConfig) -> dict[str, Any]:
    """Fine-tunes across the boundary; returns test accuracy and the bytes sent both ways."""
    torch.manual_seed(cfg.seed)
    vit, _ = load_selector_vit(cfg.pretrained)
    model = SplitViT(vit)
    train = load_dataset(cfg.dataset, "train", root=cfg.data_root, seed=cfg.seed)
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root, seed=cfg.seed)
    boundary = Boundary(COMPRESSORS[cfg.method](cfg.xi), cfg.snr_db)
    opts = [torch.optim.AdamW(ps, lr=cfg.lr) for ps in side_parameters(vit)]
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


# --- the convergence protocol of `semlink bench split` ---------------------------------------


@dataclass
class Schedule:
    """How long every arm trains: one rule, fixed before the first run, the same for every arm."""

    patience: int | None = 6
    """Epochs without a new best validation accuracy before the learning rate decays (while
    ``decays`` remain) or the run stops; None: exactly ``max_epochs`` epochs (a fixed schedule)."""
    max_epochs: int = 100
    """The cap on epochs; a run stopped by it has not converged and says so."""
    decays: int = 1
    """Plateaus met by decaying the learning rate (by ``decay``) before one stops the run."""
    decay: float = 0.1
    min_delta: float = 0.0
    """How much a validation accuracy must beat the last one counted as an improvement for the
    patience to start again (the best checkpoint is still the highest accuracy of any epoch): a
    run creeping up by less than this over ``patience`` epochs has converged."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_delta < 1.0:
            raise ValueError(f"min_delta must be in [0, 1), got {self.min_delta}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 epoch (or None), got {self.patience}")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, got {self.max_epochs}")
        if self.decays < 0 or not 0.0 < self.decay < 1.0:
            raise ValueError(
                f"decays must be >= 0 and decay in (0, 1), got {self.decays} and {self.decay}"
            )


class Plateau:
    """The stopping rule of a :class:`Schedule`, fed one validation accuracy per epoch.

    A new best is strictly above every accuracy before it, the start's included (so the start
    is the best checkpoint of a run that never improves on it). An improvement, which starts
    the patience again, is an accuracy more than ``min_delta`` above the last improvement's."""

    def __init__(self, schedule: Schedule, start: float) -> None:
        self.schedule = schedule
        self.best, self.best_epoch = start, 0
        self.mark = start  # the accuracy of the last improvement
        self.since = 0  # epochs since the best (or since the last decay)
        self.decays_left = schedule.decays
        self.stopped: str | None = None  # "patience", "cap" or "schedule" once stopped

    def update(self, epoch: int, accuracy: float) -> str:
        """The verdict after training epoch ``epoch`` (from 1) scored ``accuracy`` on validation:
        ``"continue"``, ``"decay"`` (scale the learning rate by ``decay``, then continue) or
        ``"stop"``."""
        s = self.schedule
        if accuracy > self.best:
            self.best, self.best_epoch = accuracy, epoch
        if accuracy > self.mark + s.min_delta:
            self.mark, self.since = accuracy, 0
        else:
            self.since += 1
        verdict = "continue"
        if s.patience is not None and self.since >= s.patience:
            if self.decays_left == 0:
                self.stopped = "patience"
                return "stop"
            self.decays_left -= 1
            self.since = 0
            verdict = "decay"
        if epoch >= s.max_epochs:
            self.stopped = "schedule" if s.patience is None else "cap"
            return "stop"
        return verdict


class FlopMeter:
    """FLOPs of training steps as torch counts them (``FlopCounterMode``: matrix products,
    convolutions, attention), summed. A step with a ``key`` seen before is credited the count
    made then, so counting costs one instrumented step per distinct step shape; ``key=None``
    counts that step afresh."""

    def __init__(self) -> None:
        self.total = 0
        self.seen: dict[Hashable, int] = {}
        self.counting = True  # off: steps run uncounted (the timing pass)

    def run(self, key: Hashable | None, step: Callable[[], object]) -> None:
        """Runs ``step`` and adds its FLOPs to :attr:`total`."""
        if not self.counting:
            step()
            return
        if key is not None and key in self.seen:
            step()
            self.total += self.seen[key]
            return
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = int(counter.get_total_flops())
        if key is not None:
            self.seen[key] = flops
        self.total += flops


class Arm(Protocol):
    """One way of training, as the protocol drives it: ``step`` trains on one batch and keeps
    the counts (FLOPs in ``meter``, and the boundary's ``bytes_up``/``bytes_down``, 0 without
    one)."""

    name: str
    model: nn.Module  # the whole model: what validation and test score
    optimisers: list[torch.optim.Optimizer]
    meter: FlopMeter  # the FLOPs of every step so far

    @property
    def bytes_up(self) -> int: ...

    @property
    def bytes_down(self) -> int: ...

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None: ...


class SplitArm:
    """Split learning across a :class:`Boundary` with one compressor: an :class:`Arm`."""

    def __init__(
        self,
        name: str,
        vit: SelectorViT,
        compressor: Compressor,
        lr: float,
        snr_db: float | None = None,
    ) -> None:
        self.name = name
        self.model = SplitViT(vit)
        self.boundary = Boundary(compressor, snr_db)
        self.optimisers = [torch.optim.AdamW(ps, lr=lr) for ps in side_parameters(vit)]
        self.meter = FlopMeter()
        self.num_classes = vit.cfg.num_classes

    @property
    def bytes_up(self) -> int:
        return self.boundary.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.boundary.bytes_down

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One step of both sides; the message's shape (so the FLOPs) depends on the batch size
        alone unless the compressor says otherwise."""

        def run() -> None:
            for opt in self.optimisers:
                opt.zero_grad(set_to_none=True)
            self.boundary.step(self.model, images, labels, self.num_classes)
            for opt in self.optimisers:
                opt.step()

        fixed = self.boundary.compressor.shape_fixed
        self.meter.run(len(labels) if fixed else None, run)


@dataclass
class Curve:
    """One arm's run under the protocol: a point per epoch, epoch 0 being the start. Each point
    holds the validation accuracy after that epoch and the cumulative costs up to it: ``steps``,
    ``flops`` (counted), ``bytes_up``/``bytes_down`` (the boundary's), ``seconds`` (training
    time in this run, frames and validation aside: noisy on a shared machine) and ``lr`` (the
    learning rate that epoch trained at)."""

    name: str
    points: list[dict[str, float]]
    best_epoch: int = 0
    best_accuracy: float = 0.0
    stopped: str = ""  # "patience", "cap" (did not converge) or "schedule" (fixed epochs)

    @property
    def epochs(self) -> int:
        """Epochs trained."""
        return int(self.points[-1]["epoch"])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Epochs(Protocol):
    """Training frames by epoch: a train :class:`Dataset` or anything that serves its epochs."""

    labels: np.ndarray

    def epoch(self, epoch: int) -> np.ndarray: ...


def train_to_convergence(
    arms: Sequence[Arm],
    train: Epochs,
    val: Dataset,
    schedule: Schedule,
    *,
    batch_size: int = 64,
    seed: int = 0,
    max_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Curve]:
    """Trains every arm under ``schedule``, all in lockstep: each epoch's fresh frames are
    composed once and every arm still running trains on them in the same shuffled batches (one
    permutation per epoch from ``seed``), then is scored on ``val`` and judged by its own
    :class:`Plateau`. Returns each arm's :class:`Curve` and leaves every arm holding the weights
    of its best validation epoch (the checkpoint to test). ``log`` gets a line per epoch."""
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    curves, plateaus, best, rngs, steps, seconds = {}, {}, {}, {}, {}, {}
    for arm in arms:
        start = accuracy(arm.model, val)
        curves[arm.name] = Curve(arm.name, [_point(arm, 0, start, 0, 0.0)], 0, start)
        plateaus[arm.name] = Plateau(schedule, start)
        best[arm.name] = _snapshot(arm.model)
        rngs[arm.name] = np.random.default_rng(seed)
        steps[arm.name], seconds[arm.name] = 0, 0.0
    running = list(arms)
    epoch = 0
    while running:
        epoch += 1
        frames = train.epoch(epoch - 1)  # composed once for every arm
        shown = []
        for arm in list(running):
            arm.model.train()
            t0 = time.perf_counter()
            for images, labels in batches(
                frames, train.labels, batch_size, rngs[arm.name], max_steps
            ):
                arm.step(images, labels)
                steps[arm.name] += 1
            seconds[arm.name] += time.perf_counter() - t0
            acc = accuracy(arm.model, val)
            plateau, curve = plateaus[arm.name], curves[arm.name]
            verdict = plateau.update(epoch, acc)
            curve.points.append(_point(arm, epoch, acc, steps[arm.name], seconds[arm.name]))
            if plateau.best_epoch == epoch:
                best[arm.name] = _snapshot(arm.model)
            if verdict == "decay":
                for opt in arm.optimisers:
                    for group in opt.param_groups:
                        group["lr"] *= schedule.decay
            elif verdict == "stop":
                curve.best_epoch, curve.best_accuracy = plateau.best_epoch, plateau.best
                curve.stopped = plateau.stopped or ""
                running.remove(arm)
            shown.append(f"{arm.name} {100 * acc:.1f}{'↓' if verdict == 'decay' else ''}")
        if log is not None:
            log(f"epoch {epoch}: " + ", ".join(shown) + f" ({len(running)} still running)")
    for arm in arms:
        arm.model.load_state_dict(best[arm.name])
        arm.model.eval()
    return curves


def _point(arm: Arm, epoch: int, acc: float, steps: int, seconds: float) -> dict[str, float]:
    return {
        "epoch": epoch,
        "val_accuracy": acc,
        "steps": steps,
        "flops": arm.meter.total,
        "bytes_up": arm.bytes_up,
        "bytes_down": arm.bytes_down,
        "seconds": seconds,
        "lr": arm.optimisers[0].param_groups[0]["lr"],
    }


def cost_to_reach(
    points: Sequence[dict[str, float]], target: float, cost: Callable[[dict[str, float]], float]
) -> float | None:
    """What an arm spent, ``cost(point)``, up to the end of the first epoch whose validation
    accuracy reached ``target``; None if none did ("never")."""
    for p in points:
        if p["val_accuracy"] >= target:
            return cost(p)
    return None


def step_seconds(
    arms: Sequence[Arm],
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rounds: int = 10,
) -> dict[str, float]:
    """Seconds per training step of each arm, measured side by side: each round every arm takes
    one step on the same batch (the round's from ``data``, cycled), in an order rotated round
    by round, so a busy moment of a shared machine falls on every arm alike. Returns each arm's
    median over the rounds, after one untimed warm-up step each. The steps train the arms: time
    them after testing."""
    times: dict[str, list[float]] = {a.name: [] for a in arms}
    for arm in arms:
        arm.model.train()
        arm.meter.counting = False  # the FLOP counter's own overhead is not the step's
        arm.step(*data[0])
    for r in range(rounds):
        images, labels = data[r % len(data)]
        shift = r % len(arms)
        for arm in [*arms[shift:], *arms[:shift]]:
            t0 = time.perf_counter()
            arm.step(images, labels)
            times[arm.name].append(time.perf_counter() - t0)
    for arm in arms:
        arm.meter.counting = True
    return {name: float(np.median(t)) for name, t in times.items()}
