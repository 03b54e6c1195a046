"""How ``semlink bench compare`` asks each system for a label: OIP tensors for a semlink device,
the camera's JPEG for a baseline server, one at a time or many at once."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from semlink.bench.baselines import to_jpeg
from semlink.bench.compare.config import NO_DEADLINE_MS, WARM_UP, CompareBenchConfig, System
from semlink.models.progress import progress_bar
from semlink.protocol.http_codec import build_infer_request
from semlink.runtime.manifest import Normalisation
from semlink.runtime.repository import shipped_pipeline


class Client:
    """One way of asking one system for a label: ``ask(client, i) -> (label, parameters, ms)``."""

    def __init__(self, url: str, build: Callable[[int], tuple[bytes, dict[str, str]]]) -> None:
        self.url, self.build = url, build

    def parse(self, doc: dict) -> tuple[int, dict]:
        """The label and the parameters of an answer (a baseline's has none)."""
        if "outputs" in doc:  # OIP, from a semlink device
            label = next(o for o in doc["outputs"] if o["name"] == "label")["data"][0]
            return int(label), doc["parameters"]
        return int(doc["label"]), {}

    def ask(self, client: httpx.Client, i: int) -> tuple[int, dict, float]:
        """Asks for image ``i``: its label, the answer's parameters and the milliseconds taken."""
        body, headers = self.build(i)
        t0 = time.perf_counter()
        resp = client.post(self.url, content=body, headers=headers)
        ms = (time.perf_counter() - t0) * 1000.0
        resp.raise_for_status()
        return (*self.parse(resp.json()), ms)

    async def all_of(self, n: int, in_flight: int, tls: dict[str, Any]) -> tuple[list[int], float]:
        """Labels of images ``0..n-1`` asked ``in_flight`` at a time, and the requests per
        second that took."""
        gate = asyncio.Semaphore(in_flight)
        labels = [-1] * n

        async def one(client: httpx.AsyncClient, i: int) -> None:
            async with gate:
                body, headers = self.build(i)
                resp = await client.post(self.url, content=body, headers=headers)
                resp.raise_for_status()
                labels[i] = self.parse(resp.json())[0]

        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=120, **tls) as client:
            tasks = [one(client, i) for i in range(n)]
            for fut in progress_bar(
                asyncio.as_completed(tasks), total=n, desc="  whole split", unit="req", leave=False
            ):
                await fut
        return labels, n / (time.perf_counter() - t0)


class Camera:
    """The test split as the camera has it: normalised tensors for semlink's device, JPEGs at
    each quality (encoded once) for the uploads."""

    def __init__(self, images: np.ndarray, norm: Normalisation) -> None:
        self.images, self.norm = images, norm
        self._jpegs: dict[int, list[bytes]] = {}

    def jpegs(self, quality: int) -> list[bytes]:
        """Every image as the camera's JPEG at ``quality``."""
        if quality not in self._jpegs:
            self._jpegs[quality] = [to_jpeg(im, self.norm, quality) for im in self.images]
        return self._jpegs[quality]


@dataclass(frozen=True)
class OipRequests:
    """Image ``i`` as an OIP request with binary tensors, for a semlink device."""

    images: np.ndarray
    params: dict[str, Any]

    def __call__(self, i: int) -> tuple[bytes, dict[str, str]]:
        return build_infer_request({"image": self.images[i : i + 1]}, self.params)


@dataclass(frozen=True)
class JpegRequests:
    """Image ``i``'s JPEG as the body (FastAPI) or base64 in JSON (LitServe), from the JPEGs
    of the images a cell sends (picklable: a camera process under the quota sends them)."""

    jpegs: dict[int, bytes]
    litserve: bool

    def __call__(self, i: int) -> tuple[bytes, dict[str, str]]:
        if not self.litserve:
            return self.jpegs[i], {"content-type": "image/jpeg"}
        body = json.dumps({"image": base64.b64encode(self.jpegs[i]).decode()}).encode()
        return body, {"content-type": "application/json"}


def warm_up_images(total: int) -> list[int]:
    """The images the warm-up requests send: the last of the split, never measured."""
    return [total - 1 - i for i in range(WARM_UP)]


def make_client(
    system: System,
    url: str,
    camera: Camera,
    cfg: CompareBenchConfig,
    indices: list[int] | None = None,
) -> Client:
    """The request ``system`` takes for image ``i``: OIP tensors for a device, the camera's
    JPEG (raw body for FastAPI, base64 in JSON for LitServe) for a baseline; ``indices`` limits
    the JPEGs it carries to the images it will send (default: all)."""
    if system.kind in ("semlink", "local"):
        params = {"deadline_ms": cfg.deadline_ms if system.deadline else NO_DEADLINE_MS}
        model = shipped_pipeline(cfg.dataset, system.model)
        return Client(f"{url}/v2/models/{model}/infer", OipRequests(camera.images, params))
    jpegs = camera.jpegs(system.quality)
    chosen = {i: jpegs[i] for i in (range(len(jpegs)) if indices is None else indices)}
    return Client(f"{url}/predict", JpegRequests(chosen, system.kind == "litserve"))


def tls_verify(pki: dict[str, str] | None) -> dict[str, Any]:
    """httpx's ``verify``: the development CA and the device's certificate for mutual TLS
    (nothing for plaintext, ``pki`` None)."""
    if pki is None:
        return {}
    import ssl

    ctx = ssl.create_default_context(cafile=pki["ca"])
    ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
    return {"verify": ctx}
