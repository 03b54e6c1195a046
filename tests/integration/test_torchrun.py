"""Every ``semlink train …`` command under ``torchrun --nproc_per_node=2`` (gloo, CPU), on tiny
runs: the same result as one process, one writer, one voice.

Tolerance: with the patch stem (no BatchNorm) the all-token phase of two processes follows one
process's loss to 1e-4 relative (each step's averaged gradient is the single process's gradient
of the mean loss; only floating-point order differs). The budget phase draws its budgets per
process, so weights then differ by up to 0.02 (absolute, on weights of magnitude up to ~5).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semlink.models import checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SELECTOR = [
    "train",
    "selector",
    "--backbone-epochs",
    "2",
    "--selector-epochs",
    "1",
    "--limit-train",
    "256",
    "--model.stem",
    "patch",
]


def semlink(*argv: str, procs: int = 1, cwd: Path) -> str:
    """Runs ``semlink`` alone or as ``procs`` torchrun processes; returns stdout (checks rc)."""
    if procs == 1:
        cmd = [sys.executable, "-m", "semlink.cli", *argv]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        assert torchrun, "torchrun ships with torch"
        cmd = [torchrun, "--standalone", f"--nproc_per_node={procs}", "-m", "semlink.cli", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("torchrun")
    semlink(*SELECTOR, "--out", str(d / "one.pt"), cwd=d)
    out = semlink(*SELECTOR, "--out", str(d / "two.pt"), procs=2, cwd=d)
    (d / "two.stdout").write_text(out)
    return d


def test_two_processes_train_the_selector_as_one_does(runs):
    one, two = checkpoint.load(runs / "one.pt"), checkpoint.load(runs / "two.pt")
    h1 = [h["loss"] for h in one["metrics"]["history"] if h["phase"] == "backbone"]
    h2 = [h["loss"] for h in two["metrics"]["history"] if h["phase"] == "backbone"]
    assert len(h1) == len(h2) == 2
    assert h2 == pytest.approx(h1, rel=1e-4)
    w1, w2 = one["resume"]["model"], two["resume"]["model"]
    assert w1.keys() == w2.keys()
    diff = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    assert diff < 0.02
    assert not torch.equal(w1["head.weight"], torch.zeros_like(w1["head.weight"]))


def test_only_rank_0_prints_and_writes(runs):
    out = (runs / "two.stdout").read_text()
    assert out.count("checkpoint:") == 1 and out.count("validation accuracy") == 1
    assert sorted(p.name for p in runs.glob("*.pt")) == ["one.pt", "two.pt"]


@pytest.mark.parametrize(
    "argv",
    [
        [
            "train",
            "early-exit",
            "--epochs",
            "2",
            "--backbone-epochs",
            "1",
            "--limit-train",
            "128",
            "--max-steps",
            "2",
            "--out",
            "{d}/ee.pt",
        ],
        [
            "train",
            "jscc",
            "--selector-checkpoint",
            "{d}/one.pt",
            "--epochs",
            "1",
            "--limit-train",
            "128",
            "--out",
            "{d}/jscc.pt",
        ],
        ["train", "split", "--pretrained", "{d}/one.pt", "--epochs", "1", "--max-steps", "2"],
        ["train", "finetune", "--pretrained", "{d}/one.pt", "--epochs", "1", "--max-steps", "2"],
        [
            "train",
            "policy",
            "--out",
            "{d}/policy",
            "--total-timesteps",
            "256",
            "--n-envs",
            "2",
            "--n-steps",
            "128",
            "--batch-size",
            "64",
            "--eval-every",
            "256",
            "--eval-episodes",
            "10",
        ],
    ],
    ids=["early-exit", "jscc", "split", "finetune", "policy (rank 0 alone)"],
)
def test_every_training_command_runs_unchanged_under_torchrun(runs, argv):
    argv = [a.format(d=runs) for a in argv]
    out = semlink(*argv, procs=2, cwd=runs)
    assert out.strip(), "rank 0 reports"
    if "--out" in argv:
        out_path = Path(argv[argv.index("--out") + 1])
        assert out_path.is_file() or (out_path / "policy.onnx").is_file()
