"""Return and policy-gradient arithmetic shared by the imagination learners (MARIE, MAMBA).

lambda_returns: the λ-return of Dreamer, appendix B Eq. (8) (with the bootstrap value taken at the next
observation, V(ô_{t+1}), as in Dreamer; the printed V(ô_t) is read as a typo).
ppo_clip_loss: the clipped surrogate with entropy bonus of Eq. (10).
"""
from __future__ import annotations

import torch


def lambda_returns(rewards: torch.Tensor, discounts: torch.Tensor, values: torch.Tensor, lam: float) -> torch.Tensor:
    """rewards, discounts [H, ...]; values [H+1, ...] (V(ô_0) ... V(ô_H)) -> λ-returns [H, ...].

        R_t = r_t + γ_t [(1-λ) V_{t+1} + λ R_{t+1}],   R_H = V_H
    """
    H = rewards.shape[0]
    if values.shape[0] != H + 1:
        raise ValueError(f"values must have H+1={H + 1} entries along dim 0, got {values.shape[0]}")
    out = torch.empty_like(rewards)
    nxt = values[H]
    for t in range(H - 1, -1, -1):
        nxt = rewards[t] + discounts[t] * ((1 - lam) * values[t + 1] + lam * nxt)
        out[t] = nxt
    return out


def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, entropy: torch.Tensor,
                  clip: float, entropy_coef: float, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Eq. (10): -E[min(ρA, clip(ρ, 1-ε, 1+ε)A) + η H(π)], ρ = π/π_old. All inputs share one shape;
    `weights` (optional, same shape) averages over valid samples only."""
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    objective = surrogate + entropy_coef * entropy
    if weights is None:
        loss = -objective.mean()
        clipped = ((ratio - 1).abs() > clip).float().mean()
    else:
        n = weights.sum().clamp(min=1)
        loss = -(objective * weights).sum() / n
        clipped = (((ratio - 1).abs() > clip).float() * weights).sum() / n
    return loss, {"actor_loss": loss.detach(), "entropy": entropy.detach().mean(), "clip_fraction": clipped.detach()}
