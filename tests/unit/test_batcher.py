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
    for done, exp in zip(results, expected, strict=True):
        np.testing.assert_allclose(done.logits, exp, atol=1e-5)
        assert done.queue_s >= 0 and done.hop_s >= 0 and done.run_s > 0 and done.batch_size >= 1
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


def test_a_lone_request_on_a_quick_idle_model_runs_inline_others_are_batched(tiny_repository):
    session = ort.InferenceSession(str(tiny_repository / "tiny-vit" / "1" / "tail.onnx"))
    x = np.ones((4, 32), np.float32)
    expected = tail_of(session)([{"tokens": x}])[0]

    async def go(inline_max_ms: float) -> list:
        b = DynamicBatcher(tail_of(session), ThreadPoolExecutor(1), inline_max_ms=inline_max_ms)
        b.start()
        first = await b.submit({"tokens": x})  # how long a batch takes is not known yet
        await asyncio.sleep(0.01)  # idle a while
        lone = await b.submit({"tokens": x})
        crowd = await asyncio.gather(*(b.submit({"tokens": x}) for _ in range(6)))
        await b.stop()
        return [first, lone, *crowd]

    first, lone, *crowd = asyncio.run(go(inline_max_ms=50.0))
    assert first.hop_s > 0  # through the worker thread
    assert lone.hop_s == 0 and lone.queue_s == 0 and lone.batch_size == 1  # inline
    assert max(d.batch_size for d in crowd) > 1  # the rest queued behind it and were batched
    for d in (first, lone, *crowd):
        np.testing.assert_allclose(d.logits, expected, atol=1e-5)
    never = asyncio.run(go(inline_max_ms=0.0))
    assert all(d.hop_s > 0 for d in never)
