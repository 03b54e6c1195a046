"""Shared fixtures. Tests need no GPU, no fixed port, no network and no download."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "zoo"
DEFAULT_MODEL_DIR = ZOO / "digits-vit" / "1"


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
    """The tiny ViT with a small JSCC coder (d_c = 16), untrained but deterministic."""
    import torch

    from semlink.models.jscc import JSCCConfig
    from semlink.models.semcom import SemComModel

    torch.manual_seed(1)
    model = SemComModel(tiny_model.cfg, JSCCConfig(embed_dim=32, symbols=16, hidden=32))
    model.vit.load_state_dict(tiny_model.state_dict())
    return model.eval()


@pytest.fixture(scope="session")
def tiny_jscc_checkpoint(tmp_path_factory, tiny_jscc):
    from semlink.models import semcom

    path = tmp_path_factory.mktemp("ckpt") / "tiny-jscc.pt"
    semcom.save(path, tiny_jscc, {})
    return path


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory, tiny_checkpoint, tiny_jscc_checkpoint):
    """A model repository with the tiny model as tiny-vit/1 and its JSCC variant as tiny-jscc/1."""
    from semlink.models.export import export_jscc_pipeline, export_selector_pipeline

    root = tmp_path_factory.mktemp("repo")
    export_selector_pipeline(tiny_checkpoint, root / "tiny-vit" / "1")
    export_jscc_pipeline(tiny_jscc_checkpoint, root / "tiny-jscc" / "1")
    return root
