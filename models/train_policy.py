"""Training of the RL offloading policy (``semlink train policy``, docs/methods.md#rl-offloading).

**PPO**, not DQN: episodes are at most four decisions long and the environment is cheap, so
on-policy samples cost nothing, and PPO's clipped updates are stable across seeds without the
replay-buffer and target-network tuning DQN needs; its stochastic policy also explores the rare
``offload`` branch without an epsilon schedule.

The agent trains on the validation split's exit traces with the training channel traces
(:data:`models.offload_env.TRAIN_SEEDS`), is evaluated during training on separate validation
channel traces (:data:`VAL_SEEDS`), and the best evaluation's policy is kept. With ``seeds`` > 1
one policy trains per seed, all on the same measured costs, and the one with the best validation
reward ships (the test split and the test channel traces are never looked at). The policy network
(a 2x64 MLP) is exported to ONNX: ``obs (B, 8) float32 -> logits (B, 3)``; the device takes the
argmax.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semlink.models.exit_traces import ExitTraces
from semlink.models.keep_best import learn_keeping_best
from semlink.models.offload_env import CostModel, OffloadEnv, RewardWeights, register
from semlink.models.policy_export import export_policy
from semlink.runtime.offload_policy import ACTIONS, OBS_NAMES

log = logging.getLogger(__name__)

VAL_SEEDS = [50, 51]
POLICY_FILE = "policy.onnx"


@dataclass
class TrainPolicyConfig:
    model_dir: str
    """Exported early-exit pipeline (manifest, graphs, traces/val.npz), or an any-split network
    (options.json, outcomes_val.npz): its options policy trains on streams."""
    out: str | None = None
    """Folder for policy.onnx, policy.json and the PPO checkpoint (default: model_dir)."""
    total_timesteps: int = 400_000
    n_envs: int = 8
    n_steps: int = 256
    """Steps per environment per PPO update."""
    batch_size: int = 512
    learning_rate: float = 3e-4
    ent_coef: float = 0.02
    hard_fraction: float = 0.5
    """Share of training episodes drawn from samples the first exit is unsure of (see
    :class:`models.offload_env.OffloadEnv`); evaluation uses the natural mix."""
    gamma: float = 1.0
    """Episodes are a handful of steps with one reward at the end: no discounting."""
    eval_every: int = 20_000
    eval_episodes: int = 2000
    device_profile: str = "camera"
    """The device's CPU quota while its compute costs are measured (none | phone | camera;
    cgroups, root): the costs the policy trades off are measured, not multiplied."""
    costs: str | None = None
    """A ``costs.json`` measured earlier (by this command, under its own profile) to train on
    instead of measuring again: policies compared on validation must share one cost model."""
    seed: int = 0
    seeds: int = 1
    """Policies to train, with seeds ``seed .. seed + seeds - 1``; the best on validation ships."""
    weights: RewardWeights | None = None


def evaluate_model(model: Any, env: OffloadEnv, episodes: int, seed: int) -> float:
    """Mean reward of the greedy policy over a fixed set of episodes."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(episodes):
        obs, _ = env.reset(options={"episode": env.draw_episode(rng)})
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, done, _, _ = env.step(int(action))
            total += reward
    return total / episodes


def train_policy(cfg: TrainPolicyConfig) -> dict[str, Any]:
    """Measures the costs (or reads ``cfg.costs``), trains a policy per seed on them, exports
    the one with the best validation reward. Returns its metrics (with every seed's reward)."""
    import shutil
    import tempfile

    if cfg.seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {cfg.seeds}")
    manifest = json.loads((Path(cfg.model_dir) / "manifest.json").read_text())
    if manifest.get("kind") == "any-split":  # one option per frame, on streams
        from semlink.models.train_option_policy import train_option_policy

        return train_option_policy(cfg)
    register()
    torch.set_num_threads(1)  # a 2x64 MLP: more threads only add overhead
    model_dir = Path(cfg.model_dir)
    out = Path(cfg.out or model_dir)
    out.mkdir(parents=True, exist_ok=True)
    traces = ExitTraces.load(model_dir / "traces" / "val.npz")
    if cfg.costs is not None:
        costs = _given_costs(cfg.costs, model_dir)
        log.info("costs from %s (measured under the %s profile)", cfg.costs, costs.device_profile)
    else:
        costs = CostModel.measure(model_dir, cfg.device_profile)
    log.info(
        "costs: device %s ms (profile %s), server %s ms",
        np.round(costs.device_ms, 2),
        costs.device_profile,
        np.round(costs.server_ms, 2),
    )
    weights = cfg.weights or RewardWeights()
    runs = []
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            seed_dir = Path(tmp) / f"seed{seed}"
            runs.append((_train_one(cfg, traces, costs, weights, seed, seed_dir), seed_dir))
            log.info("seed %d: validation reward %.4f", seed, runs[-1][0]["val_reward"])
        metrics, best_dir = max(runs, key=lambda r: float(r[0]["val_reward"]))
        shutil.copy(best_dir / "ppo_best.zip", out / "ppo_best.zip")
        shutil.copy(best_dir / POLICY_FILE, out / POLICY_FILE)
    costs.save(out / "costs.json")
    metrics["seeds"] = {str(m["seed"]): m["val_reward"] for m, _ in runs}
    metrics["chosen_on"] = "validation reward (validation exit traces and channel traces)"
    metrics["config"] = {k: v for k, v in asdict(cfg).items() if k != "weights"}
    metrics["weights"] = asdict(weights)
    metrics["actions"] = list(ACTIONS)
    metrics["observation"] = list(OBS_NAMES)
    (out / "policy.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def _given_costs(path: str, model_dir: Path) -> CostModel:
    """A cost model measured earlier, checked to describe this pipeline's device exits."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"cost model {path} does not exist; `semlink train policy` without --costs measures "
            "one and writes costs.json beside the policy"
        )
    costs = CostModel.load(path)
    exits = json.loads((model_dir / "manifest.json").read_text())["device_exits"]
    if not len(costs.device_ms) == len(costs.server_ms) == len(costs.offload_bytes) == len(exits):
        raise ValueError(
            f"{path} describes {len(costs.device_ms)} device exits, {model_dir} has {len(exits)}: "
            "pass the costs.json measured for this pipeline"
        )
    return costs


def _train_one(
    cfg: TrainPolicyConfig,
    traces: ExitTraces,
    costs: CostModel,
    weights: RewardWeights,
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """One PPO run with ``seed``: keeps its best evaluated policy in ``out`` (``ppo_best.zip``,
    exported to ``policy.onnx``); returns its metrics."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    out.mkdir(parents=True, exist_ok=True)
    env_kwargs: dict[str, Any] = {"traces": traces, "costs": costs, "weights": weights}
    venv = make_vec_env(
        OffloadEnv,
        n_envs=cfg.n_envs,
        seed=seed,
        env_kwargs={**env_kwargs, "hard_fraction": cfg.hard_fraction},
    )
    eval_env = OffloadEnv(**env_kwargs, seeds=VAL_SEEDS)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        ent_coef=cfg.ent_coef,
        gamma=cfg.gamma,
        policy_kwargs={"net_arch": [64, 64]},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    kept = learn_keeping_best(
        model,
        cfg.total_timesteps,
        # every seed meets the same validation episodes: their rewards compare
        lambda m: evaluate_model(m, eval_env, cfg.eval_episodes, cfg.seed),
        cfg.eval_every,
        out / "ppo_best.zip",
    )
    model, seconds, history = kept.model, kept.seconds, kept.history
    export_policy(model.policy, out / POLICY_FILE)
    return {
        "algorithm": "PPO",
        "seed": seed,
        "train_seconds": seconds,
        "timesteps": cfg.total_timesteps,
        "val_reward": kept.reward,
        "history": history,
    }
