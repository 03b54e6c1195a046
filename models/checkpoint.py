"""Checkpoints store ``{"config", "state_dict", "metrics"}`` (plus resume state), nanoGPT-style,
so loading never guesses the architecture."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from semlink.models.vit import SelectorViT, config_from_dict


def save(path: str | Path, **payload: Any) -> None:
    """Atomically writes a checkpoint (temp file + rename), so an interrupted save never corrupts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; train one with `semlink train selector`"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a semlink checkpoint: expected a dict with 'config' and 'state_dict'"
        )
    return ckpt


def load_weights(model: torch.nn.Module, state_dict: dict[str, Any], path: str | Path) -> None:
    """Loads ``state_dict`` strictly, naming the file when it does not fit the architecture."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(
            f"{path} does not hold a {type(model).__name__} of the architecture its config describes: {exc}"
        ) from exc


def load_selector_vit(path: str | Path) -> tuple[SelectorViT, dict[str, Any]]:
    """Rebuilds the model from its stored config and loads the weights strictly."""
    ckpt = load(path)
    model = SelectorViT(config_from_dict(ckpt["config"]))
    load_weights(model, ckpt["state_dict"], path)
    return model.eval(), ckpt
