"""Environment backends behind one protocol (base.py) and the map registry (registry.py)."""
from marie.errors import UserError
from marie.envs.base import EnvInfo, MultiAgentVecEnv, RewardScale, TimeStep, discretize_actions, undiscretize_actions
from marie.envs.registry import BACKENDS, MapSpec, all_maps, available_maps, get_map, maps_table

__all__ = ["EnvInfo", "MultiAgentVecEnv", "RewardScale", "TimeStep", "discretize_actions", "undiscretize_actions",
           "BACKENDS", "MapSpec", "all_maps", "available_maps", "get_map", "maps_table", "make_env", "check_backend",
           "resolve_reward_scale", "SMAC_REWARD_SCALE"]

# The reward convention (docs/rewards.md): SMAC's scale on every SMAC-like backend. SMAC normalises a
# won episode's return to 20 (reward_scale_rate 20); SMAX's reward (enemy health removed, summing to 1,
# plus a win bonus of 1) reaches 2, so SMAX is scaled x10. MaMuJoCo keeps its own scale.
SMAC_REWARD_SCALE = {"smax": 10.0, "smac": 1.0, "smacv2": 1.0, "mamujoco": 1.0}


def check_backend(env: str, map_name: str) -> MapSpec:
    """Everything that can be checked before any work starts: the map, and the backend's packages."""
    spec = get_map(env, map_name)
    if env in ("smac", "smacv2"):
        from marie.envs.starcraft import require_starcraft
        require_starcraft(env)
    return spec


def resolve_reward_scale(env: str, value) -> float:
    """run.reward_scale -> the factor: None (SMAC's scale on this backend) or a positive number."""
    if value is None:
        return SMAC_REWARD_SCALE[env]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"run.reward_scale must be null (SMAC's scale) or a positive number, got {value!r}")
    return float(value)


def make_env(env: str, map_name: str, num_envs: int = 1, reward_scale: float | None = None,
             **options) -> MultiAgentVecEnv:
    """The backend's environments, their rewards times `reward_scale` (None: SMAC's scale, the convention)."""
    scale = resolve_reward_scale(env, reward_scale)
    built = _make_backend(env, map_name, num_envs, **options)
    return built if scale == 1.0 else RewardScale(built, scale)


def _make_backend(env: str, map_name: str, num_envs: int, **options) -> MultiAgentVecEnv:
    spec = check_backend(env, map_name)
    if env == "smax":
        from marie.envs.smax import SMAXVecEnv
        return SMAXVecEnv(spec, num_envs)
    if env == "mamujoco":
        from marie.envs.mamujoco import MaMuJoCoVecEnv
        return MaMuJoCoVecEnv(spec, num_envs)
    from marie.envs.starcraft import StarCraftVecEnv
    return StarCraftVecEnv(spec, num_envs, env, max_restarts=options.get("sc2_restarts", 5))
