"""The pipeline seam: typed manifests, one implementation per method on both ends, and the
server's one path (admit -> batcher -> respond) for every kind, early exits included."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil

import numpy as np
import pytest

from semlink.protocol.codec import TensorError
from semlink.runtime.errors import ERRORS, INTERNAL, QueueFull, kind_of, model_label
from semlink.runtime.manifest import Manifest, ManifestError
from semlink.runtime.pipelines import (
    EarlyExitPipeline,
    JsccPipeline,
    Option,
    TokensPipeline,
    make_pipeline,
)
from semlink.runtime.pipelines.base import EXIT, LOCAL, OFFLOAD, WireOptions
from semlink.runtime.repository import DEFAULT_REPOSITORY, ModelVersion, resolve, scan
from semlink.server.core import InferenceCore
from semlink.server.settings import ServerSettings

ZOO = scan(DEFAULT_REPOSITORY)


def _doc(name: str) -> dict:
    return json.loads((DEFAULT_REPOSITORY / name / "1" / "manifest.json").read_text())


@pytest.mark.parametrize(
    ("name", "kind", "cls"),
    [
        ("digits-vit", "token-selection", TokensPipeline),
        ("digits-vit-jscc", "token-selection+jscc", JsccPipeline),
        ("digits-ee", "early-exit", EarlyExitPipeline),
    ],
)
def test_every_shipped_manifest_parses_into_its_pipeline(name, kind, cls):
    mv = resolve(ZOO, name)
    assert mv.kind == kind and type(make_pipeline(mv)) is cls
    norm = mv.manifest.normalisation
    assert len(norm.mean) == len(norm.std) == mv.image_shape[0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("num_classes"), "'num_classes' is missing"),
        (lambda d: d.update(kind="bagging"), "kind 'bagging' is unknown"),
        (lambda d: d.update(manifest_version=1), "re-export"),
        (lambda d: d["normalization"].pop("mean"), "'mean' is missing"),
        (lambda d: d["normalization"].update(std=[0.0]), "std must be positive"),
        (lambda d: d["normalization"].update(mean=[0.1, 0.2]), "one per image channel"),
        (lambda d: d.update(image_shape=[1, 48]), "list of 3 non-negative integers"),
        (lambda d: d.update(embed_dim="96"), "'embed_dim' must be int"),
        (lambda d: d.pop("jscc"), "'jscc' is missing"),
        (lambda d: d["jscc"].update(snr_range=[20.0]), "low and high dB"),
        (lambda d: d["jscc"].update(snr_range=[20.0, -20.0]), "low < high"),
    ],
)
def test_a_bad_manifest_names_its_field(edit, message):
    """Common fields fail when the repository is scanned, a kind's own when its pipeline is made
    (at start-up): either way before any request."""
    doc = copy.deepcopy(_doc("digits-vit-jscc"))
    edit(doc)
    with pytest.raises(ManifestError, match=message):
        _build(doc)


def _build(doc: dict):
    manifest = Manifest.parse(doc, "m.json")
    return make_pipeline(ModelVersion("m", "1", DEFAULT_REPOSITORY / "m" / "1", manifest))


def test_an_early_exit_manifest_needs_its_graphs():
    doc = copy.deepcopy(_doc("digits-ee"))
    del doc["graphs"]["server_s1"]
    with pytest.raises(ManifestError, match=r"graphs\.server_s1 is missing"):
        _build(doc)


def test_scan_refuses_a_repository_with_a_bad_manifest(tmp_path):
    shutil.copytree(DEFAULT_REPOSITORY / "digits-vit", tmp_path / "m")
    path = tmp_path / "m" / "1" / "manifest.json"
    path.write_text(json.dumps({**_doc("digits-vit"), "manifest_version": 99}))
    with pytest.raises(ManifestError, match="manifest_version 99"):
        scan(tmp_path)


def _image(mv) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1, *mv.image_shape)).astype(np.float32)


@pytest.mark.parametrize("name", ["digits-vit", "digits-vit-jscc", "digits-ee"])
def test_what_the_device_packs_the_server_admits_and_answers_alike(name):
    """Device half then server half of one pipeline in one process: for every kind, the
    server's answer to what the device packed equals the device's own answer from the same
    point (noiseless channel, fp32 on the wire)."""
    mv = resolve(ZOO, name)
    device, server = make_pipeline(mv), make_pipeline(mv)
    device.open(device.device_graphs())
    server.open(server.server_graphs())
    last = max(o.split for o in device.options() if o.action == OFFLOAD)
    option = next(o for o in device.options() if o.action == OFFLOAD and o.split == last)
    option = Option(OFFLOAD, last, 0.5 if option.budget < 1 else 1.0, option.rate and 1.0)
    stretch = None
    for k in range(device.stretches_for(option)):
        stretch = device.run_stretch(k, _image(mv), stretch, option)
    off = device.pack(stretch, option, WireOptions("fp32"), _image(mv))
    inputs = {n: ("FP32", t) for n, t in off.tensors.items()}
    work = server.admit(inputs, off.params)
    logits = server.run_batch(work.graph, work.samples)
    if mv.kind == "early-exit":  # the server finishes the network: a later exit
        assert logits.shape == (1, mv.num_classes) and np.isfinite(logits).all()
    else:  # the device's own tail on what it would have sent: the same answer
        np.testing.assert_allclose(logits, device.answer_locally(stretch, off), atol=1e-4)


@pytest.mark.parametrize(
    "name", ["exit2", "local", "jpeg75", "s1:a0.25", "s2:a0.1:r0.125", "s1:a1"]
)
def test_option_names_read_back_as_the_same_option(name):
    assert Option.parse(name).name == name


@pytest.mark.parametrize("name", ["exit", "s1", "s1:b0.2", "jpegx", "s1:a0.2:q3", "", "x" * 300])
def test_a_malformed_option_name_is_refused_naming_the_forms(name):
    from semlink.protocol.params import ParameterError

    with pytest.raises(ParameterError, match="not an option name"):
        Option.parse(name)


def test_each_pipeline_says_its_options_its_controllers_and_its_parameters():
    tokens, ee = make_pipeline(resolve(ZOO, "digits-vit")), make_pipeline(resolve(ZOO, "digits-ee"))
    assert Option(LOCAL) in tokens.options() and tokens.local_option() == Option(LOCAL)
    assert {o.action for o in ee.options()} == {EXIT, OFFLOAD}
    assert ee.local_option() == Option(EXIT, max(ee.exits.splits))
    assert "lyapunov" not in tokens.controllers and "rl" in ee.controllers
    from semlink.protocol.params import ParameterError

    with pytest.raises(ParameterError, match="'budget' does not apply to model 'digits-ee'"):
        ee.check_request({"budget": 0.5})
    with pytest.raises(ParameterError, match="'split' does not apply"):
        tokens.check_request({"split": 2})
    assert tokens.check_request({"budget": 0.5, "deadline_ms": 100, "ignored": 1}) == {
        "budget": 0.5,
        "deadline_ms": 100.0,
    }
    with pytest.raises(ParameterError, match="offers no option 'exit9'"):
        ee.check_request({"option": "exit9"})


def test_batched_rows_equal_unbatched_answers_for_early_exits():
    mv = resolve(ZOO, "digits-ee")
    pipe = make_pipeline(mv)
    pipe.open(pipe.server_graphs())
    rng = np.random.default_rng(1)
    shape = make_pipeline(mv).exits.activation_shapes[1]
    samples = [
        {
            "activations": rng.normal(size=shape).astype(np.float32),
            "prev_logp": np.log(np.full(mv.num_classes, 0.1, np.float32)),
        }
        for _ in range(5)
    ]
    graph = pipe.server_graphs()[1]
    batched = pipe.run_batch(graph, samples)
    for row, s in zip(batched, samples, strict=True):
        np.testing.assert_allclose(row, pipe.run_batch(graph, [s])[0], atol=1e-4)


def _core(**kw) -> InferenceCore:
    core = InferenceCore(ServerSettings(model_repository=DEFAULT_REPOSITORY, **kw))
    return core


def _ee_inputs(batch: int) -> dict:
    mv = resolve(ZOO, "digits-ee")
    shape = make_pipeline(mv).exits.activation_shapes[0]
    acts = np.zeros((batch, *shape), np.float16)
    prev = np.log(np.full((batch, mv.num_classes), 0.1, np.float32))
    return {"activations": ("FP16", acts), "prev_logp": ("FP32", prev)}


def test_early_exit_requests_are_batched_and_bounded_by_max_queue():
    async def go() -> None:
        core = _core(max_queue=2)
        await core.load()
        split = make_pipeline(resolve(ZOO, "digits-ee")).exits.splits[0]
        try:
            _, out, reply = await core.infer("digits-ee", "", _ee_inputs(2), {"split": split})
            assert out["logits"].shape == (2, 10) and reply["split"] == split
            batcher = core.batchers[("digits-ee", "1", "server_s0")]
            assert batcher.stats.requests == 2  # through the batcher, not around it
            with pytest.raises(TensorError, match="can never fit the server's queue of 2"):
                await core.infer("digits-ee", "", _ee_inputs(3), {"split": split})
            await batcher.stop()  # nothing drains now: the queue fills and sheds
            waiting = asyncio.ensure_future(
                core.infer("digits-ee", "", _ee_inputs(2), {"split": split})
            )
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFull):
                await core.infer("digits-ee", "", _ee_inputs(1), {"split": split})
            waiting.cancel()
        finally:
            await core.close()

    asyncio.run(go())


def test_the_error_table_and_bounded_labels():
    assert kind_of(TensorError("x")).http == 400 and kind_of(QueueFull("x")).retry
    assert kind_of(KeyError("bug")) is INTERNAL
    assert {k.grpc.name for k in ERRORS.values()} >= {"INVALID_ARGUMENT", "NOT_FOUND"}
    assert model_label("digits-vit", {"digits-vit": {}}) == "digits-vit"
    assert model_label("x" * 10_000, {"digits-vit": {}}) == "unknown"
