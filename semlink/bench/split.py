"""``semlink bench split``: split learning with ADC against its baselines, and ALaST against full
fine-tuning, each trained to convergence and judged the way their papers judge them
(docs/methods.md#adc, docs/methods.md#alast).

**The protocol** (the default; ``--quick`` keeps the old short schedule). Every arm fine-tunes the
same pretrained model (by default the shipped scene-vit) to the same shifted task (by default
digits-scene-shifted) from the same start, on the same fresh frames each epoch in the same
batches, and trains until its validation accuracy (the validation split's first ``val_frames``
frames) has not improved by more than ``min_delta`` for ``patience`` epochs; the first such
plateau decays its learning rate 10× (``lr_decays``), the next one stops it; no arm may pass
``max_epochs``, and one that reaches it is reported as not converged. The checkpoint with the
best validation accuracy is the one tested. The learning rate is chosen on validation, from
``lrs``, for the two references only (full fine-tuning and uncompressed split learning), then used
unchanged by the method and every baseline compared with that reference. Nothing is tuned on the
test split.

**What is reported.** Test accuracy (n and a 95 % interval) of each arm's best checkpoint, with
paired differences for the targets; each arm's validation accuracy after every epoch against the
training wall time, FLOPs and bytes exchanged (split learning: both ways) up to it; and the cost
each arm needs to reach its reference's best validation accuracy − 1 point, or "never". FLOPs
are counted by torch. Wall time is not the noisy time each arm happened to take in this run:
after training, a timing pass steps every arm on the same batches, interleaved round by round
(:func:`~models.train_split.step_seconds`), and an arm's time to accuracy is its steps to reach
the accuracy × its median seconds per step from that pass.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from semlink.bench import write_figures
from semlink.models.stats import paired_bootstrap, pm
from semlink.models.train_split import SCENE_PRETRAINED

XIS = (0.05, 0.1)  # the targets' ratios (ξ ≤ 0.1)
BASELINES = ("top-k", "random-k", "quantise")
VARIANTS = ("adc-class:0.1", "adc-hard:0.1", "adc-tokens:0.1")
"""ADC variants as ``method:ξ``, one change each (see :class:`~models.split_learning.ADC`): what
merges (within a class), the labels (hard), the split of ξ (more on the tokens)."""
VARIANT_METHODS = ("adc-class", "adc-hard", "adc-tokens", "adc-class-tokens")
ALAST_VARIANTS = ("alast-embed", "alast-k3")
"""ALaST variants, one change each (see :class:`~models.alast.ALaST`): the embedding trains every
step (``alast-embed``), ``K`` blocks a step instead of the bench's ``k`` (``alast-kK``)."""
TARGET_MARGIN = 0.01  # the cost to reach the reference's best validation accuracy - 1 point
EXPECTED_EPOCHS = 28  # epochs an arm took on average in the README's run (the duration estimate)
QUICK_EPOCHS = 4  # the old short schedule: split learning
QUICK_FINETUNE_EPOCHS = 6  # and fine-tuning
QUICK_LR = 3e-4


@dataclass
class SplitBenchConfig:
    quick: bool = False
    """the old short schedule instead of the protocol: 4 epochs of split learning and 6 of
    fine-tuning at lr 3e-4, no tuning, no early stopping (minutes, not hours)"""
    patience: int = 5
    """epochs without an improvement (``min_delta``) in validation accuracy before the learning
    rate decays, then before the run stops (fixed before the first run, the same for every arm)"""
    min_delta: float = 0.005
    """how far a validation accuracy must beat the last improvement to count as one (0.5 points:
    a run creeping up by less in ``patience`` epochs has converged; its best epoch is still the
    checkpoint tested)"""
    max_epochs: int = 100
    """the cap on epochs; an arm that reaches it is reported as not converged"""
    lr_decays: int = 1
    """plateaus met by a 10x learning-rate decay before one stops the run"""
    lrs: tuple[float, ...] = (3e-4, 1e-3)
    """learning rates tried, on validation, for full fine-tuning and uncompressed split learning;
    the best of each is used unchanged by the arms compared with it"""
    xis: tuple[float, ...] = XIS
    variants: tuple[str, ...] = VARIANTS
    """ADC variants run beside docs/methods.md#adc's ADC, as method:ξ (adc-class, adc-hard, adc-tokens,
    adc-class-tokens)"""
    alast_variants: tuple[str, ...] = ALAST_VARIANTS
    """ALaST variants run beside docs/methods.md#alast's ALaST (alast-embed, alast-kK)"""
    k: int = 2  # ALaST: trainable blocks per step
    dataset: str = "digits-scene-shifted"
    """the task every run adapts to (digits-shifted with --pretrained zoo/digits-vit/1/...)"""
    pretrained: str = str(SCENE_PRETRAINED)
    """the checkpoint every run starts from"""
    batch_size: int = 64
    timing_rounds: int = 15
    """rounds of the interleaved timing pass (one step of every arm each)"""
    threads: int = 1
    """torch threads a process; one keeps a step's time steady when the other core is busy"""
    workers: int = 2
    """processes training arms at once (each arm's results are the same for any number)"""
    max_steps: int | None = None  # steps per epoch (smoke runs)
    val_frames: int = 1080
    """validation frames scored after every epoch: the validation split's first (half of its
    2,160), the same for every arm and epoch (scoring costs as much as an epoch's training)"""
    limit: int | None = None  # validation and test frames scored (smoke runs)
    out: str = "runs/bench-split"

    def __post_init__(self) -> None:
        if self.val_frames < 1:
            raise ValueError(f"--val-frames must be at least 1, got {self.val_frames}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")


@dataclass
class ArmSpec:
    """An arm of the bench: which family it belongs to and how it trains."""

    name: str
    family: str  # "finetune" (its reference: full fine-tuning) or "split" (uncompressed)
    method: str  # full | alast | uncompressed | adc | adc-* | top-k | random-k | quantise
    xi: float = 1.0
    lr: float = QUICK_LR


def split_name(method: str, xi: float) -> str:
    return "uncompressed" if method == "uncompressed" else f"{method} ξ={xi:g}"


def alast_k(method: str) -> int | None:
    """The ``K`` an ALaST variant ``alast-kK`` names (None: ``alast``, ``alast-embed``)."""
    if method in ("alast", "alast-embed"):
        return None
    k = method.removeprefix("alast-k")
    if k == method or not k.isdigit() or int(k) < 1:
        raise ValueError(f"an ALaST variant is alast-embed or alast-kK (K >= 1), got {method!r}")
    return int(k)


def alast_name(method: str) -> str:
    """An ALaST arm's name: ``ALaST``, ``ALaST +embedding``, ``ALaST K=3``."""
    if method == "alast":
        return "ALaST"
    if method == "alast-embed":
        return "ALaST +embedding"
    return f"ALaST K={alast_k(method)}"


def build(spec: ArmSpec, cfg: SplitBenchConfig) -> Any:
    """The :class:`~models.train_split.Arm` that ``spec`` names, from a fresh pretrained model."""
    from semlink.models.alast import FinetuneArm, FinetuneConfig
    from semlink.models.checkpoint import load_selector_vit
    from semlink.models.split_learning import COMPRESSORS
    from semlink.models.train_split import SplitArm

    vit, _ = load_selector_vit(cfg.pretrained)
    if spec.family == "finetune":
        m = spec.method
        ft = FinetuneConfig(
            alast=m.startswith("alast"),
            k=(alast_k(m) if m.startswith("alast") else None) or cfg.k,
            train_embedding=m == "alast-embed",
            lr=spec.lr,
            progress=False,
        )
        return FinetuneArm(spec.name, ft, vit)
    return SplitArm(spec.name, vit, COMPRESSORS[spec.method](spec.xi), spec.lr)


def method_specs(cfg: SplitBenchConfig, lr_full: float, lr_split: float) -> list[ArmSpec]:
    """Every arm compared with a reference: ALaST and its variants, then ADC, its variants and
    baselines."""
    specs = [ArmSpec("ALaST", "finetune", "alast", lr=lr_full)]
    for v in cfg.alast_variants:
        specs.append(ArmSpec(alast_name(v), "finetune", v, lr=lr_full))
    for xi in cfg.xis:
        for m in ("adc", *BASELINES):
            specs.append(ArmSpec(split_name(m, xi), "split", m, xi, lr_split))
    for v in cfg.variants:
        m, _, ratio = v.partition(":")
        if m not in VARIANT_METHODS or not ratio:
            raise ValueError(
                f"an ADC variant is method:xi with a method of {VARIANT_METHODS}, got {v!r}"
            )
        specs.append(ArmSpec(split_name(m, float(ratio)), "split", m, float(ratio), lr_split))
    return specs


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # progress: the report goes to stdout


def _head(data: Any, n: int) -> Any:
    """The first ``n`` frames of a split, with the per-frame fields that come with them (the
    sources a training split composes each epoch's frames from afresh, a scene's masks)."""
    from dataclasses import replace

    cut = ("images", "labels", "sources", "masks")
    return replace(
        data, **{k: getattr(data, k)[:n] for k in cut if getattr(data, k, None) is not None}
    )


_LOADED: dict[tuple[str, str, int | None], Any] = {}


def _load(dataset: str, split: str, frames: int | None = None) -> Any:
    """One split of ``dataset``, loaded once a process; ``frames``: only its first that many are
    read (a composed split composes only those, the same as its whole's first ones: composing
    frames is what loading costs, seconds a thousand)."""
    from semlink.models.datasets import load_dataset

    key = (dataset, split, frames)
    if key not in _LOADED:
        _LOADED[key] = load_dataset(dataset, split, frames=frames)
    return _LOADED[key]


_SPLITS: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}


def _splits(cfg: SplitBenchConfig) -> tuple[Any, Any, Any]:
    """The train, validation and test splits, composed once a process (validation and test only
    as far as the bench reads them, and train as far as a smoke run's ``max_steps``)."""
    key = (cfg.dataset, cfg.limit, cfg.val_frames, cfg.max_steps, cfg.batch_size)
    if key not in _SPLITS:
        val_n = cfg.val_frames if cfg.limit is None else min(cfg.val_frames, cfg.limit)
        # a smoke run composes only the frames it trains on
        train_n = None if cfg.max_steps is None else cfg.max_steps * cfg.batch_size
        train = _load(cfg.dataset, "train", train_n)
        val = _head(_load(cfg.dataset, "val", val_n), val_n)
        test = _load(cfg.dataset, "test", cfg.limit)
        if cfg.limit is not None:
            test = _head(test, cfg.limit)
        if train_n is not None:  # a split that loads whole (not composed) is cut here
            train = _head(train, train_n)
        _SPLITS[key] = (train, val, test)
    return _SPLITS[key]


class EpochFrames:
    """The train split with each epoch's frames composed once for the whole bench and kept in
    ``folder`` as ``epoch-N.npy``: every process and both stages train on the same files (the
    frames are the same either way: composing them is seeded by the epoch)."""

    def __init__(self, train: Any, folder: Path) -> None:
        self.train, self.labels, self.folder = train, train.labels, folder
        folder.mkdir(parents=True, exist_ok=True)

    def epoch(self, epoch: int) -> Any:
        import numpy as np

        path = self.folder / f"epoch-{epoch}.npy"
        if path.is_file():
            return np.load(path)
        frames = self.train.epoch(epoch)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, frames)
        os.replace(tmp, path)  # whole or absent: another process may read it any time
        return frames


def schedules(cfg: SplitBenchConfig) -> dict[str, Any]:
    """Each family's :class:`~models.train_split.Schedule`: the protocol's, one for all, or the
    quick schedule's fixed epochs."""
    from semlink.models.train_split import Schedule

    if cfg.quick:
        return {
            "finetune": Schedule(patience=None, max_epochs=QUICK_FINETUNE_EPOCHS),
            "split": Schedule(patience=None, max_epochs=QUICK_EPOCHS),
        }
    one = Schedule(
        patience=cfg.patience,
        max_epochs=cfg.max_epochs,
        decays=cfg.lr_decays,
        min_delta=cfg.min_delta,
    )
    return {"finetune": one, "split": one}


def train_group(specs: list[ArmSpec], cfg: SplitBenchConfig, tag: str) -> dict[str, Any]:
    """Trains ``specs`` in lockstep under their schedule (a worker process's share), then tests
    each one's best checkpoint. Returns per arm its curve, its per-frame test scores and, for
    ALaST, its final budgets (which set its step's cost in the timing pass)."""
    import torch

    from semlink.models.train_split import correct_of, train_to_convergence

    torch.manual_seed(0)
    torch.set_num_threads(cfg.threads)
    train, val, test = _splits(cfg)
    frames = EpochFrames(train, Path(cfg.out) / "frames")
    arms = [build(s, cfg) for s in specs]
    sched = schedules(cfg)
    curves: dict[str, Any] = {}
    for family in ("finetune", "split"):
        group = [a for a, s in zip(arms, specs, strict=True) if s.family == family]
        same = sched["finetune"] is sched["split"]
        if same:  # one protocol: every arm in lockstep
            group = arms
        if group:
            curves |= train_to_convergence(
                group,
                frames,
                val,
                sched[family],
                batch_size=cfg.batch_size,
                max_steps=cfg.max_steps,
                log=lambda line: _log(f"{tag} {line}"),
            )
        if same:
            break
    out = {}
    for arm in arms:
        alast = getattr(getattr(arm, "trainer", None), "alast", None)
        out[arm.name] = {
            "curve": curves[arm.name].as_dict(),
            "correct": correct_of(arm.model, test).tolist(),
            "budgets": alast.budgets.tolist() if alast is not None else None,
            "val_n": len(val),
        }
    return out


def run_groups(groups: list[list[ArmSpec]], cfg: SplitBenchConfig, stage: str) -> dict[str, Any]:
    """:func:`train_group` on each group, ``cfg.workers`` processes at a time, in the order
    given. Each group's results are kept in ``out/groups/`` as it finishes, and a rerun with the
    same arms and settings takes them from there instead of training again (an interrupted run
    resumes)."""
    groups = [g for g in groups if g]
    keep = Path(cfg.out) / "groups"
    keep.mkdir(parents=True, exist_ok=True)

    def path(g: list[ArmSpec]) -> Path:
        slug = "+".join(s.name for s in g).replace(" ", "_").replace("=", "")
        return keep / f"{stage}-{slug}.json"

    def tag(i: int) -> str:
        return f"{stage} [{i + 1}/{len(groups)}]"

    results: dict[int, dict[str, Any]] = {}
    todo = []
    for i, g in enumerate(groups):
        p = path(g)
        if p.is_file() and json.loads(p.read_text()).get("signature") == _signature(g, cfg):
            results[i] = json.loads(p.read_text())["arms"]
            _log(f"{tag(i)}: taken from {p} (same arms and settings)")
        else:
            todo.append(i)

    def done(i: int, arms: dict[str, Any]) -> None:
        results[i] = arms
        record = {"signature": _signature(groups[i], cfg), "arms": arms}
        path(groups[i]).write_text(json.dumps(record))

    if cfg.workers <= 1 or len(todo) <= 1:
        for i in todo:
            done(i, train_group(groups[i], cfg, tag(i)))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")  # no torch state shared with the parent
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
            futures = {pool.submit(train_group, groups[i], cfg, tag(i)): i for i in todo}
            for f in as_completed(futures):
                done(futures[f], f.result())
    merged: dict[str, Any] = {}
    for i in sorted(results):
        merged |= results[i]
    return merged


def _signature(group: list[ArmSpec], cfg: SplitBenchConfig) -> str:
    """What a group's training depends on: its arms and every setting but where it is written,
    how many processes share the work, the timing pass's and which arms the bench holds (its
    ratios, variants and learning rates: an arm's own are in its spec)."""
    skip = {"out", "workers", "timing_rounds", "xis", "variants", "alast_variants", "lrs"}
    settings = {k: v for k, v in asdict(cfg).items() if k not in skip}
    return json.dumps([[asdict(s) for s in group], settings], sort_keys=True, default=str)


def one_each(specs: list[ArmSpec]) -> list[list[ArmSpec]]:
    """One arm a group: each trains on its own and is kept as soon as it is done (every arm
    trains on the same frames anyway: :class:`EpochFrames`)."""
    return [[s] for s in specs]


def expected_seconds(cfg: SplitBenchConfig, arms: int) -> float:
    """A duration estimate made before the run: ``arms`` runs of ``EXPECTED_EPOCHS`` epochs
    (the quick schedule: its own), shared among the workers, each epoch's training and
    validation timed just now on full fine-tuning, plus loading the splits (once a worker) and
    composing each epoch's frames once (the first epoch's now: the run uses it)."""
    import numpy as np
    import torch

    from semlink.models.train_split import accuracy, batches

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    train, val, _ = _splits(cfg)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    frames = EpochFrames(train, Path(cfg.out) / "frames").epoch(0)
    frames_s = time.perf_counter() - t0
    arm = build(ArmSpec("probe", "finetune", "full"), cfg)
    data = list(batches(frames, train.labels, cfg.batch_size, np.random.default_rng(0), 3))
    arm.step(*data[0])
    t0 = time.perf_counter()
    for x, y in data[1:]:
        arm.step(x, y)
    step_s = (time.perf_counter() - t0) / max(1, len(data) - 1)
    part = min(len(val), 256)
    t0 = time.perf_counter()
    accuracy(arm.model, _head(val, part))
    val_s = (time.perf_counter() - t0) * len(val) / part
    steps = len(train) // cfg.batch_size
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    epochs = (QUICK_EPOCHS + QUICK_FINETUNE_EPOCHS) / 2 if cfg.quick else EXPECTED_EPOCHS
    workers = max(1, min(cfg.workers, arms))
    return epochs * (arms * (steps * step_s + val_s) / workers + frames_s) + 3 * load_s


def merge_quality(cfg: SplitBenchConfig, frames: int = 256) -> list[dict[str, Any]]:
    """Why merging helps or hurts, measured on the first ``frames`` validation frames with the
    pretrained model (no training): for each ξ of ``cfg.xis``, batch size 64 and 256, and each
    way of forming ADC's groups (docs/methods.md#adc's k-means on class attention, k-means within each
    label, random groups of the same sizes; and no merging, top-k), the label purity of a merged
    sample (the share of its members with its majority label, member-weighted), the share of a
    member's digit patches among the tokens its group sends, and the members a group holds.
    Needs the digit masks of a digits-scene dataset; other datasets: []."""
    import numpy as np
    import torch

    from semlink.models.split_learning import SplitViT, class_groups, kmeans, sqrt_split

    val = _load(cfg.dataset, "val", frames)
    masks = getattr(val, "masks", None)
    if masks is None:
        return []
    from semlink.models.checkpoint import load_selector_vit

    vit, _ = load_selector_vit(cfg.pretrained)
    model = SplitViT(vit).eval()
    n = min(frames, len(val))
    grid = int(round(vit.cfg.num_patches**0.5))
    side = masks.shape[1] // grid
    digit = masks[:n].reshape(n, grid, side, grid, side).any(axis=(2, 4)).reshape(n, -1)
    with torch.no_grad():
        attn = torch.cat(
            [model.device(torch.from_numpy(val.images[i : i + 128]))[1] for i in range(0, n, 128)]
        )
    labels = torch.from_numpy(val.labels[:n])
    out = []
    for batch in (64, 256):
        for xi in cfg.xis:
            for how in ("attention", "class", "random", "none (top-k)"):
                t, k = sqrt_split(xi, batch, attn.shape[1], 0.0 if how.startswith("none") else 0.5)
                purity, coverage, sizes = [], [], []
                for s in range(0, n - batch + 1, batch):
                    a, y = attn[s : s + batch], labels[s : s + batch]
                    if how == "attention":
                        assign = kmeans(a, t)
                    elif how == "class":
                        assign = class_groups(a, y, t)
                    elif how == "random":
                        assign = (
                            torch.randperm(batch, generator=torch.Generator().manual_seed(s)) % t
                        )
                    else:
                        assign = torch.arange(batch)
                    for g in assign.unique():
                        members = (assign == g).nonzero().flatten()
                        sent = a[members].mean(dim=0).topk(k).indices.numpy()
                        purity.append(np.bincount(y[members].numpy()).max() / len(members))
                        sizes.append(len(members))
                        for i in members.tolist():
                            d = digit[s + i]
                            coverage.append(d[sent].sum() / max(1, d.sum()))
                out.append(
                    {
                        "batch": batch,
                        "xi": xi,
                        "groups": how,
                        "tokens_sent": k,
                        "purity": float(np.average(purity, weights=sizes)),
                        "digit_coverage": float(np.mean(coverage)),
                        "members": float(np.mean(sizes)),
                    }
                )
    return out


def run(cfg: SplitBenchConfig) -> dict[str, Any]:
    import numpy as np
    import torch

    from semlink.models.alast import saved_bytes
    from semlink.models.train_split import batches, step_seconds

    t_start = time.perf_counter()
    lrs = (QUICK_LR,) if cfg.quick else cfg.lrs
    n_methods = len(method_specs(cfg, QUICK_LR, QUICK_LR))
    expected = expected_seconds(cfg, 2 * len(lrs) + n_methods)
    _log(
        f"bench split ({'the quick schedule' if cfg.quick else 'the convergence protocol'}): "
        f"{2 * len(lrs)} + {n_methods} arms, {cfg.workers} worker(s); expected duration about "
        f"{expected / 60:.0f} min on this machine as busy as it is now"
    )

    # 1. the references, their learning rate chosen on validation
    ref_specs = {
        m: [ArmSpec(f"{m} lr={lr:g}", fam, m, lr=lr) for lr in lrs]
        for m, fam in (("full", "finetune"), ("uncompressed", "split"))
    }
    ref = run_groups(one_each(ref_specs["full"] + ref_specs["uncompressed"]), cfg, "tuning")
    tuning: dict[str, list[dict[str, Any]]] = {}
    for m, specs_m in ref_specs.items():
        tuning[m] = [
            {
                "lr": s.lr,
                "best_val": ref[s.name]["curve"]["best_accuracy"],
                "best_epoch": ref[s.name]["curve"]["best_epoch"],
                "epochs": ref[s.name]["curve"]["points"][-1]["epoch"],
                "stopped": ref[s.name]["curve"]["stopped"],
            }
            for s in specs_m
        ]
    # the best validation accuracy; a tie goes to the smaller rate (listed first)
    chosen = {m: max(rows, key=lambda r: r["best_val"])["lr"] for m, rows in tuning.items()}
    specs = {
        "full": ArmSpec("full", "finetune", "full", lr=chosen["full"]),
        "uncompressed": ArmSpec("uncompressed", "split", "uncompressed", lr=chosen["uncompressed"]),
    }
    results = {name: ref[f"{name} lr={chosen[name]:g}"] for name in specs}

    # 2. the methods and baselines, at their reference's learning rate
    m_specs = method_specs(cfg, chosen["full"], chosen["uncompressed"])
    results |= run_groups(one_each(m_specs), cfg, "methods")
    specs |= {s.name: s for s in m_specs}

    quality = merge_quality(cfg)

    # 3. seconds per step, every arm side by side in one process, on fresh copies (a step's time
    # does not depend on the weights' values; ALaST's does on its budgets: its final ones)
    torch.set_num_threads(cfg.threads)
    train, _, _ = _splits(cfg)
    timed = {name: build(spec, cfg) for name, spec in specs.items()}
    final = {name: r["budgets"] for name, r in results.items() if r["budgets"] is not None}

    def final_budgets() -> None:
        for name, budgets in final.items():
            timed[name].trainer.alast.budgets = torch.tensor(budgets)

    final_budgets()
    rng = np.random.default_rng(1)
    frames = EpochFrames(train, Path(cfg.out) / "frames").epoch(0)
    data = list(batches(frames, train.labels, cfg.batch_size, rng, 4))
    step_s = step_seconds(list(timed.values()), data, cfg.timing_rounds)
    final_budgets()
    memory = {
        name: float(np.mean([saved_bytes(timed[name].trainer, x, y) for x, y in data[:2]]))
        for name, spec in specs.items()
        if spec.family == "finetune"
    }

    rows = {}
    for name, spec in specs.items():
        c, correct = results[name]["curve"], np.asarray(results[name]["correct"])
        last = c["points"][-1]
        rows[name] = {
            **asdict(spec),
            "accuracy": float(correct.mean()),
            "n": len(correct),
            "correct": correct.tolist(),
            "start_val": c["points"][0]["val_accuracy"],
            "best_val": c["best_accuracy"],
            "best_epoch": c["best_epoch"],
            "epochs": int(last["epoch"]),
            "stopped": c["stopped"],
            "steps": int(last["steps"]),
            "step_seconds": step_s[name],
            "step_flops": last["flops"] / max(1, last["steps"]),
            "bytes_up": int(last["bytes_up"]),
            "bytes_down": int(last["bytes_down"]),
            "curve": c["points"],
        }
        if name in memory:
            rows[name]["step_memory_bytes"] = memory[name]
        if results[name]["budgets"] is not None:
            rows[name]["budgets"] = results[name]["budgets"]
    refs = {"finetune": rows["full"], "split": rows["uncompressed"]}
    for row in rows.values():
        row["target_val"] = refs[row["family"]]["best_val"] - TARGET_MARGIN
        row["to_target"] = to_target(row, row["target_val"])
    steps_per_epoch = len(train) // cfg.batch_size
    result = {
        "dataset": cfg.dataset,
        "pretrained": cfg.pretrained,
        "quick": cfg.quick,
        "protocol": {
            "patience": None if cfg.quick else cfg.patience,
            "min_delta": None if cfg.quick else cfg.min_delta,
            "max_epochs": cfg.max_epochs,
            "lr_decays": 0 if cfg.quick else cfg.lr_decays,
            "lrs": list(lrs),
            "batch_size": cfg.batch_size,
            "frames_per_epoch": len(train),
            "steps_per_epoch": min(steps_per_epoch, cfg.max_steps or steps_per_epoch),
            "val_n": results["full"]["val_n"],
            "test_n": rows["full"]["n"],
            "timing_rounds": cfg.timing_rounds,
            "threads": cfg.threads,
            "workers": cfg.workers,
            "quick_epochs": {"split": QUICK_EPOCHS, "finetune": QUICK_FINETUNE_EPOCHS}
            if cfg.quick
            else None,
        },
        "tuning": tuning,
        "chosen_lr": chosen,
        "arms": rows,
        "k": cfg.k,
        "xis": list(cfg.xis),
        "variants": list(cfg.variants),
        "merge_quality": quality,
        "expected_seconds": expected,
    }
    result["targets"] = targets(result)
    shutil.rmtree(Path(cfg.out) / "frames", ignore_errors=True)  # GBs of composed frames
    result["seconds"] = time.perf_counter() - t_start
    out = Path(cfg.out)
    plot_bytes(result, out / "split.png")
    plot_curves(result, out / "curves.png")
    return result


def to_target(row: dict[str, Any], target: float) -> dict[str, Any] | None:
    """What an arm spent to first reach ``target`` on validation (steps, seconds = steps × its
    timed seconds per step, FLOPs, bytes both ways, epochs), or None: never."""
    for p in row["curve"]:
        if p["val_accuracy"] >= target:
            return {
                "epoch": int(p["epoch"]),
                "steps": int(p["steps"]),
                "seconds": p["steps"] * row["step_seconds"],
                "flops": p["flops"],
                "bytes": p["bytes_up"] + p["bytes_down"],
            }
    return None


def _ratio(ref: dict[str, Any] | None, arm: dict[str, Any] | None, key: str) -> float | None:
    """How many times less ``arm`` spent than ``ref`` to reach the target (None: it never did)."""
    if arm is None or ref is None or arm[key] <= 0:
        return None
    return float(ref[key] / arm[key])


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims of docs/methods.md#adc and #alast as the issue states them; accuracy differences paired over the
    test frames, costs to reach the reference's best validation accuracy − 1 point."""
    arms = r["arms"]
    out: list[dict[str, Any]] = []
    full = arms["full"]
    alasts = [a for a in arms.values() if a["method"].startswith("alast")]
    for al in sorted(alasts, key=lambda a: _order(a["method"])):
        d = paired_bootstrap(al["correct"], full["correct"])
        out.append(
            {
                "target": f"{al['name']} within 1 point of full fine-tuning",
                "value": str(d),
                "diff": d.as_dict(),
                "met": d.diff >= -1.0,
                "established": d.lo >= -1.0,
            }
        )
        for key, label, need in (
            ("seconds", "less wall time", 1.3),
            ("flops", "fewer FLOPs", 1.5),
        ):
            ratio = _ratio(full["to_target"], al["to_target"], key)
            out.append(
                {
                    "target": f"{al['name']} ≥ {need}× {label} to reach full fine-tuning's "
                    "accuracy − 1",
                    "value": ratio,
                    "met": ratio is not None and ratio >= need,
                }
            )
    unc = arms["uncompressed"]
    methods = sorted(
        {a["method"] for a in arms.values() if a["method"].startswith("adc")}, key=_order
    )
    for method in methods:
        name = split_name(method, 0.1)
        if name not in arms:
            continue
        d = paired_bootstrap(arms[name]["correct"], unc["correct"])
        out.append(
            {
                "target": f"{method} at ξ = 0.1 within 2 points of uncompressed",
                "value": str(d),
                "diff": d.as_dict(),
                "met": d.diff >= -2.0,
                "established": d.lo >= -2.0,
            }
        )
        below = []
        for xi in [x for x in sorted({a["xi"] for a in arms.values()}) if x <= 0.1]:
            if split_name(method, xi) not in arms:
                continue
            for b in BASELINES:
                if split_name(b, xi) not in arms:
                    continue
                d = paired_bootstrap(
                    arms[split_name(method, xi)]["correct"], arms[split_name(b, xi)]["correct"]
                )
                if d.diff < 0 and not d.tie:  # below, and told apart: a tie counts as "at"
                    below.append(f"{b} at ξ={xi:g} ({d})")
        out.append(
            {
                "target": f"{method} at or above top-k, random-k and quantisation at ξ ≤ 0.1",
                "value": below,
                "met": not below,
            }
        )
    return out


def _cost(x: float | None, unit: str) -> str:
    if x is None:
        return "never"
    if unit == "s":
        return f"{x:.0f} s" if x >= 100 else f"{x:.1f} s"
    if unit == "flops":
        return f"{x / 1e12:.2f} TFLOP"
    return f"{x / 1e6:.0f} MB"


def format_report(r: dict[str, Any]) -> str:
    """The bench's figures as Markdown: the protocol, the tuning, one table per family, the
    ADC variants, the targets."""
    arms, p = r["arms"], r["protocol"]
    start = Path(r["pretrained"]).parent.parent.name
    unc, full = arms["uncompressed"], arms["full"]
    if r["quick"]:
        how = (
            f"the quick schedule: {p['quick_epochs']['split']} epochs of split learning and "
            f"{p['quick_epochs']['finetune']} of fine-tuning at lr {p['lrs'][0]:g}, no tuning, "
            "no early stopping"
        )
    else:
        how = (
            f"trained to convergence: until validation accuracy (n = {p['val_n']}) has not "
            f"improved by more than {100 * (p.get('min_delta') or 0):g} points for "
            f"{p['patience']} epochs, after {p['lr_decays']} 10× learning-rate "
            f"decay at the first such plateau; cap {p['max_epochs']} epochs"
        )
    lines = [
        f"**Protocol.** Every arm fine-tunes the shipped {start} to {r['dataset']} from the same "
        f"start ({pm(unc['start_val'], p['val_n'])} % on validation through the split, "
        f"{pm(full['start_val'], p['val_n'])} % through the plain path), on the same "
        f"{p['frames_per_epoch']} fresh frames an epoch ({p['steps_per_epoch']} batches of "
        f"{p['batch_size']}), {how}; the best validation epoch's checkpoint is tested (test "
        f"split, n = {p['test_n']}, 95 % intervals; differences paired over the test frames). "
        f"Time to accuracy = steps to reach it × the arm's median seconds a step in a timing "
        f"pass that steps every arm in turn on the same batches, {p['timing_rounds']} rounds, "
        f"{p['threads']} torch thread(s), after training; FLOPs counted by torch; bytes both "
        "ways across the split. Target: the reference's best validation accuracy − 1 point.",
        "",
    ]
    if not r["quick"]:
        lines += ["Learning rate chosen on validation (best validation accuracy, epochs run):", ""]
        for m, label in (("full", "full fine-tuning"), ("uncompressed", "uncompressed split")):
            cells = ", ".join(
                f"{t['lr']:g}: {100 * t['best_val']:.1f} % ({t['epochs']} ep"
                f"{', cap' if t['stopped'] == 'cap' else ''})"
                for t in r["tuning"][m]
            )
            lines.append(f"- {label}: {cells} → **{r['chosen_lr'][m]:g}**")
        lines.append("")
    lines += [
        f"fine-tuning: full vs ALaST (K = {r['k']}) and its variants, target "
        f"{100 * full['target_val']:.1f} % on validation",
        "",
        "| arm | test accuracy | vs full | epochs (best) | s / step | GFLOPs / step "
        "| to target: time | FLOPs | MB saved for backward / step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    tuned = [a for a in arms.values() if a["family"] == "finetune"]
    for a in sorted(tuned, key=lambda a: _order(a["method"])):
        t = a["to_target"]
        diff = "—" if a is full else str(paired_bootstrap(a["correct"], full["correct"]))
        lines.append(
            f"| {a['name']} | {pm(a['accuracy'], a['n'])} % | {diff} | {_epochs(a)} "
            f"| {a['step_seconds']:.3f} | {a['step_flops'] / 1e9:.2f} "
            f"| {_cost(t and t['seconds'], 's')} | {_cost(t and t['flops'], 'flops')} "
            f"| {a.get('step_memory_bytes', 0) / 1e6:.1f} |"
        )
    lines += [
        "",
        f"split learning: target {100 * unc['target_val']:.1f} % on validation; bytes: whole "
        "run, both ways",
        "",
        "| arm | test accuracy | vs uncompressed | epochs (best) | MB / step | MB in all "
        "| to target: bytes | time | FLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    split_rows = [a for a in arms.values() if a["family"] == "split"]
    split_rows.sort(key=lambda a: (-a["xi"], _order(a["method"])))
    for a in split_rows:
        t = a["to_target"]
        total = a["bytes_up"] + a["bytes_down"]
        diff = (
            "—"
            if a["method"] == "uncompressed"
            else str(paired_bootstrap(a["correct"], unc["correct"]))
        )
        lines.append(
            f"| {a['name']} | {pm(a['accuracy'], a['n'])} % | {diff} | {_epochs(a)} "
            f"| {total / max(1, a['steps']) / 1e6:.3f} | {total / 1e6:.0f} "
            f"| {_cost(t and t['bytes'], 'bytes')} | {_cost(t and t['seconds'], 's')} "
            f"| {_cost(t and t['flops'], 'flops')} |"
        )
    if r.get("merge_quality"):
        lines += [
            "",
            "ADC's merging on validation frames, before training (the pretrained model's class "
            "attention): label purity of a merged sample, share of each member's digit patches "
            "among the tokens its group sends, members a group",
            "",
            "| batch | ξ | groups | tokens sent | purity | digit coverage | members |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for q in r["merge_quality"]:
            lines.append(
                f"| {q['batch']} | {q['xi']:g} | {q['groups']} | {q['tokens_sent']} "
                f"| {q['purity']:.2f} | {q['digit_coverage']:.2f} | {q['members']:.1f} |"
            )
    lines += ["", "targets:"]
    for t in r["targets"]:
        v = t["value"]
        if isinstance(v, float):
            shown = f"{v:.2f}×"
        elif v is None:
            shown = "never reached"
        elif isinstance(v, str):
            shown = v
            if t["met"] and not t.get("established", True):
                shown += "; the interval reaches past the margin"
        else:
            shown = "; ".join(v) or "none above it"
        lines.append(f"- {'✓' if t['met'] else '✗'} {t['target']} ({shown})")
    lines += [
        "",
        f"expected {r['expected_seconds'] / 60:.0f} min, took {r['seconds'] / 60:.0f} min",
    ]
    return "\n".join(lines)


def _epochs(a: dict[str, Any]) -> str:
    cap = ", cap" if a["stopped"] == "cap" else ""
    return f"{a['epochs']} ({a['best_epoch']}{cap})"


def _order(method: str) -> int:
    names = ["full", "alast", *ALAST_VARIANTS, "uncompressed", "adc", *VARIANT_METHODS, *BASELINES]
    return names.index(method) if method in names else len(names)


STYLE = {
    "uncompressed": ("k", "-"),
    "adc": ("C0", "-"),
    "adc-class": ("C4", "-"),
    "adc-hard": ("C5", "-"),
    "adc-tokens": ("C6", "-"),
    "top-k": ("C1", "--"),
    "random-k": ("C2", "--"),
    "quantise": ("C3", "--"),
    "full": ("k", "-"),
    "alast": ("C0", "-"),
    "alast-embed": ("C4", "-"),
    "alast-k3": ("C5", "-"),
}


def plot_bytes(r: dict[str, Any], path: Path) -> None:
    """Test accuracy (95 % intervals) against the bytes each split arm exchanged in its whole
    run, one line per method across ξ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semlink.models.stats import wilson

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    rows = [a for a in r["arms"].values() if a["family"] == "split"]
    for method in sorted({a["method"] for a in rows}, key=_order):
        pts = sorted((a for a in rows if a["method"] == method), key=lambda a: a["xi"])
        x = [(a["bytes_up"] + a["bytes_down"]) / 1e6 for a in pts]
        y = [100 * a["accuracy"] for a in pts]
        ci = [wilson(a["accuracy"], a["n"]) for a in pts]
        err = [[yy - 100 * lo for yy, (lo, _) in zip(y, ci, strict=True)],
               [100 * hi - yy for yy, (_, hi) in zip(y, ci, strict=True)]]  # fmt: skip
        colour, style = STYLE.get(method, ("C7", ":"))
        marker = "*" if method == "uncompressed" else "o"
        ax.errorbar(x, y, yerr=err, fmt=marker + style, color=colour, label=method, capsize=2)
        for xx, yy, a in zip(x, y, pts, strict=True):
            if method == "adc":
                ax.annotate(f"ξ={a['xi']:g}", (xx, yy), fontsize=7, xytext=(3, -9),
                            textcoords="offset points")  # fmt: skip
    ax.set(
        xscale="log", xlabel="MB exchanged in the whole run, both ways", ylabel="test accuracy (%)"
    )
    what = "quick schedule" if r["quick"] else "at convergence"
    ax.set_title(f"split learning on {r['dataset']}, {what}: accuracy vs bytes")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(r: dict[str, Any], path: Path) -> None:
    """Validation accuracy after each epoch against the training wall time, FLOPs and bytes up
    to it: fine-tuning (top: time, FLOPs) and split learning at ξ = 0.1 with the uncompressed
    reference (bottom: time, FLOPs, bytes); the target (the reference's best − 1 point)
    dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    arms = r["arms"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    families = {
        0: [a for a in arms.values() if a["family"] == "finetune"],
        1: [a for a in arms.values() if a["family"] == "split" and a["xi"] in (0.1, 1.0)],
    }
    xs = (  # (label, x of a point, log scale: the start, at 0, left out)
        ("training wall time (s: steps × timed s / step)", lambda a, p: p["steps"] * a["step_seconds"], False),
        ("training TFLOPs (counted)", lambda a, p: p["flops"] / 1e12, False),
        ("MB exchanged, both ways", lambda a, p: (p["bytes_up"] + p["bytes_down"]) / 1e6, True),
    )  # fmt: skip
    for row, group in families.items():
        for col, (label, fx, log) in enumerate(xs):
            ax = axes[row][col]
            if row == 0 and col == 2:
                ax.axis("off")
                continue
            for a in sorted(group, key=lambda a: _order(a["method"])):
                colour, style = STYLE.get(a["method"], ("C7", ":"))
                pts = a["curve"][1:] if log else a["curve"]
                ax.plot(
                    [fx(a, p) for p in pts],
                    [100 * p["val_accuracy"] for p in pts],
                    style,
                    color=colour,
                    label=a["name"],
                    lw=1.4,
                )
            ax.axhline(100 * group[0]["target_val"], color="grey", ls=":", lw=1)
            if log:
                ax.set_xscale("log")
            ax.set(xlabel=label, ylabel="validation accuracy (%)")
            ax.grid(alpha=0.3, which="both")
        axes[row][0].legend(fontsize=8)
    axes[0][0].set_title("fine-tuning: full vs ALaST")
    axes[1][0].set_title("split learning at ξ = 0.1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(cfg: SplitBenchConfig, json_path: str | None) -> int:
    result = run(cfg)
    print(format_report(result))
    out = Path(cfg.out)
    print(f"plots: {out / 'split.png'}, {out / 'curves.png'}")
    write_figures(json_path, result)
    return 0
