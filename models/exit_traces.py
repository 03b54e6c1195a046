"""Per-sample exit traces and the exit rules evaluated on them (numpy only, no torch).

A trace records, for every sample of a split, the confidence (max probability), the prediction
and its correctness at every exit, and the full model's answer. It is recorded once from the
trained network (:func:`models.eval_early_exit.record_traces`) and replayed by the rules here,
by the evaluation, and by the RL environment (docs/methods.md#rl-offloading).

Rules decide, at each of the device's exits in order, whether to *exit* (answer locally with that
exit's prediction), *continue* to the next device exit, or *offload* the activations at this split
to the server, which continues the same network to its final exit: an offloaded sample gets the
final exit's answer. A sample still undecided after the device's last exit is offloaded there.

- **threshold** (``tau``): exit at the first device exit whose confidence is ``>= tau``.
- **growth** (``tau_exit``, ``tau_grow``, docs/methods.md#early-exits): exit when confidence ``>= tau_exit``;
  otherwise, if its growth since the previous exit is ``< tau_grow``, the device is unlikely to
  solve the sample soon: offload now.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np


@dataclass
class ExitTraces:
    conf: np.ndarray  # (n, E) float32: max probability at each exit
    margin: np.ndarray  # (n, E) float32: top-1 minus top-2 probability
    pred: np.ndarray  # (n, E) int64
    labels: np.ndarray  # (n,) int64
    exit_blocks: np.ndarray  # (E,) int64: exit j sits after this many blocks
    segment_flops: np.ndarray  # (E,) int64: FLOPs per image of the stretch ending at exit j
    device_exits: np.ndarray  # (D,) int64: the exits the device holds, in order
    activation_bytes: np.ndarray  # (E,) int64: bytes of the activations + log p at exit j (fp16)

    @property
    def correct(self) -> np.ndarray:
        """(n, E) bool."""
        return self.pred == self.labels[:, None]

    @property
    def final_correct(self) -> np.ndarray:
        return self.correct[:, -1]

    def __len__(self) -> int:
        return len(self.labels)

    def device_flops(self) -> np.ndarray:
        """(E,) cumulative FLOPs per image to reach exit j."""
        return np.cumsum(self.segment_flops)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | Path) -> ExitTraces:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"exit traces {path} do not exist; record them with `semlink eval early-exit`"
            )
        with np.load(path) as z:
            missing = {f.name for f in fields(cls)} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not an exit-trace file: it lacks {sorted(missing)}")
            return cls(**{f.name: z[f.name] for f in fields(cls)})


@dataclass
class RuleOutcome:
    """What a rule did with each sample."""

    exit_at: np.ndarray  # (n,) int64: the device exit where the sample stopped or was offloaded
    offloaded: np.ndarray  # (n,) bool
    correct: np.ndarray  # (n,) bool

    def summary(self, traces: ExitTraces) -> dict[str, float]:
        """Accuracy, fraction answered on the device, mean device FLOPs per image, and mean bytes
        sent per image."""
        return {
            "accuracy": float(self.correct.mean()),
            "device_fraction": float(1.0 - self.offloaded.mean()),
            "mean_flops": float(traces.device_flops()[self.exit_at].mean()),
            "mean_bytes": float((traces.activation_bytes[self.exit_at] * self.offloaded).mean()),
        }


def apply_rule(traces: ExitTraces, tau_exit: float, tau_grow: float | None = None) -> RuleOutcome:
    """The threshold rule (``tau_grow=None``) or the growth rule, on every sample."""
    n = len(traces)
    decided = np.zeros(n, dtype=bool)
    exit_at = np.full(n, traces.device_exits[-1], dtype=np.int64)
    offloaded = np.ones(n, dtype=bool)
    prev_conf: np.ndarray | None = None
    for j in traces.device_exits:
        conf = traces.conf[:, j]
        stop = ~decided & (conf >= tau_exit)
        exit_at[stop], offloaded[stop] = j, False
        decided |= stop
        if tau_grow is not None and prev_conf is not None:
            give_up = ~decided & (conf - prev_conf < tau_grow)
            exit_at[give_up] = j
            decided |= give_up
        prev_conf = conf
    pred = np.where(offloaded, traces.pred[:, -1], traces.pred[np.arange(n), exit_at])
    return RuleOutcome(exit_at, offloaded, pred == traces.labels)


def early_exit_curve(traces: ExitTraces, taus: np.ndarray) -> list[dict[str, float]]:
    """The multi-exit model on one machine (no offloading): each sample stops at the first exit
    with confidence ``>= tau``, else at the last. Accuracy against mean FLOPs, one point per tau."""
    n = len(traces)
    points = []
    for tau in taus:
        hit = traces.conf >= tau
        hit[:, -1] = True
        first = hit.argmax(axis=1)
        acc = float((traces.pred[np.arange(n), first] == traces.labels).mean())
        points.append(
            {
                "tau": float(tau),
                "accuracy": acc,
                "mean_flops": float(traces.device_flops()[first].mean()),
            }
        )
    return points


def area_under_curve(points: list[dict[str, float]], full_flops: float) -> float:
    """Normalised area under the accuracy-vs-compute Pareto front.

    Compute is expressed as a fraction of the full model's FLOPs; the front (best accuracy at or
    below each cost) is integrated by trapezoids from its cheapest point to 1 and divided by that
    width, so the result is the mean accuracy over the compute range, in [0, 1].
    """
    xs = np.array([p["mean_flops"] / full_flops for p in points])
    ys = np.array([p["accuracy"] for p in points])
    order = np.argsort(xs)
    xs, ys = xs[order], np.maximum.accumulate(ys[order])
    if xs[-1] < 1.0:
        xs, ys = np.append(xs, 1.0), np.append(ys, ys[-1])
    width = xs[-1] - xs[0]
    if width <= 0:
        return float(ys[-1])
    return float(np.trapezoid(ys, xs) / width)


def accuracy_at_flops(points: list[dict[str, float]], flops: float) -> float:
    """The Pareto front's accuracy at a compute level (the best point costing ``<= flops``)."""
    eligible = [p["accuracy"] for p in points if p["mean_flops"] <= flops]
    return max(eligible) if eligible else float("nan")
