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
