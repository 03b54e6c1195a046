"""The any-split network: growth, training, export (graphs sharing one weights file, each equal to
torch), the pipeline serving every option, and the option tables the controllers read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semlink.models.any_split import (
    AnySplitConfig,
    AnySplitViT,
    block_placement,
    grow_from_early_exit,
)
from semlink.models.early_exit import EarlyExitConfig, EarlyExitNet
from semlink.protocol.codec import datatype_of
from semlink.runtime.calibration import CalibrationTable
from semlink.runtime.pipelines import Option, WireOptions, make_pipeline
from semlink.runtime.pipelines.base import EXIT, OFFLOAD, UPLOAD
from semlink.runtime.repository import resolve, scan
from tests.conftest import ZOO

TINY = dict(image_size=48, in_chans=1, patch_size=8, embed_dim=16, depth=4, num_heads=2)


def _source() -> EarlyExitNet:
    torch.manual_seed(0)
    net = EarlyExitNet(EarlyExitConfig(**TINY, device_blocks=2)).eval()
    with torch.no_grad():  # a network whose later blocks do something
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize(("width", "depth", "heads"), [(16, 4, 2), (32, 7, 4)])
def test_growth_keeps_what_the_source_computes(width, depth, heads):
    """Wider (2x: channels and heads repeated) and deeper (new blocks the identity): the full
    network and every device exit answer as the source's, before any training."""
    src = _source()
    cfg = AnySplitConfig(
        **{**TINY, "embed_dim": width, "depth": depth, "num_heads": heads}, device_blocks=2
    )
    grown = AnySplitViT(cfg)
    grow_from_early_exit(grown, src, noise=0.0)
    grown.eval()
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        out = grown.forward_all(x)
        exits = src(x)
        final = src.forward_final(x)
    torch.testing.assert_close(out.logits.log_softmax(-1), final, atol=1e-4, rtol=1e-4)
    for k in (1, 2):
        torch.testing.assert_close(out.exits[k - 1], exits[k - 1], atol=1e-4, rtol=1e-4)


def test_growth_refuses_what_it_cannot_preserve():
    src = _source()
    with pytest.raises(ValueError, match="multiple"):
        grow_from_early_exit(
            AnySplitViT(AnySplitConfig(**{**TINY, "embed_dim": 24, "num_heads": 2})), src
        )
    with pytest.raises(ValueError, match="at least the source's depth"):
        grow_from_early_exit(AnySplitViT(AnySplitConfig(**{**TINY, "depth": 3})), src)


def test_block_placement_keeps_the_device_blocks_and_the_last():
    assert block_placement(6, 16, 3) == {0: 0, 1: 1, 2: 2, 3: 6, 4: 11, 5: 15}
    assert block_placement(6, 6, 2) == {i: i for i in range(6)}


def test_training_a_few_steps_then_resuming(tmp_path):
    """Both phases run (network, then the coders' reconstruction and task epochs), the checkpoint
    records its kind, and a resumed run goes on where the first stopped."""
    from semlink.models.train_any_split import TrainAnySplitConfig, load_any_split, train_any_split

    cfg = TrainAnySplitConfig(
        dataset="digits-canvas",
        epochs=1,
        jscc_epochs=2,
        jscc_rec_epochs=1,
        max_steps=2,
        val_limit=32,
        model=AnySplitConfig(embed_dim=16, depth=3, num_heads=2, device_blocks=2, jscc_hidden=16),
    )
    out = tmp_path / "as.pt"
    metrics = train_any_split(cfg, out)
    phases = [(h["phase"], h["epoch"]) for h in metrics["history"]]
    assert phases == [("network", 0), ("coders", 0), ("coders", 1)]
    assert {"full", "exit_1", "exit_2", "s1@0.25", "s2@0.1"} <= set(metrics["val"])
    model, ckpt = load_any_split(out)
    assert ckpt["kind"] == "any-split" and model.cfg.device_blocks == 2
    cfg.jscc_epochs = 3
    again = train_any_split(cfg, out, resume=True)
    assert again is not None  # finished runs are not trained again
    assert [h["phase"] for h in again["history"]] == ["network", "coders", "coders"]


def test_the_trainer_refuses_budgets_it_cannot_draw():
    from semlink.models.train_any_split import TrainAnySplitConfig

    with pytest.raises(ValueError, match="alpha_low < alpha_high"):
        TrainAnySplitConfig(alpha_low=0.6, alpha_high=0.5)
    with pytest.raises(ValueError, match="budget_groups"):
        TrainAnySplitConfig(budget_groups=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny any-split network, trained a step, exported with shared weights."""
    from semlink.models import checkpoint
    from semlink.models.any_split import config_dict
    from semlink.models.export_any_split import OptionGrid, export_any_split

    torch.manual_seed(1)
    model = AnySplitViT(
        AnySplitConfig(embed_dim=16, depth=3, num_heads=2, device_blocks=2, jscc_hidden=16)
    )
    with torch.no_grad():
        for sel in model.selectors:
            sel.out.weight.normal_()  # keys that differ, so the selection is tested
    folder = tmp_path_factory.mktemp("repo") / "tiny-split" / "1"
    ckpt = folder.parent.parent / "tiny.pt"
    checkpoint.save(
        ckpt,
        kind="any-split",
        config=config_dict(model.cfg),
        state_dict=model.state_dict(),
        metrics={},
    )
    export_any_split(ckpt, folder, "digits-canvas", OptionGrid((0.25, 0.5), (0.25,), (75,)))
    return model.eval(), folder


def test_the_graphs_share_one_weights_file_and_equal_torch(exported):
    import onnx
    import onnxruntime as ort

    model, folder = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {
        *(f"{g}_{k}" for g in ("step", "select", "encode", "decode", "tail") for k in (1, 2)),
        "full",
    }
    params = sum(p.numel() for p in model.parameters())
    assert (folder / "weights.bin").stat().st_size < 4 * params * 1.3  # each tensor about once
    for g in manifest["graphs"].values():
        proto = onnx.load(str(folder / g["file"]), load_external_data=False)
        assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)

    def run(name: str, **feeds: np.ndarray) -> list[np.ndarray]:
        return ort.InferenceSession(
            str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"]
        ).run(None, feeds)

    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        acts1, logp1 = model.step(1, x, None)
        acts2, logp2 = model.step(2, acts1, logp1)
        key = model.selector_key(1, acts1, torch.full((2,), 0.25))
        tokens = acts1[:, 1:6]
        coded = torch.cat(model.coder(1).encoder(tokens, torch.zeros(2)), -1)
        decoded = model.coder(1).decoder(*coded.chunk(2, -1), torch.zeros(2))
        tail = model.tail(2, tokens, torch.ones(2, 5))
        full = model.full(x)
    got = run("step_1", image=x.numpy())
    np.testing.assert_allclose(got[0], acts1.numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], logp1.numpy(), atol=1e-4)
    got = run("step_2", activations=acts1.numpy(), prev_logp=logp1.numpy())
    np.testing.assert_allclose(got[1], logp2.numpy(), atol=1e-4)
    np.testing.assert_allclose(
        run("select_1", activations=acts1.numpy(), alpha=np.full(2, 0.25, np.float32))[0],
        key.numpy(),
        atol=1e-4,
    )
    np.testing.assert_allclose(
        run("encode_1", tokens=tokens.numpy(), snr_db=np.zeros(2, np.float32))[0],
        coded.numpy(),
        atol=1e-4,
    )
    np.testing.assert_allclose(
        run("decode_1", symbols=coded.numpy(), snr_db=np.zeros(2, np.float32))[0],
        decoded.numpy(),
        atol=1e-4,
    )
    np.testing.assert_allclose(
        run("tail_2", tokens=tokens.numpy(), token_mask=np.ones((2, 5), np.float32))[0],
        tail.numpy(),
        atol=1e-4,
    )
    np.testing.assert_allclose(run("full", image=x.numpy())[0], full.numpy(), atol=1e-4)


def test_the_pipeline_serves_every_option_as_torch_computes_it(exported):
    """Device half then server half of every option in one process: exits answer the exit's log
    p; fp32 tokens the tail on the selector's top-k; a JPEG the full network on the decoded
    picture; symbols go through the receiver (noiseless here)."""
    from semlink.runtime.images import decode_image
    from semlink.runtime.pipelines.any_split import encode_jpeg

    model, folder = exported
    mv = resolve(scan(folder.parent.parent), "tiny-split")
    pipe = make_pipeline(mv)
    pipe.open(pipe.device_graphs() + pipe.server_graphs())
    options = pipe.options()
    assert {o.action for o in options} == {EXIT, OFFLOAD, UPLOAD} and len(
        options
    ) == 2 + 2 * 2 * 2 + 1
    image = np.random.default_rng(2).normal(size=(1, 1, 48, 48)).astype(np.float32)
    x = torch.from_numpy(image)
    for option in options:
        stretch, off = pipe.run_device(image, option, WireOptions("fp32", None, "none"))
        if option.action == EXIT:
            logits = pipe.answer_locally(stretch, off)
            with torch.no_grad():
                acts, prev = x, None
                for k in range(1, option.split + 1):
                    acts, prev = model.step(k, acts, prev)
            np.testing.assert_allclose(logits, prev.numpy(), atol=1e-4)
            continue
        work = pipe.admit({n: (datatype_of(t), t) for n, t in off.tensors.items()}, off.params)
        logits = pipe.run_batch(work.graph, work.samples)
        with torch.no_grad():
            if option.action == UPLOAD:
                decoded = decode_image(
                    encode_jpeg(image, mv.manifest, option.quality), mv.manifest, pipe.jpeg_limits
                )
                expected = model.full(torch.from_numpy(decoded))
            else:
                acts = model.forward_device(x)[option.split]
                key = model.selector_key(option.split, acts, torch.full((1,), option.budget))
                idx = key.topk(len(off.kept_indices)).indices
                assert sorted(idx[0].tolist()) == sorted(off.kept_indices)
                tokens = acts[:, 1:][:, idx[0]]
                if option.rate is not None:
                    continue  # the coder's own parity is above; here: it runs and answers
                expected = model.tail(option.split, tokens)
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-3)


def test_the_server_refuses_what_an_option_cannot_carry(exported):
    from semlink.protocol.codec import TensorError
    from semlink.protocol.params import ParameterError

    _, folder = exported
    pipe = make_pipeline(resolve(scan(folder.parent.parent), "tiny-split"))
    tokens = ("FP32", np.zeros((1, 4, 16), np.float32))
    with pytest.raises(ParameterError, match="one of \\[0, 1, 2\\]"):
        pipe.admit({"tokens": tokens}, {"split": 3})
    with pytest.raises(TensorError, match="image_jpeg"):
        pipe.admit({"tokens": tokens}, {"split": 0})
    with pytest.raises(TensorError, match="not a PNG or JPEG|not a decodable"):
        pipe.admit({"image_jpeg": ("UINT8", np.zeros((1, 10), np.uint8))}, {"split": 0})
    with pytest.raises(ParameterError, match="offers no option"):
        pipe.check_request({"option": "s3:a0.25"})


def test_the_shipped_fixture_tables_load_as_the_controllers_read_them():
    """``semlink eval options`` wrote the validation table and both outcome tables; the
    calibration reader gives every option's accuracy, bytes and its accuracy given an exit's
    confidence."""
    from semlink.models.option_table import Outcomes

    mv = resolve(scan(ZOO), "digits-split")
    table = CalibrationTable.load(mv.path / "options.json", mv.manifest.model_hash)
    pipe = make_pipeline(mv)
    assert table.options == pipe.options()
    assert table.accuracy.shape == (3, len(table.options))
    exit2 = table.index(Option(EXIT, 2))
    assert table.bytes[exit2] == 0 and table.bytes[table.index(Option.parse("jpeg90"))] > 0
    confident, unsure = table.given_exit(1, 0.93), table.given_exit(1, 0.65)
    assert confident is not None and unsure is not None
    assert confident[table.index(Option(EXIT, 1))] > unsure[table.index(Option(EXIT, 1))]
    test = Outcomes.load(mv.path / "outcomes_test.npz")
    assert (
        test.correct.shape == (3, len(test.labels), len(table.options)) and test.full.dtype == bool
    )
    with pytest.raises(ValueError, match="made for model"):
        CalibrationTable.load(mv.path / "options.json", "another")


def test_the_server_class_recipe_at_a_tiny_width(tmp_path):
    """`semlink zoo`'s scene-xl recipe (16 blocks, the device holding 3, grown from a 2-block
    early-exit network), only narrower and on the fixture's frames: it parses, grows from the
    smaller network, trains a step, and the device's part up to its first split stays within
    15 % of the whole network's FLOPs (what its manifest's ``segment_flops`` will hold). Its
    export is the tiny network's above, at any depth; fp16 weights: the test below."""
    from semlink.cli import build_parser
    from semlink.cli.zoo import ZOO_RECIPES
    from semlink.models import checkpoint
    from semlink.models.any_split import count_flops
    from semlink.models.early_exit import config_dict as ee_config
    from semlink.models.train_any_split import load_any_split

    source = _source()
    ee = tmp_path / "ee.pt"
    checkpoint.save(
        ee, kind="early-exit", config=ee_config(source.cfg), state_dict=source.state_dict()
    )
    flags = list(ZOO_RECIPES["digits-scene"].xl)
    tiny = ["--model.embed-dim", "32", "--model.num-heads", "4", "--model.patch-size", "8"]
    tiny += ["--model.image-size", "48", "--model.in-chans", "1", "--model.jscc-hidden", "16"]
    tiny += ["--epochs", "1", "--jscc-epochs", "1", "--max-steps", "1", "--val-limit", "16"]
    out = tmp_path / "xl.pt"
    args = build_parser().parse_args(
        ["train", "any-split", "--dataset", "digits-canvas", *flags, *tiny]
        + ["--init-from", str(ee), "--out", str(out)]
    )
    assert args.func(args) == 0
    model, _ = load_any_split(out)
    assert (model.cfg.depth, model.cfg.device_blocks) == (16, 3)
    flops = count_flops(model)
    assert len(flops["steps"]) == 3 and len(flops["tails"]) == 3  # 3 device blocks, 3 splits
    assert (flops["steps"][0] + flops["select"][0]) / flops["full"] <= 0.15


def test_fp16_weights_are_stored_once_at_half_size_and_cast_back(tmp_path):
    """`export any-split --fp16-weights`' last step on two hand-made graphs sharing a weight:
    the shared file holds it once, in half the bytes, and each graph computes what float32
    arithmetic on the fp16-rounded weight gives."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from semlink.models.export_any_split import WEIGHTS, share_weights

    w = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    bias = np.ones(32, np.float32)  # under SHARED_MIN_BYTES: stays in the graph, float32
    for name in ("a", "b"):
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w"], ["xw"]),
                helper.make_node("Add", ["xw", "bias"], ["y"]),
            ],
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 32])],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")],
        )
        onnx.save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
            str(tmp_path / f"{name}.onnx"),
        )
    assert share_weights(tmp_path, ["a.onnx", "b.onnx"], fp16=True) == w.nbytes // 2
    assert (tmp_path / WEIGHTS).stat().st_size == w.nbytes // 2
    x = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    expected = x @ w.astype(np.float16).astype(np.float32) + bias
    for name in ("a", "b"):
        session = ort.InferenceSession(
            str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"]
        )
        np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
