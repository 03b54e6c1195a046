"""Training of the any-split network's options policy (``semlink train policy --model-dir`` an
any-split network; docs/methods.md#rl-offloading).

PPO (a 2x64 MLP) on :class:`models.option_env.OptionEnv`: streams drawn at random over device
speeds, frame rates, links, deadlines and SNRs, replayed on the validation split's outcomes with
the device's stage times measured at the machine's speed (``costs.json`` beside the policy; the
environment scales them as a CPU share would). Evaluated during training on a fixed set of
validation streams (other seeds than training's); the best evaluation's policy is exported to
ONNX: ``obs (B, 6 + 2 A) float32 -> logits (B, A)`` over the model's ``A`` options, which
``policy.json`` names in order. The test split is never looked at.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semlink.models.keep_best import learn_keeping_best
from semlink.models.option_env import OptionEnv, StreamDraw, draw
from semlink.models.option_table import Outcomes
from semlink.models.stream_sim import DeviceCosts
from semlink.runtime.calibration import CalibrationTable
from semlink.runtime.offload_policy import FRAME_GLOBALS

log = logging.getLogger(__name__)

POLICY_FILE = "policy.onnx"
EVAL_SEED = 7_000_001  # the validation streams' seed (training draws from the env's own)


def measured_costs(model_dir: Path, path: str | None) -> DeviceCosts:
    """What a frame costs the device in CPU at the machine's speed: from ``path`` (a costs.json
    this command wrote, or ``semlink bench profile --json``'s, whose ``costs`` add the device
    process's overhead per frame), else its stages measured now (without that overhead)."""
    if path is not None:
        doc = json.loads(Path(path).read_text())
        return DeviceCosts(**doc.get("costs", doc))
    from semlink.models.stream_costs import measure

    log.info("costs: the stages alone (pass --costs a bench profile JSON for a device's overhead)")
    return measure(model_dir.parent.name)


def train_option_policy(cfg: Any) -> dict[str, Any]:
    """Trains, keeps the best validation policy, exports it (see the module docstring); ``cfg`` a
    :class:`models.train_policy.TrainPolicyConfig`. Returns its metrics."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from semlink.models.policy_export import export_policy
    from semlink.runtime.pipelines import make_pipeline
    from semlink.runtime.repository import resolve, scan

    torch.set_num_threads(1)
    model_dir = Path(cfg.model_dir)
    out = Path(cfg.out or model_dir)
    out.mkdir(parents=True, exist_ok=True)
    mv = resolve(scan(model_dir.parent.parent), model_dir.parent.name, model_dir.name)
    pipe = make_pipeline(mv)
    outcomes = Outcomes.load(model_dir / "outcomes_val.npz")
    table = CalibrationTable.load(model_dir / "options.json", mv.manifest.model_hash)
    base = measured_costs(model_dir, cfg.costs)
    env_kwargs: dict[str, Any] = {
        "outcomes": outcomes,
        "table": table,
        "stages_of": pipe.stages,
        "base": base,
    }
    venv = make_vec_env(OptionEnv, n_envs=cfg.n_envs, seed=cfg.seed, env_kwargs=env_kwargs)
    eval_env = OptionEnv(**env_kwargs)
    rng = np.random.default_rng(EVAL_SEED)
    streams = [draw(rng, base, StreamDraw()) for _ in range(max(4, cfg.eval_episodes // 64))]
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        ent_coef=cfg.ent_coef,
        gamma=min(cfg.gamma, 0.98),  # a frame's choice matters for the frames queued behind it
        policy_kwargs={"net_arch": [64, 64]},
        seed=cfg.seed,
        device="cpu",
        verbose=0,
    )

    def evaluate(model: Any) -> float:
        """Mean reward per frame of the greedy policy over the validation streams."""
        total, frames = 0.0, 0
        for drawn in streams:
            obs, _ = eval_env.reset(options={"drawn": drawn})
            done = eval_env.at is None
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, done, _, _ = eval_env.step(int(action))
                total += reward
            frames += drawn.stream.frames
        return total / max(frames, 1)

    kept = learn_keeping_best(
        model,
        cfg.total_timesteps,
        evaluate,
        cfg.eval_every,
        out / "ppo_best.zip",
        "validation on-time share",
    )
    model, seconds, history, best = kept.model, kept.seconds, kept.history, kept.reward
    obs_dim = eval_env.obs_dim
    export_policy(model.policy, out / POLICY_FILE, obs_dim)
    (out / "costs.json").write_text(json.dumps(asdict(base), indent=1) + "\n")
    metrics = {
        "algorithm": "PPO",
        "seed": cfg.seed,
        "train_seconds": seconds,
        "timesteps": cfg.total_timesteps,
        "val_reward": best,
        "history": history,
        "actions": [o.name for o in eval_env.options],
        "observation": [*FRAME_GLOBALS, "per option: latency over deadline, accuracy"],
        "chosen_on": "the on-time share on validation streams (validation split's outcomes)",
        "config": {k: v for k, v in asdict(cfg).items() if k != "weights"},
    }
    (out / "policy.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


__all__ = ["train_option_policy"]
