"""Environment backends behind one protocol (base.py) and the map registry (registry.py)."""
from marie.envs.base import EnvInfo, MultiAgentVecEnv, TimeStep, discretize_actions, undiscretize_actions
from marie.envs.registry import BACKENDS, MapSpec, all_maps, available_maps, get_map, maps_table

__all__ = ["EnvInfo", "MultiAgentVecEnv", "TimeStep", "discretize_actions", "undiscretize_actions", "BACKENDS",
           "MapSpec", "all_maps", "available_maps", "get_map", "maps_table", "make_env", "check_backend"]


def check_backend(env: str, map_name: str) -> MapSpec:
    """Everything that can be checked before any work starts: the map, and the backend's packages."""
    spec = get_map(env, map_name)
    if env in ("smac", "smacv2"):
        from marie.envs.starcraft import require_starcraft
        require_starcraft(env)
    return spec


def make_env(env: str, map_name: str, num_envs: int = 1, **options) -> MultiAgentVecEnv:
    spec = check_backend(env, map_name)
    if env == "smax":
        from marie.envs.smax import SMAXVecEnv
        return SMAXVecEnv(spec, num_envs)
    if env == "mamujoco":
        from marie.envs.mamujoco import MaMuJoCoVecEnv
        return MaMuJoCoVecEnv(spec, num_envs)
    from marie.envs.starcraft import StarCraftVecEnv
    return StarCraftVecEnv(spec, num_envs, env, max_restarts=options.get("sc2_restarts", 5))
