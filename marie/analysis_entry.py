"""Model analysis of a finished (or checkpointed) MARIE or MAMBA run, written under the run's analysis/ folder.

    python -m marie.analysis_entry compounding-error --run DIR [--episodes 10] [--segments 1000] [--horizon H]
    python -m marie.analysis_entry attention --run DIR [--segment-seed 0]          (MARIE)
    python -m marie.analysis_entry action-ranking --run DIR [--states 40] [--sequences 8] [--noise 0.3]

Each agent imagines open loop through two methods (`analysis_states`, `open_loop`): MARIE from one real
observation (its imagination's start), MAMBA from its posterior after filtering the real episode so far.
compounding-error (Fig. 7): play `episodes` episodes with the run's final policy, draw `segments` random
segments of H+1 observations inside them, imagine each one open loop from its first step under the real
actions, and compare: L1 error per observation dimension between the real observation o_{t+h} and the
imagined ô_{t+h}, for h = 0..H (h = 0 is the reconstruction error: MARIE's tokenizer, MAMBA's decoder of
the posterior). H defaults to the agent's imagination horizon.
    analysis/compounding_error.csv   horizon,l1_mean,l1_std,l1_sem,n_segments
    analysis/compounding_error.json  what was measured (run, map, episodes, segments, policy, seed, start)
action-ranking (continuous control, issue 15): can imagination tell better actions from worse ones? From
`states` states of one episode played by the run's final policy, `sequences` open-loop action sequences of
H steps each (the played actions plus N(0, noise) per dimension, clipped, on the bin centres): the real H-step
reward sum (the environment restored to the state) against the imagined one (from the state as above, the
same actions). Correlations over all pairs (mostly the state's doing) and within each state (what a
policy gradient in imagination can use).
    analysis/action_ranking.json
attention (Fig. 8-9, MARIE): one real segment of H transitions from the run's replay buffer through the
world model with attention recording on.
    analysis/attention.npz (numpy arrays; docs/marie.md describes them)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from marie.errors import UserError
from marie.rundir import RunDir, atomic_write_text, rows_to_csv


# the algorithms whose agents imagine open loop (analysis_states, open_loop): compounding error, action ranking
OPEN_LOOP = ("marie", "mamba")


def load_agent(run: str | Path, full: bool = False):
    from marie.algorithm import algorithm_class
    from marie.envs import make_env
    from marie.envs.base import EnvInfo
    rundir = RunDir(run)
    config = rundir.existing_config()
    if config is None:
        raise UserError(f"{rundir.path} is not a run directory (no config.yaml)")
    if config["algo"] not in OPEN_LOOP:
        raise UserError(f"{rundir.path} is a run of '{config['algo']}', which has no world model to analyse "
                        f"(the analyses take runs of {', '.join(OPEN_LOOP)})")
    ck = rundir.load_checkpoint()
    if ck is None:
        raise UserError(f"{rundir.path} has no checkpoint to analyse")
    if config["run"].get("torch_threads"):
        torch.set_num_threads(int(config["run"]["torch_threads"]))
    env_info = rundir.read_meta().get("env_info")
    if env_info:
        info = EnvInfo(**{**env_info, "action_low": tuple(env_info.get("action_low", ())),
                          "action_high": tuple(env_info.get("action_high", ()))})
    else:
        env = make_env(config["env"], config["map"], 1)
        info = env.info
        env.close()
    cls = algorithm_class(config["algo"])
    agent = cls(info, config["params"], config["run"], torch.device(config["run"]["device"]), int(config["seed"]))
    if full:
        agent.load_state_dict(ck["algo"])
    else:
        agent.load_models(ck["algo"])
    for m in agent.analysis_modules():
        m.eval()
    return agent, config, rundir, ck


def play_episodes(agent, config, episodes: int, seed: int) -> list[dict]:
    """One episode per environment, `episodes` environments in parallel, with the agent's evaluation policy."""
    from marie.envs import make_env
    env = make_env(config["env"], config["map"], episodes, reward_scale=config["run"].get("reward_scale", 1.0))
    ts = env.reset(seed=seed)
    carry = agent.initial_carry(episodes)
    obs, acts = [ts.obs], []
    finished = np.zeros(episodes, bool)
    length = np.zeros(episodes, int)
    with torch.no_grad():
        while not finished.all():
            actions, carry = agent.act(ts, carry, training=False, greedy=not config["run"].get("eval_sample"))
            nxt = env.step(actions)
            acts.append(np.asarray(actions))
            obs.append(np.asarray(nxt.next_obs))
            length += ~finished
            finished |= nxt.done
            ts = nxt
    env.close()
    obs, acts = np.stack(obs, 1), np.stack(acts, 1)            # [E, T+1, N, O], [E, T, N(, m)]
    return [{"obs": obs[e, : length[e] + 1], "actions": acts[e, : length[e]]} for e in range(episodes)]


def _padded(episodes: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Played episodes of different lengths as arrays [E, T+1, N, O] and [E, T, N(, m)] (T the longest;
    each padded with its last entry, which no segment inside the episode reads)."""
    T = max(len(ep["actions"]) for ep in episodes)
    pad = lambda x, n: np.concatenate([x, np.repeat(x[-1:], n - len(x), 0)]) if len(x) < n else x
    return (np.stack([pad(ep["obs"], T + 1) for ep in episodes]),
            np.stack([pad(ep["actions"], T) for ep in episodes]))


def compounding_error(run: str, episodes: int = 10, segments: int = 1000, horizon: int | None = None,
                      seed: int = 0, chunk: int = 100) -> Path:
    agent, config, rundir, _ = load_agent(run)
    H = horizon or agent.H
    if config["algo"] == "marie" and H > agent.H:
        raise UserError(f"--horizon {H} exceeds the world model's horizon {agent.H}")
    torch.manual_seed(seed)
    eps = play_episodes(agent, config, episodes, seed=987_654 + seed)
    usable = [(i, t) for i, ep in enumerate(eps) for t in range(len(ep["actions"]) - H + 1)]
    if not usable:
        raise UserError(f"no episode is longer than the horizon {H}; lower --horizon")
    rng = np.random.default_rng(seed)
    ep_i, t0 = np.array([usable[j] for j in rng.integers(len(usable), size=segments)]).T
    obs, acts = _padded(eps)
    steps = t0[:, None] + np.arange(H + 1)
    real = agent.obs_norm(obs[ep_i[:, None], steps])     # [B, H+1, N, O] in the space the models work in
    states = agent.analysis_states(obs, acts)
    start = {k: v[torch.as_tensor(ep_i), torch.as_tensor(t0)] for k, v in states.items()}
    imagined = agent.open_loop(start, acts[ep_i[:, None], steps[:, :H]], chunk=chunk)
    err = np.abs(imagined["recon"].cpu().numpy() - real).mean(axis=(2, 3)).T          # [H+1, B]
    B = len(ep_i)
    rows = [{"horizon": h, "l1_mean": float(err[h].mean()), "l1_std": float(err[h].std()),
             "l1_sem": float(err[h].std() / np.sqrt(B)), "n_segments": B} for h in range(H + 1)]
    out = rundir.analysis_dir / "compounding_error.csv"
    atomic_write_text(out, rows_to_csv(["horizon", "l1_mean", "l1_std", "l1_sem", "n_segments"], rows))
    meta = {"run": str(rundir.path), "algo": config["algo"], "env": config["env"], "map": config["map"],
            "episodes": episodes, "segments": B, "horizon": H, "seed": seed, "policy": "final checkpoint, "
            f"evaluation policy ({'sampled' if config['run'].get('eval_sample') else 'greedy'})",
            "actions": "real (open loop)", "start": START[config["algo"]],
            **({"tokens": "sampled from the world model"} if config["algo"] == "marie" else
               {"states": "stochastic states sampled from the prior"}),
            "observations": "normalised (params.obs_norm)" if agent.obs_norm.enabled else "raw",
            "episode_lengths": [len(e["actions"]) for e in eps]}
    atomic_write_text(rundir.analysis_dir / "compounding_error.json", json.dumps(meta, indent=2) + "\n")
    return out


# where each algorithm's open loop starts (what it knows of the real episode)
START = {"marie": "the real observation at the segment's first step (imagination starts from one observation)",
         "mamba": "the posterior state after filtering the real episode up to the segment's first step"}


def action_ranking(run: str, states: int = 40, sequences: int = 8, noise: float = 0.3, seed: int = 0) -> Path:
    from marie.envs import make_env
    from marie.envs.base import discretize_actions, undiscretize_actions
    agent, config, rundir, _ = load_agent(run)
    if not agent.continuous:
        raise UserError(f"{rundir.path} is a run on {config['env']}: action-ranking needs continuous actions")
    H, S, K = agent.H, states, sequences
    low, high = np.array(agent.env_info.action_low), np.array(agent.env_info.action_high)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = make_env(config["env"], config["map"], 1, reward_scale=config["run"].get("reward_scale", 1.0))
    ts = env.reset(seed=555_555 + seed)
    limit = env.info.episode_limit
    if limit < H + 1 or S > limit - H:
        raise UserError(f"--states {S} needs an episode of at least {S + H} steps (the limit is {limit})")
    times = set(rng.choice(np.arange(limit - H), size=S, replace=False).tolist())
    carry, snaps, played, seen = agent.initial_carry(1), [], [], [ts.obs[0].copy()]
    with torch.no_grad():
        for t in range(limit):
            if t in times:
                snaps.append((t, env.get_state()))
            a, carry = agent.act(ts, carry, training=False, greedy=not config["run"].get("eval_sample"))
            played.append(a[0])
            ts = env.step(a)
            seen.append(np.asarray(ts.next_obs[0]).copy())
            if ts.done[0]:
                break
    snaps = [x for x in snaps if x[0] + H <= len(played)]
    if len(snaps) < 2:
        env.close()
        raise UserError("the policy's episode ended before two of the chosen states; lower --states")
    played = np.stack(played)
    true, seqs = np.zeros((len(snaps), K)), []
    for s, (t, snap) in enumerate(snaps):
        for k in range(K):
            seq = np.clip(played[t:t + H] + rng.normal(0, noise, played[t:t + H].shape), low, high)
            seq = undiscretize_actions(discretize_actions(seq, low, high, agent.bins), low, high, agent.bins)
            env.set_state(snap)
            true[s, k] = sum(float(env.step(seq[h][None]).reward[0]) for h in range(H))
            seqs.append(seq)
    env.close()
    # each sequence starts from what the model knows at its state: the episode so far, as the agent saw it
    at = torch.as_tensor(np.repeat([t for t, _ in snaps], K))
    known = agent.analysis_states(np.stack(seen)[None], played[None])
    imagined = agent.open_loop({k: v[0, at] for k, v in known.items()}, np.stack(seqs))
    imag = imagined["reward"].sum(1).cpu().numpy().reshape(true.shape)
    # correlation within a state: undefined (left out) where either side has no spread
    within = [float(np.corrcoef(true[s], imag[s])[0, 1]) for s in range(len(true))
              if true[s].std() > 0 and imag[s].std() > 0]
    result = {"run": str(rundir.path), "algo": config["algo"], "map": config["map"], "horizon": H,
              "states": len(true), "sequences": K, "noise": noise, "seed": seed, "start": START[config["algo"]],
              "true_sum_mean": float(true.mean()), "imagined_sum_mean": float(imag.mean()),
              "true_spread_within_state": float(true.std(1).mean()),
              "imagined_spread_within_state": float(imag.std(1).mean()),
              "corr_all": float(np.corrcoef(true.ravel(), imag.ravel())[0, 1]),
              "corr_within_state_mean": float(np.mean(within)) if within else None,
              "corr_within_state_median": float(np.median(within)) if within else None,
              "states_with_spread": len(within)}
    out = rundir.analysis_dir / "action_ranking.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return out


def attention(run: str, segment_seed: int = 0) -> Path:
    agent, config, rundir, _ = load_agent(run, full=True)
    if config["algo"] != "marie":
        raise UserError(f"{rundir.path} is a run of '{config['algo']}': attention maps are MARIE's (Fig. 8-9)")
    wm = agent.world_model
    torch.manual_seed(segment_seed)
    batch = agent.world_model_batch(1)
    wm.record_attention(True)
    with torch.no_grad():
        wm.forward_sequence(batch["obs_tokens"], batch["actions"])
    layers = np.stack([b.attn.last_weights.float().cpu().numpy() for b in wm.transformer.blocks], 0)  # [Ly,S,h,T,T]
    T = layers.shape[-1]
    kinds = np.array((["obs"] * wm.Ko + ["act"] * wm.Ka + (["agg"] if wm.aggregate else [])) * wm.horizon
                     + ["obs"] * (wm.Ko - 1))
    steps = np.concatenate([np.repeat(np.arange(wm.horizon), wm.tps), np.full(wm.Ko - 1, wm.horizon)])
    data = {"transformer": layers.transpose(1, 0, 2, 3, 4), "token_kind": kinds[:T], "token_step": steps[:T],
            "step_mask": batch["step_mask"][0].cpu().numpy(), "tokens_per_step": np.array(wm.tps),
            "n_agents": np.array(agent.N)}
    if wm.aggregate:
        cross = wm.perceiver.cross.last_weights.float().cpu().numpy()    # [L, heads, N, N*(K+m)]
        per = agent.tokenizer.tokens + agent.m
        data["perceiver_cross"] = cross
        data["input_agent"] = np.repeat(np.arange(agent.N), per)
        data["input_kind"] = np.array((["obs"] * agent.tokenizer.tokens + ["act"] * agent.m) * agent.N)
    wm.record_attention(False)
    out = rundir.analysis_dir / "attention.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".attention.tmp.npz")
    np.savez_compressed(tmp, **data)
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m marie.analysis_entry", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compounding-error")
    c.add_argument("--run", required=True)
    c.add_argument("--episodes", type=int, default=10)
    c.add_argument("--segments", type=int, default=1000)
    c.add_argument("--horizon", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--chunk", type=int, default=100, help="segments imagined at once")
    r = sub.add_parser("action-ranking")
    r.add_argument("--run", required=True)
    r.add_argument("--states", type=int, default=40)
    r.add_argument("--sequences", type=int, default=8)
    r.add_argument("--noise", type=float, default=0.3, help="std of the perturbation, in action units")
    r.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("attention")
    a.add_argument("--run", required=True)
    a.add_argument("--segment-seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "compounding-error":
            out = compounding_error(args.run, args.episodes, args.segments, args.horizon, args.seed, args.chunk)
        elif args.cmd == "action-ranking":
            out = action_ranking(args.run, args.states, args.sequences, args.noise, args.seed)
        else:
            out = attention(args.run, args.segment_seed)
    except UserError as exc:
        print(f"marie: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
