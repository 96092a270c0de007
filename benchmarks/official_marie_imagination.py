#!/usr/bin/env python
"""CPU time of one imagination of the official MARIE code (breez3young/MARIE), to set beside this suite's
(`world_model_throughput.py --preset paper --only imagine`) in the same run (docs/marie.md, "Measured").

    git clone https://github.com/breez3young/MARIE /path/to/official      # unmodified
    python benchmarks/official_marie_imagination.py --official-src /path/to/official --rollouts 600

What is timed: `agent.optim.loss.trans_actor_rollout`, called as the official
`DreamerLearner.train_agent_with_transformer` calls it once per actor-critic epoch: all `rollouts` starts in one
batch (600 x 3 sequences, a KV cache of about 10 GB), VQ encoding and decoding, actor sampling with the
available-action mask, critic values and lambda-returns. Models: the official learner's constructor with its
SMAX config and the flags of its `train_smax.sh`, random weights, SMAX 3m shapes (3 agents, observations of 75,
8 actions), random inputs of the replay buffer's shapes (the work does not depend on their values: every
rollout runs the whole horizon). Deviations: device cpu; anomaly detection off after construction (the
learner turns it on; `--anomaly` keeps it); logging, debugging and type-hint-only imports that are not
installed (wandb, ipdb, gym, torchvision) replaced by empty modules. Prints one JSON line on stdout; the
official code's own output goes to stderr.
"""
import argparse
import contextlib
import gc
import json
import os
import resource
import sys
import time
import types

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--official-src", required=True, help="a checkout of breez3young/MARIE (unmodified)")
ap.add_argument("--rollouts", type=int, default=600, help="imagined starts (the official ac_batch_size: 600)")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--seed", type=int, default=123, help="the official train.py's seed for --seed 1 (23 + 100 * 1)")
ap.add_argument("--anomaly", action="store_true", help="keep anomaly detection on, as the official learner does")
opts = ap.parse_args()
OFFICIAL_SRC, R, KEEP_ANOMALY, THREADS, SEED = opts.official_src, opts.rollouts, opts.anomaly, opts.threads, opts.seed
if not os.path.isfile(os.path.join(OFFICIAL_SRC, "agent", "optim", "loss.py")):
    sys.exit(f"--official-src {OFFICIAL_SRC}: not a checkout of breez3young/MARIE (no agent/optim/loss.py)")

# SMAX "3m" shapes (what train.py's get_env_info would write into the configs)
N_AGENTS, OBS_DIM, N_ACTIONS = 3, 75, 8
WARMUP_R = 2

os.environ.setdefault("MPLBACKEND", "Agg")

# ----------------------------------------------------------------------------- stubs
def _stub(name, **attrs):
    m = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(m, k, v)
    sys.modules[name] = m
    return m

_noop = lambda *a, **k: None
for _name in ("wandb", "ipdb", "gym", "torchvision"):
    try:
        __import__(_name)
    except Exception:
        if _name == "wandb":
            _stub("wandb", log=_noop, init=_noop, finish=_noop)
        elif _name == "ipdb":
            _stub("ipdb", set_trace=_noop)
        elif _name == "gym":
            _stub("gym", Env=type("Env", (), {}))
        elif _name == "torchvision":
            tv = _stub("torchvision")
            tr = _stub("torchvision.transforms")
            fn = _stub("torchvision.transforms.functional", to_tensor=_noop)
            tv.transforms = tr
            tr.functional = fn

sys.path.insert(0, OFFICIAL_SRC)

import torch  # noqa: E402

torch.set_num_threads(THREADS)

# everything the official code prints goes to stderr; stdout gets only the JSON line
_real_stdout = sys.stdout
with contextlib.redirect_stdout(sys.stderr):
    from environments import Env
    from configs.dreamer.smax.SMAXLearnerConfig import SMAXDreamerLearnerConfig
    import agent.optim.loss as official_loss
    from agent.optim.loss import trans_actor_rollout

    # ---- config exactly as train.py (prepare_smax_configs + __main__) with train_smax.sh flags
    #      (--tokenizer vq --decay 0.8 --temperature 1.0 --sample_temp inf --ce_for_av)
    cfg = SMAXDreamerLearnerConfig()
    cfg.IN_DIM = OBS_DIM
    cfg.ACTION_SIZE = N_ACTIONS
    cfg.NUM_AGENTS = N_AGENTS
    cfg.CONTINUOUS_ACTION = False
    cfg.ACTION_SPACE = None
    cfg.ENV_TYPE = Env("smax")
    cfg.seed = SEED
    cfg.tokenizer_type = "vq"
    cfg.ema_decay = 0.8
    cfg.critic_average_r = False
    cfg.use_ce_for_r = False
    cfg.use_ce_for_end = False
    cfg.use_ce_for_av_action = True
    cfg.sample_temperature = "inf"
    cfg.RUN_DIR = "/tmp/marie_official_bench_run"
    cfg.map_name = "3m"
    # deviations: CPU instead of 'cuda'; keep the learner's wandb/ log folder out of the cwd
    cfg.DEVICE = "cpu"
    cfg.LOG_FOLDER = "/tmp/marie_official_bench_wandb/"

    torch.manual_seed(SEED)
    import numpy as np, random
    np.random.seed(SEED)
    random.seed(SEED)

    # ---- build tokenizer (SimpleVQAutoEncoder), MAWorldModel (transformer + Perceiver), actor,
    #      critic with the official DreamerLearner constructor (random init)
    learner = cfg.create_learner()

if not KEEP_ANOMALY:
    torch.autograd.set_detect_anomaly(False)

# ---- transparent timer around the inner imagination loop
_inner = {}
_orig_rpt = official_loss.rollout_policy_trans


def _timed_rollout_policy_trans(*a, **k):
    c0, w0 = time.process_time(), time.perf_counter()
    out = _orig_rpt(*a, **k)
    _inner["cpu"] = time.process_time() - c0
    _inner["wall"] = time.perf_counter() - w0
    return out


official_loss.rollout_policy_trans = _timed_rollout_policy_trans


def make_samples(n):
    """Shapes of replay_buffer.sample_batch(batch_num_samples=n, sequence_length=1) for SMAX
    (use_stack=False): observation (n,1,N,obs), av_action (n,1,N,A), filled (n,1)."""
    obs = torch.rand(n, 1, N_AGENTS, OBS_DIM) * 2 - 1
    av = (torch.rand(n, 1, N_AGENTS, N_ACTIONS) < 0.7).float()
    av[..., 0] = 1.0
    filled = torch.ones(n, 1, dtype=torch.bool)
    return {"observation": obs, "av_action": av, "filled": filled}


def official_imagine(samples):
    """The call in DreamerLearner.train_agent_with_transformer, verbatim arguments."""
    self = learner
    self.tokenizer.eval()
    self.model.eval()
    return trans_actor_rollout(samples['observation'],
                               samples['av_action'] if 'av_action' in samples else None,
                               samples['filled'],
                               self.tokenizer, self.model,
                               self.actor,
                               self.critic if self.env_type != Env.PETTINGZOO else self.old_critic,
                               self.config,
                               env_type=self.env_type,
                               external_rew_model=None,
                               use_stack=self.config.use_stack,
                               stack_obs_num=self.config.stack_obs_num if self.config.use_stack else None,
                               use_valuenorm=self.use_valuenorm,
                               value_normalizer=self.value_normalizer if self.use_valuenorm else None,
                               )


with contextlib.redirect_stdout(sys.stderr):
    # warm-up (2 starts)
    official_imagine(make_samples(WARMUP_R))
    samples = make_samples(R)
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    out = official_imagine(samples)
    cpu_s = time.process_time() - c0
    wall_s = time.perf_counter() - w0

actions, av_actions, old_policy, actor_feat, critic_feat, returns, old_values = out
n_params = lambda m: sum(p.numel() for p in m.parameters())
res = {
    "official_imagine_cpu_s": round(cpu_s, 4),
    "wall_s": round(wall_s, 4),
    "rollouts": R,
    "horizon": cfg.HORIZON,
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    "inner_rollout_policy_trans_cpu_s": round(_inner.get("cpu", float("nan")), 4),
    "inner_rollout_policy_trans_wall_s": round(_inner.get("wall", float("nan")), 4),
    "timed_fn": "agent.optim.loss.trans_actor_rollout",
    "config": "configs/dreamer/smax/SMAXLearnerConfig.py:SMAXDreamerLearnerConfig",
    "embed_dim": cfg.TRANS_EMBED_DIM, "layers": learner.model.config.num_layers,
    "heads": learner.model.config.num_heads, "obs_tokens": cfg.nums_obs_token,
    "tokens_per_block": learner.model.config.tokens_per_block,
    "max_tokens": learner.model.config.max_tokens,
    "params_world_model": n_params(learner.model), "params_tokenizer": n_params(learner.tokenizer),
    "params_actor": n_params(learner.actor), "params_critic": n_params(learner.critic),
    "out_actions_shape": list(actions.shape), "out_returns_shape": list(returns.shape),
    "anomaly_detection": bool(torch.is_anomaly_enabled()),
    "threads": torch.get_num_threads(), "torch": torch.__version__,
}
print(json.dumps(res), file=_real_stdout)
