"""Every entry point runs: training smoke runs of a few steps on tiny data, eval, export, trace."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from semlink.cli import main
from semlink.models import checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_train_selector_smoke_and_resume(tmp_path, capsys):
    out = tmp_path / "s.pt"
    argv = [
        "train",
        "selector",
        "--out",
        str(out),
        "--backbone-epochs",
        "1",
        "--selector-epochs",
        "1",
        "--max-steps",
        "2",
        "--limit-train",
        "64",
        "--batch-size",
        "16",
    ]
    assert main(argv) == 0
    ckpt = checkpoint.load(out)
    assert set(ckpt) >= {"config", "state_dict", "metrics"}
    assert ckpt["resume"]["phase"] == "selector" and ckpt["resume"]["epoch"] == 1
    assert (
        main(
            [
                *argv[:-6],
                "--selector-epochs",
                "2",
                "--max-steps",
                "2",
                "--limit-train",
                "64",
                "--resume",
            ]
        )
        == 0
    )
    assert checkpoint.load(out)["resume"]["epoch"] == 2
    captured = capsys.readouterr()
    assert "validation accuracy" in captured.out
    # not a terminal, so no bar: a log line an epoch says how the run goes
    assert "backbone epoch 1/1: loss" in captured.err
    assert "selector epoch 2/2: loss" in captured.err


def test_eval_selector_writes_table_json_and_plot(tiny_checkpoint, tmp_path, capsys):
    js, png = tmp_path / "e.json", tmp_path / "e.png"
    assert (
        main(
            [
                "eval",
                "selector",
                "--checkpoint",
                str(tiny_checkpoint),
                "--dataset",
                "digits-canvas",
                "--json",
                str(js),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    result = json.loads(js.read_text())
    assert result["dataset"] == "digits-canvas" and result["n_test"] == 269
    for method in ("selector", "random", "attention"):
        assert set(result["accuracy"][method]) == {
            "0.05",
            "0.1",
            "0.15",
            "0.25",
            "0.5",
            "0.75",
            "1",
        }
        assert all(0.0 <= v <= 1.0 for v in result["accuracy"][method].values())
    assert png.stat().st_size > 1000
    assert "selector" in capsys.readouterr().out


def test_export_cli(tiny_checkpoint, tmp_path):
    assert (
        main(
            [
                "export",
                "selector",
                "--checkpoint",
                str(tiny_checkpoint),
                "--dataset",
                "digits-canvas",
                "--out",
                str(tmp_path / "m" / "1"),
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "m" / "1" / "manifest.json").read_text())
    assert manifest["kind"] == "token-selection"
    assert manifest["normalization"]["dataset"] == "digits-canvas"


def test_export_never_guesses_the_dataset(tiny_checkpoint, tmp_path, capsys):
    """A checkpoint that does not record its training data needs --dataset: the manifest's
    normalisation would otherwise be a guess."""
    out = tmp_path / "m" / "1"
    assert (
        main(["export", "selector", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 2
    )
    assert "pass --dataset" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    ("argv", "dataset", "model_dir"),
    [
        ([], "digits-scene", "zoo/scene-vit-jscc/1"),
        (["--dataset", "digits-canvas"], "digits-canvas", "zoo/digits-vit-jscc/1"),
        (["--model-dir", "zoo/digits-vit-jscc/1"], "digits-canvas", "zoo/digits-vit-jscc/1"),
        (["--model-dir", "zoo/scene-vit-jscc/1"], "digits-scene", "zoo/scene-vit-jscc/1"),
    ],
)
def test_evaluations_pair_the_model_with_its_own_data(argv, dataset, model_dir):
    """digits-scene and its pipeline by default; a model folder names its data, a dataset its
    shipped pipeline."""
    from semlink.cli import build_parser
    from semlink.cli.common import resolve_pipeline

    args = build_parser().parse_args(["calibrate", *argv])
    resolve_pipeline(args, "vit-jscc")
    assert args.dataset == dataset
    assert Path(args.model_dir).resolve() == (ROOT / model_dir).resolve()


def test_evaluation_of_external_data_needs_a_model(capsys):
    assert main(["eval", "early-exit", "--dataset", "cifar10"]) == 2
    assert "pass --model-dir" in capsys.readouterr().err


def test_jscc_evaluation_refuses_no_noise_draws_before_any_work(capsys):
    assert main(["eval", "jscc", "--noise-draws", "0"]) == 2
    assert "--noise-draws must be >= 1" in capsys.readouterr().err


def test_checkpoint_of_another_architecture_is_refused(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, weights_only=False)
    ckpt["config"]["embed_dim"] = 64
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="does not hold a SelectorViT of the architecture"):
        checkpoint.load_selector_vit(bad)
    assert main(["eval", "selector", "--checkpoint", str(bad)]) == 2


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "selector", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "semlink train selector" in capsys.readouterr().err


def test_trace_cli_writes_a_valid_trace(tmp_path, capsys):
    out = tmp_path / "t.up"
    assert (
        main(
            [
                "trace",
                "step",
                "--out",
                str(out),
                "--duration",
                "4",
                "--low",
                "1mbit",
                "--high",
                "3mbit",
            ]
        )
        == 0
    )
    from semlink.link.traces import load_trace

    assert load_trace(out).average_bps() == pytest.approx(2e6, rel=0.02)
    assert "average 2.000 Mbit/s" in capsys.readouterr().out


def test_shipped_pipeline_serves_and_matches_its_checkpoint():
    """The model zoo's ONNX graphs agree with its checkpoint."""
    import onnxruntime as ort

    from semlink.cli.common import DEFAULT_MODEL_DIR

    model, _ = checkpoint.load_selector_vit(DEFAULT_MODEL_DIR / "checkpoint.pt")
    head = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "head.onnx"))
    tail = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "tail.onnx"))
    from semlink.models.data import load_digits_canvas

    x = load_digits_canvas("test").images[:8]
    tokens, _ = head.run(None, {"image": x, "alpha": np.full(8, 0.25, np.float32)})
    logits = tail.run(
        None, {"tokens": tokens, "token_mask": np.ones(tokens.shape[:2], np.float32)}
    )[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(x), 0.25).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_early_exit_train_export_eval_cli(tmp_path, capsys):
    """Every early-exit entry point on a two-step run: train two regimes (one reusing the other's
    backbone phase), export, evaluate with the machine-readable JSON of the issue."""
    ckpt, reused, out = tmp_path / "mixed.pt", tmp_path / "disjoint.pt", tmp_path / "ee" / "1"
    smoke = ["--epochs", "2", "--backbone-epochs", "1", "--max-steps", "2", "--limit-train", "32"]
    smoke += ["--model.device-blocks", "1"]  # one split: three graphs to export, not twelve
    assert main(["train", "early-exit", "--regime", "mixed", "--out", str(ckpt), *smoke]) == 0
    assert (
        main(
            ["train", "early-exit", "--regime", "disjoint", "--from-backbone", str(ckpt)]
            + ["--out", str(reused), *smoke]
        )
        == 0
    )
    argv = ["export", "early-exit", "--checkpoint", str(ckpt), "--out", str(out)]
    assert main([*argv, "--regimes", str(reused)]) == 0
    assert (out / "regimes" / "disjoint.pt").is_file()
    js = tmp_path / "ee.json"
    assert main(["eval", "early-exit", "--model-dir", str(out), "--json", str(js)]) == 0
    result = json.loads(js.read_text())
    assert set(result["regimes"]) == {"mixed", "disjoint"}
    for r in result["regimes"].values():
        assert 0 <= r["final_accuracy"] <= 1 and 0 <= r["auc"] <= 1
    rules = {r["rule"] for r in result["rules"]}
    assert rules == {"threshold", "growth"}
    assert all(
        {"rule", "threshold", "accuracy", "device_fraction", "mean_flops"} <= set(r)
        for r in result["rules"]
    )
    assert "device rules" in capsys.readouterr().out


def test_the_command_line_loads_without_torch():
    """Device, server and link images have no torch: building the parser must not import it."""
    code = (
        "import sys; from semlink.cli import build_parser; build_parser(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("dataset", ["digits-canvas", "digits-scene"])
def test_every_zoo_step_is_a_valid_command(dataset, tmp_path):
    """`semlink zoo` runs these in order: each must parse with the real command line (flags of
    the dataset's recipe included), and the digits-scene pipelines get names of their own."""
    import argparse

    from semlink.cli import build_parser
    from semlink.cli.zoo import zoo_steps

    steps = zoo_steps(
        argparse.Namespace(dataset=dataset, out=str(tmp_path), work=str(tmp_path), resume=True)
    )
    assert len(steps) >= 11
    parser = build_parser()
    for argv in steps:
        args = parser.parse_args(argv)
        assert callable(args.func)
        if getattr(args, "dataset", None) is not None:
            assert args.dataset == dataset
    outs = " ".join(a for argv in steps for a in argv)
    prefix = "scene" if dataset == "digits-scene" else "digits"
    for name in ("vit", "vit-jscc", "ee", "split"):
        assert f"{prefix}-{name}" in outs
    assert (f"{prefix}-xl" in outs) == (dataset == "digits-scene")  # the server-class network
    for argv in steps:  # an any-split network grows from the shipped early-exit one
        if argv[:2] == ["train", "any-split"]:
            assert argv[argv.index("--init-from") + 1].endswith(f"{prefix}-ee/1/checkpoint.pt")
    # every regime of docs/methods.md#early-exits is trained and shipped for comparison, on both workloads
    trained = {
        Path(argv[argv.index("--out") + 1]).stem: argv
        for argv in steps
        if argv[1] == "early-exit" and argv[0] == "train"
    }
    assert set(trained) == {"mixed", "disjoint", "joint", "joint-plain"}
    assert "--from-backbone" in trained["disjoint"] and "--init-from" not in trained["disjoint"]
    warm = dataset == "digits-scene"  # from the selector ViT's backbone; digits: from scratch
    for name in ("mixed", "joint", "joint-plain"):
        assert ("--init-from" in trained[name]) == warm


def test_train_selector_restarts_its_budget_phase_from_the_finished_backbone(tmp_path, capsys):
    out = tmp_path / "s.pt"
    argv = ["train", "selector", "--out", str(out), "--backbone-epochs", "1"]
    tiny = ["--max-steps", "2", "--limit-train", "64", "--batch-size", "16"]
    assert main([*argv, "--selector-epochs", "1", *tiny]) == 0
    teacher = checkpoint.load(out)["resume"]["teacher"]
    # a second budget phase of 2 epochs from the same backbone, not from where the first ended
    assert main([*argv, "--selector-epochs", "2", *tiny, "--resume", "--restart-selector"]) == 0
    ckpt = checkpoint.load(out)
    assert ckpt["resume"]["phase"] == "selector" and ckpt["resume"]["epoch"] == 2
    assert [h["phase"] for h in ckpt["metrics"]["history"]] == ["backbone", "selector", "selector"]
    for name, value in ckpt["resume"]["teacher"].items():
        assert torch.equal(value, teacher[name]), name
    # nothing to restart from: refused before any work, with the fix
    assert main(["train", "selector", "--out", str(tmp_path / "new.pt"), "--restart-selector"])
    assert "pass --resume" in capsys.readouterr().err


def test_train_device_flag_refuses_what_is_not_here(tmp_path):
    from semlink.models.distributed import training_device

    assert training_device("cpu").type == "cpu"
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="cpu, cuda or auto"):
        training_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            training_device("cuda")


def _subcommands(parser) -> dict:
    """``{name: parser}`` of a parser's subcommands (empty for a leaf)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_verb_registers_itself():
    """Each module of semlink/cli/ with a ``register`` is one of VERBS, together they add every
    subcommand, and every command runs something (a leaf has a ``func``)."""
    import importlib
    import pkgutil

    import semlink.cli as cli

    registering = {
        info.name
        for info in pkgutil.iter_modules(cli.__path__)
        if info.name != "__main__"  # importing it runs the command line
        and hasattr(importlib.import_module(f"semlink.cli.{info.name}"), "register")
    }
    assert registering == {verb.__name__.rsplit(".", 1)[1] for verb in cli.VERBS}
    parser = cli.build_parser()
    top = _subcommands(parser)
    assert list(top) == [
        *("train", "eval", "export", "calibrate", "data", "sample", "zoo", "bench"),
        *("baseline-server", "advise", "server", "device", "link", "certs", "trace", "stream"),
        "demo",
    ]
    leaves, todo = [], list(top.items())
    while todo:
        name, p = todo.pop()
        children = _subcommands(p)
        todo += [(f"{name} {child}", q) for child, q in children.items()]
        if not children:
            leaves.append(name)
            assert callable(p.get_default("func")), f"semlink {name} runs nothing"
    assert {"train selector", "eval jscc", "export early-exit", "bench compare"} <= set(leaves)
