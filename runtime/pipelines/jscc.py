"""Token selection with the nested deep JSCC coder (docs/methods.md#jscc): the head codes each
kept token into ``d_c`` complex symbols; the device keeps the first ``m = ceil(r d_c)`` for the
rate ``r`` it chose and normalises them to unit power; the server simulates the channel at the SNR
the request carries (the bytes on the wire are real, the channel is simulated at the receiver)
and decodes whatever prefix arrived. An SNR-conditioned coder (the manifest's
``jscc.snr_range``) codes at the device and decodes at the server for the request's SNR (clamped
to that range; a noiseless link is its top).

Wire: ``symbols`` FP16 | FP32 [B, T, 2m], real parts then imaginary parts of each kept token's
first m symbols.

The helpers below (:class:`JsccSpec`, :func:`pack_symbols`, :func:`receive_symbols`) are the
symbol wire format for every pipeline that codes tokens (this one and :mod:`.any_split`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlink.protocol import params as P
from semlink.protocol import reply as R
from semlink.protocol.codec import TensorError
from semlink.runtime import channel
from semlink.runtime.manifest import Manifest, ManifestError
from semlink.runtime.pipelines.base import (
    LOCAL,
    OFFLOAD,
    Inputs,
    Offload,
    Option,
    Stretch,
    WireOptions,
    Work,
    float_input,
)
from semlink.runtime.pipelines.tokens import BUDGETS, TAIL, HeadPipeline, pad
from semlink.runtime.repository import ModelVersion
from semlink.runtime.symbols import channel_uses, normalise, symbols_kept

RATES = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # the grid a controller chooses from


@dataclass(frozen=True)
class JsccSpec:
    """The nested JSCC coder: ``symbols`` complex symbols per token at rate 1 (``d_c``).

    ``snr_range``: an SNR-conditioned coder's training range (dB); its graphs then take an
    ``snr_db`` input, clamped to the range, with the top of the range for a noiseless link.
    None: the coder codes the same way at every SNR (manifests from before the conditioning).
    """

    symbols: int
    channels: tuple[str, ...]
    snr_range: tuple[float, float] | None = None

    @classmethod
    def read(cls, manifest: Manifest) -> JsccSpec:
        """Parses the manifest's ``jscc`` object; raises ``ManifestError`` naming a bad field."""
        spec = manifest.reader().child("jscc")
        snr_range = (
            spec.floats("snr_range", 2, "low and high dB") if "snr_range" in spec.doc else None
        )
        if snr_range is not None and not snr_range[0] < snr_range[1]:
            raise ManifestError(f"{manifest.where}: jscc.snr_range must be [low, high], low < high")
        return cls(
            spec.positive("symbols"),
            tuple(spec.get("channels", list)),
            None if snr_range is None else (snr_range[0], snr_range[1]),
        )

    def snr_input(self, snr_db: float | None) -> float:
        """The ``snr_db`` an SNR-conditioned graph is fed for a link at ``snr_db`` (None: noiseless)."""
        assert self.snr_range is not None
        lo, hi = self.snr_range
        return hi if snr_db is None else min(max(float(snr_db), lo), hi)

    def feed(self, snr_db: float | None, batch: int = 1) -> dict[str, np.ndarray]:
        """The graphs' ``snr_db`` input (B,), or nothing for a coder without conditioning."""
        if self.snr_range is None:
            return {}
        return {"snr_db": np.full(batch, self.snr_input(snr_db), np.float32)}


def pack_symbols(
    coded: np.ndarray, rate: float, spec: JsccSpec, wire: WireOptions, pixels: int
) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray, int, float]:
    """The first ``m`` symbols of each kept token at unit power, from the coder's output
    (1, k, 2 d_c) (real then imaginary parts): the wire tensor ``symbols`` (FP16 unless fp32 is
    asked), the channel's parameters, the same code zero-filled to ``d_c`` (what the device's
    own decoder reads), ``m``, and the channel uses per source value (``pixels`` of them)."""
    d_c = spec.symbols
    m = symbols_kept(d_c, rate)
    re, im = normalise(coded[..., :m], coded[..., d_c : d_c + m], np.ones((1, 1, m), np.float32))
    local = np.zeros_like(coded)
    local[..., :m], local[..., d_c : d_c + m] = re, im
    dtype = np.float32 if wire.token_format == "fp32" else np.float16
    params: dict[str, Any] = {P.RATE: rate}
    if wire.snr_db is not None:  # the receiver simulates this channel at this SNR
        params.update({P.SNR_DB: float(wire.snr_db), P.CHANNEL: wire.channel})
    symbols = np.concatenate([re, im], axis=-1).astype(dtype)
    return {"symbols": symbols}, params, local, m, channel_uses(coded.shape[1], m, pixels)


def receive_symbols(
    inputs: Inputs,
    params: dict[str, Any],
    spec: JsccSpec,
    num_patches: int,
    model: str,
    normal: Callable[[tuple[int, ...]], np.ndarray],
) -> tuple[np.ndarray, float | None, dict[str, Any]]:
    """The request's symbols after the channel at its SNR (noiseless without one), zero-filled to
    ``d_c``: float32 (B, T, 2 d_c), the SNR, and what the reply reports of it. ``normal(shape)``
    draws the receiver's noise."""
    d_c, n = spec.symbols, num_patches
    if "symbols" not in inputs:
        raise TensorError(
            f"model {model!r} is a JSCC pipeline: send 'symbols' FP16/FP32 [B, T, 2m] (real then "
            f"imaginary parts of each kept token's first m <= {d_c} symbols); got {sorted(inputs)}"
        )
    x = float_input(inputs, "symbols", [-1, -1])
    if x.shape[2] % 2 or x.shape[2] > 2 * d_c or x.shape[1] > n:
        raise TensorError(
            f"input 'symbols' must have shape [B, T, 2m] with 1 <= T <= {n} and 1 <= m <= {d_c}, "
            f"got {list(x.shape)}"
        )
    m = x.shape[2] // 2
    snr = params.get(P.SNR_DB)
    if snr is not None:
        snr = P.check(P.SNR_DB, snr)
    kind = P.check_channel(params.get(P.CHANNEL, "awgn")) if snr is not None else "none"
    re, im = channel.apply(
        kind, x[..., :m], x[..., m:], snr, normal, block_shape=(x.shape[0], 1, 1)
    )
    full = np.zeros((*x.shape[:2], 2 * d_c), np.float32)
    full[..., :m], full[..., d_c : d_c + m] = re, im
    reply: dict[str, Any] = {R.TOKENS: int(x.shape[1]), R.SYMBOLS_PER_TOKEN: m, R.CHANNEL: kind}
    if snr is not None:
        reply[R.SNR_DB] = snr
    return full, snr, reply


class JsccPipeline(HeadPipeline):
    """A token pipeline whose payload is JSCC symbols at a rate chosen per request."""

    kind = "token-selection+jscc"
    controllers = ("lyapunov", "fixed", "local")
    parameters = frozenset({P.BUDGET, P.RATE, P.CHANNEL})

    def __init__(self, model: ModelVersion) -> None:
        super().__init__(model)
        self.spec = JsccSpec.read(model.manifest)
        self.rng = np.random.default_rng()  # the receiver's channel noise

    # -- rules --------------------------------------------------------------------------------

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """Kept tokens' symbols [B, T, 2m]."""
        return [("symbols", "FP16", [-1, -1, -1])]

    def options(self) -> list[Option]:
        """The whole model on the device, or the kept tokens' symbols on a grid of budgets and
        rates (any budget and rate in (0, 1] is accepted, see :meth:`check_option`)."""
        s = self.geometry.split
        return [Option(LOCAL), *(Option(OFFLOAD, s, b, r) for b in BUDGETS for r in RATES)]

    def check_option(self, option: Option) -> Option:
        """The whole model, or an offload at the head's split at any budget and rate."""
        if (
            option.action == OFFLOAD
            and option.split == self.geometry.split
            and option.rate is not None
        ):
            return option
        return super().check_option(option)

    # -- device -------------------------------------------------------------------------------

    def run_stretch(
        self,
        k: int,
        image: np.ndarray,
        prev: Stretch | None,
        option: Option,
        snr_db: float | None = None,
    ) -> Stretch:
        """Runs the head at the option's budget (every token for the whole model), coding for
        ``snr_db``: the kept tokens' unnormalised symbols (1, k, 2 d_c) and their indices."""
        budget = option.budget if option.action == OFFLOAD else 1.0
        feeds = {"image": image, "alpha": np.array([budget], np.float32), **self.spec.feed(snr_db)}
        symbols, indices = self.sessions["head"].run(["symbols", "indices"], feeds)
        return Stretch(
            0, self.geometry.split, None, {"symbols": symbols, "indices": indices, "snr_db": snr_db}
        )

    def pack(
        self, stretch: Stretch | None, option: Option, wire: WireOptions, image: np.ndarray
    ) -> Offload:
        """The first ``m`` symbols of each kept token at unit power (see :func:`pack_symbols`);
        the whole model on the device reads every symbol."""
        assert stretch is not None
        kept = [int(i) for i in stretch.outputs["indices"][0]]
        snr = stretch.outputs["snr_db"]
        c, h, w = self.manifest.image_shape
        rate = option.rate if option.action == OFFLOAD and option.rate is not None else 1.0
        tensors, params, local, m, uses = pack_symbols(
            stretch.outputs["symbols"], rate, self.spec, wire, c * h * w
        )
        if option.action == LOCAL:
            return Offload(option, {}, {}, local=(local, snr), kept_indices=kept)
        return Offload(
            option,
            tensors,
            {P.BUDGET: option.budget, **params},
            local=(local, snr),
            kept_indices=kept,
            symbols_per_token=m,
            channel_uses=uses,
        )

    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """The device's own decoder and tail on the noiseless code, decoded for the SNR the head
        coded for."""
        symbols, snr = offload.local
        return self.run_batch(TAIL, [self._sample(symbols[0], snr)])

    def _sample(self, symbols: np.ndarray, snr_db: float | None) -> dict[str, np.ndarray]:
        """One tail sample: zero-filled symbols (T, 2 d_c) and the SNR they are decoded for."""
        snr = self.spec.snr_input(snr_db) if self.spec.snr_range is not None else 0.0
        return {"symbols": symbols, "snr_db": np.array(snr, np.float32)}

    # -- server -------------------------------------------------------------------------------

    def server_graphs(self) -> list[str]:
        """The decoder and tail in one graph."""
        return [TAIL]

    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """Applies the channel at the request's SNR (noiseless without one), then zero-fills each
        token's symbols to ``d_c``."""
        self.refuse_unknown(params, self.parameters | {P.SNR_DB})
        for key in (P.BUDGET, P.RATE):
            if params.get(key) is not None:
                P.check(key, params[key])
        full, snr, reply = receive_symbols(
            inputs,
            params,
            self.spec,
            self.geometry.num_patches,
            self.model.name,
            lambda shape: self.rng.normal(size=shape).astype(np.float32),
        )
        t = int(full.shape[1])
        return Work(
            TAIL, [self._sample(x, snr) for x in full], reply=reply, log={"tokens": t}, tokens=t
        )

    def run_batch(self, graph: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Pads the symbols to the longest, masks the padding, decodes (for each sample's SNR)
        and runs the tail."""
        symbols, mask = pad([s["symbols"] for s in samples])
        feeds = {"symbols": symbols, "token_mask": mask}
        if self.spec.snr_range is not None:
            feeds["snr_db"] = np.array([s["snr_db"] for s in samples], np.float32).reshape(-1)
        return self.sessions[graph].run(["logits"], feeds)[0]
