"""QPLEX (Wang et al. 2021): duplex dueling value decomposition, Q_tot = V_tot + A_tot.

Same learner as QMIX (baselines/common/value_decomposition.py) with the duplex dueling mixer of the
reference's SMAC configuration (baselines/common/mixers.py: attention over agents with 4 heads, lambda
networks of 1 layer = Table 9, the advantage term detached, the attention-logit penalty, 100 episodes of
burn-in). Presets: baselines/configs/qplex.yaml (paper = Table 9; `eps10k` = Table 11's epsilon_anneal_time
10k). docs/value_decomposition.md lists each choice against the reference.
"""
from __future__ import annotations

from pathlib import Path

from baselines.common.mixers import DuplexMixer
from baselines.common.value_decomposition import ValueDecompositionLearner


class QPLEX(ValueDecompositionLearner):
    preset_file = Path(__file__).parent / "configs" / "qplex.yaml"

    def mixer_state_dim(self) -> int:
        return self.state_dim

    def build_mixer(self):
        p = self.params
        return DuplexMixer(self.n_agents, self.n_actions, self.mixer_state_dim(), self.obs_dim, p["mixing_embed_dim"],
                           p["attention_heads"], p["adv_kernels"], p["hypernet_layers"], p["hypernet_embed"],
                           weighted_head=p["weighted_head"], attend_reg_coef=p["attend_reg_coef"],
                           stop_advantage_gradient=p["stop_advantage_gradient"])
