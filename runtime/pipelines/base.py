"""The pipeline seam: one method's device half and server half, behind one interface.

A pipeline is built from a model version's typed manifest. The device runs it in *stretches*
(a token pipeline has one: the head; an early-exit network one per device exit) and after each
stretch either answers locally or offloads what :meth:`Pipeline.offload` packs. The server
admits what arrives (:meth:`Pipeline.admit`: validation, channel simulation), then runs batches
of samples through one of its graphs (:meth:`Pipeline.run_batch`). Device and server share the
one implementation per method, so what one end packs the other end reads.

Implementations: :mod:`.tokens` (token selection), :mod:`.jscc` (token selection with the nested
JSCC coder), :mod:`.early_exit` (recursive early-exit network); :func:`make_pipeline` picks one.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from semlink.protocol.codec import TensorError
from semlink.runtime.manifest import Manifest, PipelineKind
from semlink.runtime.repository import ModelVersion

MAX_BATCH = 64  # samples in one request: more is a client error, not a bigger batch

Inputs = dict[str, tuple[str, np.ndarray]]  # OIP request inputs: name -> (datatype, array)


@dataclass
class Stretch:
    """What the device holds after running stretch ``k`` of its part of the model."""

    k: int
    confidence: float | None  # max probability of this stretch's exit; None: no exit head here
    outputs: dict[str, np.ndarray]  # the graph's outputs, read by the same pipeline


@dataclass(frozen=True)
class WireOptions:
    """How the device packs an offload: tensor precision and, for JSCC, the simulated channel."""

    token_format: str = "fp16"  # fp32 | fp16 | int8 (int8: token pipelines only)
    snr_db: float | None = None  # the SNR the receiver simulates (JSCC); None: noiseless
    channel: str = "awgn"  # the channel the receiver simulates (JSCC)


@dataclass
class Offload:
    """What an offload after one stretch sends, what answering locally instead reads, and what
    the answer reports of it."""

    tensors: dict[str, np.ndarray]  # OIP inputs, in wire precision
    params: dict[str, Any]  # semlink parameters on the wire (budget, rate, split, snr_db, ...)
    local: np.ndarray  # what :meth:`Pipeline.answer_locally` reads instead
    split: int  # model blocks the device ran
    budget: float  # share of patch tokens kept (1.0 where there is no selection)
    rate: float | None = None  # JSCC rate r; None where no rate applies
    kept_indices: list[int] = field(default_factory=list)
    symbols_per_token: int | None = None  # JSCC: complex symbols per token (m)
    channel_uses: float | None = None  # JSCC: complex channel uses per source value

    @property
    def tokens(self) -> int:
        """Patch tokens the offload carries (0 for activations of an early-exit network)."""
        return len(self.kept_indices)


@dataclass
class Work:
    """One admitted request on the server: which graph runs it and one feed per sample."""

    graph: str  # manifest graph name (``tail``, ``server_s1``, ...)
    samples: list[dict[str, np.ndarray]]  # unbatched feeds, float32
    reply: dict[str, Any] = field(default_factory=dict)  # response parameters of this pipeline
    log: dict[str, Any] = field(default_factory=dict)  # what the request's log line reports
    tokens: int = 0  # patch tokens received per sample (for the metric); 0 where none


class Pipeline(abc.ABC):
    """One method's device and server halves over a model version's ONNX graphs.

    Graphs open lazily per end: :meth:`open` with :meth:`device_graphs` on the device,
    :meth:`server_graphs` on the server.
    """

    kind: ClassVar[PipelineKind]

    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        self.manifest: Manifest = model.manifest
        self.sessions: dict[str, ort.InferenceSession] = {}

    def open(self, graphs: list[str], threads: int = 1) -> None:
        """Opens an ONNX Runtime session for each named graph (``threads`` intra-op each)."""
        for name in graphs:
            if name not in self.sessions:
                self.sessions[name] = self.model.session(name, threads)

    # -- what crosses the wire -------------------------------------------------------------

    @abc.abstractmethod
    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """OIP metadata of a request's inputs: (name, datatype, shape), -1 for free dims."""

    # -- the device's half -----------------------------------------------------------------

    @abc.abstractmethod
    def device_graphs(self) -> list[str]:
        """The graphs a device opens."""

    @property
    @abc.abstractmethod
    def num_stretches(self) -> int:
        """How many stretches the device may run before it must answer or offload."""

    @abc.abstractmethod
    def run_stretch(
        self,
        k: int,
        image: np.ndarray,
        budget: float,
        prev: Stretch | None,
        snr_db: float | None = None,
    ) -> Stretch:
        """Runs stretch ``k`` on the normalised image (1, C, H, W), or from ``prev``; ``snr_db``
        is the SNR an offload will cross (an SNR-conditioned JSCC head codes for it; None:
        noiseless)."""

    @abc.abstractmethod
    def offload(self, stretch: Stretch, budget: float, rate: float, wire: WireOptions) -> Offload:
        """Packs what an offload after ``stretch`` sends (at JSCC rate ``rate`` where one applies)."""

    @abc.abstractmethod
    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """Logits (1, classes) the device answers by itself instead of offloading."""

    # -- the server's half -----------------------------------------------------------------

    @abc.abstractmethod
    def server_graphs(self) -> list[str]:
        """The graphs a server opens; each gets its own batcher."""

    @abc.abstractmethod
    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """Validates one request's inputs and parameters into per-sample feeds; raises
        :class:`~semlink.protocol.codec.TensorError` or ``ParameterError`` naming the fix."""

    @abc.abstractmethod
    def run_batch(self, graph: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Logits (B, classes) of ``samples`` run together through ``graph``; each row equals
        the sample's unbatched answer."""


def float_input(inputs: Inputs, name: str, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """A FP16/FP32 input of shape [B, *shape] with 1 <= B <= :data:`MAX_BATCH`, as finite float32.

    ``shape`` entries of -1 accept any size >= 1 there. Raises :class:`TensorError` naming the form.
    """
    form = f"[B, {', '.join('T' if s < 0 else str(s) for s in shape)}]"
    if name not in inputs:
        raise TensorError(f"missing input {name!r}: FP16/FP32 {form}; got {sorted(inputs)}")
    dtype, arr = inputs[name]
    if dtype not in ("FP16", "FP32"):
        raise TensorError(f"input {name!r} must be FP16 or FP32, got {dtype}")
    fits = arr.ndim == 1 + len(shape) and all(
        (s < 0 and n >= 1) or n == s for n, s in zip(arr.shape[1:], shape, strict=False)
    )
    if not fits or not 1 <= arr.shape[0] <= MAX_BATCH:
        raise TensorError(
            f"input {name!r} must have shape {form} with 1 <= B <= {MAX_BATCH}, got {list(arr.shape)}"
        )
    x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise TensorError(f"input {name!r} holds NaN or infinite values")
    return x


def softmax(z: np.ndarray) -> np.ndarray:
    """Probabilities from one row of logits (or log-probabilities)."""
    e = np.exp(z - z.max())
    return e / e.sum()
