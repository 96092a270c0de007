"""Shared test settings. SMAX compiles one function per (map, num_envs) and caches it per process
(marie/envs/smax.py), so tests should stick to the sizes used here: num_envs 4 for training,
eval_episodes 4 for evaluation (the `smoke` presets), on SMAX 3m."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SMOKE_NUM_ENVS = 4
SMOKE_EVAL_EPISODES = 4


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread avoids OpenMP contention on a small, shared CPU."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def smax_3m():
    """One SMAX 3m environment with the smoke size, shared by the whole session (reset it before use)."""
    from marie.envs import make_env
    return make_env("smax", "3m", SMOKE_NUM_ENVS)


def fill_with_random_play(agent, env, steps: int, seed: int = 0):
    """Feed `steps` vectorised steps of uniform random play into an agent's buffer; returns the last TimeStep."""
    import numpy as np
    from marie.algorithm import masked_uniform_actions
    rng = np.random.default_rng(seed)
    ts = env.reset(seed=seed)
    for _ in range(steps):
        actions = masked_uniform_actions(ts.avail, rng)
        nxt = env.step(actions)
        agent.observe(ts, actions, nxt)
        ts = nxt
    return ts
