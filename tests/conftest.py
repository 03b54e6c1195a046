"""Shared fixtures. Tests need no GPU, no fixed port, no network and no download."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tests that would install Debian packages (docker.io, chromium) or start a daemon do so only
# in CI (CI=true) or when asked; elsewhere they skip, naming this variable.
SYSTEM_OPT_IN = "SEMLINK_SYSTEM_TESTS"


def may_change_machine() -> bool:
    """Whether tests may install system packages and start daemons on this machine."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(SYSTEM_OPT_IN) == "1"


def system_skip_reason(what: str) -> str:
    """The one line a test skips with when it would have to change the machine."""
    return f"{what}: set {SYSTEM_OPT_IN}=1 to let the tests install and start it (CI=true does)"


def _a_share_of_the_cores() -> None:
    """Under pytest-xdist, every worker's torch, and every process a test starts, gets its share
    of the cores instead of all of them: torch starts as many threads as there are cores in
    each process, so N workers' threads fought over N cores (the unit tests on 2 workers, 2
    cores: 263 s, and 220 s with one thread each)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_a_share_of_the_cores()

# The Makefile points both passes of a `make test` run (parallel, then serial) at one folder, so
# what is built once a run is built once: the tiny models' repository, the wheel.
SHARED_ENV = "SEMLINK_TEST_SHARED"


def shared_dir(tmp_path_factory) -> Path:
    """The folder this run's pytest processes share: ``SEMLINK_TEST_SHARED`` where the Makefile
    set it, else the run's own (every pytest-xdist worker's base sits in it). Guard what is built
    there with a :class:`filelock.FileLock` in it."""
    if os.environ.get(SHARED_ENV):
        return Path(os.environ[SHARED_ENV])
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


ZOO = ROOT / "zoo"
DEFAULT_MODEL_DIR = ZOO / "digits-vit" / "1"


def tiny_policy_config(out, **overrides):
    """A PPO run of a few hundred steps on the shipped digits-ee traces (smoke tests of
    ``semlink train policy``); ``overrides`` set any other field."""
    from semlink.models.train_policy import TrainPolicyConfig

    fields = dict(
        model_dir=str(ZOO / "digits-ee" / "1"),
        out=str(out),
        total_timesteps=512,
        n_envs=2,
        n_steps=128,
        batch_size=64,
        eval_every=256,
        eval_episodes=20,
    )
    return TrainPolicyConfig(**{**fields, **overrides})


@pytest.fixture(scope="session")
def tiny_cfg():
    from semlink.models.vit import ViTConfig

    return ViTConfig(
        image_size=48,
        patch_size=8,
        in_chans=1,
        num_classes=10,
        embed_dim=32,
        depth=3,
        num_heads=2,
        split=2,
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    import torch

    from semlink.models.vit import SelectorViT

    torch.manual_seed(0)
    model = SelectorViT(tiny_cfg).eval()
    # Spread the selector's scores so top-k is decided by content, not ties.
    with torch.no_grad():
        for sel in model.selectors:
            sel.score.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    from dataclasses import asdict

    from semlink.models import checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    checkpoint.save(
        path, config=asdict(tiny_model.cfg), state_dict=tiny_model.state_dict(), metrics={}
    )
    return path


@pytest.fixture(scope="session")
def tiny_jscc(tiny_model):
    """The tiny ViT with a small SNR-conditioned JSCC coder (d_c = 16), untrained but
    deterministic; its FiLM layers are random (not zero, as training starts them), so what it
    codes depends on the SNR it is given."""
    import torch

    from semlink.models.jscc import JSCCConfig
    from semlink.models.semcom import SemComModel

    torch.manual_seed(1)
    model = SemComModel(tiny_model.cfg, JSCCConfig(embed_dim=32, symbols=16, hidden=32))
    model.vit.load_state_dict(tiny_model.state_dict())
    for mlp in (model.coder.encoder.real, model.coder.encoder.imag, model.coder.decoder.mlp):
        assert mlp.film is not None
        torch.nn.init.normal_(mlp.film[2].weight, std=0.5)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_jscc_checkpoint(tmp_path_factory, tiny_jscc):
    from semlink.models import semcom

    path = tmp_path_factory.mktemp("ckpt") / "tiny-jscc.pt"
    semcom.save(path, tiny_jscc, {})
    return path


def _weights_digest(*models) -> str:
    import hashlib

    h = hashlib.sha256()
    for model in models:
        for name, tensor in model.state_dict().items():
            h.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory, tiny_model, tiny_checkpoint, tiny_jscc, tiny_jscc_checkpoint):
    """A model repository with the tiny model as tiny-vit/1 and its JSCC variant as tiny-jscc/1,
    exported once a run (:func:`shared_dir`) under the digest of the weights this process made:
    a process whose tiny models differed would export its own."""
    from filelock import FileLock

    from semlink.models.export import export_jscc_pipeline, export_selector_pipeline

    shared = shared_dir(tmp_path_factory)
    root = shared / f"tiny-repository-{_weights_digest(tiny_model, tiny_jscc)}"
    done = root.with_name(root.name + ".done")
    with FileLock(str(shared / "tiny-repository.lock")):
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)
            export_selector_pipeline(tiny_checkpoint, root / "tiny-vit" / "1")
            export_jscc_pipeline(tiny_jscc_checkpoint, root / "tiny-jscc" / "1")
            done.touch()
    return root


# Whole modules of a minute or more between them: `make check` leaves them out, `make test` runs
# them (see the Makefile). Containers (tests/e2e) are always slow.
SLOW_MODULES = {
    "test_reliability.py",
    "test_bench_compare.py",
    "test_bench_report.py",
    "test_dashboard.py",
    "test_demo.py",
    "test_fuzz_endpoints.py",
    "test_early_exit_serving.py",
    "test_install.py",
    "test_replica_churn.py",
    "test_torchrun.py",
    "test_bench_front.py",
    "test_data_root.py",
}


# Modules that measure time or CPU share against a threshold: a neighbour test on the same cores
# would move their figures, so they run alone, after the parallel pass (see the Makefile).
SERIAL_MODULES = {
    "test_cpu_quota.py",  # a tenth of a core must be several times slower than a free core
    "test_link.py",  # the emulated link's rate within 8 % and its delay within bounds
    "test_bench_front.py",  # pins the server and the load generator to cores of their own
    "test_hostile.py",  # the device's probe latency while uploads stream in
    "test_reliability.py",  # the same probe under load, and latency figures
    "test_bench_report.py",  # runs `bench link`, which judges the emulated link's rate
}

# The parallel pass's longest modules, longest first (from `--durations`): pytest-xdist hands each
# worker whole modules in collection order (the Makefile's --no-loadscope-reorder; by default it
# starts the modules with the most tests first), so these start first and the short ones fill in
# around them instead of one worker running a long module alone at the end.
LONGEST_FIRST = (
    "test_compose.py",  # CI only: a Docker engine, three images, five scenarios
    "test_torchrun.py",
    "test_bench_regimes.py",
    "test_demo.py",
    "test_replica_churn.py",
    "test_bench_controller.py",
    "test_bench_compare.py",
    "test_any_split.py",
    "test_split_learning.py",
    "test_cli.py",
    "test_serving.py",
    "test_early_exit.py",
    "test_scene.py",
    "test_early_exit_serving.py",
    "test_install.py",
    "test_tritonclient.py",  # CI only: packages from the registry
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        if path.name in SLOW_MODULES or "e2e" in path.parts:
            item.add_marker(pytest.mark.slow)
        if path.name in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))
