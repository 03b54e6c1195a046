"""Budget-conditioned token selector (docs/methods.md#token-selection): gates, budget sampling and the budget loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCORE_BIAS_INIT = 5.0  # sigmoid(5) ~ 0.993: every token starts kept
THRESHOLD_BIAS_INIT = -5.0  # sigmoid(-5) ~ 0.007: the threshold starts near zero


class Selector(nn.Module):
    """One gate: per-token score ``sigmoid(w.x + b)`` minus a threshold ``sigmoid(u.x_budget + c)``.

    Returns the pre-ReLU key ``score - threshold`` (B, N); the soft mask is ``ReLU(key)``, the
    hard selection at the split is the top-k of the last gate's key.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.threshold = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.constant_(self.score.bias, SCORE_BIAS_INIT)
        nn.init.zeros_(self.threshold.weight)
        nn.init.constant_(self.threshold.bias, THRESHOLD_BIAS_INIT)

    def forward(self, patches: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        score = torch.sigmoid(self.score(patches)).squeeze(-1)  # (B, N)
        threshold = torch.sigmoid(self.threshold(budget))  # (B, 1)
        return score - threshold


def sample_budgets(
    batch: int, low: float, high: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Stratified budgets: ``linspace(low, high, B)`` plus noise, shuffled, clipped to (0, 1).

    Every batch covers the whole range, so no budget is starved of gradient.
    """
    base = torch.linspace(low, high, batch)
    step = (high - low) / max(batch - 1, 1)
    noise = (torch.rand(batch, generator=generator) - 0.5) * step
    alpha = (base + noise).clamp(1e-3, 1 - 1e-3)
    return alpha[torch.randperm(batch, generator=generator)]


def budget_loss(
    masks: list[torch.Tensor],
    alpha: torch.Tensor,
    margin: float = 0.02,
    w_out: float = 1.0,
    w_in: float = 0.5,
) -> torch.Tensor:
    """``w_out * ReLU(|mean(m_last) - a| - margin) + w_in * sum_inner ReLU(|mean(m_l) - a| - margin)``."""
    if not masks:
        return alpha.new_zeros(())
    terms = [F.relu((m.mean(dim=1) - alpha).abs() - margin).mean() for m in masks]
    return w_out * terms[-1] + w_in * sum(terms[:-1], alpha.new_zeros(()))


def hard_keep_mask(key: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Per sample, 1 for its top-``ceil(alpha_i * N)`` patches by key, else 0. Shape (B, N)."""
    n = key.shape[1]
    k = torch.ceil(alpha * n - 1e-6).clamp(min=1, max=n)  # (B,)
    ranks = key.argsort(dim=1, descending=True).argsort(dim=1)  # rank of each token, 0 = best
    return (ranks < k[:, None]).to(key.dtype)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton KD: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student / t, 1),
            F.log_softmax(teacher / t, 1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )
