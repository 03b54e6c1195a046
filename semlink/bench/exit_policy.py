"""``semlink bench exit-policy``: the early-exit network's RL policy against the rules of docs/methods.md#rl-offloading.

Held out on both axes: the *test* split's exit traces (the policy trained on validation) and
channel traces drawn with seeds the training never saw (:data:`models.offload_env.TEST_SEEDS`).
Per channel regime (good, bad, varying), every policy meets the same ``episodes`` episodes:

- ``rl``: the shipped ONNX policy, run by ONNX Runtime exactly as the device runs it;
- ``threshold``: fixed confidence threshold, the best of a sweep *tuned like the policy was
  trained*: on the validation traces with validation channel traces, then run on the test
  episodes; ``threshold (test-tuned)`` is the best of the sweep on the test episodes themselves,
  a baseline that has seen the test set (no deployable policy can);
- ``growth``: the confidence-growth rule of docs/methods.md#early-exits, tuned both ways likewise;
- ``always-offload`` (at the first split), ``never-offload`` (answer at the device's last exit);
- ``oracle``: per episode the best action sequence in hindsight.

``decision_us`` is the policy's ONNX Runtime time per decision (batch 1, one thread, median).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semlink.bench import write_figures
from semlink.models.stats import pm
from semlink.runtime.offload_policy import PolicySpec, rule_action
from semlink.runtime.repository import DEFAULT_REPOSITORY

DEFAULT_EE_DIR = DEFAULT_REPOSITORY / "scene-ee" / "1"

THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999, 1.01)
GROWTH = list(
    itertools.product(
        (0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999), (-0.1, -0.05, 0.0, 0.02, 0.05, 0.1)
    )
)
SWEEPS = {
    "threshold": [PolicySpec("threshold", {"tau": t}) for t in THRESHOLDS],
    "growth": [PolicySpec("growth", {"tau_exit": a, "tau_grow": g}) for a, g in GROWTH],
}


@dataclass
class ExitPolicyBenchConfig:
    model_dir: str = str(DEFAULT_EE_DIR)
    policy_dir: str | None = None
    """A folder ``semlink train policy --out`` wrote (policy.onnx, policy.json, costs.json) to
    bench instead of the model folder's own policy; the exit traces stay the model folder's."""
    episodes: int = 3000
    seed: int = 0
    out: str = "runs/bench-exit-policy"


def run_policy(env: Any, episodes: list[Any], act: Any) -> dict[str, float]:
    """Mean reward, accuracy, latency (ms), energy (J) and bytes of ``act(obs, last)``."""
    outs = []
    for ep in episodes:
        obs, _ = env.reset(options={"episode": ep})
        done, info = False, {}
        while not done:
            last = env.k == len(env.device_exits) - 1
            obs, _, done, _, info = env.step(act(obs, last))
        outs.append(info["outcome"])
    return summarise(outs)


def summarise(outs: list[Any]) -> dict[str, float]:
    return {
        "reward": float(np.mean([o.reward for o in outs])),
        "accuracy": float(np.mean([o.correct for o in outs])),
        "n": len(outs),
        "latency_ms": float(np.mean([o.latency_ms for o in outs])),
        "p95_latency_ms": float(np.percentile([o.latency_ms for o in outs], 95)),
        "energy_mj": float(1000 * np.mean([o.energy_j for o in outs])),
        "bytes": float(np.mean([o.bytes for o in outs])),
        "offloaded": float(np.mean([o.offloaded for o in outs])),
    }


def rule_score(env: Any, episodes: list[Any], spec: Any) -> dict[str, float]:
    return run_policy(env, episodes, lambda obs, last: rule_action(spec, obs, last))


def onnx_policy(path: Path) -> tuple[Any, float]:
    """The shipped policy as an ``act`` function, and its median decision time (µs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def act(obs: np.ndarray, last: bool) -> int:
        return int(sess.run(None, {"obs": obs[None].astype(np.float32)})[0][0].argmax())

    obs = np.zeros(8, dtype=np.float32)
    for _ in range(100):
        act(obs, False)
    times = []
    for _ in range(2000):
        t0 = time.perf_counter()
        act(obs, False)
        times.append(time.perf_counter() - t0)
    return act, 1e6 * float(np.median(times))


def bench(cfg: ExitPolicyBenchConfig) -> dict[str, Any]:
    from semlink.models.exit_traces import ExitTraces
    from semlink.models.offload_env import REGIMES, TEST_SEEDS, CostModel, OffloadEnv, RewardWeights
    from semlink.models.progress import progress_bar
    from semlink.models.train_policy import VAL_SEEDS

    model_dir = Path(cfg.model_dir)
    policy_dir = Path(cfg.policy_dir) if cfg.policy_dir else model_dir
    meta = json.loads((policy_dir / "policy.json").read_text())
    costs = CostModel.load(policy_dir / "costs.json")
    weights = RewardWeights(**meta["weights"])
    traces = ExitTraces.load(model_dir / "traces" / "test.npz")
    rl, decision_us = onnx_policy(policy_dir / "policy.onnx")
    val_traces = ExitTraces.load(model_dir / "traces" / "val.npz")
    rows: list[dict[str, Any]] = []
    for regime in progress_bar(REGIMES, desc="bench exit-policy", unit="regime"):
        env = OffloadEnv(traces, costs, weights, regimes=(regime,), seeds=TEST_SEEDS)
        val_env = OffloadEnv(val_traces, costs, weights, regimes=(regime,), seeds=VAL_SEEDS)
        rng = np.random.default_rng(cfg.seed)
        episodes = [env.draw_episode(rng) for _ in range(cfg.episodes)]
        val_episodes = [val_env.draw_episode(rng) for _ in range(cfg.episodes)]
        results: dict[str, dict[str, Any]] = {"rl": run_policy(env, episodes, rl)}
        for name, grid in SWEEPS.items():
            on_val = [(spec, rule_score(val_env, val_episodes, spec)) for spec in grid]
            on_test = [(spec, rule_score(env, episodes, spec)) for spec in grid]
            spec, _ = max(on_val, key=lambda s: s[1]["reward"])
            results[name] = {**rule_score(env, episodes, spec), "params": spec.params}
            spec, best = max(on_test, key=lambda s: s[1]["reward"])
            results[f"{name} (test-tuned)"] = {**best, "params": spec.params}
        for name in ("always-offload", "never-offload"):
            results[name] = rule_score(env, episodes, PolicySpec(name))
        results["oracle"] = summarise([env.oracle(ep) for ep in episodes])
        for policy, r in results.items():
            rows.append({"regime": regime, "policy": policy, **r})
    return {
        "episodes_per_regime": cfg.episodes,
        "decision_us": decision_us,
        "weights": meta["weights"],
        "costs": {
            "device_ms": costs.device_ms,
            "server_ms": costs.server_ms,
            "measured_on": costs.measured_on,
            "device_profile": costs.device_profile,
            "device_slowdown": costs.device_slowdown,
        },
        "rows": rows,
        "targets": targets(rows),
    }


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per regime: the RL policy's share of the gap between the best threshold and the oracle."""
    out = []
    for regime in dict.fromkeys(r["regime"] for r in rows):
        by = {r["policy"]: r["reward"] for r in rows if r["regime"] == regime}
        row: dict[str, Any] = {"regime": regime}
        for suffix, base in (("", "threshold"), ("_test_tuned", "threshold (test-tuned)")):
            gap = by["oracle"] - by[base]
            row[f"rl_minus_threshold{suffix}"] = by["rl"] - by[base]
            row[f"gap_closed{suffix}"] = (by["rl"] - by[base]) / gap if gap > 0 else float("nan")
        out.append(row)
    return out


def format_table(result: dict[str, Any]) -> str:
    c = result["costs"]
    lines = [
        f"device profile: {c.get('device_profile', 'none')}: the policy's and the rules' device "
        f"times ({', '.join(f'{t:.2f}' for t in c['device_ms'])} ms a device exit) were measured "
        "under it"
        + (
            f", then multiplied by an assumed {c['device_slowdown']:g}"
            if c.get("device_slowdown", 1) != 1
            else ""
        ),
        f"{'regime':<8} {'policy':<24} {'reward':>7} {'acc % (95 % CI)':>14} {'lat ms':>7} {'p95 ms':>7} "
        f"{'energy mJ':>9} {'bytes':>6} {'offload':>7}  params",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['regime']:<8} {r['policy']:<24} {r['reward']:7.4f} "
            f"{pm(r['accuracy'], r['n']):>14} "
            f"{r['latency_ms']:7.1f} {r['p95_latency_ms']:7.1f} {r['energy_mj']:9.1f} {r['bytes']:6.0f} "
            f"{r['offloaded'] * 100:6.1f}%  {r.get('params', '')}"
        )
    lines.append("")
    for t in result["targets"]:
        ok = "ok" if t["gap_closed"] >= 0.05 else "MISSED"
        lines.append(
            f"{t['regime']:<8} RL - best threshold = {t['rl_minus_threshold']:+.4f} "
            f"({t['gap_closed'] * 100:.1f} % of the gap to the oracle; target >= 5 %: {ok}); "
            f"vs the test-tuned threshold {t['rl_minus_threshold_test_tuned']:+.4f} "
            f"({t['gap_closed_test_tuned'] * 100:.1f} %)"
        )
    ok = "ok" if result["decision_us"] <= 100 else "MISSED"
    lines.append(
        f"policy decision on the device: {result['decision_us']:.1f} µs (target <= 100: {ok})"
    )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(dict.fromkeys(r["regime"] for r in result["rows"]))
    policies = list(dict.fromkeys(r["policy"] for r in result["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(policies)
    for i, policy in enumerate(policies):
        rewards = [
            next(r["reward"] for r in result["rows"] if r["regime"] == g and r["policy"] == policy)
            for g in regimes
        ]
        axes[0].bar(np.arange(len(regimes)) + i * width, rewards, width, label=policy)
    axes[0].set_xticks(np.arange(len(regimes)) + 0.4 - width / 2, regimes)
    axes[0].set(ylabel="mean reward", title="Reward per channel regime (held-out traces)")
    axes[0].legend(fontsize=8)
    for policy in policies:
        pts = [r for r in result["rows"] if r["policy"] == policy]
        axes[1].scatter(
            [r["latency_ms"] for r in pts], [r["accuracy"] * 100 for r in pts], label=policy
        )
    axes[1].set(
        xscale="log", xlabel="mean latency (ms)", ylabel="accuracy (%)", title="Accuracy vs latency"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(cfg: ExitPolicyBenchConfig, json_path: str | None = None) -> int:
    result = bench(cfg)
    print(format_table(result))
    plot(result, Path(cfg.out) / "policy.png")
    print(f"plot: {Path(cfg.out) / 'policy.png'}")
    write_figures(json_path, result)
    return 0
