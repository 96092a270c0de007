"""SMAX with SC2's colossus, medivac, baneling and spine crawler (docs/smax_maps.md).

SMAX takes its unit table as constructor arguments; what it cannot express lives in a subclass of its
world step, in JAX like the rest (jittable, vmappable):
  shields   the shield part of health is taken first by damage and regenerates after a quiet spell;
  splash    a colossus's attack hits every ground enemy on a short segment across its line of fire;
            a baneling's hits every ground enemy around itself and kills the baneling;
  healing   a medivac heals the most damaged biological ally in range, spending energy;
  static    a spine crawler has speed 0 and is not pushed by other units;
  air       a medivac can be hit only by units with anti-air weapons and does not collide with ground units;
  bonuses   extra damage against light units.
The heuristic enemy is JaxMARL's, shown only the units its own weapon can hit. Rewards count damage only,
so healing and shield regeneration never pay the other team.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import yaml

from marie.envs.smax import _import_jax

jax = _import_jax()  # sets JAX up (CPU, compile cache) before anything of JAX or JaxMARL is imported
import jax.numpy as jnp  # noqa: E402
from flax.struct import dataclass  # noqa: E402
from jaxmarl.environments.smax.smax_env import State as SMAXState  # noqa: E402

UNITS_FILE = Path(__file__).parent / "smax_units.yaml"
SPLASH_KINDS = ("none", "line", "burst")


@dataclass
class UnitsState(SMAXState):
    """SMAX's state and what the added behaviours remember (module level: checkpoints pickle it)."""
    unit_shields: jax.Array        # the shield part of unit_health
    unit_energy: jax.Array
    unit_since_damaged: jax.Array  # seconds since the unit last took damage (shields regenerate after)


@functools.lru_cache(maxsize=None)
def unit_table() -> dict:
    """The unit types as columns: name -> list over types (plus 'shield_regen')."""
    with open(UNITS_FILE) as f:
        raw = yaml.safe_load(f)
    rows = [dict(raw["defaults"], **u) for u in raw["units"]]
    table = {key: [row[key] for row in rows] for key in rows[0]}
    table["splash"] = [SPLASH_KINDS.index(s) for s in table["splash"]]
    table["shield_regen"] = raw["shield_regen"]
    return table


def unit_type_ids() -> dict[str, int]:
    return {name: i for i, name in enumerate(unit_table()["name"])}


def smax_unit_kwargs() -> dict:
    """SMAX's own constructor arguments for the whole table."""
    t = unit_table()
    col = lambda key: jnp.array(t[key], jnp.float32)  # noqa: E731
    return dict(unit_type_names=list(t["name"]), unit_type_shorthands=list(t["short"]),
                unit_type_velocities=col("velocity"), unit_type_attacks=col("attack"),
                unit_type_attack_ranges=col("attack_range"), unit_type_sight_ranges=col("sight_range"),
                unit_type_radiuses=col("radius"), unit_type_health=col("health"),
                unit_type_weapon_cooldowns=col("weapon_cooldown"))


def make_units_env(allies, enemies, max_steps: int = 100):
    """A HeuristicEnemySMAX over the extended unit table."""
    from jaxmarl.environments.smax import HeuristicEnemySMAX
    from jaxmarl.environments.smax.heuristic_enemy import create_heuristic_policy
    from jaxmarl.environments.smax.smax_env import SMAX, Scenario

    t = unit_table()
    col = lambda key, dtype=jnp.float32: jnp.array(t[key], dtype)  # noqa: E731
    shields_max, light = col("shields"), col("light", bool)
    biological, air, hits_air = col("biological", bool), col("air", bool), col("hits_air", bool)
    bonus_light, splash = col("bonus_light"), col("splash", jnp.int32)
    line_half_length, line_half_width, splash_radius = col("line_half_length"), col("line_half_width"), \
        col("splash_radius")
    heal_rate, heal_range, hp_per_energy = col("heal_rate"), col("heal_range"), col("hp_per_energy")
    energy_start, energy_max, energy_regen = col("energy_start"), col("energy_max"), col("energy_regen")
    regen_rate, regen_delay = float(t["shield_regen"]["rate"]), float(t["shield_regen"]["delay"])

    def can_hit(attacker_types, target_types):
        return ~air[target_types] | hits_air[attacker_types]

    class UnitsSMAX(SMAX):
        def reset(self, key):
            obs, st = SMAX.reset(self, key)
            fields = {f.name: getattr(st, f.name) for f in dataclasses.fields(st)}
            types = st.unit_types
            return obs, UnitsState(**fields, unit_shields=shields_max[types], unit_energy=energy_start[types],
                                   unit_since_damaged=jnp.zeros(self.num_agents))

        def compute_reward(self, state, health_before, health_after):
            # damage only: healing and shield regeneration of one team must not pay the other
            return SMAX.compute_reward(self, state, health_before, jnp.minimum(health_after, health_before))

        def _push_units_away(self, state, firmness: float = 1.0):
            types, alive, pos = state.unit_types, state.unit_alive, state.unit_positions
            pair = alive[:, None] & alive[None, :] & (air[types][:, None] == air[types][None, :])
            delta = pos[:, None] - pos[None, :]
            dist = jnp.linalg.norm(delta, axis=-1) + jnp.identity(self.num_agents) + 1e-6
            radii = self.unit_type_radiuses[types]
            overlap = jnp.where(pair, jax.nn.relu((radii[:, None] + radii[None, :]) / dist - 1.0), 0.0)
            # each of two mobile units moves half the way (as SMAX); a unit next to a static one moves all of it
            mobile = self.unit_type_velocities[types] > 0
            share = jnp.where(mobile[:, None], jnp.where(mobile[None, :], 0.5, 1.0), 0.0)
            moved = pos + firmness * jnp.sum(delta * (overlap * share)[:, :, None], axis=1)
            return state.replace(unit_positions=jnp.where(alive[:, None], moved, pos))

        def _shootable(self, state):
            """[N, N]: unit i could hit unit j now (range, both alive, anti-air)."""
            types, pos, alive = state.unit_types, state.unit_positions, state.unit_alive
            dist = jnp.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
            return ((dist < self.unit_type_attack_ranges[types][:, None]) & alive[:, None] & alive[None, :]
                    & can_hit(types[:, None], types[None, :]))

        def get_avail_actions(self, state):
            n_allies, n_move = self.num_allies, self.num_movement_actions
            shoot = self._shootable(state)
            alive = state.unit_alive
            moves = jnp.concatenate([jnp.repeat(alive[:, None], n_move - 1, axis=1),
                                     jnp.ones((self.num_agents, 1), bool)], axis=1)
            # an ally's attack k targets enemy k; an enemy's attack k targets ally n_allies - 1 - k (SMAX's order)
            ally = jnp.concatenate([moves[:n_allies], shoot[:n_allies, n_allies:]], axis=1)
            enemy = jnp.concatenate([moves[n_allies:], shoot[n_allies:, :n_allies][:, ::-1]], axis=1)
            masks = [ally[i] for i in range(n_allies)] + [enemy[i] for i in range(self.num_enemies)]
            return {a: m.astype(jnp.uint8) for a, m in zip(self.agents, masks)}

        def _world_step(self, key, state, actions):
            move, attack = actions
            n, n_allies, n_move, dt = self.num_agents, self.num_allies, self.num_movement_actions, \
                self.time_per_step
            types, pos, alive, teams = state.unit_types, state.unit_positions, state.unit_alive, state.unit_teams
            idx = jnp.arange(n)
            radius = self.unit_type_radiuses[types]

            new_pos = pos + move * (self.unit_type_velocities[types] * dt)[:, None]
            new_pos = jnp.clip(new_pos, 0.0, jnp.array([self.map_width, self.map_height]))
            new_pos = jnp.where(alive[:, None], new_pos, pos)

            # who fires at whom (attack positions are taken before the move, as in SMAX)
            target = jnp.where(idx < n_allies, attack + n_allies - n_move, n_allies - 1 - (attack - n_move))
            target = jnp.clip(jnp.where(attack < n_move, idx, target), 0, n - 1)
            fires = (self._shootable(state)[idx, target] & (target != idx)
                     & (state.unit_weapon_cooldowns <= 0.0) & (self.unit_type_attacks[types] > 0))

            # which units each shot hits
            t_pos = pos[target]
            aim = t_pos - pos
            aim = aim / (jnp.linalg.norm(aim, axis=-1, keepdims=True) + 1e-6)
            rel = pos[None, :, :] - t_pos[:, None, :]                      # [shooter, unit, xy]
            along = jnp.abs(jnp.sum(rel * aim[:, None, :], axis=-1))
            across = jnp.abs(rel[..., 0] * aim[:, None, 1] - rel[..., 1] * aim[:, None, 0])
            on_line = ((along <= line_half_width[types][:, None] + radius[None, :])
                       & (across <= line_half_length[types][:, None] + radius[None, :]))
            around = (jnp.linalg.norm(pos[None, :, :] - pos[:, None, :], axis=-1)
                      <= splash_radius[types][:, None] + radius[None, :])
            kind = splash[types][:, None]
            area = (jnp.where(kind == 1, on_line, around) & (teams[:, None] != teams[None, :])
                    & ~air[types][None, :] & alive[None, :])
            single = idx[None, :] == target[:, None]
            hits = fires[:, None] & jnp.where(kind == 0, single, single | area)
            damage = self.unit_type_attacks[types][:, None] + bonus_light[types][:, None] * light[types][None, :]
            received = jnp.sum(jnp.where(hits, damage, 0.0), axis=0)

            health = jnp.maximum(state.unit_health - received, 0.0)
            health = jnp.where(fires & (splash[types] == 2), 0.0, health)  # a baneling dies by its burst
            shields = jnp.maximum(state.unit_shields - received, 0.0)

            # medivacs: heal the most damaged biological ally in range, energy permitting
            cap = self.unit_type_health[types] - shields_max[types] + shields  # hull points + current shields
            missing = jnp.where(alive & biological[types] & (health > 0), jnp.maximum(cap - health, 0.0), 0.0)
            dist = jnp.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
            patients = ((teams[:, None] == teams[None, :]) & (idx[:, None] != idx[None, :])
                        & (dist < heal_range[types][:, None]) & (missing[None, :] > 0))
            patient = jnp.argmax(jnp.where(patients, missing[None, :], -1.0), axis=1)
            energy = state.unit_energy
            heal = jnp.minimum(heal_rate[types] * dt, energy * hp_per_energy[types])
            heal = jnp.where(alive & jnp.any(patients, axis=1), jnp.minimum(heal, missing[patient]), 0.0)
            health = jnp.minimum(health + jnp.zeros(n).at[patient].add(heal), jnp.maximum(cap, health))
            energy = jnp.minimum(energy - heal / hp_per_energy[types] + energy_regen[types] * dt,
                                 energy_max[types])

            # shields regenerate after regen_delay seconds without damage
            since = jnp.where(received > 0, 0.0, state.unit_since_damaged + dt)
            regen = jnp.where((since >= regen_delay) & alive & (health > 0),
                              jnp.minimum(regen_rate * dt, shields_max[types] - shields), 0.0)

            # SMAX's weapon cooldown, with its random deviation of the next cooldown
            deviation = jax.random.uniform(key, (n,), minval=-dt, maxval=2 * dt)
            cooldown = jnp.where(fires, self.unit_type_weapon_cooldowns[types] + deviation,
                                 state.unit_weapon_cooldowns - dt)
            return state.replace(unit_positions=new_pos, unit_health=health + regen, unit_shields=shields + regen,
                                 unit_energy=energy, unit_since_damaged=since, unit_weapon_cooldowns=cooldown)

    def mask_obs(env, obs, team: int):
        """Hide, in each unit's unit-list observation (obs: [units of `team`, obs_dim]), the other team's units
        its weapon cannot hit, so that JaxMARL's heuristic neither aims at nor chases them."""
        n_feat, bits, n_others = len(env.unit_features), env.unit_type_bits, env.num_agents - 1
        others = obs[:, : n_others * n_feat].reshape(obs.shape[0], n_others, n_feat)
        seen_bits = others[..., 7: 7 + bits]  # the observed unit's one-hot type (zero when unseen)
        seen_air = air[jnp.argmax(seen_bits, axis=-1)] & (jnp.sum(seen_bits, axis=-1) > 0)
        blind = seen_air & ~hits_air[jnp.argmax(obs[:, -bits:], axis=-1)][:, None]
        own_team_size = env.num_allies if team == 0 else env.num_enemies
        other_team = jnp.arange(n_others) >= own_team_size - 1  # own team first, then the other (SMAX's order)
        others = jnp.where((blind & other_team[None, :])[..., None], 0.0, others)
        return jnp.concatenate([others.reshape(obs.shape[0], -1), obs[:, n_others * n_feat:]], axis=1)

    class UnitsHeuristicSMAX(HeuristicEnemySMAX):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)  # builds a plain SMAX first; replaced by the subclass below
            kwargs.pop("enemy_shoots", None), kwargs.pop("attack_mode", None)
            self._env = UnitsSMAX(**kwargs)
            self.heuristic_policy = create_heuristic_policy(self._env, 1, shoot=self.enemy_shoots,
                                                            attack_mode=self.attack_mode)
            self.observation_spaces = {a: self._env.observation_spaces[a] for a in self.agents}
            self.action_spaces = {a: self._env.action_spaces[a] for a in self.agents}

        def targetable_obs(self, obs, team: int):
            return mask_obs(self._env, obs, team)

        def get_enemy_actions(self, key, policy_state, enemy_obs):
            return super().get_enemy_actions(key, policy_state, mask_obs(self._env, enemy_obs, team=1))

        def ally_heuristic(self):
            """JaxMARL's heuristic for the allies (baseline measurements): (key, policy_state, obs [N, O])."""
            policy = jax.vmap(create_heuristic_policy(self._env, 0))

            def act(key, policy_state, obs):
                return policy(jax.random.split(key, self.num_allies), policy_state, mask_obs(self._env, obs, 0))
            return act

    scenario = Scenario(jnp.array(list(allies) + list(enemies), dtype=jnp.uint8), len(allies), len(enemies),
                        False, False)
    return UnitsHeuristicSMAX(scenario=scenario, max_steps=max_steps, **smax_unit_kwargs())
