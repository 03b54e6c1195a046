"""Adding a pipeline, done the way docs/architecture.md ("Adding a pipeline") says: one
:class:`Pipeline` subclass and its registration, and nothing else changes.

The toy method: the device's graph ``head`` turns the image into ``features`` (a MatMul) and an
exit's ``exit_logits`` (another); the server's graph ``tail`` turns the features into
log-probabilities (a MatMul and a LogSoftmax). A frame either answers at the device's exit
(``exit1``) or sends the features (``s1:a1``). The graphs are real ONNX files in a model
repository of their own; the answers are checked against numpy's product of the same matrices.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from semlink.device.controller import (
    FixedController,
    LocalController,
    make_controller,
)
from semlink.device.service import DeviceService
from semlink.device.settings import DeviceSettings
from semlink.protocol import params as P
from semlink.protocol import reply as R
from semlink.protocol.params import ParameterError
from semlink.runtime.costs import Predictor, StageTimes
from semlink.runtime.manifest import MANIFEST_VERSION, ManifestError
from semlink.runtime.pipelines import (
    PIPELINES,
    Offload,
    Option,
    Pipeline,
    Stretch,
    WireOptions,
    Work,
    make_pipeline,
    register,
)
from semlink.runtime.pipelines.base import (
    EXIT,
    OFFLOAD,
    Inputs,
    float_input,
    softmax,
    split_param,
)
from semlink.runtime.repository import ModelVersion, resolve, scan
from semlink.server.core import InferenceCore
from semlink.server.grpc_service import create_server
from semlink.server.settings import ServerSettings

KIND = "toy-linear"
NAME = "toy"
SHAPE = (1, 4, 4)  # (C, H, W) of the normalised input
PIXELS = 16
FEATURES = 8
CLASSES = 3


# -- the new pipeline: everything a newcomer writes (in runtime/pipelines/toy.py, say) ----------


class ToyPipeline(Pipeline):
    """Features on the device (with an exit), a linear classifier on the server."""

    kind = KIND
    controllers = ("fixed", "local")

    def __init__(self, model: ModelVersion) -> None:
        super().__init__(model)
        self.features = model.manifest.reader().positive("features")  # the kind's own field
        model.manifest.need_graphs("head", "tail")

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """The features [B, F]."""
        return [("features", "FP16", [-1, self.features])]

    def options(self) -> list[Option]:
        """Answer at the exit after the head, or send the features from there."""
        return [Option(EXIT, 1), Option(OFFLOAD, 1)]

    def device_graphs(self) -> list[str]:
        """The head."""
        return ["head"]

    @property
    def num_stretches(self) -> int:
        """One: the head."""
        return 1

    def stretches_for(self, option: Option) -> int:
        """The head, for every option."""
        return 1

    def run_stretch(
        self,
        k: int,
        image: np.ndarray,
        prev: Stretch | None,
        option: Option,
        snr_db: float | None = None,
    ) -> Stretch:
        """The head: the features and the exit's logits."""
        features, logits = self.sessions["head"].run(["features", "exit_logits"], {"image": image})
        confidence = float(softmax(logits[0]).max())
        return Stretch(0, 1, confidence, {"features": features, "exit_logits": logits})

    def pack(
        self, stretch: Stretch | None, option: Option, wire: WireOptions, image: np.ndarray
    ) -> Offload:
        """Nothing for the exit; the features (FP16 unless fp32 is asked) for an offload."""
        assert stretch is not None
        if option.action == EXIT:
            return Offload(option, {}, {})
        dtype = np.float32 if wire.token_format == "fp32" else np.float16
        return Offload(
            option, {"features": stretch.outputs["features"].astype(dtype)}, {P.SPLIT: 1}
        )

    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """The exit's logits."""
        return stretch.outputs["exit_logits"]

    def server_graphs(self) -> list[str]:
        """The tail."""
        return ["tail"]

    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """Checks ``split`` and the features' shape: one (F,) sample per row."""
        self.refuse_unknown(params, frozenset({P.SPLIT}))
        split = split_param(params, (1,), self.model.name, "the features")
        x = float_input(inputs, "features", [self.features])
        return Work("tail", [{"features": f} for f in x], reply={R.SPLIT: split})

    def run_batch(self, graph: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Stacks the samples and runs the tail."""
        feeds = {"features": np.stack([s["features"] for s in samples])}
        return self.sessions[graph].run(["logp"], feeds)[0]


# -- what its exporter would write: the graphs and manifest.json --------------------------------


def _save(path: Path, nodes, inputs, outputs, weights: dict[str, np.ndarray]) -> None:
    graph = helper.make_graph(
        nodes,
        path.stem,
        inputs,
        outputs,
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _tensor(name: str, *shape: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _manifest() -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "kind": KIND,
        "model_hash": "toy0000000000000",
        "image_shape": list(SHAPE),
        "num_classes": CLASSES,
        "normalization": {"dataset": "toy", "mean": [0.5], "std": [0.25]},
        "graphs": {
            "head": {
                "file": "head.onnx",
                "inputs": ["image"],
                "outputs": ["features", "exit_logits"],
            },
            "tail": {"file": "tail.onnx", "inputs": ["features"], "outputs": ["logp"]},
        },
        "features": FEATURES,
    }


@pytest.fixture
def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "A": rng.normal(size=(PIXELS, FEATURES)).astype(np.float32),  # head: features
        "E": rng.normal(size=(FEATURES, CLASSES)).astype(np.float32),  # head: the exit
        "T": rng.normal(size=(FEATURES, CLASSES)).astype(np.float32),  # tail
    }


@pytest.fixture
def repository(tmp_path: Path, weights) -> Path:
    """A model repository with one version of the toy model: graphs and manifest."""
    folder = tmp_path / "repo" / NAME / "1"
    folder.mkdir(parents=True)
    _save(
        folder / "head.onnx",
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "A"], ["features"]),
            helper.make_node("MatMul", ["features", "E"], ["exit_logits"]),
        ],
        [_tensor("image", "B", *SHAPE)],
        [_tensor("features", "B", FEATURES), _tensor("exit_logits", "B", CLASSES)],
        {"A": weights["A"], "E": weights["E"]},
    )
    _save(
        folder / "tail.onnx",
        [
            helper.make_node("MatMul", ["features", "T"], ["z"]),
            helper.make_node("LogSoftmax", ["z"], ["logp"], axis=-1),
        ],
        [_tensor("features", "B", FEATURES)],
        [_tensor("logp", "B", CLASSES)],
        {"T": weights["T"]},
    )
    (folder / "manifest.json").write_text(json.dumps(_manifest(), indent=2))
    return tmp_path / "repo"


@pytest.fixture
def toy(repository: Path):
    """The toy kind registered for one test, and unregistered after it."""
    assert KIND not in PIPELINES
    register(ToyPipeline)
    try:
        yield repository
    finally:
        PIPELINES.pop(KIND, None)


# -- numpy's answers ---------------------------------------------------------------------------


def _features(image: np.ndarray, w) -> np.ndarray:
    return image.reshape(image.shape[0], -1) @ w["A"]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _image(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, *SHAPE)).astype(np.float32)


# -- the tests ---------------------------------------------------------------------------------


def test_an_unregistered_kind_is_refused_at_start_up(repository):
    mv = resolve(scan(repository), NAME)  # the common fields parse without the kind known
    with pytest.raises(ManifestError, match=f"kind '{KIND}' is unknown"):
        make_pipeline(mv)


def test_make_pipeline_builds_it_from_the_scanned_repository(toy):
    pipe = make_pipeline(resolve(scan(toy), NAME))
    assert type(pipe) is ToyPipeline and pipe.features == FEATURES
    assert [o.name for o in pipe.options()] == ["exit1", "s1:a1"]
    assert pipe.local_option() == Option(EXIT, 1)
    assert pipe.stages(Option(OFFLOAD, 1)) == ["stretch0", "pack"]
    assert pipe.check_request({"option": "s1:a1", "deadline_ms": 50}) == {
        "option": Option(OFFLOAD, 1),
        "deadline_ms": 50.0,
    }
    with pytest.raises(ParameterError, match="'budget' does not apply to model 'toy'"):
        pipe.check_request({"budget": 0.5})
    with pytest.raises(ParameterError, match="offers no option 'exit2'"):
        pipe.check_request({"option": "exit2"})
    with pytest.raises(ValueError, match="served by ToyPipeline already"):
        register(type("Other", (ToyPipeline,), {}))


def test_its_own_manifest_fields_are_checked_when_it_is_made(toy):
    path = toy / NAME / "1" / "manifest.json"
    path.write_text(json.dumps({**_manifest(), "features": "eight"}))
    with pytest.raises(ManifestError, match="'features' must be int"):
        make_pipeline(resolve(scan(toy), NAME))


def test_both_halves_in_one_process_give_numpys_answers(toy, weights):
    mv = resolve(scan(toy), NAME)
    pipe = make_pipeline(mv)
    pipe.open(pipe.device_graphs() + pipe.server_graphs())
    image = _image()
    f = _features(image, weights)
    stretch, off = pipe.run_device(image, Option(EXIT, 1))
    assert stretch is not None and off.tensors == {}
    np.testing.assert_allclose(pipe.answer_locally(stretch, off), f @ weights["E"], rtol=1e-5)
    np.testing.assert_allclose(pipe.whole(image), _log_softmax(f @ weights["T"]), atol=1e-5)


def test_the_server_core_admits_batches_and_answers_it(toy, weights):
    rng = np.random.default_rng(2)
    features = rng.normal(size=(3, FEATURES)).astype(np.float16)

    async def go() -> None:
        core = InferenceCore(ServerSettings(model_repository=toy))
        await core.load()
        try:
            _, out, reply = await core.infer(
                NAME, "", {"features": ("FP16", features)}, {"split": 1}
            )
            want = _log_softmax(features.astype(np.float32) @ weights["T"])
            np.testing.assert_allclose(out["logits"], want, atol=1e-5)
            assert reply[R.SPLIT] == 1 and reply[R.BATCH] >= 1
            assert core.batchers[(NAME, "1", "tail")].stats.requests == 3  # through the batcher
            with pytest.raises(ParameterError, match="parameter 'split' must be"):
                await core.infer(NAME, "", {"features": ("FP16", features)}, {"split": 2})
            with pytest.raises(ParameterError, match="'budget' does not apply"):
                await core.infer(
                    NAME, "", {"features": ("FP16", features)}, {"split": 1, "budget": 0.5}
                )
        finally:
            await core.close()

    asyncio.run(go())


def test_the_controllers_that_fit_are_the_ones_the_pipeline_names(toy):
    pipe = make_pipeline(resolve(scan(toy), NAME))
    predictor = Predictor(pipe.stages, lambda option: 0.0, StageTimes())

    def build(name: str):
        settings = DeviceSettings(model_repository=toy, model_name=NAME, controller=name)
        return make_controller(settings, pipe, predictor)

    fixed, local = build("fixed"), build("local")
    assert isinstance(fixed, FixedController) and fixed.default == Option(OFFLOAD, 1)
    assert isinstance(local, LocalController) and local.option == Option(EXIT, 1)
    with pytest.raises(ValueError, match="takes fixed, local"):
        build("planner")


def test_a_device_answers_at_its_exit_and_offloads_to_a_real_server(toy, weights):
    """The device's and the server's own code, in one process over real gRPC on a free port:
    the fixed controller's offload goes to the server and back; ``exit1`` stays on the device."""
    image = _image(3)
    f = _features(image, weights)

    async def go() -> list:
        core = InferenceCore(ServerSettings(model_repository=toy))
        server, port = create_server(core, "127.0.0.1:0", 4 * 1024 * 1024)
        await server.start()
        await core.load()
        settings = DeviceSettings(
            insecure=True,
            server=f"127.0.0.1:{port}",
            model_repository=toy,
            model_name=NAME,
            controller="fixed",
            token_format="fp32",
        )
        device = DeviceService(settings)
        try:
            return [
                await device.classify(image, {}),
                await device.classify(image, {"option": "exit1"}),
            ]
        finally:
            await device.close()
            await server.stop(grace=None)
            await core.close()

    sent, kept = asyncio.run(go())
    assert sent.exit == "server" and not sent.degraded and sent.option == "s1:a1"
    assert sent.payload_bytes == 4 * FEATURES and sent.split == 1
    want = softmax(_log_softmax(f @ weights["T"])[0])
    np.testing.assert_allclose(sent.probabilities, want, atol=1e-5)
    exit_probs = softmax((f @ weights["E"])[0])
    assert kept.exit == "device" and not kept.degraded and kept.payload_bytes == 0
    np.testing.assert_allclose(kept.probabilities, exit_probs, atol=1e-5)
    assert kept.exits == [
        {"exit": 0, "confidence": pytest.approx(exit_probs.max()), "action": "exit"}
    ]
