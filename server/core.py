"""The server's inference core, shared by the gRPC and HTTP front ends.

Input convention (protocol/README.md): ``tokens`` FP16 | FP32 | INT8 of shape [B, T, d], the
kept patch tokens, 1 <= T <= N; for INT8 also ``token_scale`` FP32 [B, T]; optional ``indices``
INT64 [B, T] (which patches were kept, for logs). Output: ``logits`` FP32 [B, C].
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from protocol import params as P
from protocol.codec import PackedTokens, TensorError, token_format_of, unpack_tokens
from server.batcher import DynamicBatcher
from server.repository import ModelVersion, resolve, scan
from server.settings import ServerSettings

log = logging.getLogger(__name__)


class NotReady(RuntimeError):
    pass


class InferenceCore:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self.batchers: dict[tuple[str, str], DynamicBatcher] = {}
        self.executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="ort")
        self.ready = False
        self.in_flight = 0

    async def load(self) -> None:
        """Scans the repository and opens one tail session and batcher per model version."""
        models = scan(self.settings.model_repository)
        loop = asyncio.get_running_loop()
        for name, versions in models.items():
            for version, mv in versions.items():
                session = await loop.run_in_executor(self.executor, mv.session, "tail", 1)
                batcher = DynamicBatcher(
                    session,
                    self.executor,
                    max_batch_size=self.settings.max_batch_size,
                    max_queue_delay_ms=self.settings.max_queue_delay_ms,
                    max_queue=self.settings.max_queue,
                )
                batcher.start()
                self.batchers[(name, version)] = batcher
                log.info("loaded model %s version %s from %s", name, version, mv.path)
        self.models = models
        self.ready = True

    async def close(self) -> None:
        for b in self.batchers.values():
            await b.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def model(self, name: str, version: str = "") -> ModelVersion:
        if not self.ready:
            raise NotReady("server is loading its models; retry shortly")
        return resolve(self.models, name, version)

    async def infer(
        self,
        name: str,
        version: str,
        inputs: dict[str, tuple[str, np.ndarray]],
        parameters: dict[str, Any],
    ) -> tuple[ModelVersion, dict[str, np.ndarray], dict[str, Any]]:
        """Validates and runs one request; returns the model, outputs and response parameters."""
        mv = self.model(name, version)
        for key in (P.BUDGET, P.RATE, P.SNR_DB):
            if parameters.get(key) is not None:
                P.check(key, parameters[key])
        tokens = self._tokens(mv, inputs)
        started = time.perf_counter()
        self.in_flight += 1
        try:
            results = await asyncio.gather(
                *(self.batchers[(mv.name, mv.version)].submit(t) for t in tokens)
            )
        finally:
            self.in_flight -= 1
        logits = np.stack([r[0] for r in results]).astype(np.float32)
        queue_ms = 1000.0 * max(r[1] for r in results)
        total_ms = 1000.0 * (time.perf_counter() - started)
        return (
            mv,
            {"logits": logits},
            {
                "server_queue_ms": queue_ms,
                "server_compute_ms": max(total_ms - queue_ms, 0.0),
                "server_tokens": int(tokens.shape[1]),
            },
        )

    @staticmethod
    def _tokens(mv: ModelVersion, inputs: dict[str, tuple[str, np.ndarray]]) -> np.ndarray:
        if "tokens" not in inputs:
            raise TensorError(
                f"model {mv.name!r} needs an input named 'tokens' ([B, T, {mv.embed_dim}] FP16/FP32/INT8); got {sorted(inputs)}"
            )
        dtype, arr = inputs["tokens"]
        fmt = token_format_of(dtype)
        n = mv.num_patches
        if (
            arr.ndim != 3
            or arr.shape[2] != mv.embed_dim
            or not 1 <= arr.shape[1] <= n
            or not 1 <= arr.shape[0] <= 64
        ):
            raise TensorError(
                f"input 'tokens' must have shape [B, T, {mv.embed_dim}] with 1 <= B <= 64 and "
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
                    f"input 'token_scale' must be FP32 of shape {list(arr.shape[:2])}, got {sdtype} {list(scale.shape)}"
                )
        out = unpack_tokens(PackedTokens(fmt, arr, scale))
        if not np.isfinite(out).all():
            raise TensorError("input 'tokens' holds NaN or infinite values")
        return out
