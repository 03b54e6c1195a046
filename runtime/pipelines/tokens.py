"""Token selection (docs/methods.md#token-selection): the device head keeps the ``budget`` share of
patch tokens that matter and sends them; the server tail finishes the ViT on whatever tokens
arrived.

Wire: ``tokens`` FP16 | FP32 | INT8 [B, T, d] (INT8 with ``token_scale`` FP32 [B, T]). Requests
that kept different numbers of tokens batch together: padded to the longest and masked
(``token_mask``), which the tail excludes from attention, so each answer equals the unbatched one.

The helpers below (:func:`pack_kept`, :func:`read_tokens`, :func:`pad`) are the token wire format
for every pipeline that sends tokens (this one, :mod:`.jscc`'s tail, :mod:`.any_split`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from semlink.protocol import params as P
from semlink.protocol import reply as R
from semlink.protocol.codec import (
    PackedTokens,
    TensorError,
    pack_tokens,
    token_format_of,
    unpack_tokens,
)
from semlink.runtime.manifest import Manifest
from semlink.runtime.pipelines.base import (
    LOCAL,
    MAX_BATCH,
    OFFLOAD,
    Inputs,
    Offload,
    Option,
    Pipeline,
    Stretch,
    WireOptions,
    Work,
)
from semlink.runtime.repository import ModelVersion

TAIL = "tail"
BUDGETS = (0.05, 0.1, 0.15, 0.25, 0.5, 1.0)  # the grid a controller chooses from


@dataclass(frozen=True)
class TokenGeometry:
    """The token fields of a manifest: patches of a full image, width, and the device's split."""

    num_patches: int
    embed_dim: int
    split: int

    @classmethod
    def read(cls, manifest: Manifest) -> TokenGeometry:
        """Parses the fields; raises ``ManifestError`` naming a missing or mistyped one."""
        r = manifest.reader()
        splits = r.ints("splits")
        if len(splits) != 1:
            r.fail("splits", "one split (the head's)", splits)
        return cls(r.positive("num_patches"), r.positive("embed_dim"), splits[0])


def pack_kept(tokens: np.ndarray, token_format: str) -> dict[str, np.ndarray]:
    """Kept tokens (1, k, d) float32 as wire tensors: ``tokens`` and, for int8, ``token_scale``."""
    packed = pack_tokens(tokens, token_format)
    out = {"tokens": packed.tokens}
    if packed.scale is not None:
        out["token_scale"] = packed.scale
    return out


def read_tokens(inputs: Inputs, model: str, embed_dim: int, num_patches: int) -> np.ndarray:
    """The tokens of a request, dequantised: float32 (B, T, d). Raises :class:`TensorError`
    naming the form."""
    d, n = embed_dim, num_patches
    if "tokens" not in inputs:
        raise TensorError(
            f"model {model!r} needs an input named 'tokens' ([B, T, {d}] FP16/FP32/INT8); "
            f"got {sorted(inputs)}"
        )
    dtype, arr = inputs["tokens"]
    fmt = token_format_of(dtype)
    if (
        arr.ndim != 3
        or arr.shape[2] != d
        or not 1 <= arr.shape[1] <= n
        or not 1 <= arr.shape[0] <= MAX_BATCH
    ):
        raise TensorError(
            f"input 'tokens' must have shape [B, T, {d}] with 1 <= B <= {MAX_BATCH} and "
            f"1 <= T <= {n} kept patches, got {list(arr.shape)}"
        )
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
    """Stacks (T_i, w) arrays into float32 (B, T_max, w) with a (B, T_max) mask of real tokens (1)
    and padding (0)."""
    t_max = max(x.shape[0] for x in items)
    tokens = np.zeros((len(items), t_max, items[0].shape[1]), np.float32)
    mask = np.zeros((len(items), t_max), np.float32)
    for i, x in enumerate(items):
        tokens[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = 1.0
    return tokens, mask


class HeadPipeline(Pipeline):
    """A pipeline whose device runs one stretch, the head that keeps a budget of tokens, and
    holds the tail to answer by itself: what the token and the JSCC pipelines share."""

    def __init__(self, model: ModelVersion) -> None:
        super().__init__(model)
        self.geometry = TokenGeometry.read(model.manifest)

    def device_graphs(self) -> list[str]:
        """The head, and the tail for answering locally: the whole model fits on the device."""
        return ["head", TAIL]

    @property
    def num_stretches(self) -> int:
        """One: the head, after which the device answers or offloads."""
        return 1

    def stretches_for(self, option: Option) -> int:
        """The head, for every option."""
        return 1


class TokensPipeline(HeadPipeline):
    """Head on the device (which also holds the tail, to answer by itself), tail on the server."""

    kind = "token-selection"
    controllers = ("fixed", "local")
    parameters = frozenset({P.BUDGET})

    # -- rules --------------------------------------------------------------------------------

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """Kept tokens [B, T, d] and, for INT8 tokens, their scales [B, T]."""
        return [
            ("tokens", "FP16", [-1, -1, self.geometry.embed_dim]),
            ("token_scale", "FP32", [-1, -1]),
        ]

    def options(self) -> list[Option]:
        """The whole model on the device, or the kept tokens at a grid of budgets (any budget in
        (0, 1] is accepted, see :meth:`check_option`)."""
        split = self.geometry.split
        return [Option(LOCAL), *(Option(OFFLOAD, split, b) for b in BUDGETS)]

    def check_option(self, option: Option) -> Option:
        """The whole model, or an offload at the head's split at any budget in (0, 1]."""
        if option.action == OFFLOAD and option.split == self.geometry.split and option.rate is None:
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
        """Runs the head at the option's budget (every token for the whole model): the kept
        tokens (1, k, d) and their patch indices (1, k)."""
        budget = option.budget if option.action == OFFLOAD else 1.0
        tokens, indices = self.sessions["head"].run(
            ["tokens", "indices"], {"image": image, "alpha": np.array([budget], np.float32)}
        )
        return Stretch(0, self.geometry.split, None, {"tokens": tokens, "indices": indices})

    def pack(
        self, stretch: Stretch | None, option: Option, wire: WireOptions, image: np.ndarray
    ) -> Offload:
        """The kept tokens in ``wire.token_format``; nothing for the whole model on the device."""
        assert stretch is not None
        tokens = stretch.outputs["tokens"]
        kept = [int(i) for i in stretch.outputs["indices"][0]]
        if option.action == LOCAL:
            return Offload(option, {}, {}, local=tokens, kept_indices=kept)
        return Offload(
            option,
            pack_kept(tokens, wire.token_format),
            {P.BUDGET: option.budget},
            local=tokens,
            kept_indices=kept,
        )

    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """The device's own tail on the tokens its head kept (before quantisation)."""
        return self.run_batch(TAIL, [{"tokens": offload.local[0]}])

    # -- server -------------------------------------------------------------------------------

    def server_graphs(self) -> list[str]:
        """The tail."""
        return [TAIL]

    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """Dequantised tokens, one (T, d) sample per row of ``tokens``."""
        self.refuse_unknown(params, frozenset({P.BUDGET}))
        if params.get(P.BUDGET) is not None:
            P.check(P.BUDGET, params[P.BUDGET])
        g = self.geometry
        tokens = read_tokens(inputs, self.model.name, g.embed_dim, g.num_patches)
        t = int(tokens.shape[1])
        return Work(
            TAIL, [{"tokens": x} for x in tokens], reply={R.TOKENS: t}, log={"tokens": t}, tokens=t
        )

    def run_batch(self, graph: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Pads the samples' tokens to the longest, masks the padding and runs the tail."""
        tokens, mask = pad([s["tokens"] for s in samples])
        return self.sessions[graph].run(["logits"], {"tokens": tokens, "token_mask": mask})[0]
