"""QMIX (Rashid et al. 2018): monotonic value decomposition with a hypernetwork mixer.

The learner (agent network, episode replay, double Q-learning, target copies, epsilon schedule) is the
shared pymarl-style one in baselines/common/value_decomposition.py; QMIX only chooses its mixer.
Presets: baselines/configs/qmix.yaml (paper = Table 8; `eps10k` = Table 11's epsilon_anneal_time 10k).
"""
from __future__ import annotations

from pathlib import Path

from baselines.common.mixers import QMixer
from baselines.common.value_decomposition import ValueDecompositionLearner


class QMIX(ValueDecompositionLearner):
    preset_file = Path(__file__).parent / "configs" / "qmix.yaml"

    def build_mixer(self):
        p = self.params
        return QMixer(self.n_agents, self.state_dim, p["mixing_embed_dim"], p["hypernet_layers"], p["hypernet_embed"])
