"""The recursive early-exit network: shapes, recursion, splits, FLOP counting, training regimes,
exit rules and ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semlink.models import checkpoint
from semlink.models.early_exit import EarlyExitConfig, EarlyExitNet, count_segment_flops
from semlink.models.exit_traces import ExitTraces, apply_rule, area_under_curve, early_exit_curve

TINY = {
    "vit": {"embed_dim": 16, "depth": 3, "num_heads": 2, "device_blocks": 2},
    "cnn": {"backbone": "cnn", "cnn_channels": (4, 8, 8), "device_blocks": 2},
}


def tiny(kind: str = "vit", **overrides) -> EarlyExitNet:
    torch.manual_seed(0)
    return EarlyExitNet(EarlyExitConfig(**{**TINY[kind], **overrides})).eval()


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_every_exit_gives_log_probabilities(kind):
    model = tiny(kind)
    outs = model(torch.randn(4, 1, 48, 48))
    assert len(outs) == model.num_exits == 3
    for o in outs:
        assert o.shape == (4, 10)
        torch.testing.assert_close(o.exp().sum(1), torch.ones(4))


@pytest.mark.parametrize("kind", ["vit", "cnn"])
@pytest.mark.parametrize("split", [0, 1])
def test_device_then_server_equals_the_whole_network(kind, split):
    model = tiny(kind)
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        full = model(x)
        acts, device_outs = model.forward_device(x, split)
        final = model.forward_server(acts, device_outs[-1], split)
    assert len(device_outs) == split + 1
    torch.testing.assert_close(device_outs[-1], full[split])
    torch.testing.assert_close(final, full[-1])


def test_recursion_mixes_the_previous_exit():
    model = tiny()
    mix = model.mix[0].detach()
    torch.testing.assert_close(mix, 0.5 * torch.eye(10))  # W_j starts as beta * I
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        acts, prev = model.segment(0, x, None)
        _, with_prev = model.segment(1, acts, prev)
        _, without = model.segment(1, acts, None)
        z = model.heads[1](model.backbone.pool(1, model.backbone.block(1, acts)))
    # log p_1 = log_softmax(z_1 + W_1 log p_0)
    torch.testing.assert_close(with_prev, torch.log_softmax(z + prev @ mix.T, -1))
    torch.testing.assert_close(without, torch.log_softmax(z, -1))


def test_plain_exits_ignore_the_previous_prediction():
    model = tiny(recursive=False)
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        acts, prev = model.segment(0, x, None)
        a = model.segment(1, acts, prev)[1]
        b = model.segment(1, acts, torch.zeros_like(prev))[1]
    torch.testing.assert_close(a, b)
    assert not any(p.requires_grad for p in model.mix)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exits": (1, 2)}, "last exit"),
        ({"exits": (2, 1, 3)}, "increasing"),
        ({"device_blocks": 3}, "device_blocks"),
        ({"exits": (3,), "device_blocks": 2}, "no exit"),
        ({"backbone": "rnn"}, "backbone"),
    ],
)
def test_bad_configs_name_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        EarlyExitConfig(**{**TINY["vit"], **overrides})


def test_split_must_be_a_device_exit():
    with pytest.raises(ValueError, match="split must be one of"):
        tiny().forward_device(torch.randn(1, 1, 48, 48), 2)


def test_flop_counter_matches_the_arithmetic_of_a_vit_block():
    model = tiny()
    d, T, C, hidden = 16, 37, 10, 64
    block = 2 * T * d * 3 * d + 2 * 2 * T * T * d + 2 * T * d * d + 2 * 2 * T * d * hidden
    flops = count_segment_flops(model)
    assert flops[1] == flops[2] == block + 2 * d * C + 2 * C * C  # block + head + mixing
    assert flops[0] > block  # the stem's convolutions come on top


# --- training regimes ----------------------------------------------------------------------


def _train(tmp_path, regime, kind="vit", resume=False, out_name=None, **kw):
    from semlink.models.train_early_exit import TrainEarlyExitConfig, train_early_exit

    cfg = TrainEarlyExitConfig(
        regime=regime,
        epochs=kw.pop("epochs", 2),
        backbone_epochs=1,
        max_steps=2,
        limit_train=64,
        batch_size=16,
        model=EarlyExitConfig(**TINY[kind]),
        **kw,
    )
    out = tmp_path / f"{out_name or regime}.pt"
    return train_early_exit(cfg, out, resume=resume), out


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_disjoint_really_freezes_the_backbone(tmp_path, kind):

    _, first = _train(tmp_path, "mixed", kind)
    ckpt = checkpoint.load(first)
    backbone_phase = ckpt["backbone_state"]
    _, out = _train(tmp_path / "d", "disjoint", kind, from_backbone=str(first))
    trained = checkpoint.load(out)["state_dict"]
    frozen = [k for k in trained if k.startswith("backbone.") or k.startswith("heads.2.")]
    assert any("running_mean" in k for k in frozen)  # both stems hold BatchNorm
    for k in frozen:  # weights and BatchNorm statistics alike
        torch.testing.assert_close(trained[k], backbone_phase[k], msg=k)
    moved = [
        k
        for k in trained
        if k.startswith(("heads.0.", "mix.")) and not torch.equal(trained[k], backbone_phase[k])
    ]
    assert moved, "the exit heads did not train"


def test_mixed_trains_the_backbone_after_its_first_phase(tmp_path):

    metrics, out = _train(tmp_path, "mixed")
    ckpt = checkpoint.load(out)
    k = "backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(ckpt["state_dict"][k], ckpt["backbone_state"][k])
    assert [h["phase"] for h in metrics["history"]] == ["backbone", "all"]


def test_joint_trains_everything_from_scratch(tmp_path):
    from semlink.models.train_early_exit import load_early_exit

    metrics, out = _train(tmp_path, "joint")
    assert [h["phase"] for h in metrics["history"]] == ["joint", "joint"]
    model, _ = load_early_exit(out)
    assert len(model(torch.randn(1, 1, 48, 48))) == 3


def test_backbone_of_another_architecture_is_refused(tmp_path):
    _, first = _train(tmp_path, "mixed")
    with pytest.raises(ValueError, match="does not hold a EarlyExitNet"):
        _train(tmp_path / "x", "disjoint", "cnn", from_backbone=str(first))


def test_init_from_a_selector_vit_starts_the_backbone_from_its_weights(tmp_path, tiny_checkpoint):
    from semlink.models.train_early_exit import TrainEarlyExitConfig, Trainer

    model = EarlyExitConfig(embed_dim=32, depth=3, num_heads=2, device_blocks=2)
    cfg = TrainEarlyExitConfig(init_from=str(tiny_checkpoint), model=model)
    trainer = Trainer(cfg, tmp_path / "ee.pt")
    trainer._init_from_selector(cfg.init_from)
    selector = checkpoint.load(tiny_checkpoint)["state_dict"]
    own = trainer.model.backbone.state_dict()
    assert {"cls_token", "pos_embed", "blocks.2.mlp.fc2.weight"} <= set(own)
    for k, v in own.items():
        torch.testing.assert_close(v, selector[k], msg=k)
    for sizes, message in [
        ({"embed_dim": 64, "depth": 3}, "does not fit this model"),  # wider than the selector's
        ({"embed_dim": 32, "depth": 6}, "lacks backbone weights"),  # deeper
    ]:
        other = TrainEarlyExitConfig(
            init_from=str(tiny_checkpoint),
            model=EarlyExitConfig(num_heads=2, device_blocks=2, **sizes),
        )
        with pytest.raises(ValueError, match=message):
            Trainer(other, tmp_path / "o.pt")._init_from_selector(str(tiny_checkpoint))
    with pytest.raises(ValueError, match="pass one"):  # two sources for the same weights
        TrainEarlyExitConfig(regime="mixed", init_from="a.pt", from_backbone="b.pt")


@pytest.mark.parametrize("stop_after", [1, 2])  # at the phase boundary; within a phase
def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path, monkeypatch, stop_after
):
    """mixed, 3 epochs (1 of backbone, 2 of all): killed while training epoch ``stop_after +
    1``, resumed from the checkpoint written after epoch ``stop_after``, it ends where a run
    that never stopped ends."""
    from semlink.models import train_early_exit as tee

    _, straight = _train(tmp_path / "straight", "mixed", epochs=3)
    real, calls = tee.exit_accuracies, {"n": 0}

    def dies(*args, **kwargs):  # validation after each epoch: the run dies at the chosen one
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tee, "exit_accuracies", dies)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", "mixed", epochs=3)
    out = tmp_path / "resumed" / "mixed.pt"
    stopped = checkpoint.load(out)["resume"]
    assert (stopped["phase"], stopped["epoch"]) == ((1, 0) if stop_after == 1 else (1, 1))
    monkeypatch.setattr(tee, "exit_accuracies", real)
    metrics, _ = _train(tmp_path / "resumed", "mixed", epochs=3, resume=True)
    a, b = checkpoint.load(straight), checkpoint.load(out)
    assert "resume" not in b and len(metrics["history"]) == 3
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, msg=k)
    # resuming a finished run trains nothing and keeps it
    again, _ = _train(tmp_path / "resumed", "mixed", epochs=3, resume=True)
    assert again["history"] == metrics["history"]
    with pytest.raises(ValueError, match="resume with its own regime"):
        _train(tmp_path / "resumed", "joint", epochs=3, resume=True, out_name="mixed")


# --- exit rules on hand-made traces ----------------------------------------------------------


def hand_traces() -> ExitTraces:
    # 3 exits, the device holds exits 0 and 1; labels all 1.
    conf = np.array(
        [
            [0.95, 0.97, 0.99],  # confident at once -> exits at 0
            [0.50, 0.52, 0.90],  # barely grows -> growth rule offloads at exit 1
            [0.40, 0.85, 0.95],  # grows fast, confident at exit 1
            [
                0.30,
                0.60,
                0.99,
            ],  # never confident on the device -> offloaded at the last device exit
        ],
        dtype=np.float32,
    )
    pred = np.array([[1, 1, 1], [0, 0, 1], [0, 1, 1], [2, 2, 1]])
    return ExitTraces(
        conf=conf,
        margin=conf,
        pred=pred,
        labels=np.ones(4, dtype=np.int64),
        exit_blocks=np.array([1, 2, 3]),
        segment_flops=np.array([10, 5, 5]),
        device_exits=np.array([0, 1]),
        activation_bytes=np.array([100, 100, 100]),
    )


def test_threshold_rule():
    t = hand_traces()
    out = apply_rule(t, 0.8)
    assert out.exit_at.tolist() == [0, 1, 1, 1]
    assert out.offloaded.tolist() == [False, True, False, True]
    assert out.summary(t) == {
        "accuracy": 1.0,
        "device_fraction": 0.5,
        "mean_flops": (10 + 15 + 15 + 15) / 4,
        "mean_bytes": 50.0,
    }


def test_growth_rule_offloads_when_confidence_stalls():
    t = hand_traces()
    out = apply_rule(t, 0.8, tau_grow=0.1)
    assert out.exit_at.tolist() == [0, 1, 1, 1]
    assert out.offloaded.tolist() == [False, True, False, True]
    out = apply_rule(t, 0.99, tau_grow=0.1)  # stricter exit: sample 2 is offloaded, not answered
    assert out.offloaded.tolist() == [True, True, True, True]
    assert out.correct.all()  # offloaded samples get the final exit's answer


def test_early_exit_curve_and_area():
    t = hand_traces()
    curve = early_exit_curve(t, np.array([0.0, 0.8, 1.01]))
    assert [p["mean_flops"] for p in curve] == [10.0, (10 + 20 + 15 + 20) / 4, 20.0]
    assert [p["accuracy"] for p in curve] == [0.25, 1.0, 1.0]
    # front from x=0.5 (acc .25) through 0.8125 (1.0) to 1 (1.0), mean over the range
    expected = (0.3125 * (0.25 + 1.0) / 2 + 0.1875 * 1.0) / 0.5
    assert area_under_curve(curve, 20.0) == pytest.approx(expected)


def test_traces_round_trip(tmp_path):
    t = hand_traces()
    t.save(tmp_path / "t.npz")
    back = ExitTraces.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.conf, t.conf)
    with pytest.raises(FileNotFoundError, match="semlink eval early-exit"):
        ExitTraces.load(tmp_path / "missing.npz")


# --- export ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["vit", "cnn"])
def exported(request, tmp_path_factory):
    from semlink.models.early_exit import config_dict
    from semlink.models.export_early_exit import export_early_exit_pipeline

    model = tiny(request.param)
    tmp = tmp_path_factory.mktemp(f"ee-{request.param}")
    checkpoint.save(tmp / "m.pt", config=config_dict(model.cfg), state_dict=model.state_dict())
    manifest = export_early_exit_pipeline(tmp / "m.pt", tmp / "out")
    return model, manifest, tmp / "out"


def test_exported_graphs_match_pytorch(exported):
    import onnxruntime as ort

    model, manifest, out = exported
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        full = model(x)

    def run(name, **feeds):
        sess = ort.InferenceSession(str(out / manifest["graphs"][name]["file"]))
        return sess.run(None, {k: v.numpy() for k, v in feeds.items()})

    acts = None
    for s in manifest["device_exits"]:
        dev_acts, exit_logp = run(f"device_s{s}", image=x)
        np.testing.assert_allclose(exit_logp[:, -1], full[s].numpy(), atol=1e-4)
        (final,) = run(f"server_s{s}", activations=torch.from_numpy(dev_acts), prev_logp=full[s])
        np.testing.assert_allclose(final, full[-1].numpy(), atol=1e-4)
        step_in = {"image": x} if s == 0 else {"activations": acts, "prev_logp": full[s - 1]}
        step_acts, logp = run(f"step_{s}", **step_in)
        np.testing.assert_allclose(step_acts, dev_acts, atol=1e-4)  # steps compose to the split
        np.testing.assert_allclose(logp, full[s].numpy(), atol=1e-4)
        acts = torch.from_numpy(step_acts)
    assert manifest["offload_bytes"][0] == int(np.prod(manifest["activation_shapes"][0])) * 2 + 40


def test_export_can_move_where_the_device_part_ends(tmp_path):
    from semlink.models.early_exit import config_dict
    from semlink.models.export_early_exit import export_early_exit_pipeline

    model = tiny("vit")  # 3 blocks, the device holds 2
    checkpoint.save(tmp_path / "m.pt", config=config_dict(model.cfg), state_dict=model.state_dict())
    manifest = export_early_exit_pipeline(tmp_path / "m.pt", tmp_path / "out", device_blocks=1)
    assert manifest["device_exits"] == [0]
    assert set(manifest["graphs"]) == {"device_s0", "server_s0", "step_0"}
    assert checkpoint.load(tmp_path / "out" / "checkpoint.pt")["config"]["device_blocks"] == 1
    with pytest.raises(ValueError, match="device_blocks must be in"):
        export_early_exit_pipeline(tmp_path / "m.pt", tmp_path / "bad", device_blocks=3)
