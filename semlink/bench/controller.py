"""``semlink bench controller``: the Lyapunov controller against the offline optimum (docs/methods.md#lyapunov).

Decisions use the *validation* calibration table (what the device ships with); every figure is
scored on the *test* table, interpolated linearly at the true SNR of each request. The
controller's ``V`` and ``mu`` are **chosen on validation**: the sweep runs on another draw of each
SNR process scored on the validation table, and its most accurate run within the budget names
the pair the test run uses (:func:`choose_on_validation`). Per SNR process
(i.i.d. Gaussian around a mean as published, a Gilbert-Elliott Markov chain, and an SNR trace
file), over ``requests`` requests:

- the online controller at that ``V`` and ``mu``: average accuracy (± half the 95 % interval
  over the test table's ``n`` images, conservative: a mixture's standard error is at most the
  binomial one at its mean) and channel use over the last 80 % of requests, constraint
  violation, convergence time of ``Z``, decision time; its difference to the best fixed action
  paired over the test images (:func:`paired_difference`, from :func:`per_image_correctness`);
- the offline optimum: the best randomised stationary policy for the process's empirical SNR
  distribution, a linear program (``scipy.optimize.linprog``) over ``x[s, a]``, the probability of
  action ``a`` in SNR bin ``s``;
- the best fixed ``(alpha, r)`` whose channel use meets the budget.

The LP and the fixed policy are designed from the same information as the controller (the
validation table, read conservatively at the SNR bin below) and scored on the test table like it;
``lp_oracle`` and ``fixed_oracle`` are designed on the test table itself: upper bounds no
deployable policy reaches.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semlink.bench import write_figures
from semlink.device.controller import CalibrationTable, ChannelState, Constraint, LyapunovController
from semlink.link.shaper import SnrProcess
from semlink.models.stats import paired_bootstrap, pm
from semlink.runtime.repository import DEFAULT_REPOSITORY

DEFAULT_JSCC_DIR = DEFAULT_REPOSITORY / "scene-vit-jscc" / "1"

SETTINGS = (
    ("gauss(0,2.5)", 0.0, 2.5),
    ("gauss(10,2.5)", 10.0, 2.5),
    ("gauss(20,2.5)", 20.0, 2.5),
    ("gauss(0,7.5)", 0.0, 7.5),
)
V_SWEEP = (1.0, 3.0, 10.0, 30.0)
MU_SWEEP = (10.0, 100.0, 1000.0)


@dataclass
class ControllerBenchConfig:
    model_dir: str = str(DEFAULT_JSCC_DIR)
    requests: int = 10_000
    budget: float = 0.02
    budgets: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1)
    snr_trace: str | None = None
    out: str = "runs/bench-controller"
    seed: int = 0


def snr_processes(n: int, seed: int, trace: str | None) -> dict[str, np.ndarray]:
    """Per-request SNR sequences (dB) for every setting."""
    rng = np.random.default_rng(seed)
    out = {name: rng.normal(mu, sd, n) for name, mu, sd in SETTINGS}
    good, bad, p_gb, p_bg = 20.0, 0.0, 0.02, 0.05  # Gilbert-Elliott: mean sojourn 50 good, 20 bad
    state, seq = 0, np.empty(n)
    for i in range(n):
        state = (
            (1 if rng.random() < p_gb else 0) if state == 0 else (0 if rng.random() < p_bg else 1)
        )
        seq[i] = (bad if state else good) + rng.normal(0, 1.0)
    out["gilbert-elliott(20,0)"] = seq
    if trace is not None:
        proc = SnrProcess(trace=trace)
        out[f"trace:{Path(trace).name}"] = np.array(
            [proc.at(10.0 * i) for i in range(n)]
        )  # one request per 10 ms
    return out


def interpolation_weights(
    snrs: np.ndarray, snr: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each request's SNR, the two grid rows ``np.interp`` blends and the weight of the
    upper one (clamped at the ends, as ``np.interp`` is): ``(lower, upper, weight)``."""
    upper = np.clip(np.searchsorted(snrs, snr, side="right"), 1, len(snrs) - 1)
    lower = upper - 1
    weight = np.clip((snr - snrs[lower]) / (snrs[upper] - snrs[lower]), 0.0, 1.0)
    return lower, upper, weight


def cell_weights(
    snrs: np.ndarray, snr: np.ndarray, chosen: np.ndarray, n_actions: int
) -> np.ndarray:
    """(S, A) how much each table cell counts in a policy's realised accuracy: the mean over
    requests of the interpolation weights at the action each request got. A policy's accuracy is
    ``(weights * table).sum()``, and per image ``(weights[..., None] * correct).sum((0, 1))``."""
    lower, upper, w = interpolation_weights(snrs, snr)
    out = np.zeros((len(snrs), n_actions))
    np.add.at(out, (lower, chosen), 1.0 - w)
    np.add.at(out, (upper, chosen), w)
    return out / len(snr)


def per_image_correctness(
    model_dir: Path, test: CalibrationTable, channel: str, seed: int
) -> np.ndarray:
    """(S, A, N): whether each test image is answered right at each SNR and action of the test
    table. The grid ``semlink eval jscc`` measured, recomputed image by image with the same noise
    draws (same grid order and seed), so that two policies' accuracies pair over the same
    images; checked to reproduce the table's accuracies."""
    from semlink.models import semcom
    from semlink.models.datasets import load_dataset
    from semlink.models.eval_jscc import ALPHAS, SNRS
    from semlink.models.jscc import RATES

    manifest = json.loads((model_dir / "manifest.json").read_text())
    model, _ = semcom.load(model_dir / "checkpoint.pt")
    data = load_dataset(manifest["normalization"]["dataset"], "test")
    rows = semcom.accuracy_grid(model, data, SNRS, ALPHAS, RATES, channel, seed, per_sample=True)
    action = {
        (float(a), float(r)): i
        for i, (a, r) in enumerate(zip(test.alphas, test.rates, strict=True))
    }
    correct = np.zeros((*test.accuracy.shape, len(data)), dtype=bool)
    for row in rows:
        s = int(np.searchsorted(test.snrs, row["snr_db"]))
        a = action[(row["alpha"], row["rate"])]
        if abs(row["accuracy"] - test.accuracy[s, a]) > 0.5 / len(data):
            raise ValueError(
                f"{model_dir}/eval.json does not match this model's test grid at {row['snr_db']} dB, "
                f"alpha {row['alpha']}, rate {row['rate']}: rerun `semlink eval jscc`"
            )
        correct[s, a] = row["correct"]
    return correct


def realised_accuracy(test: CalibrationTable, snr: np.ndarray) -> np.ndarray:
    """(N, A): test accuracy of every action at each request's true SNR (linear interpolation)."""
    return np.stack(
        [np.interp(snr, test.snrs, test.accuracy[:, a]) for a in range(test.accuracy.shape[1])],
        axis=1,
    )


def lp_policy_accuracy(
    design: np.ndarray, score: np.ndarray, bins: np.ndarray, gamma: np.ndarray, budget: float
) -> float:
    """Best randomised stationary policy over the controller's SNR bins (those it can tell apart).

    ``design`` (N, A) is the accuracy model the policy is optimised for, ``score`` (N, A) what it
    is scored on; a linear program over ``x[s, a]`` with one channel-use constraint.
    """
    from scipy.optimize import linprog

    labels = np.unique(bins)
    S, A = len(labels), design.shape[1]
    p = np.array([(bins == b).mean() for b in labels])
    design_b = np.stack([design[bins == b].mean(0) for b in labels])  # (S, A)
    score_b = np.stack([score[bins == b].mean(0) for b in labels])
    res = linprog(
        -(p[:, None] * design_b).ravel(),
        A_ub=(p[:, None] * gamma[None, :]).ravel()[None, :],
        b_ub=[budget],
        A_eq=np.kron(np.eye(S), np.ones(A)),
        b_eq=np.ones(S),
        bounds=(0, 1),
        method="highs",
    )
    if not res.success:
        return float("nan")
    return float((p[:, None] * res.x.reshape(S, A) * score_b).sum())


def best_fixed_action(design: np.ndarray, gamma: np.ndarray, budget: float) -> int | None:
    """The fixed action that ``design`` (N, A) rates best among those within budget."""
    ok = np.nonzero(gamma <= budget)[0]
    return int(ok[np.argmax(design[:, ok].mean(0))]) if len(ok) else None


def best_fixed(design: np.ndarray, score: np.ndarray, gamma: np.ndarray, budget: float) -> float:
    """Test accuracy of the fixed action that ``design`` rates best among those within budget."""
    a = best_fixed_action(design, gamma, budget)
    return float("nan") if a is None else float(score[:, a].mean())


def run_controller(
    val: CalibrationTable, snr: np.ndarray, acc: np.ndarray, budget: float, V: float, mu: float
) -> dict[str, Any]:
    ctl = LyapunovController(val, [Constraint("channel_use", budget, mu)], V=V)
    n = len(snr)
    chosen = np.empty(n, int)
    z = np.empty(n)
    channel = ChannelState()
    t0 = time.perf_counter()
    for t in range(n):
        a = ctl.choose(float(snr[t]), channel)
        ctl.update({"channel_use": float(val.channel_use[a])})
        chosen[t], z[t] = a, ctl.constraints[0].queue
    decision_us = (time.perf_counter() - t0) / n * 1e6
    gamma = val.channel_use[chosen]
    tail = slice(n // 5, None)
    level = float(np.median(z[n // 2 :]))  # Z's stationary level
    converged = int(np.argmax(z >= 0.9 * level)) if level > 0 else 0
    return {
        "V": V,
        "mu": mu,
        "avg_channel_use": float(gamma[tail].mean()),
        "accuracy": float(acc[np.arange(n), chosen][tail].mean()),
        "violation": float(max(0.0, gamma[tail].mean() / budget - 1)),
        "convergence_requests": converged,
        "decision_us": decision_us,
        "z": z,
        "chosen": chosen,
    }


def choose_on_validation(
    val: CalibrationTable, snr: np.ndarray, budget: float
) -> tuple[float, float, list[dict[str, Any]]]:
    """The ``(V, mu)`` of the sweep whose run on ``snr`` (a validation draw of the SNR process)
    is the most accurate on the *validation* table within the budget (the least over budget when
    none is within); the sweep's runs without their queue trajectories."""
    acc = realised_accuracy(val, snr)
    runs = [run_controller(val, snr, acc, budget, V, mu) for V in V_SWEEP for mu in MU_SWEEP]
    feasible = [r for r in runs if r["avg_channel_use"] <= budget * 1.01]
    best = (
        max(feasible, key=lambda r: r["accuracy"])
        if feasible
        else min(runs, key=lambda r: r["avg_channel_use"])
    )
    return best["V"], best["mu"], [summary(r) for r in runs]


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """A controller run without its per-request arrays (the queue and the actions)."""
    return {k: v for k, v in run.items() if k not in ("z", "chosen")}


def paired_difference(
    test: CalibrationTable,
    snr: np.ndarray,
    chosen: np.ndarray,
    fixed: int | None,
    correct: np.ndarray,
    seed: int,
) -> dict[str, Any] | None:
    """Lyapunov − best fixed in points, paired over the test images: each image's score under a
    policy is its correctness in the cells the policy's requests used, weighted as they count
    in its accuracy (the controller over its last 80 % of requests, as it is scored; the fixed
    action over all); the 95 % interval is the paired bootstrap's."""
    if fixed is None:
        return None
    n, actions = len(snr), test.accuracy.shape[1]
    tail = slice(n // 5, None)
    w_ctl = cell_weights(test.snrs, snr[tail], chosen[tail], actions)
    w_fix = cell_weights(test.snrs, snr, np.full(n, fixed), actions)
    per_image = [np.einsum("sa,san->n", w, correct) for w in (w_ctl, w_fix)]
    return paired_bootstrap(per_image[0], per_image[1], seed=seed).as_dict()


def run(cfg: ControllerBenchConfig) -> dict[str, Any]:
    from semlink.models.progress import progress_bar

    model_dir = Path(cfg.model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    val = CalibrationTable.load(model_dir / "calibration.json", manifest["model_hash"])
    test_rows = [
        r
        for r in json.loads((model_dir / "eval.json").read_text())["grid"]
        if r["method"] == "semlink"
    ]
    test = CalibrationTable.from_rows(test_rows)
    evaluation = json.loads((model_dir / "eval.json").read_text())
    n_test = int(evaluation["n_test"])
    # the noise draws of the run that wrote eval.json (its seed; `semlink eval jscc`'s default 0)
    correct = per_image_correctness(
        model_dir, test, evaluation.get("channel", "awgn"), int(evaluation.get("seed", 0))
    )
    results: dict[str, Any] = {"settings": [], "curves": {}, "n_test": n_test}
    trajectories: dict[str, Any] = {}
    val_snr = snr_processes(cfg.requests, cfg.seed + 1, cfg.snr_trace)
    for name, snr in progress_bar(
        snr_processes(cfg.requests, cfg.seed, cfg.snr_trace).items(),
        desc="SNR settings",
        unit="setting",
    ):
        acc = realised_accuracy(test, snr)
        model = np.stack([val.accuracy_at(float(x)) for x in snr])  # what the controller believes
        bins = np.searchsorted(val.snrs, snr, side="right") - 1  # -1: below the calibrated range
        curve = []
        for budget in cfg.budgets:
            V, mu, val_sweep = choose_on_validation(val, val_snr[name], budget)
            runs = [run_controller(val, snr, acc, budget, v, m) for v in V_SWEEP for m in MU_SWEEP]
            best = next(r for r in runs if (r["V"], r["mu"]) == (V, mu))
            gamma = val.channel_use
            point = {
                "setting": name,
                "budget": budget,
                "avg_channel_use": best["avg_channel_use"],
                "accuracy": best["accuracy"],
                "lp_optimum": lp_policy_accuracy(model, acc, bins, gamma, budget),
                "lp_oracle": lp_policy_accuracy(acc, acc, bins, gamma, budget),
                "best_fixed": best_fixed(model, acc, gamma, budget),
                "fixed_oracle": best_fixed(acc, acc, gamma, budget),
                "V": best["V"],
                "mu": best["mu"],
                "violation": best["violation"],
                "convergence_requests": best["convergence_requests"],
                "decision_us": float(np.median([r["decision_us"] for r in runs])),
                "all_feasible": all(r["avg_channel_use"] <= budget * 1.01 for r in runs),
                "chosen_on": "validation",
                "validation_sweep": val_sweep,
                "sweep": [summary(r) for r in runs],
            }
            point["minus_best_fixed"] = paired_difference(
                test,
                snr,
                best["chosen"],
                best_fixed_action(model, gamma, budget),
                correct,
                cfg.seed,
            )
            curve.append(point)
            if budget == cfg.budget:
                results["settings"].append(point)
                trajectories[name] = {
                    f"V={r['V']:g},mu={r['mu']:g}": r["z"] for r in runs if r["mu"] == best["mu"]
                }
        results["curves"][name] = curve
    results["config"] = {k: v for k, v in cfg.__dict__.items()}
    plot(results, trajectories, Path(cfg.out))
    return results


def plot(results: dict[str, Any], trajectories: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    name = "gauss(0,7.5)"
    curve = results["curves"][name]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    b = [p["budget"] for p in curve]
    ax1.plot(
        b,
        [100 * p["lp_optimum"] for p in curve],
        "k--",
        label="offline optimum (LP, validation table)",
    )
    ax1.plot(
        b, [100 * p["lp_oracle"] for p in curve], ":", color="gray", label="LP oracle (test table)"
    )
    ax1.plot(
        b, [100 * p["accuracy"] for p in curve], "o-", label="Lyapunov (V, μ chosen on validation)"
    )
    ax1.plot(b, [100 * p["best_fixed"] for p in curve], "s:", label="best fixed (α, r)")
    ax1.set_xscale("log")
    ax1.set_xlabel("channel-use budget γ̄ (per pixel)")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title(f"SNR {name} dB")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for label, z in trajectories[name].items():
        ax2.plot(z, label=label, lw=0.8)
    ax2.set_xlabel("request")
    ax2.set_ylabel("virtual queue Z (channel use)")
    ax2.set_title(f"Z(t) at γ̄ = {results['config']['budget']:g}")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "controller.png", dpi=110)
    plt.close(fig)


def format_report(results: dict[str, Any]) -> str:
    cfg, n = results["config"], results["n_test"]
    lines = [
        f"Lyapunov controller, budget γ̄ = {cfg['budget']:g}, {cfg['requests']} requests "
        "(decisions: validation table; scores: test table)",
        "V and mu chosen on validation (another draw of each SNR process, the validation table)",
        "device profile: none: the decision time (µs) is measured in this process at full speed",
        "LP and fixed are designed on the validation table like the controller; * = oracle designed on the test table",
        f"accuracy % ± half its 95 % interval (test table, n = {n} images a cell; conservative);",
        "Δ fixed: Lyapunov − best fixed, points, 95 % paired bootstrap interval over the test images",
        f"{'setting':<24} {'avg γ':>8} {'acc %':>10} {'LP %':>10} {'fixed %':>10} {'LP* %':>7} {'fixed* %':>9} "
        f"{'Δ fixed':>28} {'V':>5} {'mu':>6} {'conv.':>6} {'µs':>6}",
    ]
    for p in results["settings"]:
        d = p["minus_best_fixed"]
        delta = (
            f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]" + (" tie" if d["tie"] else "")
            if d
            else "no fixed action fits"
        )
        lines.append(
            f"{p['setting']:<24} {p['avg_channel_use']:8.4f} {pm(p['accuracy'], n):>10} "
            f"{pm(p['lp_optimum'], n):>10} {pm(p['best_fixed'], n):>10} "
            f"{100 * p['lp_oracle']:7.1f} {100 * p['fixed_oracle']:9.1f} {delta:>28} "
            f"{p['V']:5g} {p['mu']:6g} {p['convergence_requests']:6d} {p['decision_us']:6.1f}"
        )
    return "\n".join(lines)


def main(cfg: ControllerBenchConfig, json_path: str | None) -> int:
    results = run(cfg)
    print(format_report(results))
    print(f"plot: {Path(cfg.out) / 'controller.png'}")
    write_figures(json_path, results)
    return 0
