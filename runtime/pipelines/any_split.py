"""The any-split network (docs/methods.md#any-split): every option of a frame in one network.

The device holds the network's first blocks with an exit after each; after any of them it may
answer from the exit, or offload the patch tokens its budget-conditioned selector keeps (int8,
or through that split's nested JSCC coder at a rate); or it uploads the picture (a JPEG) and the
server runs the whole network on it. The option space is the manifest's grid: every exit, every
split × budget × (int8 | rate), every JPEG quality.

Device graphs: ``step_k`` (stem and block 1, then one block each, with exit k), ``select_s`` (the
selector's key of every patch for a budget), ``encode_s`` (the coder). Server graphs: ``tail_s``
(the network from split s on the tokens that arrived), ``decode_s`` (the coder's receiver),
``full`` (the whole network on a picture); they share one weights file.

Wire (parameter ``split``: the blocks the device ran, 0 for a picture):

- tokens: ``tokens`` FP16 | FP32 | INT8 [B, T, d] (INT8 with ``token_scale``), as
  :mod:`.tokens`; parameter ``budget``;
- symbols: ``symbols`` FP16 | FP32 [B, T, 2m], as :mod:`.jscc`; parameters ``budget``, ``rate``,
  ``snr_db``, ``channel``;
- a picture: ``image_jpeg`` UINT8 [1, L], the JPEG file's bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from semlink.protocol import params as P
from semlink.protocol import reply as R
from semlink.protocol.codec import TensorError
from semlink.runtime.images import ImageLimits, decode_image
from semlink.runtime.manifest import Manifest
from semlink.runtime.pipelines.base import (
    EXIT,
    OFFLOAD,
    UPLOAD,
    Inputs,
    Offload,
    Option,
    Pipeline,
    Stretch,
    WireOptions,
    Work,
    num_kept,
    split_param,
    step_feeds,
)
from semlink.runtime.pipelines.jscc import JsccSpec, pack_symbols, receive_symbols
from semlink.runtime.pipelines.tokens import pack_kept, pad, read_tokens
from semlink.runtime.repository import ModelVersion

FULL = "full"
JPEG_INPUT = "image_jpeg"
MAX_JPEG_PIXELS_FACTOR = 4  # a picture may have up to 4x the model's input pixels


@dataclass(frozen=True)
class AnySplitSpec:
    """The any-split fields of a manifest: token geometry, splits, the coders, the option grid."""

    num_patches: int
    embed_dim: int
    splits: tuple[int, ...]
    recursive: bool
    jscc: JsccSpec
    budgets: tuple[float, ...]
    rates: tuple[float, ...]
    jpeg_qualities: tuple[int, ...]

    @classmethod
    def read(cls, manifest: Manifest) -> AnySplitSpec:
        """Parses the fields and checks every graph they need; raises ``ManifestError``."""
        r = manifest.reader()
        grid = r.child("options")
        spec = cls(
            num_patches=r.positive("num_patches"),
            embed_dim=r.positive("embed_dim"),
            splits=r.ints("splits"),
            recursive=bool(manifest.doc.get("recursive", False)),
            jscc=JsccSpec.read(manifest),
            budgets=tuple(_shares(grid, "budgets")),
            rates=tuple(_shares(grid, "rates")),
            jpeg_qualities=grid.ints("jpeg_qualities"),
        )
        if list(spec.splits) != list(range(1, len(spec.splits) + 1)):
            r.fail("splits", "1, 2, ..., device blocks", list(spec.splits))
        if not all(1 <= q <= 95 for q in spec.jpeg_qualities):
            r.fail("options.jpeg_qualities", "JPEG qualities in [1, 95]", list(spec.jpeg_qualities))
        for s in spec.splits:
            manifest.need_graphs(
                f"step_{s}", f"select_{s}", f"encode_{s}", f"decode_{s}", f"tail_{s}"
            )
        manifest.need_graphs(FULL)
        return spec


def _shares(r: Any, key: str) -> list[float]:
    values = r.get(key, list)
    if not values or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in values):
        r.fail(key, "a list of numbers in (0, 1]", values)
    return [float(v) for v in values]


def encode_jpeg(image: np.ndarray, manifest: Manifest, quality: int) -> bytes:
    """The normalised frame (1, C, H, W) as the camera's JPEG file at ``quality``."""
    pixels = manifest.normalisation.invert(image[0])
    mode = "L" if pixels.shape[2] == 1 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(
        buf, "JPEG", quality=quality
    )
    return buf.getvalue()


class AnySplitPipeline(Pipeline):
    """Exits, token offloads (int8 and JSCC) at every device split, and picture uploads."""

    kind = "any-split"
    controllers = ("planner", "lyapunov", "rl", "threshold", "growth", "fixed", "local")
    parameters = frozenset({P.CHANNEL})

    def __init__(self, model: ModelVersion) -> None:
        super().__init__(model)
        self.spec = AnySplitSpec.read(model.manifest)
        self.rng = np.random.default_rng()  # the receiver's channel noise
        c, h, w = model.manifest.image_shape
        self.jpeg_limits = ImageLimits(pixels=MAX_JPEG_PIXELS_FACTOR * h * w + 1)

    # -- rules --------------------------------------------------------------------------------

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """One of: kept tokens [B, T, d] (INT8 with their scales [B, T]), their JSCC symbols
        [B, T, 2m], or a picture's file [1, L] (parameter ``split`` says which split, 0 for it)."""
        d = self.spec.embed_dim
        return [
            ("tokens", "FP16", [-1, -1, d]),
            ("token_scale", "FP32", [-1, -1]),
            ("symbols", "FP16", [-1, -1, -1]),
            (JPEG_INPUT, "UINT8", [1, -1]),
        ]

    def options(self) -> list[Option]:
        """Every exit, every split × budget × (int8 tokens | each JSCC rate), every JPEG quality."""
        s = self.spec
        offloads = [
            Option(OFFLOAD, k, b, r) for k in s.splits for b in s.budgets for r in (None, *s.rates)
        ]
        return [
            *(Option(EXIT, k) for k in s.splits),
            *offloads,
            *(Option(UPLOAD, 0, quality=q) for q in s.jpeg_qualities),
        ]

    # -- device -------------------------------------------------------------------------------

    def device_graphs(self) -> list[str]:
        """Each device block's step with its exit, each split's selector and coder."""
        return [f"{g}_{k}" for k in self.spec.splits for g in ("step", "select", "encode")]

    @property
    def num_stretches(self) -> int:
        """One per device block."""
        return len(self.spec.splits)

    def stretches_for(self, option: Option) -> int:
        """The blocks up to the option's split (none for an upload)."""
        return option.split

    def pack_stage(self, option: Option) -> str | None:
        """``select{s}`` for int8 tokens at split s, ``encode{s}`` for its JSCC symbols (the
        selector included), ``jpeg`` for a picture, None for an exit."""
        if option.action == OFFLOAD:
            return f"{'select' if option.rate is None else 'encode'}{option.split}"
        return super().pack_stage(option)

    def run_stretch(
        self,
        k: int,
        image: np.ndarray,
        prev: Stretch | None,
        option: Option,
        snr_db: float | None = None,
    ) -> Stretch:
        """Runs block ``k`` (the stem first) and its exit."""
        feeds = step_feeds(k, image, prev, self.spec.recursive)
        acts, logp = self.sessions[f"step_{k + 1}"].run(None, feeds)
        return Stretch(k, k + 1, float(np.exp(logp[0]).max()), {"activations": acts, "logp": logp})

    def pack(
        self, stretch: Stretch | None, option: Option, wire: WireOptions, image: np.ndarray
    ) -> Offload:
        """Nothing for an exit; the kept tokens (or their symbols) for an offload; the JPEG file
        for an upload."""
        if option.action == UPLOAD:
            assert option.quality is not None
            data = np.frombuffer(encode_jpeg(image, self.manifest, option.quality), np.uint8)
            return Offload(option, {JPEG_INPUT: data[None]}, {P.SPLIT: 0}, local=image)
        assert stretch is not None
        if option.action == EXIT:
            return Offload(option, {}, {})
        s, acts = option.split, stretch.outputs["activations"]
        key = self.sessions[f"select_{s}"].run(
            ["key"], {"activations": acts, "alpha": np.array([option.budget], np.float32)}
        )[0]
        kept = np.argsort(-key[0], kind="stable")[: num_kept(option.budget, self.spec.num_patches)]
        tokens = acts[:, 1 + kept]  # (1, k, d): patch tokens sit after the class token
        params: dict[str, Any] = {P.SPLIT: s, P.BUDGET: option.budget}
        indices = [int(i) for i in kept]
        if option.rate is None:
            return Offload(
                option, pack_kept(tokens, wire.token_format), params, kept_indices=indices
            )
        coded = self.sessions[f"encode_{s}"].run(
            ["symbols"], {"tokens": tokens, **self.spec.jscc.feed(wire.snr_db)}
        )[0]
        c, h, w = self.manifest.image_shape
        tensors, more, _, m, uses = pack_symbols(
            coded, option.rate, self.spec.jscc, wire, c * h * w
        )
        return Offload(
            option,
            tensors,
            {**params, **more},
            kept_indices=indices,
            symbols_per_token=m,
            channel_uses=uses,
        )

    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """The reached exit's log-probabilities."""
        return stretch.outputs["logp"]

    def whole(self, image: np.ndarray) -> np.ndarray:
        """The whole network on every token (the server's ``full`` graph)."""
        return self.run_batch(FULL, [{"image": image[0]}])

    # -- server -------------------------------------------------------------------------------

    def server_graphs(self) -> list[str]:
        """Each split's tail and receiver, and the whole network."""
        return [*(f"{g}_{k}" for k in self.spec.splits for g in ("tail", "decode")), FULL]

    def batchers(self) -> list[str]:
        """Tokens at each split, symbols at each split, pictures."""
        return [*(f"{g}_{k}" for k in self.spec.splits for g in ("tail", "jscc")), FULL]

    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """A picture (``split`` 0), or tokens or symbols from one of the device's splits."""
        self.refuse_unknown(params, frozenset({P.SPLIT, P.BUDGET, P.RATE, P.SNR_DB, P.CHANNEL}))
        for key in (P.BUDGET, P.RATE):
            if params.get(key) is not None:
                P.check(key, params[key])
        split = split_param(params, (0, *self.spec.splits), self.model.name, "the payload")
        if split == 0:
            return self._admit_picture(inputs)
        s = self.spec
        if "symbols" in inputs:
            full, snr, reply = receive_symbols(
                inputs,
                params,
                s.jscc,
                s.num_patches,
                self.model.name,
                lambda shape: self.rng.normal(size=shape).astype(np.float32),
            )
            feed = s.jscc.snr_input(snr) if s.jscc.snr_range is not None else 0.0
            samples = [{"symbols": x, "snr_db": np.array(feed, np.float32)} for x in full]
            t = int(full.shape[1])
            return Work(
                f"jscc_{split}",
                samples,
                {**reply, R.SPLIT: split},
                {"split": split, "tokens": t},
                t,
            )
        tokens = read_tokens(inputs, self.model.name, s.embed_dim, s.num_patches)
        t = int(tokens.shape[1])
        reply = {R.TOKENS: t, R.SPLIT: split}
        return Work(
            f"tail_{split}",
            [{"tokens": x} for x in tokens],
            reply,
            {"split": split, "tokens": t},
            t,
        )

    def _admit_picture(self, inputs: Inputs) -> Work:
        if JPEG_INPUT not in inputs:
            raise TensorError(
                f"split 0 is a picture: send {JPEG_INPUT!r} UINT8 [1, L], a JPEG or PNG file's "
                f"bytes; got {sorted(inputs)}"
            )
        dtype, data = inputs[JPEG_INPUT]
        if dtype != "UINT8" or data.ndim != 2 or data.shape[0] != 1 or data.shape[1] < 1:
            raise TensorError(
                f"input {JPEG_INPUT!r} must be UINT8 [1, L], got {dtype} {list(data.shape)}"
            )
        image = decode_image(data.tobytes(), self.manifest, self.jpeg_limits)
        return Work(
            FULL, [{"image": image[0]}], {R.SPLIT: 0}, {"split": 0, "bytes": int(data.shape[1])}
        )

    def run_batch(self, graph: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Runs one kind of work: tokens through a tail, symbols through the receiver and the
        tail (padding masked out), or pictures through the whole network."""
        if graph == FULL:
            return self.sessions[FULL].run(
                ["logits"], {"image": np.stack([s["image"] for s in samples])}
            )[0]
        kind, split = graph.split("_")
        if kind == "tail":
            tokens, mask = pad([s["tokens"] for s in samples])
        else:
            symbols, mask = pad([s["symbols"] for s in samples])
            feeds = {"symbols": symbols}
            if self.spec.jscc.snr_range is not None:
                feeds["snr_db"] = np.array([s["snr_db"] for s in samples], np.float32).reshape(-1)
            tokens = self.sessions[f"decode_{split}"].run(["tokens"], feeds)[0]
        return self.sessions[f"tail_{split}"].run(
            ["logits"], {"tokens": tokens, "token_mask": mask}
        )[0]
