"""MBVD (Xu et al. 2022, "Mingling foresight with imagination: model-based cooperative multi-agent RL").

No official code is public; this follows the paper's description and Table 10 of the MARIE paper. Every
choice the paper leaves open is listed in docs/mbvd.md. In short:

* A latent model over the agents' GRU hidden states h_t^i (the history encodings): a Gaussian posterior
  q(z_t | h_t^1..h_t^n) of the joint latent state z_t = [z_t^1..z_t^n] (n x `agent_latent_dim` 16), as
  the paper conditions it on the joint hidden state, a prior transition p(z_t | z_{t-1}, a_{t-1}) over
  the joint latent, decoders of the hidden states and of the available actions from z_t^i, and a prior
  decoder of (z_{t-1}, a_{t-1}).
* Model loss = hidden-state reconstruction (summed over dimensions) + available-action BCE + KL
  balancing alpha KL(sg[q] || p) + (1 - alpha) KL(q || sg[p]) (alpha = 0.3; the posterior's term floored
  at `kl_free_nats`) + prior reconstruction + 0.1 KL(p || N(0, I)); weights in the preset. Without the
  floor, the summed reconstruction and the light prior regulariser the posterior collapsed onto the prior
  (~0.02 nats) and the imagined rollout was one point whatever the history (docs/mbvd.md).
* Imagination: from the posterior mean at every step of the sampled episodes, `rollout_horizon` (3)
  steps of the prior mean, the actions chosen greedily by the current agents (Q-head on the decoded
  hidden states) under the predicted availability (the real one at the first step).
* The imagined latents are encoded by a GRU (run from the last imagined step back to the first) and the
  encoding is concatenated to the state the QPLEX-style mixer receives (attention 4 heads, 1
  hypernetwork layer). TD loss and model loss are optimised together by the shared RMSprop.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.common.value_decomposition import masked_greedy
from baselines.qplex import QPLEX


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    mods, d = [], in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    return nn.Sequential(*mods, nn.Linear(d, out_dim))


def gaussian_kl(mu_q, std_q, mu_p, std_p) -> torch.Tensor:
    """KL(N(mu_q, std_q^2) || N(mu_p, std_p^2)), summed over the last dimension."""
    var_q, var_p = std_q ** 2, std_p ** 2
    return (torch.log(std_p / std_q) + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p) - 0.5).sum(-1)


def kl_balance(mu_q, std_q, mu_p, std_p, alpha: float, free_nats: float = 0.0) -> torch.Tensor:
    """alpha * KL(sg[q] || p) + (1 - alpha) * KL(q || sg[p]): its value is KL(q || p); the prior learns
    with weight alpha, the posterior with weight 1 - alpha. The posterior's term is floored at `free_nats`
    per step (free nats): below it the KL no longer pulls the posterior, which keeps that much information;
    the prior's term is not floored, so the prior keeps learning to predict the posterior."""
    to_prior = gaussian_kl(mu_q.detach(), std_q.detach(), mu_p, std_p)
    to_post = gaussian_kl(mu_q, std_q, mu_p.detach(), std_p.detach())
    if free_nats > 0:
        to_post = to_post.clamp(min=free_nats)
    return alpha * to_prior + (1 - alpha) * to_post


class LatentModel(nn.Module):
    """posterior q(z_t | h_t^1..n) over the joint latent (`joint_posterior`, as the paper conditions it on
    the joint hidden state) or q(z_t^i | h_t^i) per agent with shared weights; per-agent decoders of the
    hidden state and the available actions; a joint prior p(z_t | z_{t-1}, a_{t-1}) and its decoder."""

    def __init__(self, n_agents: int, n_actions: int, hidden_dim: int, agent_latent_dim: int, model_hidden: int,
                 min_std: float, joint_posterior: bool = True):
        super().__init__()
        self.n_agents, self.n_actions, self.latent = n_agents, n_actions, agent_latent_dim
        self.state_latent = n_agents * agent_latent_dim
        self.min_std, self.joint_posterior = min_std, joint_posterior
        self.posterior = (mlp(n_agents * hidden_dim, model_hidden, 2 * self.state_latent) if joint_posterior
                          else mlp(hidden_dim, model_hidden, 2 * agent_latent_dim))
        self.hidden_decoder = mlp(agent_latent_dim, model_hidden, hidden_dim)
        self.avail_decoder = mlp(agent_latent_dim, model_hidden, n_actions)
        self.prior = mlp(self.state_latent + n_agents * n_actions, model_hidden, 2 * self.state_latent, layers=3)
        self.prior_decoder = mlp(self.state_latent, model_hidden, self.state_latent + n_agents * n_actions)

    def _gaussian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = x.chunk(2, -1)
        return mu, F.softplus(raw) + self.min_std

    def post(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [..., N, H] -> mean and std of the joint latent [..., N*16] (agent i's slice at i*16)."""
        if self.joint_posterior:
            return self._gaussian(self.posterior(hidden.flatten(-2)))
        mu, std = self._gaussian(self.posterior(hidden))
        return mu.flatten(-2), std.flatten(-2)

    def prior_step(self, z: torch.Tensor, actions_onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z' | z, a): z [..., N*16], actions one-hot [..., N, A]."""
        return self._gaussian(self.prior(torch.cat([z, actions_onehot.flatten(-2)], -1)))

    def per_agent(self, z: torch.Tensor) -> torch.Tensor:
        return z.unflatten(-1, (self.n_agents, self.latent))


class ImaginationMixer(nn.Module):
    """Encodes the imagined latents [B, T, horizon, N*16] with a GRU (last imagined step first, so the
    encoding ends on the nearest future) and feeds [state, encoding] to the base mixer."""

    def __init__(self, latent_dim: int, encoding_dim: int, base: nn.Module):
        super().__init__()
        self.encoder = nn.GRU(latent_dim, encoding_dim, batch_first=True)
        self.base = base

    def encode(self, imagined: torch.Tensor) -> torch.Tensor:
        B, T, H, D = imagined.shape
        _, h = self.encoder(imagined.reshape(B * T, H, D).flip(1))
        return h[-1].view(B, T, -1)

    def forward(self, agent_qs, states, *, imagined, **kwargs):
        return self.base(agent_qs, torch.cat([states, self.encode(imagined)], -1), **kwargs)

    @property
    def penalty(self):
        return getattr(self.base, "penalty", None)


class MBVD(QPLEX):
    preset_file = Path(__file__).parent / "configs" / "mbvd.yaml"

    def encoding_dim(self) -> int:
        return self.params["rollout_encoding_dim"] or self.state_dim

    def mixer_state_dim(self) -> int:
        return self.state_dim + self.encoding_dim()

    def build_mixer(self):
        latent = self.n_agents * self.params["agent_latent_dim"]
        return ImaginationMixer(latent, self.encoding_dim(), super().build_mixer())

    def build_extra(self):
        p = self.params
        return LatentModel(self.n_agents, self.n_actions, p["rnn_hidden_dim"], p["agent_latent_dim"],
                           p["model_hidden_dim"], p["min_std"], p["joint_posterior"])

    @property
    def model(self) -> LatentModel:
        return self.extra

    # -- the latent model's loss ---------------------------------------------------------------------
    def model_loss(self, batch: dict, hidden: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """hidden: detached agent GRU states [B, T+1, N, H]."""
        p, m = self.params, self.model
        mask = batch["mask"]                                                        # [B, T] transitions
        step_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)               # [B, T+1] real steps
        n_steps, n_trans = step_mask.sum(), mask.sum().clamp(min=1)
        mu_q, std_q = m.post(hidden)                                                # [B, T+1, N*16]
        z = mu_q + std_q * torch.randn_like(std_q)
        z_agents = m.per_agent(z)
        sq = (m.hidden_decoder(z_agents) - hidden) ** 2                            # [B, T+1, N, H]
        # "sum": a unit-variance Gaussian log-likelihood of the joint hidden state (up to 1/2), on the
        # same footing as the KL summed over the latent's dimensions; "mean": per element (collapses)
        recon = sq.sum((-1, -2)) if p["recon_reduce"] == "sum" else sq.mean((-1, -2))    # [B, T+1]
        avail_logits = m.avail_decoder(z_agents)
        avail_bce = F.binary_cross_entropy_with_logits(avail_logits, batch["avail"].to(avail_logits.dtype),
                                                       reduction="none").mean(-1).mean(-1)
        onehot = F.one_hot(batch["actions"], self.n_actions).to(z.dtype)            # [B, T, N, A]
        mu_p, std_p = m.prior_step(z[:, :-1], onehot)                                # prior of steps 1..T
        kl = kl_balance(mu_q[:, 1:], std_q[:, 1:], mu_p, std_p, p["kl_balance_alpha"], p["kl_free_nats"])
        kl_reg = gaussian_kl(mu_p, std_p, torch.zeros_like(mu_p), torch.ones_like(std_p))
        z_prior = mu_p + std_p * torch.randn_like(std_p)
        decoded = m.prior_decoder(z_prior)
        prev_z, prev_a = decoded.split([m.state_latent, self.n_agents * self.n_actions], -1)
        prior_recon = ((prev_z - z[:, :-1].detach()) ** 2).mean(-1) + F.cross_entropy(
            prev_a.unflatten(-1, (self.n_agents, self.n_actions)).flatten(0, -2), batch["actions"].flatten(),
            reduction="none").view(mask.shape + (self.n_agents,)).mean(-1)
        terms = {
            "loss_model_recon": (recon * step_mask).sum() / n_steps,
            "loss_model_avail": (avail_bce * step_mask).sum() / n_steps,
            "loss_model_kl": (kl * mask).sum() / n_trans,
            "loss_model_prior_recon": (prior_recon * mask).sum() / n_trans,
            "loss_model_prior_reg": (kl_reg * mask).sum() / n_trans,
        }
        weights = {"loss_model_recon": p["recon_weight"], "loss_model_avail": p["avail_weight"],
                   "loss_model_kl": p["kl_weight"], "loss_model_prior_recon": p["prior_recon_weight"],
                   "loss_model_prior_reg": p["prior_reg_weight"]}
        total = sum(weights[k] * v for k, v in terms.items())
        with torch.no_grad():
            pred = avail_logits > 0
            acc = ((pred == batch["avail"]).float().mean(-1).mean(-1) * step_mask).sum() / n_steps
            kl_nats = (gaussian_kl(mu_q[:, 1:], std_q[:, 1:], mu_p, std_p) * mask).sum() / n_trans  # KL(q || p)
        return total, {"loss_model": total.detach(), **{k: v.detach() for k, v in terms.items()}, "avail_acc": acc,
                       "model_kl_nats": kl_nats}

    # -- imagination ---------------------------------------------------------------------------------
    @torch.no_grad()
    def imagine(self, hidden: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """From every step: `rollout_horizon` imagined joint latents [B, T+1, horizon, N*16].
        hidden [B, T+1, N, H]; avail [B, T+1, N, A] (the real availability at the starting step)."""
        m = self.model
        z, _ = m.post(hidden)                                     # posterior mean
        actions = masked_greedy(self.agent.q_values(hidden), avail)
        out = []
        for k in range(self.params["rollout_horizon"]):
            z, _ = m.prior_step(z, F.one_hot(actions, self.n_actions).to(z.dtype))  # prior mean
            out.append(z)
            if k + 1 < self.params["rollout_horizon"]:
                z_agents = m.per_agent(z)
                h = m.hidden_decoder(z_agents)
                predicted_avail = m.avail_decoder(z_agents) > 0
                actions = masked_greedy(self.agent.q_values(h), predicted_avail)
        return torch.stack(out, 2)

    def mixer_diagnostics(self, q_tot, mixer_args, mask):
        """How much the imagined rollout moves Q_tot: mean |Q_tot - Q_tot with the rollout of another
        episode of the batch| over real steps, absolute and relative to mean |Q_tot|."""
        imagined = mixer_args.pop("imagined")
        other = self.mixer(imagined=imagined.roll(1, dims=0), **mixer_args)
        n = mask.sum().clamp(min=1)
        effect = ((q_tot - other).abs() * mask).sum() / n
        return {"rollout_effect": effect, "rollout_effect_rel": effect / ((q_tot.abs() * mask).sum() / n + 1e-8)}

    def mixer_inputs(self, batch, hidden):
        hidden = hidden.detach()
        loss, metrics = self.model_loss(batch, hidden)
        imagined = self.imagine(hidden, batch["avail"])
        return {"imagined": imagined[:, :-1]}, {"imagined": imagined[:, 1:]}, loss, metrics
