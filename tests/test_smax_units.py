"""The unit types MARIE adds to SMAX (marie/envs/smax_units.py) and the five maps they make available.

Unit mechanics are checked on one small "lab" scenario holding every new type (one compilation), with
hand-placed units and explicit actions; the maps are checked through the backend, vmapped over 64 envs.
"""
import pickle

import numpy as np
import pytest

from marie.envs import all_maps, make_env
from tests.test_envs import check_timestep, random_actions

NEW_MAPS = ["1c3s5z", "MMM", "so_many_baneling", "2s_vs_1sc", "2c_vs_64zg"]

# lab units: allies colossus, medivac, zealot, zealot, stalker, marine; enemies spine crawler, baneling,
# 3 zerglings, marine
ALLIES, ENEMIES = (6, 7, 3, 3, 2, 0), (9, 8, 4, 4, 4, 0)
COLOSSUS, MEDIVAC, ZEALOT_A, ZEALOT_B, STALKER, MARINE = range(6)
SPINE, BANELING, LING_A, LING_B, LING_C, ENEMY_MARINE = range(6, 12)
N_ALLIES, N_UNITS = len(ALLIES), len(ALLIES) + len(ENEMIES)


@pytest.fixture(scope="module")
def lab():
    from marie.envs.smax import _import_jax
    jax = _import_jax()
    from marie.envs.smax_units import make_units_env
    wrapper = make_units_env(ALLIES, ENEMIES)
    env = wrapper._env  # the SMAX subclass itself: every unit takes explicit actions
    _, state = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step_env)

    def run(positions, actions=None, health=None, shields=None, steps=1):
        """Place every unit (others parked apart on a grid), then take `steps` env steps; all units stop
        unless `actions` ({unit index: action}) says otherwise."""
        import jax.numpy as jnp
        grid = np.array([[3.0 + 4.5 * (i % 6), 3.0 + 4.5 * (i // 6)] for i in range(N_UNITS)]) + [0, 18]
        for i, p in positions.items():
            grid[i] = p
        st = state.replace(unit_positions=jnp.asarray(grid, jnp.float32))
        for field, values in (("unit_health", health), ("unit_shields", shields)):
            if values:
                column = getattr(st, field).at[np.array(list(values))].set(jnp.asarray(list(values.values())))
                st = st.replace(**{field: column})
        acts = {a: jnp.int32(4) for a in env.agents}
        for i, a in (actions or {}).items():
            acts[env.agents[i]] = jnp.int32(a)
        before = st
        for k in range(steps):
            _, st, _, _, _ = step(jax.random.PRNGKey(k), st, acts)
        return env, before, st
    run.wrapper = wrapper
    return run


def ally_attacks(enemy: int) -> int:
    return 5 + enemy - N_ALLIES


def enemy_attacks(ally: int) -> int:
    return 5 + N_ALLIES - 1 - ally


def test_spine_crawler_never_moves_not_even_when_pushed(lab):
    spine_at, near = [16.0, 8.0], [16.3, 8.0]  # a stalker standing almost on top of the spine
    env, before, after = lab({SPINE: spine_at, STALKER: near}, actions={SPINE: 0, STALKER: 1}, steps=3)
    assert np.allclose(after.unit_positions[SPINE], spine_at)
    assert np.linalg.norm(after.unit_positions[STALKER] - np.array(spine_at)) > 1.5  # pushed off by all of it


def test_medivac_heals_an_ally_never_an_enemy(lab):
    env, before, after = lab({MEDIVAC: [16.0, 8.0], MARINE: [17.0, 8.0], ENEMY_MARINE: [15.0, 8.0]},
                             health={MARINE: 20.0, ENEMY_MARINE: 20.0})
    healed = float(after.unit_health[MARINE] - 20.0)
    assert healed == pytest.approx(12.6 * 0.5, rel=1e-4)  # SC2's 12.6 hp/s over one 0.5 s step
    assert float(after.unit_health[ENEMY_MARINE]) == 20.0
    # 1 energy per 3 hp, plus SC2's regeneration
    assert float(after.unit_energy[MEDIVAC]) == pytest.approx(50.0 - healed / 3 + 0.7875 * 0.5, rel=1e-4)


def test_medivac_cannot_attack_and_only_anti_air_units_can_hit_it(lab):
    env, before, _ = lab({MEDIVAC: [16.0, 8.0], ENEMY_MARINE: [18.0, 8.0], LING_A: [17.0, 8.5]})
    avail = env.get_avail_actions(before)
    assert not np.asarray(avail[env.agents[MEDIVAC]][5:]).any()
    assert avail[env.agents[ENEMY_MARINE]][enemy_attacks(MEDIVAC)] == 1
    assert avail[env.agents[LING_A]][enemy_attacks(MEDIVAC)] == 0  # in melee range, but it flies


def test_heuristic_enemy_sees_only_units_its_weapon_can_hit(lab):
    import jax.numpy as jnp
    env, before, _ = lab({MEDIVAC: [16.0, 8.0], ENEMY_MARINE: [18.0, 8.0], LING_A: [17.0, 8.5]})
    obs = env.get_obs(before)
    enemy_obs = jnp.stack([obs[a] for a in env.agents[N_ALLIES:]])
    masked = np.asarray(lab.wrapper.targetable_obs(enemy_obs, team=1))
    n_feat = len(env.unit_features)
    # an enemy sees the allies after its own team, in reverse order (SMAX's unit list)
    slot = len(ENEMIES) - 1 + (N_ALLIES - 1 - MEDIVAC)
    medivac_seen = lambda o, unit: o[unit - N_ALLIES, slot * n_feat: (slot + 1) * n_feat]  # noqa: E731
    assert np.abs(medivac_seen(np.asarray(enemy_obs), LING_A)).sum() > 0  # in sight...
    assert np.abs(medivac_seen(masked, LING_A)).sum() == 0                 # ...but hidden from the zergling
    assert np.array_equal(medivac_seen(masked, ENEMY_MARINE), medivac_seen(np.asarray(enemy_obs), ENEMY_MARINE))


def test_baneling_burst_damages_every_unit_in_its_radius_and_removes_it(lab):
    # zealots A and B within 2.2 (+ radius) of the baneling, the stalker out of it; a zergling (its own
    # team) inside the burst is spared
    env, before, after = lab({BANELING: [16.0, 8.0], ZEALOT_A: [17.5, 8.0], ZEALOT_B: [16.0, 10.2],
                              STALKER: [16.0, 4.5], LING_A: [14.8, 8.0]},
                             actions={BANELING: enemy_attacks(ZEALOT_A)})
    lost = np.asarray(before.unit_health - after.unit_health)
    assert lost[ZEALOT_A] == pytest.approx(35.0) and lost[ZEALOT_B] == pytest.approx(35.0)  # 16 (+19 light)
    assert lost[STALKER] == 0 and lost[LING_A] == 0
    assert not bool(after.unit_alive[BANELING]) and bool(after.unit_alive[ZEALOT_A])
    assert float(after.unit_shields[ZEALOT_A]) == pytest.approx(15.0)  # damage takes shields first


def test_colossus_hit_damages_every_unit_standing_together(lab):
    # three zerglings side by side across the line of fire; a fourth unit behind them, off the line
    env, before, after = lab({COLOSSUS: [10.0, 8.0], LING_A: [16.0, 8.0], LING_B: [16.0, 8.8],
                              LING_C: [16.0, 7.2], ENEMY_MARINE: [18.0, 8.0]},
                             actions={COLOSSUS: ally_attacks(LING_A)})
    lost = np.asarray(before.unit_health - after.unit_health)
    assert (lost[[LING_A, LING_B, LING_C]] == pytest.approx(30.0))  # 2 x (10 + 5 light)
    assert lost[ENEMY_MARINE] == 0


def test_shields_regenerate_after_a_quiet_spell(lab):
    env, before, after = lab({STALKER: [16.0, 8.0], ZEALOT_A: [16.0, 12.0]}, health={STALKER: 100.0, ZEALOT_A: 60.0},
                             shields={STALKER: 20.0, ZEALOT_A: 0.0}, steps=16)
    # quiet from the start: regeneration starts after 7.1 s (world steps of 1/16 s: from the 114th of the 128
    # in 8 s) at 2.8 shields/s, and restores shields only, never the hull
    assert float(after.unit_health[STALKER]) == pytest.approx(100.0 + 15 * 2.8 / 16, abs=1e-3)
    assert float(after.unit_shields[STALKER]) == pytest.approx(20.0 + 15 * 2.8 / 16, abs=1e-3)
    assert float(after.unit_health[ZEALOT_A]) == pytest.approx(60.0 + 15 * 2.8 / 16, abs=1e-3)


# -- the maps, through the backend ----------------------------------------------------------------------
@pytest.mark.parametrize("map_name", NEW_MAPS)
def test_new_maps_run_vmapped_and_match_the_registry(map_name):
    spec = all_maps()[map_name]
    support = spec.support("smax")
    assert support["status"] == "approximation" and support.get("note")
    env = make_env("smax", map_name, num_envs=64)
    info, sizes = env.info, support["sizes"]
    assert (info.n_agents, info.extra["n_enemies"]) == (spec.allies, spec.enemies)
    assert (info.obs_dim, info.state_dim, info.n_actions) == (sizes["obs"], sizes["state"], sizes["actions"])
    rng = np.random.default_rng(0)
    ts = env.reset(seed=0)
    check_timestep(ts, info, 64)
    first_enemy, reset_since = [], np.zeros(64, bool)
    for _ in range(12):
        ts = env.step(random_actions(ts, rng))
        check_timestep(ts, info, 64)
        first_enemy.append(env.get_state()[1].state.unit_positions[:, info.n_agents])
        reset_since |= ts.first
    assert np.isfinite(ts.obs).all() and np.isfinite(ts.state).all()
    # checkpoints pickle the state (with the added fields) and continue exactly from it
    snapshot, actions = pickle.dumps(env.get_state()), random_actions(ts, rng)
    first = env.step(actions)
    env.set_state(pickle.loads(snapshot))
    assert np.array_equal(env.step(actions).next_state, first.next_state)
    if map_name == "2s_vs_1sc":  # the spine crawler stands still under the heuristic enemy's move orders
        keep = ~reset_since
        assert keep.any() and np.allclose(first_enemy[0][keep], first_enemy[-1][keep])

