"""Token selection with the nested deep JSCC coder (METHODS §2): the head codes each kept token
into ``d_c`` complex symbols; the device keeps the first ``m = ceil(r d_c)`` for the rate ``r``
it chose and normalises them to unit power; the server simulates the channel at the SNR the
request carries (the bytes on the wire are real, the channel is simulated at the receiver) and
decodes whatever prefix arrived. An SNR-conditioned coder (the manifest's ``jscc.snr_range``)
codes at the device and decodes at the server for the request's SNR (clamped to that range; a
noiseless link is its top).

Wire: ``symbols`` FP16 | FP32 [B, T, 2m], real parts then imaginary parts of each kept token's
first m symbols, and ``indices`` INT16 [B, T].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semlink.protocol import params as P
from semlink.protocol.codec import TensorError
from semlink.runtime import channel
from semlink.runtime.manifest import JsccSpec, PipelineKind
from semlink.runtime.pipelines.base import Inputs, Offload, Stretch, WireOptions, Work, float_input
from semlink.runtime.pipelines.tokens import TAIL, TokensPipeline, _indices
from semlink.runtime.repository import ModelVersion
from semlink.runtime.symbols import channel_uses, normalise, symbols_kept


class JsccPipeline(TokensPipeline):
    """A token pipeline whose payload is JSCC symbols at a rate chosen per request."""

    kind = PipelineKind.JSCC
    payload = "symbols"

    def __init__(self, model: ModelVersion) -> None:
        super().__init__(model)
        assert model.manifest.jscc is not None  # Manifest.parse guarantees it for this kind
        self.jscc: JsccSpec = model.manifest.jscc
        self.rng = np.random.default_rng()  # the receiver's channel noise

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """Kept tokens' symbols [B, T, 2m]."""
        return [("symbols", "FP16", [-1, -1, -1])]

    def head_feeds(
        self, image: np.ndarray, budget: float, snr_db: float | None
    ) -> dict[str, np.ndarray]:
        """The image, the budget and, for an SNR-conditioned coder, the SNR to code for."""
        feeds = super().head_feeds(image, budget, snr_db)
        if self.jscc.snr_range is not None:
            feeds["snr_db"] = np.array([self.jscc.snr_input(snr_db)], np.float32)
        return feeds

    def tail_feeds(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The padded symbols, their mask and, for an SNR-conditioned coder, each one's SNR."""
        feeds = super().tail_feeds(samples)
        if self.jscc.snr_range is not None:
            feeds["snr_db"] = np.array([s["snr_db"] for s in samples], np.float32).reshape(-1)
        return feeds

    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """The device's own decoder and tail on the noiseless code, decoded for the SNR that
        the head coded for."""
        return self.run_batch(TAIL, [self._sample(offload.local[0], offload.params.get(P.SNR_DB))])

    def _sample(self, symbols: np.ndarray, snr_db: float | None) -> dict[str, np.ndarray]:
        """One tail sample: zero-filled symbols (T, 2 d_c) and the SNR they are decoded for."""
        snr = self.jscc.snr_input(snr_db) if self.jscc.snr_range is not None else 0.0
        return {self.payload: symbols, "snr_db": np.array(snr, np.float32)}

    def offload(self, stretch: Stretch, budget: float, rate: float, wire: WireOptions) -> Offload:
        """The first ``m`` symbols of each kept token at unit power (FP16 unless fp32 is asked);
        ``local`` is the same code zero-filled to ``d_c``, as the device's own decoder reads it."""
        head_out, idx = stretch.outputs["payload"], _indices(stretch)
        d_c = self.jscc.symbols
        m = symbols_kept(d_c, rate)
        re, im = normalise(
            head_out[..., :m], head_out[..., d_c : d_c + m], np.ones((1, 1, m), np.float32)
        )
        local = np.zeros_like(head_out)
        local[..., :m], local[..., d_c : d_c + m] = re, im
        dtype = np.float32 if wire.token_format == "fp32" else np.float16
        params: dict[str, Any] = {P.BUDGET: budget, P.RATE: rate}
        if wire.snr_db is not None:  # the receiver simulates this channel at this SNR
            params.update({P.SNR_DB: float(wire.snr_db), P.CHANNEL: wire.channel})
        c, h, w = self.manifest.image_shape
        return Offload(
            tensors={"symbols": np.concatenate([re, im], axis=-1).astype(dtype), "indices": idx},
            params=params,
            local=local,
            split=self.manifest.splits[0],
            budget=budget,
            rate=rate,
            kept_indices=[int(i) for i in idx[0]],
            symbols_per_token=m,
            channel_uses=channel_uses(idx.shape[1], m, c * h * w),
        )

    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """Applies the channel at the request's SNR (noiseless without one), then zero-fills
        each token's symbols to ``d_c``."""
        d_c, n = self.jscc.symbols, self.manifest.num_patches
        if "symbols" not in inputs:
            raise TensorError(
                f"model {self.model.name!r} is a JSCC pipeline: send 'symbols' FP16/FP32 [B, T, 2m] "
                f"(real then imaginary parts of each kept token's first m <= {d_c} symbols); "
                f"got {sorted(inputs)}"
            )
        x = float_input(inputs, "symbols", [-1, -1])
        if x.shape[2] % 2 or x.shape[2] > 2 * d_c or x.shape[1] > n:
            raise TensorError(
                f"input 'symbols' must have shape [B, T, 2m] with 1 <= T <= {n} and "
                f"1 <= m <= {d_c}, got {list(x.shape)}"
            )
        m = x.shape[2] // 2
        snr = params.get(P.SNR_DB)
        kind = P.check_channel(params.get(P.CHANNEL, "awgn")) if snr is not None else "none"
        re, im = channel.apply(
            kind,
            x[..., :m],
            x[..., m:],
            None if snr is None else float(snr),
            lambda shape: self.rng.normal(size=shape).astype(np.float32),
            block_shape=(x.shape[0], 1, 1),
        )
        full = np.zeros((*x.shape[:2], 2 * d_c), np.float32)
        full[..., :m], full[..., d_c : d_c + m] = re, im
        reply: dict[str, Any] = {
            "server_tokens": int(x.shape[1]),
            "symbols_per_token": m,
            "channel": kind,
        }
        if snr is not None:
            reply["snr_db"] = float(snr)
        return Work(
            TAIL,
            [self._sample(t, snr) for t in full],
            reply=reply,
            log={"tokens": int(x.shape[1])},
            tokens=int(x.shape[1]),
        )
