"""The semantic-communication pipeline: selector ViT head -> JSCC encoder -> channel -> JSCC
decoder -> ViT tail, with its checkpoint format and the accuracy grid used by calibration and
evaluation (docs/methods.md#jscc)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semlink.models import checkpoint
from semlink.models.data import Dataset
from semlink.models.jscc import JSCC, JSCCConfig, channel_uses, symbols_kept, transmit
from semlink.models.vit import SelectorViT, ViTConfig, config_from_dict, num_kept


class SemComModel(nn.Module):
    """A trained selector ViT with a JSCC coder at its split."""

    def __init__(self, vit_cfg: ViTConfig, jscc_cfg: JSCCConfig) -> None:
        super().__init__()
        if jscc_cfg.embed_dim != vit_cfg.embed_dim:
            raise ValueError(
                f"JSCC embed_dim {jscc_cfg.embed_dim} must equal the ViT's {vit_cfg.embed_dim}"
            )
        self.vit = SelectorViT(vit_cfg)
        self.coder = JSCC(jscc_cfg)

    @property
    def d_c(self) -> int:
        return self.coder.cfg.symbols

    def transmit(
        self,
        patches: torch.Tensor,
        m: torch.Tensor,
        snr_db: torch.Tensor,
        kind: str,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The coder's :func:`~models.jscc.transmit` of ``patches`` (B, T, d): received tokens."""
        return transmit(self.coder, patches, m, snr_db, kind, generator)

    def freeze_device(self) -> None:
        """The device part (stem, device blocks, budget token, selectors) is fixed for JSCC training."""
        for p in device_parameters(self.vit):
            p.requires_grad_(False)


def device_parameters(vit: SelectorViT) -> list[nn.Parameter]:
    """The parameters of the part the device runs: stem, device blocks, selectors, class token,
    positions and budget token."""
    modules = [vit.patch_embed, vit.blocks[: vit.cfg.split], vit.selectors]
    own = [vit.cls_token, vit.pos_embed, vit.budget_lo, vit.budget_hi]
    return [p for m in modules for p in m.parameters()] + own


def save(
    path: str | Path,
    model: SemComModel,
    metrics: dict[str, Any],
    state_dict: dict | None = None,
    **extra: Any,
) -> None:
    """Writes ``{config: {vit, jscc}, state_dict, metrics, ...}``; ``state_dict`` defaults to the model's."""
    checkpoint.save(
        path,
        config={"vit": asdict(model.vit.cfg), "jscc": asdict(model.coder.cfg)},
        state_dict=state_dict if state_dict is not None else model.state_dict(),
        metrics=metrics,
        **extra,
    )


def load(path: str | Path) -> tuple[SemComModel, dict[str, Any]]:
    ckpt = checkpoint.load(path)
    cfg = ckpt["config"]
    if not isinstance(cfg, dict) or set(cfg) != {"vit", "jscc"}:
        raise ValueError(
            f"{path} is not a JSCC checkpoint (config needs 'vit' and 'jscc'); train one with `semlink train jscc`"
        )
    jscc = {"snr_conditioned": False, **cfg["jscc"]}  # coders from before the SNR conditioning
    jscc["snr_range"] = tuple(jscc.get("snr_range", JSCCConfig.snr_range))
    model = SemComModel(config_from_dict(cfg["vit"]), JSCCConfig(**jscc))
    checkpoint.load_weights(model, ckpt["state_dict"], path)
    return model.eval(), ckpt


@torch.no_grad()
def accuracy_grid(
    model: SemComModel,
    data: Dataset,
    snrs: tuple[float, ...],
    alphas: tuple[float, ...],
    rates: tuple[float, ...],
    kind: str = "awgn",
    seed: int = 0,
    progress: bool = True,
    per_sample: bool = False,
) -> list[dict[str, Any]]:
    """Accuracy and channel uses for every (SNR, alpha, rate), tokens physically removed.

    One noise draw per sample and point (seeded). Returns rows with ``snr_db``, ``alpha``,
    ``rate``, ``k``, ``m``, ``channel_uses`` and ``accuracy``; with ``per_sample`` also
    ``correct``, a boolean array over the samples (for paired comparisons; not JSON).
    """
    from semlink.models.progress import progress_bar

    model.eval()
    vit = model.vit
    device = next(model.parameters()).device
    x = torch.from_numpy(data.images).to(device)
    y = data.labels
    c, h, w = data.image_shape
    gen = torch.Generator().manual_seed(seed)
    rows = []
    points = [(a, r) for a in alphas for r in rates]
    bar = progress_bar(
        points, desc=f"grid {data.split}", unit="point", disable=None if progress else True
    )
    kept_by_alpha: dict[float, torch.Tensor] = {}
    for alpha, rate in bar:
        k = num_kept(alpha, vit.cfg.num_patches)
        if alpha not in kept_by_alpha:
            out = vit.forward_device(x, torch.full((len(y),), float(alpha), device=device))
            kept_by_alpha[alpha] = vit.select(out.tokens, out.key, k)[0]
        patches = kept_by_alpha[alpha]
        m = symbols_kept(model.d_c, rate)
        for snr in snrs:
            received = model.transmit(
                patches,
                torch.full((len(y),), m, device=device),
                torch.full((len(y),), float(snr), device=device),
                kind,
                gen,
            )
            correct = vit.forward_tail(received).argmax(1).cpu().numpy() == y
            row = {
                "snr_db": float(snr),
                "alpha": float(alpha),
                "rate": float(rate),
                "k": k,
                "m": m,
                "channel_uses": channel_uses(k, m, c * h * w),
                "accuracy": float(correct.mean()),
            }
            rows.append({**row, "correct": correct} if per_sample else row)
    return rows


def grid_lookup(
    rows: list[dict[str, Any]], snr_db: float, alpha: float, rate: float
) -> dict[str, Any]:
    for r in rows:
        if (
            np.isclose(r["snr_db"], snr_db)
            and np.isclose(r["alpha"], alpha)
            and np.isclose(r["rate"], rate)
        ):
            return r
    raise KeyError(f"no grid point at SNR {snr_db} dB, alpha {alpha}, rate {rate}")
