"""Every option's outcome on every frame (the exit traces grown), measured with the served graphs
(``semlink eval options``), docs/methods.md#one-decision.

For each frame of a split and each option of an any-split network's option space: whether its
answer is right (for a JSCC option at each SNR of a grid: the channel drawn once per frame), the
payload bytes it sends, and the confidence of every device exit. The controllers, the RL
environment and the benchmarks share these tables: ``options.json`` (from the validation split:
what the device's controllers believe) and ``outcomes_<split>.npz`` (per frame: what the
benchmarks replay; the test split reports).

The device's part and the server's part run as they are served: the same ONNX graphs and the
same pipeline code (tokens packed in int8, symbols truncated, normalised, sent in fp16 and
passed through the channel, the picture encoded and decoded as JPEG), a batch of frames at a
time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semlink.models.data import Dataset
from semlink.models.progress import progress_bar
from semlink.models.stats import Difference, paired_bootstrap, pm, wilson
from semlink.protocol import params as P
from semlink.protocol.codec import datatype_of
from semlink.runtime.calibration import OPTIONS_VERSION
from semlink.runtime.images import decode_image
from semlink.runtime.pipelines import Option, make_pipeline
from semlink.runtime.pipelines.any_split import AnySplitPipeline, encode_jpeg
from semlink.runtime.pipelines.base import EXIT, OFFLOAD, UPLOAD, WireOptions, num_kept
from semlink.runtime.pipelines.jscc import pack_symbols
from semlink.runtime.pipelines.tokens import pack_kept
from semlink.runtime.repository import ModelVersion

log = logging.getLogger(__name__)

SNRS = (0.0, 10.0, 20.0)  # dB: the SNR grid of the JSCC options
EXIT_EDGES = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0001)  # exit confidence bins
BATCH = 64


@dataclass
class Outcomes:
    """Per frame and option: right or not at each SNR, bytes sent; per frame: exit confidences."""

    options: list[Option]
    snrs: np.ndarray  # (S,)
    correct: np.ndarray  # (S, F, A) bool
    bytes: np.ndarray  # (F, A) payload bytes
    confidence: np.ndarray  # (F, D) max probability at each device exit
    labels: np.ndarray  # (F,)
    full: np.ndarray  # (F,) bool: the whole network on the frame itself (the reference)

    def save(self, path: Path) -> None:
        """Writes the table (``.npz``)."""
        np.savez_compressed(
            path,
            options=np.array([o.name for o in self.options]),
            snrs=self.snrs,
            correct=self.correct,
            bytes=self.bytes,
            confidence=self.confidence,
            labels=self.labels,
            full=self.full,
        )

    @classmethod
    def load(cls, path: str | Path) -> Outcomes:
        """Reads a table :meth:`save` wrote."""
        with np.load(path) as z:
            return cls(
                [Option.parse(str(n)) for n in z["options"]],
                z["snrs"],
                z["correct"],
                z["bytes"],
                z["confidence"],
                z["labels"],
                z["full"],
            )

    def accuracy(self, snr_index: int | None = None) -> np.ndarray:
        """(A,) share right per option (at one SNR of the grid, or each option's at its best
        SNR index when None: digital options are the same at every SNR)."""
        c = self.correct if snr_index is None else self.correct[snr_index : snr_index + 1]
        return c.mean(axis=1).max(axis=0)


def measure(
    mv: ModelVersion, data: Dataset, snrs: tuple[float, ...] = SNRS, seed: int = 0
) -> Outcomes:
    """Every option's outcome on every frame of ``data`` (see the module docstring)."""
    pipe = make_pipeline(mv)
    if not isinstance(pipe, AnySplitPipeline):
        raise ValueError(
            f"{mv.name} is a {mv.kind} pipeline; option tables are for any-split networks"
        )
    pipe.open(pipe.device_graphs() + pipe.server_graphs())
    options = pipe.options()
    rng = np.random.default_rng(seed)
    n, d = len(data), len(pipe.spec.splits)
    correct = np.zeros((len(snrs), n, len(options)), bool)
    nbytes = np.zeros((n, len(options)), np.int32)
    confidence = np.zeros((n, d), np.float32)
    full = np.zeros(n, bool)
    bar = progress_bar(
        range(0, n, BATCH), desc=f"options of {mv.name} on {data.split}", unit="batch"
    )
    for start in bar:
        x, y = data.images[start : start + BATCH], data.labels[start : start + BATCH]
        rows = slice(start, start + len(y))
        acts, logps = _device_steps(pipe, x)
        confidence[rows] = np.exp(np.stack(logps, axis=1)).max(axis=2)
        full[rows] = pipe.run_batch("full", [{"image": im} for im in x]).argmax(axis=1) == y
        for a, option in enumerate(options):
            for i, snr in enumerate(snrs if option.rate is not None else snrs[:1]):
                logits, sent = _outcome(pipe, option, x, acts, logps, snr, rng)
                right = logits.argmax(axis=1) == y
                if option.rate is None:
                    correct[:, rows, a] = right  # the same at every SNR
                else:
                    correct[i, rows, a] = right
                nbytes[rows, a] = sent
    return Outcomes(options, np.array(snrs), correct, nbytes, confidence, data.labels.copy(), full)


def _device_steps(
    pipe: AnySplitPipeline, x: np.ndarray
) -> tuple[dict[int, np.ndarray], list[np.ndarray]]:
    """The device's blocks on a batch: activations and exit log p at every split."""
    acts: dict[int, np.ndarray] = {}
    logps: list[np.ndarray] = []
    prev_acts, prev_logp = x, np.zeros(0, np.float32)
    for k in pipe.spec.splits:
        feeds = {"image": x} if k == 1 else {"activations": prev_acts}
        if k > 1 and pipe.spec.recursive:
            feeds["prev_logp"] = prev_logp
        prev_acts, prev_logp = pipe.sessions[f"step_{k}"].run(None, feeds)
        acts[k] = prev_acts
        logps.append(prev_logp)
    return acts, logps


def _outcome(
    pipe: AnySplitPipeline,
    option: Option,
    x: np.ndarray,
    acts: dict[int, np.ndarray],
    logps: list[np.ndarray],
    snr: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One option on a batch as served: logits (B, C) and payload bytes per frame (B,)."""
    b = len(x)
    if option.action == EXIT:
        return logps[option.split - 1], np.zeros(b, np.int32)
    if option.action == UPLOAD:
        assert option.quality is not None
        files = [encode_jpeg(x[i : i + 1], pipe.manifest, option.quality) for i in range(b)]
        images = np.stack([decode_image(f, pipe.manifest, pipe.jpeg_limits)[0] for f in files])
        logits = pipe.run_batch("full", [{"image": im} for im in images])
        return logits, np.array([len(f) for f in files], np.int32)
    s = option.split
    key = pipe.sessions[f"select_{s}"].run(
        ["key"], {"activations": acts[s], "alpha": np.full(b, option.budget, np.float32)}
    )[0]
    k = num_kept(option.budget, pipe.spec.num_patches)
    kept = np.argsort(-key, axis=1, kind="stable")[:, :k]
    tokens = np.take_along_axis(acts[s][:, 1:], kept[..., None], axis=1)  # (B, k, d)
    wire = WireOptions("int8", snr, "awgn")
    if option.rate is None:
        tensors, params = pack_kept(tokens, "int8"), {P.SPLIT: s, P.BUDGET: option.budget}
    else:
        coded = pipe.sessions[f"encode_{s}"].run(
            ["symbols"], {"tokens": tokens, **pipe.spec.jscc.feed(snr, b)}
        )[0]
        c, h, w = pipe.manifest.image_shape
        tensors, more, _, _, _ = pack_symbols(coded, option.rate, pipe.spec.jscc, wire, c * h * w)
        params = {P.SPLIT: s, P.BUDGET: option.budget, **more}
        pipe.rng = rng  # the receiver's noise, seeded
    work = pipe.admit({name: (datatype_of(t), t) for name, t in tensors.items()}, params)
    per_frame = sum(int(t[0].nbytes) for t in tensors.values())
    return pipe.run_batch(work.graph, work.samples), np.full(b, per_frame, np.int32)


def summarise(out: Outcomes, mv: ModelVersion, data: Dataset) -> dict[str, Any]:
    """The controllers' ``options.json`` from a validation table: per option its accuracy at
    each SNR, mean and 95th-percentile bytes, channel uses, tokens and symbols; per device exit
    and confidence bin, every option's accuracy on the frames that reached it that confident."""
    if data.split != "val":
        raise ValueError(
            f"the controllers' table comes from the validation split, not {data.split!r}"
        )
    pipe = make_pipeline(mv)
    assert isinstance(pipe, AnySplitPipeline)
    c, h, w = mv.manifest.image_shape
    edges = np.array(EXIT_EDGES)
    rows: list[dict[str, Any]] = []
    for a, o in enumerate(out.options):
        k = num_kept(o.budget, pipe.spec.num_patches) if o.action == OFFLOAD else 0
        m = int(np.ceil(pipe.spec.jscc.symbols * o.rate - 1e-9)) if o.rate is not None else 0
        rows.append(
            {
                "name": o.name,
                "accuracy": [float(v) for v in out.correct[:, :, a].mean(axis=1)],
                "bytes": float(out.bytes[:, a].mean()),
                "bytes_p95": float(np.percentile(out.bytes[:, a], 95)),
                "tokens": k,
                "symbols": m,
                "channel_uses": k * m / (c * h * w),
            }
        )
    conditional = {}
    for j, s in enumerate(pipe.spec.splits):
        bins = np.clip(
            np.searchsorted(edges, out.confidence[:, j], side="right") - 1, 0, len(edges) - 2
        )
        table = np.full((len(edges) - 1, len(out.options)), np.nan)
        best = out.correct.mean(axis=0)  # (F, A): each frame's chance of being right over the SNRs
        for b in range(len(edges) - 1):
            here = bins == b
            if here.sum() >= 5:
                table[b] = best[here].mean(axis=0)
        passing = [o.action in (EXIT, OFFLOAD) and o.split >= s for o in out.options]
        table[:, ~np.array(passing)] = np.nan
        conditional[str(s)] = [[None if np.isnan(v) else float(v) for v in row] for row in table]
    return {
        "options_version": OPTIONS_VERSION,
        "model_hash": mv.manifest.model_hash,
        "dataset": data.name,
        "split": data.split,
        "n": len(data),
        "num_classes": mv.num_classes,
        "snr_db": [float(s) for s in out.snrs],
        "options": rows,
        "exit_edges": [float(e) for e in edges],
        "conditional": conditional,
    }


def write_tables(mv: ModelVersion, val: Dataset, test: Dataset, seed: int = 0) -> dict[str, Any]:
    """Measures both splits and writes ``options.json`` (validation) and ``outcomes_val.npz``,
    ``outcomes_test.npz`` beside the manifest. Returns the ``options.json`` document."""
    tables = {}
    for data in (val, test):
        tables[data.split] = measure(mv, data, seed=seed)
        tables[data.split].save(mv.path / f"outcomes_{data.split}.npz")
    doc = summarise(tables["val"], mv, val)
    (mv.path / "options.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def report(mv: ModelVersion) -> dict[str, Any]:
    """The test table (``outcomes_test.npz``): every option's accuracy with n and its 95 %
    interval (JSCC options at each SNR of the grid), its mean bytes, and its paired difference
    from the whole network on the same frames; with the network's FLOPs per stretch."""
    out = Outcomes.load(mv.path / "outcomes_test.npz")
    n = len(out.labels)
    flops = mv.manifest.doc.get("segment_flops", {})
    full_acc = float(out.full.mean())
    rows: list[dict[str, Any]] = []
    for a, o in enumerate(out.options):
        snrs = range(len(out.snrs)) if o.rate is not None else [0]
        for i in snrs:
            right = out.correct[i, :, a]
            acc = float(right.mean())
            lo, hi = wilson(acc, n)
            diff = paired_bootstrap(right, out.full)
            rows.append(
                {
                    "option": o.name,
                    "snr_db": float(out.snrs[i]) if o.rate is not None else None,
                    "accuracy": acc,
                    "ci95": [lo, hi],
                    "n": n,
                    "bytes": float(out.bytes[:, a].mean()),
                    "minus_full": diff.as_dict(),
                }
            )
    lines = [
        f"{mv.name} on the test split (n = {n}): the whole network {pm(full_acc, n)} %, "
        f"{flops.get('full', 0) / 1e6:.0f} MFLOPs",
        f"{'option':<18} {'SNR':>5} {'accuracy %':>12} {'bytes':>7}  {'− whole network, points':>28}",
    ]
    for r in rows:
        snr = "" if r["snr_db"] is None else f"{r['snr_db']:g}"
        lines.append(
            f"{r['option']:<18} {snr:>5} {pm(r['accuracy'], n):>12} {r['bytes']:>7.0f}  "
            f"{str(paired_difference(r)):>28}"
        )
    return {
        "model": mv.name,
        "n": n,
        "full_accuracy": full_acc,
        "segment_flops": flops,
        "options": rows,
        "table": "\n".join(lines),
    }


def paired_difference(row: dict[str, Any]) -> Difference:
    """A table row's paired difference from the whole network."""
    d = row["minus_full"]
    return Difference(d["diff"], d["lo"], d["hi"], d["n"])


__all__ = ["EXIT_EDGES", "Outcomes", "SNRS", "measure", "report", "summarise", "write_tables"]
