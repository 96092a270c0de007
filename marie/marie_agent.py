"""MARIE on the shared runtime: the loop of Algorithm 1 (appendix I).

    act      the actor on VQ-reconstructed (stacked) observations; carry = stacked reconstructions + last action
    observe  transitions into the replay buffer
    update   every `train_every` transitions (after `learning_starts`) one training round: the tokenizer, then
             (from round `world_model_from_round`) the world model, then (from round `policy_from_round`)
             `policy_updates` rounds of imagination + PPO; yields one metric dict per round, with the
             seconds each phase took (time_*_s)

All numbers come from params (marie/configs/marie.yaml); docs/marie.md lists the reproduction decisions.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from marie.algorithm import Algorithm
from marie.config import CONFIG_DIR
from marie.envs.base import discretize_actions, undiscretize_actions
from marie.errors import UserError
from marie.imagination import imagine, one_hot_last
from marie.models.actor_critic import (Actor, Critic, check_gaussian_params, log_prob_entropy, policy_input,
                                       sample_actions)
from marie.models.tokenizer import build_tokenizer
from marie.models.world_model import WorldModel
from marie.obs_norm import ObservationNormalizer, check_obs_norm_params
from marie.replay import ReplayBuffer
from marie.returns import lambda_returns, ppo_clip_loss


def _positive_int(cfg: dict, path: str, allow_zero: bool = False) -> None:
    node = cfg
    for part in path.split("."):
        node = node[part]
    ok = isinstance(node, int) and not isinstance(node, bool) and (node >= 0 if allow_zero else node > 0)
    if not ok:
        raise UserError(f"params.{path} must be a {'non-negative' if allow_zero else 'positive'} integer, got {node!r}")


def validate_params(p: dict, n_agents: int) -> None:
    """One-line errors for bad values, before any work starts."""
    try:
        for path in ("horizon", "tokenizer.layers", "tokenizer.codebook_size", "tokenizer.tokens",
                     "tokenizer.code_dim", "tokenizer.hidden", "world_model.embed_dim", "world_model.layers",
                     "world_model.heads", "imagination.rollouts", "imagination.policy_updates",
                     "imagination.ppo_epochs", "imagination.ppo_minibatch", "training.tokenizer_batch",
                     "training.wm_batch", "training.train_every", "training.buffer_size", "observation.stack",
                     "actor_critic.hidden", "actor_critic.layers", "actor_critic.critic_heads"):
            _positive_int(p, path)
        for path in ("training.tokenizer_steps", "training.wm_steps", "training.learning_starts",
                     "imagination.chunk", "training.wm_microbatch", "training.world_model_from_round",
                     "training.policy_from_round"):
            _positive_int(p, path, allow_zero=True)
    except KeyError as exc:
        raise UserError(f"params: missing key {exc} (see marie/configs/marie.yaml)") from None
    tk, wm = p["tokenizer"], p["world_model"]
    if tk["kind"] not in ("vq", "bins"):
        raise UserError(f"params.tokenizer.kind must be vq or bins, got {tk['kind']!r}")
    if tk["recon_loss"] not in ("mse", "l1"):
        raise UserError(f"params.tokenizer.recon_loss must be mse or l1, got {tk['recon_loss']!r}")
    if not 0.0 < float(tk["ema_decay"]) < 1.0:
        raise UserError(f"params.tokenizer.ema_decay must lie in (0, 1), got {tk['ema_decay']!r}")
    if not isinstance(wm.get("static_cache", False), bool):
        raise UserError(f"params.world_model.static_cache must be true or false, got {wm['static_cache']!r}")
    mode = p["imagination"].get("compile")
    if mode not in (None, False, "default", "reduce-overhead", "max-autotune"):
        raise UserError(f"params.imagination.compile must be null, default, reduce-overhead or max-autotune, got {mode!r}")
    if mode and not wm.get("static_cache", False):
        raise UserError("params.imagination.compile needs params.world_model.static_cache=true (fixed decoding "
                        "shapes: one graph for every position)")
    if wm["aggregation"] not in ("perceiver", "none"):
        raise UserError(f"params.world_model.aggregation must be perceiver or none, got {wm['aggregation']!r}")
    if wm["embed_dim"] % wm["heads"]:
        raise UserError(f"params.world_model.embed_dim ({wm['embed_dim']}) must be divisible by heads ({wm['heads']})")
    if p["actor_critic"]["hidden"] % p["actor_critic"]["critic_heads"]:
        raise UserError("params.actor_critic.hidden must be divisible by actor_critic.critic_heads")
    for key in ("lambda", "discount_label"):
        if not 0.0 <= float(p["imagination"][key]) <= 1.0:
            raise UserError(f"params.imagination.{key} must lie in [0, 1], got {p['imagination'][key]!r}")
    if p["training"]["buffer_size"] < p["training"]["train_every"]:
        raise UserError("params.training.buffer_size must be at least training.train_every")
    clamp = p["imagination"]["recon_clamp"]
    if clamp is not None and (isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or clamp <= 0):
        raise UserError(f"params.imagination.recon_clamp must be a positive number or null, got {clamp!r}")
    if not isinstance(p["imagination"]["continuation_weights"], bool):
        raise UserError("params.imagination.continuation_weights must be true or false")
    if "obs_norm" in p:  # set for continuous-control backends only (marie.yaml, envs.mamujoco)
        check_obs_norm_params(p["obs_norm"], "params.obs_norm")
    check_gaussian_params(p["actor_critic"].get("gaussian"), "params.actor_critic.gaussian")


class MARIEAgent(Algorithm):
    preset_file = CONFIG_DIR / "marie.yaml"
    action_spaces = ("discrete", "continuous")

    @classmethod
    def validate(cls, params, run, n_agents):
        validate_params(params, n_agents)

    def __init__(self, env_info, params, run, device, seed):
        super().__init__(env_info, params, run, device, seed)
        p = params
        validate_params(p, env_info.n_agents)
        self.N, self.O = env_info.n_agents, env_info.obs_dim
        self.continuous = env_info.continuous
        self.bins = int(p["action_bins"])
        self.m = env_info.n_actions if self.continuous else 1            # action tokens per agent
        self.n_choices = self.bins if self.continuous else env_info.n_actions
        self.A = env_info.n_actions
        self.obs_cfg = p["observation"]
        self.S = int(self.obs_cfg["stack"])
        self.H = int(p["horizon"])
        dev, dt = device, self.dtype

        self.tokenizer = build_tokenizer(self.O, p["tokenizer"]).to(dev, dt)
        predict_avail = bool(p["world_model"]["predict_avail"]) and not self.continuous
        self.world_model = WorldModel(self.N, self.tokenizer.vocab, self.tokenizer.tokens, self.n_choices, self.m,
                                      self.A if predict_avail else 0, self.H, p["world_model"]).to(dev, dt)
        if p["imagination"].get("compile"):
            self.world_model.compile_decoding(p["imagination"]["compile"])
        in_dim = self.S * self.O + (self.m * self.n_choices if self.obs_cfg["last_action"] else 0) + \
            (self.N if self.obs_cfg["agent_id"] else 0)
        ac = p["actor_critic"]
        gaussian = ac.get("gaussian") if self.continuous else None   # envs.mamujoco in marie.yaml
        self.actor = Actor(in_dim, ac["hidden"], ac["layers"], self.m, self.n_choices, gaussian).to(dev, dt)
        self.critic = Critic(in_dim, ac["hidden"], ac["layers"], ac["critic_heads"]).to(dev, dt)

        tr = p["training"]
        self.tok_opt = torch.optim.AdamW(self.tokenizer.parameters(), lr=tr["tokenizer_lr"]) \
            if self.tokenizer.trainable else None
        self.wm_opt = torch.optim.AdamW(_decay_groups(self.world_model, tr["wm_weight_decay"]), lr=tr["wm_lr"])
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=tr["actor_lr"])
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=tr["critic_lr"])

        E = run["num_envs"]
        A = self.A
        fields = {"obs": ((self.N, self.O), np.float32), "next_obs": ((self.N, self.O), np.float32),
                  "action": ((self.N, self.m), np.int64), "reward": ((), np.float32), "terminated": ((), bool),
                  "end": ((), bool), "first": ((), bool), "alive": ((self.N,), bool)}
        if not self.continuous:
            fields["avail"] = ((self.N, A), bool)
            fields["next_avail"] = ((self.N, A), bool)
        self.replay = ReplayBuffer(int(tr["buffer_size"]), E, fields)  # raw observations
        # every observation entering a model goes through obs_norm (marie/obs_norm.py), frozen when training starts
        on = p.get("obs_norm") or {"enabled": False, "clip": 10.0}
        self.obs_norm = ObservationNormalizer(self.N, self.O, int(tr["learning_starts"]), on["clip"], on["enabled"])
        self.since_train = 0
        self.rounds = 0

    # -- acting ------------------------------------------------------------------------------------
    def initial_carry(self, num_envs):
        return {"stack": torch.zeros(num_envs, self.N, self.S, self.O, device=self.device, dtype=self.dtype),
                "last": torch.full((num_envs, self.N, self.m), -1, dtype=torch.long, device=self.device)}

    def _tensor(self, x, dtype=None):
        x = np.asarray(x)
        return torch.as_tensor(x if x.flags.writeable else x.copy(), device=self.device, dtype=dtype or self.dtype)

    @torch.no_grad()
    def act(self, ts, carry, training, greedy=True):
        first = self._tensor(ts.first, torch.bool)
        keep = (~first).view(-1, 1, 1, 1).to(self.dtype)
        self.tokenizer.eval()
        recon = self.tokenizer.reconstruct(self.obs_norm(self._tensor(ts.obs)))   # the policy sees D(E(o))
        stack = torch.cat([carry["stack"][:, :, 1:] * keep, recon.unsqueeze(2)], 2)
        last = torch.where(first.view(-1, 1, 1), torch.full_like(carry["last"], -1), carry["last"])
        feat = policy_input(stack, one_hot_last(last, self.n_choices, self.dtype) if self.obs_cfg["last_action"]
                            else None, self.obs_cfg["agent_id"])
        avail = None if self.continuous else self._tensor(ts.avail, torch.bool)
        logits = self.actor(feat, avail)
        greedy = greedy and not training
        a = sample_actions(logits, greedy)                                    # [E, N, m]
        carry = {"stack": stack, "last": a}
        if self.continuous:
            low, high = np.array(self.env_info.action_low), np.array(self.env_info.action_high)
            return undiscretize_actions(a.cpu().numpy(), low, high, self.bins), carry
        return a[..., 0].cpu().numpy(), carry

    def observe(self, ts, actions, ts_next):
        if self.continuous:
            low, high = np.array(self.env_info.action_low), np.array(self.env_info.action_high)
            tokens = discretize_actions(actions, low, high, self.bins)
        else:
            tokens = np.asarray(actions)[..., None]
        step = {"obs": ts.obs, "next_obs": ts_next.next_obs, "action": tokens, "reward": ts_next.reward,
                "terminated": ts_next.terminated, "end": ts_next.done, "first": ts.first, "alive": ts_next.alive}
        if not self.continuous:
            step["avail"], step["next_avail"] = ts.avail, ts_next.next_avail
        self.replay.add(**step)
        self.obs_norm.update(ts.obs)
        self.since_train += len(ts.first)

    # -- training ------------------------------------------------------------------------------------
    def update(self, env_steps):
        tr = self.params["training"]
        if len(self.replay) < tr["learning_starts"] or self.since_train < tr["train_every"]:
            return
        self.since_train = 0
        self.rounds += 1
        metrics = {"round": self.rounds}
        # The official code's staged warm-up: a world model trained on a junk tokenizer, or a policy trained
        # in a junk world model, only learns to undo it later.
        phases = [("tokenizer", lambda: self.train_tokenizer(tr["tokenizer_steps"]), 1),
                  ("world_model", lambda: self.train_world_model(tr["wm_steps"]), tr["world_model_from_round"]),
                  ("behaviour", lambda: self.train_behaviour(self.params["imagination"]["policy_updates"]),
                   tr["policy_from_round"])]
        for name, train, first_round in phases:
            start = self._clock()
            if self.rounds >= first_round:
                metrics.update(train())
            if name != "behaviour":  # behaviour splits its own time into imagination and PPO
                metrics[f"time_{name}_s"] = self._clock() - start
        metrics["buffer_size"] = len(self.replay)
        yield metrics

    def _batch(self, data: dict, keys) -> dict:
        return {k: torch.as_tensor(data[k], device=self.device) for k in keys}

    def train_tokenizer(self, steps: int) -> dict:
        if not self.tokenizer.trainable or steps == 0:
            return {}
        tr = self.params["training"]
        self.tokenizer.train()
        logs = []
        for _ in range(steps):
            data = self.replay.sample_segments(tr["tokenizer_batch"], 1, keys=["obs"])
            obs = self.obs_norm(torch.as_tensor(data["obs"][:, 0], device=self.device, dtype=self.dtype))
            with self.autocast():
                loss, m = self.tokenizer.loss(obs)
            self.tok_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.tokenizer.parameters(), tr["tokenizer_grad_clip"])
            self.tok_opt.step()
            logs.append(m)
        self.tokenizer.eval()
        return _mean_metrics(logs)

    def world_model_batch(self, batch_size: int) -> dict:
        """A batch of segments of H transitions, tokenized: the inputs of WorldModel.loss."""
        keys = ["obs", "next_obs", "action", "reward", "terminated", "alive"] + \
            ([] if self.continuous else ["next_avail"])
        data = self.replay.sample_segments(batch_size, self.H, keys=keys)
        t = {k: torch.as_tensor(v, device=self.device) for k, v in data.items()}
        obs_seq = self.obs_norm(torch.cat([t["obs"][:, :1], t["next_obs"]], 1).to(self.dtype))  # [B, H+1, N, O]
        mask = t["mask"].to(self.dtype)
        died = t["terminated"].unsqueeze(-1) | ~t["alive"]                     # [B, H, N]
        cont = (~died).to(self.dtype) * float(self.params["imagination"]["discount_label"])
        batch = {"obs_tokens": self.tokenizer.encode(obs_seq), "actions": t["action"], "reward": t["reward"].to(self.dtype),
                 "cont": cont, "step_mask": mask, "obs_mask": torch.cat([torch.ones_like(mask[:, :1]), mask], 1)}
        if not self.continuous:
            batch["next_avail"] = t["next_avail"].to(self.dtype)
        return batch

    def train_world_model(self, steps: int) -> dict:
        if steps == 0:
            return {}
        tr = self.params["training"]
        weights = self.params["world_model"]["loss_weights"]
        self.tokenizer.eval()
        self.world_model.train()
        logs = []
        micro = tr["wm_microbatch"] or tr["wm_batch"]
        for _ in range(steps):
            self.wm_opt.zero_grad(set_to_none=True)
            batch = self.world_model_batch(tr["wm_batch"])
            B = tr["wm_batch"]
            parts = []
            for i in range(0, B, micro):  # gradient accumulation: same gradient, less activation memory
                mb = {k: v[i:i + micro] for k, v in batch.items()}
                with self.autocast():
                    loss, m = self.world_model.loss(mb, weights)
                (loss * (mb["obs_tokens"].shape[0] / B)).backward()
                parts.append(m)
            torch.nn.utils.clip_grad_norm_(self.world_model.parameters(), tr["wm_grad_clip"])
            self.wm_opt.step()
            logs.append(_mean_metrics(parts, as_float=False))
        self.world_model.eval()
        return _mean_metrics(logs)

    def imagination_start(self, batch_size: int) -> dict:
        """Initial observations for imagination from the replay buffer, with the stacked history and last
        action the policy would have had there (reconstructed with the current tokenizer)."""
        hist = max(self.S - 1, 1 if self.obs_cfg["last_action"] else 0)
        keys = ["obs", "action"] + ([] if self.continuous else ["avail"])
        data = self.replay.sample_segments(batch_size, 1, history=hist, keys=keys)
        t = {k: torch.as_tensor(v, device=self.device) for k, v in data.items()}
        obs = self.obs_norm(t["obs"].to(self.dtype))                            # [B, hist+1, N, O]
        mask = t["mask"]                                                        # [B, hist+1]
        clamp = self._recon_clamp()
        with torch.no_grad():
            prev = self.tokenizer.reconstruct(obs[:, :hist])
            if clamp is not None:
                prev = prev.clamp(-clamp, clamp)
            prev = prev * mask[:, :hist, None, None].to(self.dtype)
        stack = prev[:, hist - (self.S - 1):].transpose(1, 2) if self.S > 1 else obs.new_zeros(
            obs.shape[0], self.N, 0, self.O)
        last = torch.full((obs.shape[0], self.N, self.m), -1, dtype=torch.long, device=self.device)
        if hist:
            last = torch.where(mask[:, hist - 1].view(-1, 1, 1), t["action"][:, hist - 1], last)
        return {"obs": obs[:, hist], "stack": stack.contiguous(), "last": last,
                "avail": None if self.continuous else t["avail"][:, hist]}

    def _clock(self) -> float:
        """Seconds for the per-phase timings; on a GPU after its queued work (one sync per phase and round),
        so that asynchronous kernels are charged to the phase that launched them."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _recon_clamp(self) -> float | None:
        """Only SMAC-like observations have a known range ([-1, 1]); continuous control's are unbounded."""
        clamp = self.params["imagination"]["recon_clamp"]
        return None if self.continuous or clamp is None else float(clamp)

    def imagine_rollouts(self) -> dict:
        """One imagination of `imagination.rollouts` starts drawn from the replay buffer: PPO's training data."""
        ic = self.params["imagination"]
        self.tokenizer.eval(), self.world_model.eval(), self.actor.eval()
        with self.autocast():
            return imagine(self.tokenizer, self.world_model, self.actor, self.imagination_start(ic["rollouts"]),
                           self.H, self.obs_cfg, self.n_choices, chunk=ic["chunk"], recon_clamp=self._recon_clamp())

    def train_behaviour(self, rounds: int) -> dict:
        logs = []
        t_imagine = t_ppo = 0.0
        for _ in range(rounds):
            start = self._clock()
            traj = self.imagine_rollouts()
            middle = self._clock()
            logs.append(self.ppo(traj))
            t_imagine, t_ppo = t_imagine + middle - start, t_ppo + self._clock() - middle
        return {**_mean_metrics(logs), "time_imagination_s": t_imagine, "time_ppo_s": t_ppo}

    def ppo(self, traj: dict) -> dict:
        ic, tr = self.params["imagination"], self.params["training"]
        feats = traj["feats"].float() if self.dtype == torch.float32 else traj["feats"]
        H = traj["actions"].shape[0]
        with torch.no_grad():
            values = self.critic(feats.flatten(0, 1)).view(H + 1, *feats.shape[1:3])   # [H+1, B, N]
            returns = lambda_returns(traj["reward"], traj["discount"], values, float(ic["lambda"]))
            adv = returns - values[:H]
            if ic["continuation_weights"]:  # statistics over the steps the episode is still in, too
                weights = continuation_weights(traj["discount"], float(ic["discount_label"]))
                n = weights.sum().clamp(min=1)
                mean = (adv * weights).sum() / n
                std = (((adv - mean) ** 2 * weights).sum() / n).sqrt()
            else:
                weights, mean, std = torch.ones_like(adv), adv.mean(), adv.std()
            if ic["normalize_advantages"]:
                adv = (adv - mean) / (std + 1e-8)
        # samples: (t, rollout) pairs, each with all N agents (the critic attends over them)
        X = feats[:H].flatten(0, 1)
        act = traj["actions"].flatten(0, 1)
        old_logp = traj["logp"].flatten(0, 1)
        avail = traj["avail"].flatten(0, 1) if traj["avail"] is not None else None
        ret, adv, w = returns.flatten(0, 1), adv.flatten(0, 1), weights.flatten(0, 1)
        M = X.shape[0]
        mb = min(ic["ppo_minibatch"], M)
        self.actor.train(), self.critic.train()
        logs = []
        for _ in range(ic["ppo_epochs"]):
            perm = torch.randperm(M, device=self.device)
            for i in range(0, M, mb):
                idx = perm[i:i + mb]
                logits = self.actor(X[idx], avail[idx] if avail is not None else None)
                logp, ent = log_prob_entropy(logits, act[idx])
                a_loss, m = ppo_clip_loss(logp, old_logp[idx], adv[idx], ent, ic["ppo_clip"], ic["entropy_coef"],
                                          w[idx] if ic["continuation_weights"] else None)
                self.actor_opt.zero_grad(set_to_none=True)
                a_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.actor.parameters(), tr["ac_grad_clip"])
                self.actor_opt.step()
                if ic["continuation_weights"]:
                    c_loss = ((self.critic(X[idx]) - ret[idx]) ** 2 * w[idx]).sum() / w[idx].sum().clamp(min=1)
                else:
                    c_loss = F.mse_loss(self.critic(X[idx]), ret[idx])
                self.critic_opt.zero_grad(set_to_none=True)
                c_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), tr["ac_grad_clip"])
                self.critic_opt.step()
                m["critic_loss"] = c_loss.detach()
                logs.append(m)
        self.actor.eval(), self.critic.eval()
        out = _mean_metrics(logs, as_float=False)
        out.update({"imag_reward": traj["reward"].mean(), "imag_discount": traj["discount"].mean(),
                    "imag_return": returns[0].mean(), "value_mean": values.mean(), "imag_weight": weights.mean()})
        return {k: float(v) for k, v in out.items()}

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self):
        return {"tokenizer": self.tokenizer.state_dict(), "world_model": self.world_model.state_dict(),
                "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "tok_opt": self.tok_opt.state_dict() if self.tok_opt else None, "wm_opt": self.wm_opt.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "replay": self.replay.state_dict(), "since_train": self.since_train, "rounds": self.rounds,
                "obs_norm": self.obs_norm.state_dict()}

    def load_state_dict(self, state):
        self.tokenizer.load_state_dict(state["tokenizer"])
        self.world_model.load_state_dict(state["world_model"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        if self.tok_opt is not None:
            self.tok_opt.load_state_dict(state["tok_opt"])
        self.wm_opt.load_state_dict(state["wm_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.replay.load_state_dict(state["replay"])
        self.since_train, self.rounds = state["since_train"], state["rounds"]
        if "obs_norm" in state:  # older checkpoints: none (SMAX: identity)
            self.obs_norm.load_state_dict(state["obs_norm"])

    def load_models(self, state):
        """Models and the observation statistics they were trained with (analysis entry points)."""
        for name in ("tokenizer", "world_model", "actor", "critic"):
            getattr(self, name).load_state_dict(state[name])
        if "obs_norm" in state:
            self.obs_norm.load_state_dict(state["obs_norm"])

    # -- open-loop model analysis (marie.analysis_entry: compounding error, action ranking) ----------
    def analysis_modules(self) -> list[torch.nn.Module]:
        return [self.tokenizer, self.world_model, self.actor, self.critic]

    def analysis_states(self, obs: np.ndarray, actions: np.ndarray) -> dict:
        """What imagination starts from after each observation of played episodes (obs [E, T+1, N, O] raw,
        actions [E, T, N(, m)] as played): MARIE imagines from one observation, so its normalised self."""
        return {"obs": self._tensor(self.obs_norm(obs))}

    @torch.no_grad()
    def open_loop(self, start: dict, actions: np.ndarray, chunk: int = 100) -> dict:
        """Imagine from each start (rows of analysis_states) under the given environment actions
        [B, H, N(, m)], H at most the world model's horizon: recon [B, H+1, N, O] (normalised space; h = 0 is
        the tokenizer's reconstruction) and reward [B, H] (the agents' heads averaged)."""
        if self.continuous:
            low, high = np.array(self.env_info.action_low), np.array(self.env_info.action_high)
            tokens = discretize_actions(np.asarray(actions), low, high, self.bins)
        else:
            tokens = np.asarray(actions)[..., None]
        B, H = tokens.shape[:2]
        if H > self.H:
            raise UserError(f"an open loop of {H} steps exceeds the world model's horizon {self.H}")
        begin = {"obs": start["obs"], "avail": None,
                 "stack": torch.zeros(B, self.N, self.S - 1, self.O, device=self.device, dtype=self.dtype),
                 "last": torch.full((B, self.N, self.m), -1, dtype=torch.long, device=self.device)}
        forced = torch.as_tensor(tokens, device=self.device, dtype=torch.long).transpose(0, 1)   # [H, B, N, m]
        traj = imagine(self.tokenizer, self.world_model, self.actor, begin, H, self.obs_cfg, self.n_choices,
                       chunk=chunk, forced_actions=forced)
        return {"recon": traj["recon"].float().transpose(0, 1), "reward": traj["reward"].float().mean(-1).T}


def continuation_weights(discount: torch.Tensor, label: float) -> torch.Tensor:
    """Dreamer's weighting of imagined steps: the probability that step t is still inside the episode, the
    product of the predicted continuations before it (each divided by the label the head is trained to
    output where the episode goes on, so a living agent keeps weight 1). discount [H, ...] -> [H, ...]."""
    cont = (discount / label).clamp(0.0, 1.0)
    return torch.cat([torch.ones_like(cont[:1]), torch.cumprod(cont[:-1], 0)], 0)


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """minGPT's AdamW grouping: weight decay on the weights of linear layers only."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            (decay if isinstance(module, torch.nn.Linear) and name == "weight" else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _mean_metrics(logs: list[dict], as_float: bool = True) -> dict:
    """Average metric dicts of tensors with a single host sync at the end."""
    if not logs:
        return {}
    sums = defaultdict(list)
    for m in logs:
        for k, v in m.items():
            sums[k].append(v)
    out = {}
    for k, v in sums.items():
        if all(torch.is_tensor(x) for x in v):
            out[k] = torch.stack([x.detach().float() for x in v]).mean()
        else:
            out[k] = torch.tensor(sum(float(x) for x in v) / len(v))
    return {k: float(v) for k, v in out.items()} if as_float else out
