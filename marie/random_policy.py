"""`random`: uniform over each agent's available actions (uniform in the bounds for continuous actions).

The floor every learning algorithm must clear: on SMAX 3m it wins 0 of 50 episodes.
"""
from __future__ import annotations

import numpy as np

from marie.algorithm import Algorithm, masked_uniform_actions
from marie.config import CONFIG_DIR


class RandomPolicy(Algorithm):
    preset_file = CONFIG_DIR / "random.yaml"
    action_spaces = ("discrete", "continuous")

    def __init__(self, env_info, params, run, device, seed):
        super().__init__(env_info, params, run, device, seed)
        self.rng = np.random.default_rng(seed)

    def act(self, ts, carry, training, greedy=True):  # uniform in both modes
        if self.env_info.continuous:
            low, high = np.array(self.env_info.action_low), np.array(self.env_info.action_high)
            return self.rng.uniform(low, high, size=ts.avail.shape).astype(np.float32), carry
        return masked_uniform_actions(ts.avail, self.rng), carry

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
