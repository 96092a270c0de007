"""MAMBA (Egorov & Shpilman 2022): DreamerV2 for many agents, as an Algorithm of this suite.

Loop: collect transitions into a sequence replay; after every `trajectories_between_updates` finished
training episodes, train the world model for `model_epochs` batches, then run `policy_updates` rounds
of (filter a batch of replay sequences -> pick `imagined_rollouts` start states -> imagine
`imagination_horizon` steps -> lambda-returns -> `ppo_epochs` of PPO on actor and critic, each epoch in
minibatches of `ppo_minibatch_size` imagined joint samples, one actor and one critic step each).

Execution uses the world model (the actor reads posterior features that attend over agents): the carry
holds each environment's RSSM state and last joint action, reset where `ts.first`.
Continuous actions (MaMuJoCo): the actor is MARIE's, a binned Gaussian over `action_bins` bins per action
dimension (`actor_gaussian`); the world model reads the action as its vector in [-1, 1]; observations are normalised
(marie/obs_norm.py); updates come every `update_every` env steps (MuJoCo episodes are 1000 steps long).
See docs/mamba.md for the decisions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from baselines.mamba.behaviour import (Actor, MambaCritic, bin_centres, imagine, lambda_returns, policy_logits,
                                       ppo_actor_loss, sample_actions)
from baselines.mamba.replay import SequenceReplay
from baselines.mamba.rssm import RSSMState, WorldModel
from marie.algorithm import Algorithm
from marie.envs.base import undiscretize_actions
from marie.errors import UserError
from marie.models.actor_critic import check_gaussian_params
from marie.obs_norm import ObservationNormalizer, check_obs_norm_params

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "mamba.yaml"


class MAMBA(Algorithm):
    preset_file = PRESETS
    action_spaces = ("discrete", "continuous")

    @classmethod
    def validate(cls, params, run, n_agents):
        # continuous-control keys exist only in mamba.yaml's envs.mamujoco block
        if "obs_norm" in params:
            check_obs_norm_params(params["obs_norm"], "params.obs_norm")
        check_gaussian_params(params.get("actor_gaussian"), "params.actor_gaussian")
        for key in ("action_bins", "update_every"):
            v = params.get(key, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise UserError(f"params.{key} must be a positive integer, got {v!r}")

    def __init__(self, env_info, params, run, device, seed):
        super().__init__(env_info, params, run, device, seed)
        p = self.params
        self.validate(p, run, env_info.n_agents)
        N, O, A = env_info.n_agents, env_info.obs_dim, env_info.n_actions
        self.N, self.A = N, A
        self.continuous = bool(env_info.continuous)
        if self.continuous:
            self.bins = int(p["action_bins"])
            self.low, self.high = np.array(env_info.action_low, np.float32), np.array(env_info.action_high, np.float32)
        self.model = WorldModel(O, A, p, self.continuous).to(device=device, dtype=self.dtype)
        F_ = self.model.feat_size
        dims, choices = (A, self.bins) if self.continuous else (1, A)
        gaussian = p.get("actor_gaussian") if self.continuous else None
        self.actor = Actor(F_, int(p["actor_hidden"]), int(p["actor_layers"]), dims, choices, gaussian).to(
            device=device, dtype=self.dtype)
        self.critic = MambaCritic(F_, int(p["critic_hidden"]), int(p["critic_heads"]), bool(p["agent_positions"])).to(
            device=device, dtype=self.dtype)
        self.model_opt = torch.optim.Adam(self.model.parameters(), lr=float(p["model_lr"]))
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=float(p["actor_lr"]))
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=float(p["critic_lr"]))
        self.replay = SequenceReplay(int(p["buffer_size"]), int(run["num_envs"]), N, O, A, self.continuous)
        on = p.get("obs_norm") or {"enabled": False, "clip": 10.0}   # raw observations in the replay
        self.obs_norm = ObservationNormalizer(N, O, int(p["learning_starts"]), on["clip"], on["enabled"])
        self.steps_at_update = 0          # env steps at the last update (the `update_every` schedule)
        self.entropy_coef = float(p["entropy_coef"])
        self.episodes = 0                 # finished training episodes
        self.episodes_at_update = 0
        self.n_updates = 0
        self.last_action = self._action_rows(np.zeros((int(run["num_envs"]), N, A) if self.continuous else
                                                      (int(run["num_envs"]), N), np.float32))
        self.model.eval()

    def _action_rows(self, actions: np.ndarray) -> np.ndarray:
        """Environment actions -> what the replay and the world model hold: discrete indices [E, N];
        continuous vectors [E, N, m] scaled from [low, high] to [-1, 1]."""
        if not self.continuous:
            return np.asarray(actions, np.int64).copy()
        a = np.clip(np.asarray(actions, np.float32), self.low, self.high)
        return (2.0 * (a - self.low) / (self.high - self.low) - 1.0).astype(np.float32)

    # -- acting ------------------------------------------------------------------------------------
    def initial_carry(self, num_envs: int):
        return {"deter": np.zeros((num_envs, self.N, self.model.D), np.float32),
                "stoch": np.zeros((num_envs, self.N, self.model.stoch_size), np.float32),
                "action": np.zeros((num_envs, self.N, self.A), np.float32) if self.continuous else
                np.zeros((num_envs, self.N), np.int64)}

    @torch.no_grad()
    def act(self, ts, carry, training, greedy=True):
        dev, dt = self.device, self.dtype
        keep = torch.from_numpy(~ts.first).to(dev, dt)[:, None, None]
        state = RSSMState(torch.from_numpy(carry["deter"]).to(dev, dt) * keep,
                          torch.from_numpy(carry["stoch"]).to(dev, dt) * keep)
        prev = self.model.action_input(torch.from_numpy(carry["action"]).to(dev), dt) * keep
        obs = self.obs_norm(torch.as_tensor(np.array(ts.obs), device=dev, dtype=dt))
        avail = None if self.continuous else torch.as_tensor(np.array(ts.avail), device=dev)
        with self.autocast():
            state, _, _ = self.model.obs_step(state, prev, self.model.encoder(obs))
            logits = self.actor(state.feat()).float() if self.continuous else \
                policy_logits(self.actor, state.feat(), avail)
        action = sample_actions(logits, greedy=greedy and not training)
        carry = {"deter": state.deter.float().cpu().numpy(), "stoch": state.stoch.float().cpu().numpy()}
        if self.continuous:  # bins -> bin centres: in [-1, 1] for the model, in [low, high] for the environment
            carry["action"] = bin_centres(action, self.bins).cpu().numpy()
            return undiscretize_actions(action.cpu().numpy(), self.low, self.high, self.bins), carry
        action = action.cpu().numpy()
        carry["action"] = action
        return action, carry

    # -- data --------------------------------------------------------------------------------------
    def observe(self, ts, actions, ts_next):
        E = ts.first.shape[0]
        first = ts.first
        everyone = np.arange(E)
        self.obs_norm.update(ts.obs)
        start = first.reshape((E,) + (1,) * (self.last_action.ndim - 1))
        self.replay.add(everyone, obs=ts.obs, avail=ts.avail, alive=ts.alive | first[:, None],
                        prev_action=np.where(start, 0.0 if self.continuous else -1, self.last_action),
                        reward=np.where(first, 0.0, ts.reward), cont=np.ones(E, np.float32), first=first)
        done = np.flatnonzero(ts_next.done)
        if len(done):  # the final observation of each finished episode, before the auto-reset
            # the reference (SMAC reports done at the time limit) also ends the continuation at a truncation
            ended = ts_next.done if self.params["truncation_ends_continuation"] else ts_next.terminated
            self.replay.add(done, obs=ts_next.next_obs[done], avail=ts_next.next_avail[done],
                            alive=ts_next.alive[done], prev_action=self._action_rows(actions)[done],
                            reward=ts_next.reward[done],
                            cont=1.0 - ended[done].astype(np.float32), first=np.zeros(len(done), bool))
        self.last_action = self._action_rows(actions)
        self.episodes += len(done)

    # -- learning ----------------------------------------------------------------------------------
    def update(self, env_steps):
        p = self.params
        if "update_every" in p:  # MaMuJoCo: a schedule in env steps
            due = env_steps - self.steps_at_update >= int(p["update_every"])
        else:
            due = self.episodes - self.episodes_at_update >= int(p["trajectories_between_updates"])
        if env_steps < int(p["learning_starts"]) or not due or not self.replay.can_sample(int(p["sequence_length"])):
            return
        self.episodes_at_update, self.steps_at_update = self.episodes, env_steps
        metrics = {}
        for _ in range(int(p["model_epochs"])):
            m = self._train_model()
        metrics.update(m)
        for _ in range(int(p["policy_updates"])):
            m = self._train_behaviour()
        metrics.update(m)
        self.n_updates += 1
        values = torch.stack([v.detach().float() for v in metrics.values()]).tolist()  # one host sync
        out = dict(zip(metrics.keys(), values))
        out["entropy_coef"] = self.entropy_coef
        out["episodes"] = self.episodes
        yield out

    def _sample(self, batch: int) -> dict:
        out = self.replay.sample(batch, int(self.params["sequence_length"]), self.device, self.dtype)
        out["obs"] = self.obs_norm(out["obs"])
        return out

    def _train_model(self) -> dict:
        p = self.params
        batch = self._sample(int(p["model_batch_size"]))
        self.model.train()
        with self.autocast():
            loss, metrics, _ = self.model.loss(batch, p)
        self.model_opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["model_grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(p["grad_clip"]))
        self.model_opt.step()
        self.model.eval()
        return metrics

    def _train_behaviour(self) -> dict:
        p = self.params
        H, R = int(p["imagination_horizon"]), int(p["imagined_rollouts"])
        batch = self._sample(int(p["policy_batch_size"]))
        with torch.no_grad(), self.autocast():
            states, _, _ = self.model.observe(batch["obs"], batch["prev_action"], batch["first"])
            deter, stoch = states.deter.flatten(0, 1), states.stoch.flatten(0, 1)     # [B*L, N, .]
            pick = torch.randperm(deter.shape[0], device=deter.device)[:R]
            traj = imagine(self.model, self.actor, RSSMState(deter[pick], stoch[pick]), H)
            feat = traj["feat"]
            value = self._value(feat)                                                 # [H+1, R, N]
            # team reward and continuation: averaged over the agents' heads (MAMBA)
            reward = traj["reward"].mean(-1, keepdim=True).expand_as(value[:-1])
            cont = traj["cont"].mean(-1, keepdim=True).expand_as(value[:-1])
            returns = lambda_returns(reward, float(p["gamma"]) * cont, value, float(p["lambda"]))
            adv = returns - value[:-1]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        flat = lambda x: x.flatten(0, 1)                                              # noqa: E731  [H*R, N, ...]
        avail = None if traj["avail"] is None else flat(traj["avail"])
        feat_t, action, old_logp = flat(feat[:-1]), flat(traj["action"]), flat(traj["logp"])
        adv, returns = flat(adv), flat(returns)
        n = feat_t.shape[0]
        mb_size = int(p["ppo_minibatch_size"])  # the reference: 2000 joint samples per actor/critic step
        clip, gc = float(p["ppo_clip"]), float(p["grad_clip"])
        metrics = {}
        for _ in range(int(p["ppo_epochs"])):
            perm = torch.randperm(n, device=feat_t.device)
            for idx in perm.split(mb_size):
                with self.autocast():
                    a_loss, a_info = ppo_actor_loss(self.actor, feat_t[idx], None if avail is None else avail[idx],
                                                    action[idx],
                                                    old_logp[idx], adv[idx], clip, self.entropy_coef)
                self.actor_opt.zero_grad(set_to_none=True)
                a_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.actor.parameters(), gc)
                self.actor_opt.step()
                self.entropy_coef *= float(p["entropy_annealing"])
                with self.autocast():
                    c_loss = 0.5 * (self._value(feat_t[idx]) - returns[idx]).pow(2).mean()
                self.critic_opt.zero_grad(set_to_none=True)
                c_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), gc)
                self.critic_opt.step()
        metrics.update(actor_loss=a_loss, critic_loss=c_loss, policy_entropy=a_info["entropy"],
                       clip_fraction=a_info["clip_fraction"],
                       imag_return=returns.mean(), imag_reward=traj["reward"].mean(), imag_cont=traj["cont"].mean(),
                       value_mean=value.mean())
        return metrics

    def _value(self, feat: torch.Tensor) -> torch.Tensor:
        """Values [..., N] from features [..., N, F] (the critic attends over the agents axis)."""
        return self.critic(feat.reshape(-1, *feat.shape[-2:])).reshape(feat.shape[:-1]).float()

    # -- open-loop model analysis (marie.analysis_entry: compounding error, action ranking) ----------
    @property
    def H(self) -> int:
        return int(self.params["imagination_horizon"])

    def analysis_modules(self) -> list[torch.nn.Module]:
        return [self.model, self.actor, self.critic]

    def load_models(self, state):
        self.load_state_dict(state)

    @torch.no_grad()
    def analysis_states(self, obs: np.ndarray, actions: np.ndarray) -> dict:
        """The posterior state after each observation of played episodes, filtered from each episode's start
        as in acting (obs [E, T+1, N, O] raw, actions [E, T, N(, m)] as played)."""
        dev, dt = self.device, self.dtype
        E, L = obs.shape[:2]
        rows = self._action_rows(actions)
        prev = np.concatenate([np.full_like(rows[:, :1], 0.0 if self.continuous else -1), rows], 1)
        first = np.zeros((E, L), bool)
        first[:, 0] = True
        states, _, _ = self.model.observe(self.obs_norm(torch.as_tensor(obs, device=dev, dtype=dt)),
                                          torch.as_tensor(prev, device=dev), torch.as_tensor(first, device=dev))
        return {"deter": states.deter, "stoch": states.stoch}

    @torch.no_grad()
    def open_loop(self, start: dict, actions: np.ndarray, chunk: int = 0) -> dict:
        """Imagine from each start (rows of analysis_states) under the given environment actions
        [B, H, N(, m)] with the prior: recon [B, H+1, N, O] (normalised space; h = 0 decodes the posterior)
        and reward [B, H] (the agents' heads averaged)."""
        state = RSSMState(start["deter"], start["stoch"])
        act = torch.as_tensor(self._action_rows(actions), device=self.device)
        feats = [state.feat()]
        for h in range(act.shape[1]):
            state = self.model.img_step(state, self.model.action_input(act[:, h], self.dtype))
            feats.append(state.feat())
        feat = torch.stack(feats, 1)                                                 # [B, H+1, N, F]
        return {"recon": self.model.decoder(feat).float(),
                "reward": self.model.reward_head(feat[:, 1:]).squeeze(-1).float().mean(-1)}

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self):
        return {"model": self.model.state_dict(), "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "model_opt": self.model_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "replay": self.replay.state_dict(),
                "entropy_coef": self.entropy_coef, "episodes": self.episodes,
                "episodes_at_update": self.episodes_at_update, "n_updates": self.n_updates,
                "last_action": self.last_action.copy(), "obs_norm": self.obs_norm.state_dict(),
                "steps_at_update": self.steps_at_update}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.model_opt.load_state_dict(state["model_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.replay.load_state_dict(state["replay"])
        self.entropy_coef = state["entropy_coef"]
        self.episodes, self.episodes_at_update = state["episodes"], state["episodes_at_update"]
        self.n_updates = state["n_updates"]
        self.last_action = state["last_action"].copy()
        if "obs_norm" in state:  # older checkpoints: none (discrete runs: identity, no step schedule)
            self.obs_norm.load_state_dict(state["obs_norm"])
            self.steps_at_update = state["steps_at_update"]
