"""Training of the nested JSCC coder (``semlink train jscc``), docs/methods.md#jscc.

Starts from a trained selector ViT. The device part (stem, device blocks, budget token, selectors)
is frozen, and so by default is the server part (server blocks, norm, head): only the coder is
trained, so the server's tail stays the selector's and the coder learns to deliver tokens it
reads (``train_tail`` trains the server part too, the earlier recipe: the tail then learns to
read the coder's distortion at every SNR and gives up ~3 points at high SNR for it). Every
sample draws its own budget ``alpha`` (stratified over ``[alpha_low, 1]``), SNR
(uniform in ``[snr_low, snr_high]`` dB) and, for the nested coder, its own truncation ``m``
(log-uniform between ``ceil(d_c / 32)`` and ``d_c``), so one coder serves every rate. Tokens are
hard-selected (top-k by the selector's key, the rest masked out of attention) exactly as at run
time. Loss: cross-entropy plus distillation from the frozen noiseless model.

``fixed_rate`` trains one coder for one rate: the published recipe, kept as the ablation that the
nested coder is compared against.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semlink.models import checkpoint, distributed, semcom
from semlink.models.data import epochs_ahead
from semlink.models.datasets import training_splits
from semlink.models.jscc import JSCCConfig, symbols_kept
from semlink.models.progress import progress_bar
from semlink.models.selector import distillation_loss, hard_keep_mask, sample_budgets
from semlink.models.semcom import SemComModel
from semlink.models.vit import SelectorViT, config_from_dict

VAL_POINTS = ((10.0, 0.25, 1 / 8), (0.0, 0.25, 1 / 4))

log = logging.getLogger(__name__)


@dataclass
class TrainJSCCConfig:
    selector_checkpoint: str = "zoo/digits-vit/1/checkpoint.pt"
    """The trained selector ViT the coder is fitted to."""
    dataset: str = "digits-canvas"
    data_root: str | None = None
    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    snr_low: float = -20.0
    snr_high: float = 20.0
    alpha_low: float = 0.05
    channel: str = "awgn"
    """Channel seen in training: awgn or rayleigh."""
    fixed_rate: float | None = None
    """Train for this rate only (the per-rate ablation); None = nested."""
    w_kd: float = 1.0
    kd_temperature: float = 2.0
    w_rec: float = 1.0
    """Weight of the token reconstruction loss (MSE of decoded vs sent tokens, relative to their
    power): keeps the decoder close to identity at high SNR, where the task loss alone let the
    coder settle ~3 points below the uncoded model."""
    device: str = "cpu"
    """cpu, cuda or auto (the GPU when there is one)."""
    data_workers: int = 0
    """digits-scene: processes composing training frames, the next epoch's while this one trains
    (0: composed in this process between epochs; the frames are the same either way)."""
    max_steps: int | None = None
    """Stop each epoch after this many steps (smoke tests)."""
    limit_train: int | None = None
    """Use only this many training images (smoke tests)."""
    augment: bool = True
    train_placements: int = 1
    """digits-scene: fresh frames of each training digit per epoch (8: about 10k an epoch)."""
    curriculum_epochs: int = 0
    """digits-scene: epochs from big, uncluttered digits to the full recipe (0: none)."""
    train_tail: bool = False
    """Train the server part with the coder (False: only the coder learns)."""
    init_from: str | None = None
    """A coder checkpoint (``semlink export jscc`` writes one beside the graphs) to fine-tune:
    its coder and server part replace the fresh ones; its device part must be the selector's."""
    jscc: JSCCConfig = field(default_factory=JSCCConfig)


def sample_symbols(
    batch: int, d_c: int, fixed_rate: float | None, gen: torch.Generator
) -> torch.Tensor:
    """Per-sample kept symbols ``m``: fixed, or log-uniform over [ceil(d_c/32), d_c]."""
    if fixed_rate is not None:
        return torch.full((batch,), symbols_kept(d_c, fixed_rate), dtype=torch.long)
    lo, hi = math.log(symbols_kept(d_c, 1 / 32)), math.log(d_c)
    m = torch.exp(torch.rand(batch, generator=gen) * (hi - lo) + lo).round().long()
    return m.clamp(1, d_c)


def _fine_tune_from(model: SemComModel, path: str, selector: SelectorViT) -> None:
    """Loads a trained coder's weights into ``model``, refusing one whose device part is not
    ``selector``'s (the coder was fitted to another model's tokens)."""
    checkpoint.load_weights(model, checkpoint.load(path)["state_dict"], path)
    pairs = zip(
        semcom.device_parameters(model.vit), semcom.device_parameters(selector), strict=True
    )
    if not all(torch.equal(a, b) for a, b in pairs):
        raise ValueError(
            f"{path} was fitted to another selector ViT's tokens: pass that selector as "
            "--selector-checkpoint"
        )


def train_jscc(cfg: TrainJSCCConfig, out: str | Path, resume: bool = False) -> dict:
    """Trains (or resumes) the coder; writes a checkpoint every epoch. Returns the metrics."""
    out = Path(out)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    base = checkpoint.load(cfg.selector_checkpoint)
    vit_cfg = config_from_dict(base["config"])
    cfg.jscc.embed_dim = vit_cfg.embed_dim
    cfg.jscc.snr_range = (cfg.snr_low, cfg.snr_high)  # what an SNR-conditioned coder is fitted to
    model = SemComModel(vit_cfg, cfg.jscc)
    model.vit.load_state_dict(base["state_dict"])
    device = distributed.training_device(cfg.device)
    model.to(device)
    teacher = copy.deepcopy(model.vit).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if cfg.init_from is not None and not (resume and out.is_file()):
        _fine_tune_from(model, cfg.init_from, teacher)
    model.freeze_device()
    if not cfg.train_tail:
        model.vit.requires_grad_(False)
    dist = distributed.current()  # data-parallel under torchrun, else one process
    dist.sync_parameters(model)
    train, val = training_splits(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_train = len(train) if cfg.limit_train is None else min(cfg.limit_train, len(train))
    steps = math.ceil(n_train / cfg.batch_size)
    total = cfg.epochs * steps
    metrics: dict = {"history": []}
    start_epoch, best, best_state = 0, -1.0, None
    if resume and out.is_file():
        ckpt = checkpoint.load(out)
        model.load_state_dict(ckpt["resume"]["model"])
        opt.load_state_dict(ckpt["resume"]["optimizer"])
        start_epoch, best, metrics = (
            ckpt["resume"]["epoch"],
            ckpt["resume"]["best"],
            ckpt["metrics"],
        )
        best_state = ckpt["state_dict"]
        gen.set_state(ckpt["resume"]["rng"])
    t0 = time.perf_counter()
    bar = progress_bar(
        range(start_epoch, cfg.epochs),
        desc="train jscc" + (f" r={cfg.fixed_rate:g}" if cfg.fixed_rate else ""),
        unit="epoch",
        initial=start_epoch,
        total=cfg.epochs,
        disable=None if dist.is_main else True,
    )
    frames = epochs_ahead(
        train, range(start_epoch, cfg.epochs), cfg.augment, ahead=cfg.data_workers > 0
    )
    for epoch, all_images in zip(bar, frames, strict=True):
        model.train()
        model.vit.eval()  # frozen stem batch-norm statistics stay as trained
        images = all_images[:n_train]
        order = torch.randperm(n_train, generator=gen).numpy()
        losses = []
        for i in range(steps):
            if cfg.max_steps is not None and i >= cfg.max_steps:
                break
            step = epoch * steps + i
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x, y = dist.shard(torch.from_numpy(images[idx]), torch.from_numpy(train.labels[idx]))
            x, y = x.to(device), y.to(device)
            b = len(y)
            alpha = sample_budgets(b, cfg.alpha_low, 1.0, gen).to(device)
            with torch.no_grad():
                out_dev = model.vit.forward_device(x, alpha)
                keep = hard_keep_mask(out_dev.key, alpha)
                t_logits = teacher.forward_tail(out_dev.tokens[:, 1:], keep)
            snr = torch.rand(b, generator=gen) * (cfg.snr_high - cfg.snr_low) + cfg.snr_low
            m = sample_symbols(b, model.d_c, cfg.fixed_rate, gen)
            snr, m = snr.to(device), m.to(device)
            sent = out_dev.tokens[:, 1:]
            received = model.transmit(sent, m, snr, cfg.channel, gen)
            logits = model.vit.forward_tail(received, keep)
            err = ((received - sent) ** 2).mean(-1) / (sent**2).mean(-1).clamp_min(1e-6)  # (B, N)
            rec = (err * keep).sum() / keep.sum()
            kd = distillation_loss(logits, t_logits, cfg.kd_temperature)
            loss = F.cross_entropy(logits, y) + cfg.w_kd * kd + cfg.w_rec * rec
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dist.average_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
        dist.average_buffers(model)
        total_loss, count = dist.all_sum([sum(losses), len(losses)])
        losses = [total_loss / max(count, 1)]  # the mean over every rank's steps
        val_points = (
            VAL_POINTS
            if cfg.fixed_rate is None
            else tuple((s, a, cfg.fixed_rate) for s, a, _ in VAL_POINTS)
        )
        rows = [
            semcom.accuracy_grid(
                model, val, (s,), (a,), (r,), cfg.channel, seed=cfg.seed, progress=False
            )[0]
            for s, a, r in val_points
        ]
        score = float(np.mean([r["accuracy"] for r in rows]))
        metrics["history"].append({"epoch": epoch, "loss": float(np.mean(losses)), "val": rows})
        shown = {f"{r['snr_db']:g}dB,r={r['rate']:g}": f"{r['accuracy']:.3f}" for r in rows}
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", **shown)
        if dist.is_main:  # a line a run in the background leaves in its log
            log.info(
                "jscc epoch %d/%d: loss %.3f, validation accuracy %s",
                epoch + 1,
                cfg.epochs,
                np.mean(losses),
                ", ".join(
                    f"{r['accuracy']:.3f} at {r['snr_db']:g} dB, α {r['alpha']:g}, r {r['rate']:g}"
                    for r in rows
                ),
            )
        if score >= best:
            best, best_state = score, copy.deepcopy(model.state_dict())
        metrics["train_seconds"] = metrics.get("train_seconds", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        if not dist.is_main:  # one writer
            continue
        semcom.save(
            out,
            model,
            metrics,
            state_dict=best_state,
            train_config=asdict(cfg),
            resume={
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch + 1,
                "best": best,
                "rng": gen.get_state(),
            },
        )
    return metrics
