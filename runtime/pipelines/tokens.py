"""Token selection (METHODS §1): the device head keeps the ``budget`` share of patch tokens that
matter and sends them; the server tail finishes the ViT on whatever tokens arrived.

Wire: ``tokens`` FP16 | FP32 | INT8 [B, T, d] (INT8 with ``token_scale`` FP32 [B, T]) and
``indices`` INT16 [B, T], the kept patch positions (for logs). Requests that kept different
numbers of tokens batch together: padded to the longest and masked (``token_mask``), which the
tail excludes from attention, so each answer equals the unbatched one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semlink.protocol.codec import (
    PackedTokens,
    TensorError,
    pack_tokens,
    token_format_of,
    unpack_tokens,
)
from semlink.runtime.manifest import PipelineKind
from semlink.runtime.pipelines.base import (
    MAX_BATCH,
    Inputs,
    Offload,
    Pipeline,
    Stretch,
    WireOptions,
    Work,
)

TAIL = "tail"


class TokensPipeline(Pipeline):
    """Head on the device (which also holds the tail, to answer by itself), tail on the server."""

    kind = PipelineKind.TOKENS
    payload = "tokens"  # the head's output and the tail's input that carry the kept tokens

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """Kept tokens [B, T, d] and, for INT8 tokens, their scales [B, T]."""
        return [
            ("tokens", "FP16", [-1, -1, self.manifest.embed_dim]),
            ("token_scale", "FP32", [-1, -1]),
        ]

    # -- device --------------------------------------------------------------------------

    def device_graphs(self) -> list[str]:
        """The head, and the tail for answering locally: the whole model fits on the device."""
        return ["head", TAIL]

    @property
    def num_stretches(self) -> int:
        """One: the head, after which the device answers or offloads."""
        return 1

    def run_stretch(
        self,
        k: int,
        image: np.ndarray,
        budget: float,
        prev: Stretch | None,
        snr_db: float | None = None,
    ) -> Stretch:
        """Runs the head: kept tokens (1, k, d) (for JSCC their unnormalised symbols
        (1, k, 2 d_c)) and the kept patch indices (1, k)."""
        payload, indices = self.sessions["head"].run(
            [self.payload, "indices"], self.head_feeds(image, budget, snr_db)
        )
        return Stretch(k, None, {"payload": payload, "indices": indices})

    def head_feeds(
        self, image: np.ndarray, budget: float, snr_db: float | None
    ) -> dict[str, np.ndarray]:
        """The head's inputs: the image and the budget."""
        return {"image": image, "alpha": np.array([budget], np.float32)}

    def offload(self, stretch: Stretch, budget: float, rate: float, wire: WireOptions) -> Offload:
        """The kept tokens in ``wire.token_format`` (the rate does not apply to plain tokens)."""
        head_out, idx = stretch.outputs["payload"], _indices(stretch)
        packed = pack_tokens(head_out, wire.token_format)
        tensors = {"tokens": packed.tokens, "indices": idx}
        if packed.scale is not None:
            tensors["token_scale"] = packed.scale
        return Offload(
            tensors=tensors,
            params={"budget": budget},
            local=head_out,
            split=self.manifest.splits[0],
            budget=budget,
            kept_indices=[int(i) for i in idx[0]],
        )

    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """The device's own tail on what the offload would have sent (before quantisation)."""
        return self.run_batch(TAIL, [{self.payload: offload.local[0]}])

    # -- server --------------------------------------------------------------------------

    def server_graphs(self) -> list[str]:
        """The tail."""
        return [TAIL]

    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """Dequantised tokens, one (T, d) sample per row of ``tokens``."""
        tokens = self._tokens(inputs)
        return Work(
            TAIL,
            [{self.payload: t} for t in tokens],
            log={"tokens": int(tokens.shape[1])},
            tokens=int(tokens.shape[1]),
            reply={"server_tokens": int(tokens.shape[1])},
        )

    def run_batch(self, graph: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Pads the samples' tokens to the longest, masks the padding and runs the tail."""
        return self.sessions[graph].run(["logits"], self.tail_feeds(samples))[0]

    def tail_feeds(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The tail's inputs for a batch: the padded tokens and their mask."""
        tokens, mask = pad([s[self.payload] for s in samples])
        return {self.payload: tokens, "token_mask": mask}

    def _tokens(self, inputs: Inputs) -> np.ndarray:
        d, n = self.manifest.embed_dim, self.manifest.num_patches
        if "tokens" not in inputs:
            raise TensorError(
                f"model {self.model.name!r} needs an input named 'tokens' ([B, T, {d}] "
                f"FP16/FP32/INT8); got {sorted(inputs)}"
            )
        dtype, arr = inputs["tokens"]
        fmt = token_format_of(dtype)
        if arr.ndim != 3 or arr.shape[2] != d or not 1 <= arr.shape[1] <= n:
            raise TensorError(
                f"input 'tokens' must have shape [B, T, {d}] with 1 <= B <= {MAX_BATCH} and "
                f"1 <= T <= {n} kept patches, got {list(arr.shape)}"
            )
        _check_batch("tokens", arr)
        scale = None
        if fmt == "int8":
            if "token_scale" not in inputs:
                raise TensorError(
                    "INT8 tokens need an input 'token_scale' FP32 [B, T] (one scale per token)"
                )
            sdtype, scale = inputs["token_scale"]
            if sdtype != "FP32" or scale.shape != arr.shape[:2]:
                raise TensorError(
                    f"input 'token_scale' must be FP32 of shape {list(arr.shape[:2])}, "
                    f"got {sdtype} {list(scale.shape)}"
                )
        out = unpack_tokens(PackedTokens(fmt, arr, scale))
        if not np.isfinite(out).all():
            raise TensorError("input 'tokens' holds NaN or infinite values")
        return out


def pad(items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks (T_i, d) token arrays into float32 (B, T_max, d) with a (B, T_max) mask of real
    tokens (1) and padding (0)."""
    t_max = max(x.shape[0] for x in items)
    d = items[0].shape[1]
    tokens = np.zeros((len(items), t_max, d), np.float32)
    mask = np.zeros((len(items), t_max), np.float32)
    for i, x in enumerate(items):
        tokens[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = 1.0
    return tokens, mask


def _indices(stretch: Stretch) -> np.ndarray:
    return stretch.outputs["indices"].astype(np.int16)  # positions < 32768: 2 bytes, not 8


def _check_batch(name: str, arr: np.ndarray) -> None:
    if not 1 <= arr.shape[0] <= MAX_BATCH:
        raise TensorError(
            f"input {name!r} holds {arr.shape[0]} samples; send 1 to {MAX_BATCH} per request"
        )
