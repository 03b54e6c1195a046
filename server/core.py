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

from models import channel
from protocol import params as P
from protocol.codec import PackedTokens, TensorError, token_format_of, unpack_tokens
from protocol.params import ParameterError
from server.batcher import DynamicBatcher
from server.metrics import ServerMetrics
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
        # early-exit models: one server graph per split (device exit index -> session)
        self.exit_sessions: dict[tuple[str, str], dict[int, Any]] = {}
        self.executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="ort")
        self.ready = False
        self.in_flight = 0
        self.rng = np.random.default_rng()  # channel noise applied at the receiver
        self.metrics = ServerMetrics()

    async def load(self) -> None:
        """Scans the repository and opens one tail session and batcher per model version."""
        models = scan(self.settings.model_repository)
        loop = asyncio.get_running_loop()
        for name, versions in models.items():
            for version, mv in versions.items():
                if mv.is_early_exit:
                    self.exit_sessions[(name, version)] = {
                        int(j): await loop.run_in_executor(
                            self.executor, mv.session, f"server_s{j}", 1
                        )
                        for j in mv.manifest["device_exits"]
                    }
                    log.info(
                        "loaded early-exit model %s version %s from %s", name, version, mv.path
                    )
                    continue
                session = await loop.run_in_executor(self.executor, mv.session, "tail", 1)
                batcher = DynamicBatcher(
                    session,
                    self.executor,
                    max_batch_size=self.settings.max_batch_size,
                    max_queue_delay_ms=self.settings.max_queue_delay_ms,
                    max_queue=self.settings.max_queue,
                    on_batch=self.metrics.batch.labels(name).observe,
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
        if mv.is_early_exit:
            return await self._infer_early_exit(mv, inputs, parameters)
        extra: dict[str, Any] = {}
        if "jscc" in mv.manifest:
            tokens, extra = self._symbols(mv, inputs, parameters)
        else:
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
        self.metrics.requests.labels(mv.name, "ok").inc()
        self.metrics.latency.labels(mv.name).observe(total_ms / 1000.0)
        self.metrics.tokens.labels(mv.name).inc(int(tokens.shape[0] * tokens.shape[1]))
        request_id = parameters.get(P.REQUEST_ID, "")
        log.info(
            "request %s: %s v%s, %d tokens, %.2f ms",
            request_id,
            mv.name,
            mv.version,
            tokens.shape[1],
            total_ms,
            extra={
                "request": {
                    "request_id": request_id,
                    "model": mv.name,
                    "version": mv.version,
                    "tokens": int(tokens.shape[1]),
                    "queue_ms": queue_ms,
                    "total_ms": total_ms,
                }
            },
        )
        return (
            mv,
            {"logits": logits},
            {
                "server_queue_ms": queue_ms,
                "server_compute_ms": max(total_ms - queue_ms, 0.0),
                "server_tokens": int(tokens.shape[1]),
                **extra,
            },
        )

    async def _infer_early_exit(
        self,
        mv: ModelVersion,
        inputs: dict[str, tuple[str, np.ndarray]],
        parameters: dict[str, Any],
    ) -> tuple[ModelVersion, dict[str, np.ndarray], dict[str, Any]]:
        """Continues an early-exit network from the activations the device sent at ``split``
        (its number of device blocks); answers the final exit's log-probabilities as logits."""
        blocks = list(mv.manifest["exit_blocks"])
        splits = [blocks[j] for j in mv.manifest["device_exits"]]
        split = parameters.get(P.SPLIT)
        if isinstance(split, bool) or not isinstance(split, int) or split not in splits:
            raise ParameterError(
                f"model {mv.name!r} is an early-exit network: parameter 'split' must be the "
                f"number of device blocks the activations come from, one of {splits}; got {split!r}"
            )
        j = blocks.index(split)
        feeds = {
            "activations": self._float_input(
                inputs, "activations", mv.manifest["activation_shapes"][j]
            )
        }
        if mv.manifest.get("recursive"):
            feeds["prev_logp"] = self._float_input(inputs, "prev_logp", [mv.num_classes])
            if feeds["prev_logp"].shape[0] != feeds["activations"].shape[0]:
                raise TensorError(
                    "inputs 'activations' and 'prev_logp' must have the same batch size"
                )
        session = self.exit_sessions[(mv.name, mv.version)][j]
        started = time.perf_counter()
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            (logp,) = await loop.run_in_executor(self.executor, session.run, ["logp"], feeds)
        finally:
            self.in_flight -= 1
        total_ms = 1000.0 * (time.perf_counter() - started)
        self.metrics.requests.labels(mv.name, "ok").inc()
        self.metrics.latency.labels(mv.name).observe(total_ms / 1000.0)
        request_id = parameters.get(P.REQUEST_ID, "")
        log.info(
            "request %s: %s v%s from split %d, %.2f ms",
            request_id,
            mv.name,
            mv.version,
            split,
            total_ms,
            extra={
                "request": {
                    "request_id": request_id,
                    "model": mv.name,
                    "version": mv.version,
                    "split": split,
                    "total_ms": total_ms,
                }
            },
        )
        return (
            mv,
            {"logits": logp.astype(np.float32)},
            {"server_queue_ms": 0.0, "server_compute_ms": total_ms, "split": split},
        )

    @staticmethod
    def _float_input(
        inputs: dict[str, tuple[str, np.ndarray]], name: str, shape: list[int]
    ) -> np.ndarray:
        """A FP16/FP32 input of shape [B, *shape] with 1 <= B <= 64, as finite float32."""
        if name not in inputs:
            raise TensorError(
                f"missing input {name!r}: FP16/FP32 [B, {', '.join(map(str, shape))}]; got {sorted(inputs)}"
            )
        dtype, arr = inputs[name]
        if dtype not in ("FP16", "FP32"):
            raise TensorError(f"input {name!r} must be FP16 or FP32, got {dtype}")
        if list(arr.shape[1:]) != list(shape) or not 1 <= arr.shape[0] <= 64:
            raise TensorError(
                f"input {name!r} must have shape [B, {', '.join(map(str, shape))}] with 1 <= B <= 64, got {list(arr.shape)}"
            )
        x = arr.astype(np.float32)
        if not np.isfinite(x).all():
            raise TensorError(f"input {name!r} holds NaN or infinite values")
        return x

    def _symbols(
        self,
        mv: ModelVersion,
        inputs: dict[str, tuple[str, np.ndarray]],
        parameters: dict[str, Any],
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """JSCC payload: applies the channel at the request's SNR, then zero-fills to ``d_c``.

        ``symbols`` [B, T, 2m] holds each kept token's first m symbols, real parts then imaginary
        parts, as the device normalised them. Without ``snr_db`` the channel is noiseless.
        """
        d_c = int(mv.manifest["jscc"]["symbols"])
        n = mv.num_patches
        if "symbols" not in inputs:
            raise TensorError(
                f"model {mv.name!r} is a JSCC pipeline: send 'symbols' FP16/FP32 [B, T, 2m] "
                f"(real then imaginary parts of each token's first m <= {d_c} symbols); got {sorted(inputs)}"
            )
        dtype, arr = inputs["symbols"]
        if dtype not in ("FP16", "FP32"):
            raise TensorError(f"input 'symbols' must be FP16 or FP32, got {dtype}")
        if (
            arr.ndim != 3
            or arr.shape[2] % 2
            or not 2 <= arr.shape[2] <= 2 * d_c
            or not 1 <= arr.shape[1] <= n
            or not 1 <= arr.shape[0] <= 64
        ):
            raise TensorError(
                f"input 'symbols' must have shape [B, T, 2m] with 1 <= B <= 64, 1 <= T <= {n} and "
                f"1 <= m <= {d_c}, got {list(arr.shape)}"
            )
        x = arr.astype(np.float32)
        if not np.isfinite(x).all():
            raise TensorError("input 'symbols' holds NaN or infinite values")
        m = x.shape[2] // 2
        snr = parameters.get(P.SNR_DB)
        kind = P.check_channel(parameters.get(P.CHANNEL, "awgn")) if snr is not None else "none"
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
        return full, {
            "symbols_per_token": m,
            "channel": kind,
            **({"snr_db": float(snr)} if snr is not None else {}),
        }

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
