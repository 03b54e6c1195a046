"""Dynamic batching: concurrent requests with different token counts get their unbatched answers."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from semlink.runtime.errors import QueueFull
from semlink.runtime.pipelines.tokens import pad
from semlink.server.batcher import DynamicBatcher


def tail_of(session: ort.InferenceSession):
    """A batch function over the tiny tail: pad the samples' tokens, mask the padding."""

    def run(samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        tokens, mask = pad([s["tokens"] for s in samples])
        return session.run(["logits"], {"tokens": tokens, "token_mask": mask})[0]

    return run


def test_pad_masks_the_padding():
    tokens, mask = pad([np.ones((2, 4), np.float32), np.ones((5, 4), np.float32)])
    assert tokens.shape == (2, 5, 4) and mask.tolist() == [[1, 1, 0, 0, 0], [1] * 5]


def test_concurrent_requests_are_batched_and_correct(tiny_repository):
    session = ort.InferenceSession(str(tiny_repository / "tiny-vit" / "1" / "tail.onnx"))
    rng = np.random.default_rng(0)
    items = [rng.normal(size=(int(k), 32)).astype(np.float32) for k in rng.integers(1, 37, size=24)]
    run = tail_of(session)
    expected = [run([{"tokens": x}])[0] for x in items]

    async def go() -> tuple[list, DynamicBatcher]:
        b = DynamicBatcher(run, ThreadPoolExecutor(1), max_batch_size=8, max_queue_delay_ms=20)
        b.start()
        out = await asyncio.gather(*(b.submit({"tokens": x}) for x in items))
        await b.stop()
        return out, b

    results, batcher = asyncio.run(go())
    for (logits, _), exp in zip(results, expected, strict=True):
        np.testing.assert_allclose(logits, exp, atol=1e-5)
    assert batcher.stats.requests == 24 and batcher.stats.batches < 24
    assert max(batcher.stats.size_histogram) <= 8


def test_full_queue_sheds_load(tiny_repository):
    session = ort.InferenceSession(str(tiny_repository / "tiny-vit" / "1" / "tail.onnx"))

    async def go() -> None:
        b = DynamicBatcher(
            tail_of(session), ThreadPoolExecutor(1), max_queue=2
        )  # not started: nothing drains
        tasks = [
            asyncio.ensure_future(b.submit({"tokens": np.zeros((2, 32), np.float32)}))
            for _ in range(3)
        ]
        await asyncio.sleep(0.01)
        assert isinstance(tasks[2].exception(), QueueFull)
        for t in tasks[:2]:
            t.cancel()

    asyncio.run(go())
