"""``semlink zoo``: rebuild the shipped pipelines of one embedded dataset, every step a
``semlink`` command run in order (train, export, evaluate, calibrate, train the policy)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from semlink.cli.common import DEFAULT_MODEL_DIR, log
from semlink.runtime.repository import shipped_pipeline


@dataclass(frozen=True)
class ZooRecipe:
    """How ``semlink zoo`` builds one dataset's pipelines: the folder under ``--work`` for the
    training checkpoints, and the extra flags of the training steps (the pipelines' names come
    from :data:`~semlink.runtime.repository.SHIPPED_PREFIX`)."""

    work: str
    selector: tuple[str, ...] = ()
    jscc: tuple[str, ...] = ()
    early_exit: tuple[str, ...] = ()
    export_early_exit: tuple[str, ...] = ()
    warm_start: bool = False
    """Start the early-exit regimes' backbone from the selector ViT (``--init-from``; disjoint
    reuses mixed's backbone phase) instead of from scratch."""
    split: tuple[str, ...] = ()
    """Flags of ``semlink train any-split`` for the ``*-split`` network (every option of one
    frame), grown from the shipped early-exit network."""
    xl: tuple[str, ...] = ()
    """The same for the server-class ``*-xl`` network (none: not built for this dataset)."""


ZOO_RECIPES = {
    "digits-canvas": ZooRecipe(
        ".",
        split=(
            *("--model.patch-size", "8", "--model.embed-dim", "64", "--model.depth", "6"),
            *("--model.device-blocks", "2", "--epochs", "4", "--jscc-epochs", "6"),
        ),
    ),
    # 128x128 RGB, 64 tokens of 16x16; fresh frames each epoch, a curriculum from big uncluttered
    # digits to the full recipe (from scratch on the full recipe the ViT stayed at chance). On a
    # GPU add --device cuda --data-workers 12 to the training steps (the frames are the same).
    "digits-scene": ZooRecipe(
        "scene",
        selector=(
            *("--model.image-size", "128", "--model.in-chans", "3", "--model.patch-size", "16"),
            *("--train-placements", "8", "--curriculum-epochs", "30", "--data-workers", "2"),
            *("--backbone-epochs", "80", "--selector-epochs", "25"),
        ),
        # a 512-wide coder: 95.7 against 94.8 % on validation at 10 dB, r 1/8 for the 256-wide
        jscc=(
            *("--train-placements", "8", "--epochs", "30", "--data-workers", "2"),
            *("--jscc.hidden", "512"),
        ),
        # from scratch the early-exit ViT needs ~40 epochs (3 h a regime on 2 CPU cores): every
        # regime starts from the selector's backbone and gets 5 epochs (mixed and disjoint: 1 of
        # backbone and final classifier, 4 of exits), all at one learning rate
        early_exit=(
            *("--model.patch-size", "16", "--model.embed-dim", "96", "--train-placements", "8"),
            *("--epochs", "5", "--backbone-epochs", "1", "--lr", "5e-4", "--finetune-lr", "5e-4"),
            *("--data-workers", "2"),
        ),
        # the device holds the selector pipeline's two blocks: exits after blocks 1 and 2
        export_early_exit=("--device-blocks", "2"),
        warm_start=True,
        # scene-ee as it is (d 96, 6 blocks), coders at both device splits
        split=(
            *("--model.patch-size", "16", "--model.embed-dim", "96", "--model.depth", "6"),
            *("--model.num-heads", "4", "--model.device-blocks", "2"),
            *("--epochs", "4", "--jscc-epochs", "8", "--jscc-rec-epochs", "3"),
            *("--train-placements", "4", "--data-workers", "1"),
        ),
        # scene-ee grown function-preservingly to d 192, 16 blocks, 8 heads (9x its FLOPs), the
        # device holding 3 blocks; ~1.5 h of network and ~15 min of coders on 2 cores
        xl=(
            *("--model.patch-size", "16", "--model.embed-dim", "192", "--model.depth", "16"),
            *("--model.num-heads", "8", "--model.device-blocks", "3"),
            *("--epochs", "8", "--jscc-epochs", "3"),
            *("--train-placements", "4", "--data-workers", "1"),
        ),
    ),
}


def zoo_steps(args: argparse.Namespace) -> list[list[str]]:
    """The ``semlink`` commands that rebuild the shipped pipelines of one dataset: the selector ViT, then its JSCC coder, then
    the early-exit network (its three regimes and the plain variant) and its RL offloading
    policy; each trained, exported, evaluated on the test split (the coder calibrated, the exit
    traces recorded and the policy trained, on validation). The dataset's recipe
    (:data:`ZOO_RECIPES`) names the pipelines and adds its flags to each step."""
    recipe = ZOO_RECIPES[args.dataset]
    data = ["--dataset", args.dataset]
    root = Path(args.out)

    def version(kind: str) -> Path:
        return root / shipped_pipeline(args.dataset, kind) / "1"

    vit, jscc = version("vit"), version("vit-jscc")
    work = Path(args.work) / recipe.work
    resume = ["--resume"] if args.resume else []
    steps = [
        ["train", "selector", *data, *recipe.selector, "--out", str(work / "selector.pt"), *resume],
        [
            "export",
            "selector",
            *data,
            "--checkpoint",
            str(work / "selector.pt"),
            "--out",
            str(vit),
        ],
        [
            "eval",
            "selector",
            *data,
            "--model-dir",
            str(vit),
            "--json",
            str(vit / "eval.json"),
            "--plot",
            str(vit / "eval.png"),
        ],
        [
            "train",
            "jscc",
            *data,
            *recipe.jscc,
            "--selector-checkpoint",
            str(vit / "checkpoint.pt"),
            "--out",
            str(work / "jscc.pt"),
            *resume,
        ],
        ["export", "jscc", *data, "--checkpoint", str(work / "jscc.pt"), "--out", str(jscc)],
        ["calibrate", *data, "--model-dir", str(jscc)],
        [
            "eval",
            "jscc",
            *data,
            "--model-dir",
            str(jscc),
            "--selector-checkpoint",
            str(vit / "checkpoint.pt"),
            "--json",
            str(jscc / "eval.json"),
            "--plot",
            str(jscc / "eval.png"),
        ],
    ]
    ee, ee_work = version("ee"), work / "early-exit"
    mixed, joint = str(ee_work / "mixed.pt"), str(ee_work / "joint.pt")
    reuse = ["--from-backbone", mixed]
    warm = ["--init-from", str(work / "selector.pt")] if recipe.warm_start else []
    ee_train = ["train", "early-exit", *data, *recipe.early_exit, *resume]
    ee_eval = [
        "eval",
        "early-exit",
        *data,
        "--model-dir",
        str(ee),
        "--traces",
        str(ee / "traces"),
        "--json",
        str(ee / "eval.json"),
        "--plot",
        str(ee / "eval.png"),
    ]
    steps += [
        [*ee_train, *warm, "--regime", "mixed", "--out", mixed],
        [
            *ee_train,
            "--regime",
            "disjoint",
            *reuse,
            "--out",
            str(ee_work / "disjoint.pt"),
        ],
        [*ee_train, *warm, "--regime", "joint", "--out", joint],
        [
            *ee_train,
            *warm,
            "--regime",
            "joint",
            "--no-model.recursive",
            "--out",
            str(ee_work / "joint-plain.pt"),
        ],
        [
            "export",
            "early-exit",
            *data,
            "--checkpoint",
            joint,
            "--out",
            str(ee),
            "--regimes",
            *(str(ee_work / f"{r}.pt") for r in ("mixed", "disjoint", "joint-plain")),
            *recipe.export_early_exit,
        ],
        ee_eval,
        ["train", "policy", "--model-dir", str(ee)],
    ]
    for kind, flags in (("split", recipe.split), ("xl", recipe.xl)):
        if flags:
            ckpt = work / f"any-split-{kind}.pt"
            steps += any_split_steps([*data, *resume], flags, ee, ckpt, version(kind))
    return steps


def any_split_steps(
    data: list[str], flags: tuple[str, ...], ee: Path, checkpoint: Path, out: Path
) -> list[list[str]]:
    """An any-split network grown from the early-exit network ``ee`` (``data``: the dataset's
    flags, then ``--resume`` if given): trained, exported (fp16 weights), every option measured on every frame (options.json from validation, outcomes of
    both splits), and its RL policy trained on validation."""
    init = ["--init-from", str(ee / "checkpoint.pt")]
    dataset = data[:2]
    return [
        ["train", "any-split", *data, *flags, *init, "--out", str(checkpoint)],
        ["export", "any-split", *dataset, "--checkpoint", str(checkpoint), "--out", str(out)]
        + ["--fp16-weights"],
        ["eval", "options", *dataset, "--model-dir", str(out), "--json", str(out / "eval.json")],
        ["train", "policy", "--model-dir", str(out)],
    ]


def register(sub: argparse._SubParsersAction, run: Callable[[list[str]], int]) -> None:
    """Adds ``semlink zoo`` to the command line; ``run(argv)`` runs one step as a ``semlink``
    command (the whole command line's ``main``, which holds this verb: it is passed in rather
    than imported, so the package has no import cycle)."""

    def zoo(args: argparse.Namespace) -> int:
        for argv in zoo_steps(args):
            log.info("semlink %s", " ".join(argv))
            if rc := run(argv):
                return rc
        return 0

    p = sub.add_parser("zoo", help="rebuild the shipped pipelines (train, export, calibrate, eval)")
    p.add_argument(
        "--out", default=str(DEFAULT_MODEL_DIR.parent.parent), help="model repository root"
    )
    p.add_argument(
        "--dataset",
        default="digits-scene",
        choices=sorted(ZOO_RECIPES),
        help="whose pipelines: digits-scene (scene-*, the default) or digits-canvas (digits-*)",
    )
    p.add_argument("--work", default="runs", help="folder for the training checkpoints")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=zoo)
