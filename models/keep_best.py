"""PPO training that keeps the best policy seen on validation: the one loop both RL policies
(the exit-or-offload policy of ``train_policy`` and the options policy of
``train_option_policy``) train with.

Every ``every`` timesteps the greedy policy is scored by ``evaluate``; the best so far is saved
to ``path`` (the policy at the end is scored too), and that one is loaded back: the policy
shipped is the best on validation, never merely the last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semlink.models.progress import progress_bar

log = logging.getLogger("semlink.train")


@dataclass
class KeptBest:
    """What :func:`learn_keeping_best` returns."""

    model: Any  # the best policy, loaded back from ``path``
    reward: float  # its validation score
    seconds: float  # wall time of ``learn``, evaluations included
    history: list[dict[str, float]] = field(default_factory=list)  # every evaluation


def learn_keeping_best(
    model: Any,
    timesteps: int,
    evaluate: Callable[[Any], float],
    every: int,
    path: Path,
    what: str = "validation reward",
) -> KeptBest:
    """Runs ``model.learn`` for ``timesteps`` with a progress bar, scoring the policy every
    ``every`` timesteps with ``evaluate(model)`` (``what`` names the score in the log); keeps
    the best at ``path`` and returns it loaded back (see the module docstring)."""
    from stable_baselines3.common.callbacks import BaseCallback

    history: list[dict[str, float]] = []
    best = {"reward": float("-inf")}

    class KeepBest(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = progress_bar(total=timesteps, desc="train policy", unit="step")

        def _on_step(self) -> bool:
            n = self.training_env.num_envs
            self.bar.update(n)
            if self.num_timesteps // every != (self.num_timesteps - n) // every:
                reward = evaluate(model)
                history.append({"timesteps": self.num_timesteps, "val_reward": reward})
                log.info("%d steps: %s %.4f", self.num_timesteps, what, reward)
                if reward > best["reward"]:
                    best["reward"] = reward
                    model.save(path)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    t0 = time.perf_counter()
    model.learn(timesteps, callback=KeepBest())
    seconds = time.perf_counter() - t0
    final = evaluate(model)  # the policy at the end competes too
    if final >= best["reward"]:
        best["reward"] = final
        model.save(path)
    return KeptBest(type(model).load(path, device="cpu"), best["reward"], seconds, history)
