"""``semlink train``: every model and policy, one subcommand each (torch imported only when one
runs), and how a training command runs as one of ``torchrun``'s processes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semlink.cli.common import DEFAULT_EE_DIR, DEFAULT_MODEL_DIR, log
from semlink.flags import add_dataclass, dataclass_from


def _train_selector(args: argparse.Namespace) -> int:
    from semlink.models.train_selector import TrainSelectorConfig, train_selector

    metrics = train_selector(
        dataclass_from(args, TrainSelectorConfig), args.out, resume=args.resume
    )
    print(f"checkpoint: {args.out}")
    print(f"training time: {metrics['train_seconds']:.0f} s")
    print("validation accuracy, tokens removed:", json.dumps(metrics["val_best"]))
    return 0


def _train_split(args: argparse.Namespace) -> int:
    from semlink.bench import write_figures
    from semlink.models.train_split import SplitConfig, train_split

    cfg = dataclass_from(args, SplitConfig)
    result = train_split(cfg)
    mb = 1e6
    print(
        f"{cfg.method} ξ={cfg.xi:g}: test accuracy {100 * result['accuracy']:.1f} % "
        f"(from {100 * result['accuracy_before']:.1f} %), {result['bytes_up'] / mb:.2f} MB up, "
        f"{result['bytes_down'] / mb:.2f} MB down, {result['seconds']:.0f} s"
    )
    write_figures(args.json, result)
    return 0


def _train_finetune(args: argparse.Namespace) -> int:
    from semlink.bench import write_figures
    from semlink.models.alast import FinetuneConfig, finetune

    cfg = dataclass_from(args, FinetuneConfig)
    result = finetune(cfg)
    print(
        f"{'ALaST' if cfg.alast else 'full'} fine-tuning: test accuracy "
        f"{100 * result['accuracy']:.1f} % (from {100 * result['accuracy_before']:.1f} %), "
        f"{result['epoch_seconds']:.2f} s/epoch, {result['step_flops'] / 1e9:.2f} GFLOPs/step, "
        f"{result['step_memory_bytes'] / 1e6:.1f} MB saved for backward/step"
    )
    write_figures(args.json, result)
    return 0


def _train_early_exit(args: argparse.Namespace) -> int:
    from semlink.models.train_early_exit import TrainEarlyExitConfig, train_early_exit

    metrics = train_early_exit(
        dataclass_from(args, TrainEarlyExitConfig), args.out, resume=args.resume
    )
    print(f"checkpoint: {args.out} ({metrics['train_seconds']:.0f} s)")
    print("validation accuracy per exit:", " ".join(f"{a:.3f}" for a in metrics["val"]))
    return 0


def _train_policy(args: argparse.Namespace) -> int:
    from semlink.models.train_policy import TrainPolicyConfig, train_policy

    cfg = dataclass_from(args, TrainPolicyConfig)
    metrics = train_policy(cfg)
    print(
        f"policy: {cfg.out or cfg.model_dir}/policy.onnx (PPO, {metrics['timesteps']} steps, "
        f"{metrics['train_seconds']:.0f} s, validation reward {metrics['val_reward']:.4f}, "
        f"seed {metrics['seed']})"
    )
    if len(metrics.get("seeds", {})) > 1:
        print("validation reward per seed:", json.dumps(metrics["seeds"]))
    return 0


def _train_jscc(args: argparse.Namespace) -> int:
    from semlink.models.jscc import RATES
    from semlink.models.train_jscc import TrainJSCCConfig, train_jscc

    if args.per_rate:
        out_dir = Path(args.per_rate_dir)
        for rate in RATES:
            cfg = dataclass_from(args, TrainJSCCConfig, fixed_rate=rate)
            train_jscc(cfg, out_dir / f"r{rate:g}.pt", resume=args.resume)
        print(f"per-rate coders: {out_dir}")
        return 0
    metrics = train_jscc(dataclass_from(args, TrainJSCCConfig), args.out, resume=args.resume)
    print(f"checkpoint: {args.out} ({metrics['train_seconds']:.0f} s)")
    return 0


def _train_any_split(args: argparse.Namespace) -> int:
    from semlink.models.train_any_split import TrainAnySplitConfig, train_any_split

    metrics = train_any_split(
        dataclass_from(args, TrainAnySplitConfig), args.out, resume=args.resume
    )
    print(f"checkpoint: {args.out} ({metrics['train_seconds']:.0f} s)")
    print("validation accuracy:", json.dumps(metrics.get("val", {})))
    return 0


def _any_split_flags(p: argparse.ArgumentParser) -> None:
    from semlink.models.train_any_split import TrainAnySplitConfig

    add_dataclass(p, TrainAnySplitConfig)
    p.add_argument("--out", default="runs/any-split.pt", help="checkpoint (written every epoch)")
    _add_resume(p)


def _add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")


def _selector_flags(p: argparse.ArgumentParser) -> None:
    from semlink.models.train_selector import TrainSelectorConfig

    add_dataclass(p, TrainSelectorConfig)
    p.add_argument("--out", default="runs/selector.pt", help="checkpoint (written every epoch)")
    _add_resume(p)


def _early_exit_flags(p: argparse.ArgumentParser) -> None:
    from semlink.models.train_early_exit import TrainEarlyExitConfig

    add_dataclass(p, TrainEarlyExitConfig)
    p.add_argument(
        "--out", default="runs/early-exit/mixed.pt", help="checkpoint (written every epoch)"
    )
    _add_resume(p)


def _split_flags(p: argparse.ArgumentParser) -> None:
    from semlink.models.train_split import SplitConfig

    add_dataclass(p, SplitConfig)
    p.add_argument("--json", default=None, help="write the result here")


def _finetune_flags(p: argparse.ArgumentParser) -> None:
    from semlink.models.alast import FinetuneConfig

    add_dataclass(p, FinetuneConfig)
    p.add_argument("--json", default=None, help="write the result here")


def _policy_flags(p: argparse.ArgumentParser) -> None:
    from semlink.models.train_policy import TrainPolicyConfig

    add_dataclass(
        p, TrainPolicyConfig, skip=["weights"], defaults={"model_dir": str(DEFAULT_EE_DIR)}
    )


def _jscc_flags(p: argparse.ArgumentParser) -> None:
    from semlink.models.train_jscc import TrainJSCCConfig

    add_dataclass(
        p,
        TrainJSCCConfig,
        defaults={"selector_checkpoint": str(DEFAULT_MODEL_DIR / "checkpoint.pt")},
    )
    p.add_argument("--out", default="runs/jscc.pt", help="checkpoint path")
    p.add_argument(
        "--per-rate",
        action="store_true",
        help="train one coder per rate of the grid (ablation)",
    )
    p.add_argument("--per-rate-dir", default="runs/jscc-per-rate")
    _add_resume(p)


# subcommand -> (help, flags, run); each subcommand's flags are built only when it runs
COMMANDS = {
    "selector": ("the budget-conditioned token-selection ViT", _selector_flags, _train_selector),
    "early-exit": (
        "the recursive early-exit network in one training regime",
        _early_exit_flags,
        _train_early_exit,
    ),
    "split": (
        "split learning across a counted message boundary, ADC or a baseline",
        _split_flags,
        _train_split,
    ),
    "finetune": (
        "fine-tune a pretrained ViT, in full or with ALaST",
        _finetune_flags,
        _train_finetune,
    ),
    "policy": (
        "the RL offloading policy (PPO) on recorded exit traces",
        _policy_flags,
        _train_policy,
    ),
    "jscc": ("the nested JSCC coder on a trained selector", _jscc_flags, _train_jscc),
    "any-split": (
        "the any-split network (exits, selectors, coders at every device split), from an "
        "early-exit network grown to --model.* or from scratch",
        _any_split_flags,
        _train_any_split,
    ),
}


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink train <what>`` to the command line."""
    train = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    for name, (help_, flags, run) in COMMANDS.items():
        train.add_parser(name, help=help_, populate=flags).set_defaults(func=run)


def under_torchrun(args: argparse.Namespace) -> int:
    """A training command as one of ``torchrun``'s processes: rank 0 prints, logs and writes
    (checkpoints, figures); the others train their slice quietly. The RL policy trains on rank
    0 alone (PPO here is one process; the others end at once)."""
    from semlink.models import distributed

    if not distributed.quiet_unless_main():
        if args.func is _train_policy:
            log.warning(
                "train policy runs on rank 0 only; rank %d ends", distributed.rank_from_env()
            )
            return 0
        if getattr(args, "json", None):
            args.json = None
    result = int(args.func(args) or 0)
    if args.func is not _train_policy:
        distributed.current().barrier()  # nobody leaves before rank 0 has written
    return result
