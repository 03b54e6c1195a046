"""The pipeline seam: one method's device half and server half, and its rules, behind one
interface.

A pipeline is built from a model version's manifest (it parses and checks the fields of its kind
when it is made: at start-up). It owns its rules: which request parameters it accepts
(:meth:`Pipeline.check_request`), which controllers fit it (:attr:`Pipeline.controllers`), and
the options a frame has with it (:meth:`Pipeline.options`). The device runs it in *stretches*
(a token pipeline has one, its head; an early-exit network one per device exit) and then takes
one :class:`Option`: answer from an exit, answer with the whole model it holds, offload what
:meth:`Pipeline.pack` packs, or upload the picture. The server admits what arrives
(:meth:`Pipeline.admit`: validation, channel simulation, decoding) and runs batches of samples
through one of its graphs (:meth:`Pipeline.run_batch`). Device and server share the one
implementation per method, so what one end packs the other end reads.

Implementations, one file each: :mod:`.tokens`, :mod:`.jscc`, :mod:`.early_exit`,
:mod:`.any_split`; :mod:`semlink.runtime.pipelines` registers them by kind.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from semlink.protocol import params as P
from semlink.protocol.codec import TensorError
from semlink.protocol.params import ParameterError
from semlink.runtime.manifest import Manifest
from semlink.runtime.repository import ModelVersion

MAX_BATCH = 64  # samples in one request: more is a client error, not a bigger batch

Inputs = dict[str, tuple[str, np.ndarray]]  # OIP request inputs: name -> (datatype, array)

# what a frame's option does
EXIT = "exit"  # the device answers from its exit after ``split`` blocks
LOCAL = "local"  # the device answers with the whole model it holds (token pipelines)
OFFLOAD = "offload"  # the device sends what it holds after ``split`` blocks
UPLOAD = "upload"  # the device sends the picture (JPEG at ``quality``); the server runs it all
ACTIONS = (EXIT, LOCAL, OFFLOAD, UPLOAD)

# request parameters every pipeline accepts on the device; a pipeline adds its own
COMMON_PARAMETERS = frozenset({P.DEADLINE_MS, P.REQUEST_ID, P.LABEL, P.SNR_DB, P.OPTION})


@dataclass(frozen=True)
class Option:
    """One way to answer a frame.

    Names, as requests, answers, metrics and benchmarks spell them: ``exit2`` (answer at the
    device's exit after block 2), ``local`` (the whole model on the device), ``s1:a0.25`` (offload
    the quarter of patch tokens kept after block 1, digital), ``s1:a0.25:r0.125`` (the same
    through the JSCC coder at rate 1/8), ``jpeg75`` (upload the picture at JPEG quality 75).
    """

    action: str
    split: int = 0  # device blocks run first (EXIT, OFFLOAD); 0 for UPLOAD
    budget: float = 1.0  # OFFLOAD: share of patch tokens kept
    rate: float | None = None  # OFFLOAD through a JSCC coder: its rate; None: digital
    quality: int | None = None  # UPLOAD: JPEG quality

    @property
    def name(self) -> str:
        """The option's name (see the class docstring)."""
        if self.action == EXIT:
            return f"exit{self.split}"
        if self.action == UPLOAD:
            return f"jpeg{self.quality}"
        if self.action == LOCAL:
            return LOCAL
        rate = "" if self.rate is None else f":r{self.rate:g}"
        return f"s{self.split}:a{self.budget:g}{rate}"

    @property
    def offloads(self) -> bool:
        """Whether the frame leaves the device (tokens, activations or the picture)."""
        return self.action in (OFFLOAD, UPLOAD)

    @classmethod
    def parse(cls, name: str) -> Option:
        """The option a name spells; raises :class:`ParameterError` naming the forms."""
        try:
            if name == LOCAL:
                return cls(LOCAL)
            if name.startswith(EXIT):
                return cls(EXIT, int(name[len(EXIT) :]))
            if name.startswith("jpeg"):
                return cls(UPLOAD, 0, quality=int(name[4:]))
            parts = name.split(":")
            if len(parts) in (2, 3) and parts[0][0] == "s" and parts[1][0] == "a":
                rate = float(parts[2][1:]) if len(parts) == 3 and parts[2][0] == "r" else None
                if len(parts) == 3 and rate is None:
                    raise ValueError(name)
                return cls(OFFLOAD, int(parts[0][1:]), float(parts[1][1:]), rate)
        except (ValueError, IndexError):
            pass
        raise ParameterError(
            f"option {P.shown(name)} is not an option name: exitK, local, jpegQ, sS:aALPHA or "
            "sS:aALPHA:rRATE (e.g. exit2, jpeg75, s1:a0.25, s1:a0.25:r0.125)"
        )


@dataclass(frozen=True)
class WireOptions:
    """How the device packs an offload: tensor precision and, for JSCC, the simulated channel."""

    token_format: str = "fp16"  # fp32 | fp16 | int8 (int8: tokens only)
    snr_db: float | None = None  # the SNR the receiver simulates (JSCC); None: noiseless
    channel: str = "awgn"  # the channel the receiver simulates (JSCC)


@dataclass
class Stretch:
    """What the device holds after running stretch ``k`` of its part of the model."""

    k: int
    split: int  # model blocks behind it
    confidence: float | None  # max probability of this stretch's exit; None: no exit head here
    outputs: dict[str, Any]  # the graphs' outputs (and what else the pipeline keeps), read by it


@dataclass
class Offload:
    """What one option sends (nothing, for an answer on the device), what the device's own answer
    reads instead, and what the answer reports of it."""

    option: Option
    tensors: dict[str, np.ndarray]  # OIP inputs, in wire precision (empty: nothing is sent)
    params: dict[str, Any]  # semlink parameters on the wire (budget, rate, split, snr_db, ...)
    local: Any = None  # what :meth:`Pipeline.answer_locally` reads instead (pipeline-specific)
    kept_indices: list[int] = field(default_factory=list)
    symbols_per_token: int | None = None  # JSCC: complex symbols per token (m)
    channel_uses: float | None = None  # JSCC: complex channel uses per source value

    @property
    def tokens(self) -> int:
        """Patch tokens the offload carries (0 for activations and pictures)."""
        return len(self.kept_indices)

    @property
    def payload_bytes(self) -> int:
        """Bytes of the tensors sent (0 when nothing is)."""
        return sum(int(t.nbytes) for t in self.tensors.values())


@dataclass
class Work:
    """One admitted request on the server: which graph runs it and one feed per sample."""

    graph: str  # batcher name (``tail``, ``server_s1``, ``jscc_1``, ...)
    samples: list[dict[str, np.ndarray]]  # unbatched feeds
    reply: dict[str, Any] = field(default_factory=dict)  # response parameters of this pipeline
    log: dict[str, Any] = field(default_factory=dict)  # what the request's log line reports
    tokens: int = 0  # patch tokens received per sample (for the metric); 0 where none


class Pipeline(abc.ABC):
    """One method's device and server halves over a model version's ONNX graphs, and its rules.

    Graphs open lazily per end: :meth:`open` with :meth:`device_graphs` on the device,
    :meth:`server_graphs` on the server.
    """

    kind: ClassVar[str]
    """The manifest's ``kind`` this pipeline serves."""
    controllers: ClassVar[tuple[str, ...]]
    """The controllers that can drive it (``make_controller`` refuses any other)."""
    parameters: ClassVar[frozenset[str]] = frozenset()
    """Request parameters a client may set on the device besides :data:`COMMON_PARAMETERS`."""

    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        self.manifest: Manifest = model.manifest
        self.sessions: dict[str, ort.InferenceSession] = {}
        self._offered: frozenset[Option] | None = None

    def open(self, graphs: list[str], threads: int = 1) -> None:
        """Opens an ONNX Runtime session for each named graph (``threads`` intra-op each)."""
        for name in graphs:
            if name not in self.sessions:
                self.sessions[name] = self.model.session(name, threads)

    # -- the rules ---------------------------------------------------------------------------

    @abc.abstractmethod
    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """OIP metadata of what a server request carries: (name, datatype, shape), -1 for free
        dimensions."""

    @abc.abstractmethod
    def options(self) -> list[Option]:
        """Every option a frame has with this pipeline (the controllers' decision space)."""

    def check_option(self, option: Option) -> Option:
        """``option`` if this pipeline offers it; raises :class:`ParameterError` naming them."""
        if self._offered is None:  # the options never change: a set, made once
            self._offered = frozenset(self.options())
        if option in self._offered:
            return option
        offered = self.options()
        names = ", ".join(o.name for o in offered[:12])
        more = f" and {len(offered) - 12} more" if len(offered) > 12 else ""
        raise ParameterError(
            f"model {self.model.name!r} offers no option {option.name!r}; it offers {names}{more}"
        )

    def local_option(self) -> Option:
        """The most this device can do alone: the whole model it holds, or its last exit."""
        local = [o for o in self.options() if o.action == LOCAL]
        if local:
            return local[0]
        return max((o for o in self.options() if o.action == EXIT), key=lambda o: o.split)

    def pack_stage(self, option: Option) -> str | None:
        """The name of the device stage that packs ``option`` after its stretches (the device
        measures each stage's time): ``pack`` for an offload, ``jpeg`` for an upload, ``local``
        for the device's own whole model, None for an exit (nothing to run)."""
        return {OFFLOAD: "pack", UPLOAD: "jpeg", LOCAL: "local"}.get(option.action)

    def stages(self, option: Option) -> list[str]:
        """The device stages ``option`` runs, in order: ``stretch0``, ``stretch1``, ... then its
        pack stage."""
        out = [f"stretch{k}" for k in range(self.stretches_for(option))]
        pack = self.pack_stage(option)
        return out if pack is None else [*out, pack]

    def check_request(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The request's semlink parameters, each validated once: the common ones and this
        pipeline's own (:attr:`parameters`). Keys semlink does not use are ignored (OIP clients
        send their own); a semlink key this pipeline cannot apply is refused, naming the fix."""
        allowed = COMMON_PARAMETERS | self.parameters
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if value is None or key not in P.DEVICE_PARAMETERS:
                continue
            if key not in allowed:
                raise ParameterError(
                    f"parameter {key!r} does not apply to model {self.model.name!r} "
                    f"({self.kind}): {P.DEVICE_PARAMETERS[key]}; leave it out"
                )
            if key == P.LABEL:
                out[key] = P.check_label(value, self.manifest.num_classes)
            elif key == P.OPTION:
                option = value if isinstance(value, Option) else Option.parse(str(value))
                out[key] = self.check_option(option)  # checked parameters pass again unchanged
            else:
                out[key] = P.check_value(key, value)
        return out

    # -- the device's half ---------------------------------------------------------------------

    @abc.abstractmethod
    def device_graphs(self) -> list[str]:
        """The graphs a device opens."""

    @property
    @abc.abstractmethod
    def num_stretches(self) -> int:
        """How many stretches the device may run before it must answer or send."""

    @abc.abstractmethod
    def stretches_for(self, option: Option) -> int:
        """How many stretches the device runs before it takes ``option`` (0 for an upload)."""

    @abc.abstractmethod
    def run_stretch(
        self,
        k: int,
        image: np.ndarray,
        prev: Stretch | None,
        option: Option,
        snr_db: float | None = None,
    ) -> Stretch:
        """Runs stretch ``k`` on the normalised image (1, C, H, W), or from ``prev``, for the
        option planned (a token head selects for its budget); ``snr_db`` is the SNR an offload
        will cross (an SNR-conditioned coder codes for it; None: noiseless)."""

    @abc.abstractmethod
    def pack(
        self, stretch: Stretch | None, option: Option, wire: WireOptions, image: np.ndarray
    ) -> Offload:
        """What taking ``option`` after ``stretch`` sends (``stretch`` is None for an upload);
        ``image`` is the normalised frame (1, C, H, W), which an upload encodes."""

    @abc.abstractmethod
    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """Logits or log-probabilities (1, classes) the device answers by itself: from the exit
        it reached, or with the whole model it holds."""

    # -- both halves in one process (evaluations, benchmarks) --------------------------------

    def run_device(
        self,
        image: np.ndarray,
        option: Option,
        wire: WireOptions | None = None,
        snr_db: float | None = None,
    ) -> tuple[Stretch | None, Offload]:
        """The device's part of ``option`` in this process: its stretches, then its pack."""
        stretch = None
        for k in range(self.stretches_for(option)):
            stretch = self.run_stretch(k, image, stretch, option, snr_db)
        return stretch, self.pack(stretch, option, wire or WireOptions("fp32"), image)

    def whole(self, image: np.ndarray) -> np.ndarray:
        """Logits (1, classes) of the whole network on every token of ``image`` (1, C, H, W), in
        this process: the device's part sending everything in fp32, then the server's (both
        ends' graphs open)."""
        best = max(
            (o for o in self.options() if o.action == OFFLOAD),
            key=lambda o: (o.split, o.budget, o.rate or 1.0),
        )
        option = Option(OFFLOAD, best.split, 1.0, None if best.rate is None else 1.0)
        _, off = self.run_device(image, option)
        inputs = {name: ("FP32", t) for name, t in off.tensors.items()}
        work = self.admit(inputs, off.params)
        return self.run_batch(work.graph, work.samples)

    # -- the server's half ---------------------------------------------------------------------

    @abc.abstractmethod
    def server_graphs(self) -> list[str]:
        """The graphs a server opens."""

    def batchers(self) -> list[str]:
        """The server's batchers, one per kind of work (:attr:`Work.graph`); by default one
        per server graph."""
        return self.server_graphs()

    @abc.abstractmethod
    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """Validates one request's inputs and parameters into per-sample feeds; raises
        :class:`~semlink.protocol.codec.TensorError` or ``ParameterError`` naming the fix."""

    @abc.abstractmethod
    def run_batch(self, graph: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Logits (B, classes) of ``samples`` run together as ``graph`` work; each row equals
        the sample's unbatched answer."""

    def refuse_unknown(self, params: dict[str, Any], allowed: frozenset[str]) -> None:
        """Raises :class:`ParameterError` for a semlink request parameter this pipeline's server
        half cannot apply (one it would silently ignore otherwise)."""
        for key in sorted(set(params) & set(P.SERVER_PARAMETERS) - allowed):
            raise ParameterError(
                f"parameter {key!r} does not apply to model {self.model.name!r} ({self.kind}): "
                f"{P.SERVER_PARAMETERS[key]}; leave it out"
            )


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


def split_param(params: dict[str, Any], splits: tuple[int, ...], model: str, what: str) -> int:
    """The request's ``split`` parameter, one of ``splits``; raises :class:`ParameterError`."""
    split = params.get(P.SPLIT)
    if isinstance(split, bool) or not isinstance(split, int) or split not in splits:
        raise ParameterError(
            f"model {model!r}: parameter 'split' must be the number of device blocks {what} "
            f"come from, one of {list(splits)}; got {P.shown(split)}"
        )
    return split


def softmax(z: np.ndarray) -> np.ndarray:
    """Probabilities from one row of logits (or log-probabilities)."""
    e = np.exp(z - z.max())
    return e / e.sum()


def num_kept(budget: float, num_patches: int) -> int:
    """Patch tokens kept at budget ``alpha``: ``ceil(alpha N)``, at least one (as training)."""
    return max(1, math.ceil(budget * num_patches - 1e-6))


def step_feeds(
    k: int, image: np.ndarray, prev: Stretch | None, recursive: bool
) -> dict[str, np.ndarray]:
    """The feeds of a network's ``k``-th device step: the image first, then the activations
    ``prev`` left (with its exit's log p where the exits are recursive)."""
    if k == 0:
        return {"image": image}
    assert prev is not None
    feeds = {"activations": prev.outputs["activations"]}
    if recursive:
        feeds["prev_logp"] = prev.outputs["logp"]
    return feeds
