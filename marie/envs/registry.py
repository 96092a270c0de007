"""The map registry (a contract): for each paper map and backend, exact / approximation / unavailable.

The data lives in maps.yaml; this module answers questions about it and builds environments.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from marie.errors import UserError

BACKENDS = ("smax", "smac", "smacv2", "mamujoco")
MAPS_FILE = Path(__file__).parent / "maps.yaml"


@dataclass(frozen=True)
class MapSpec:
    name: str
    family: str             # smac | smacv2 | mamujoco
    allies: int
    enemies: int
    units: str
    difficulty: str
    budget: int
    episode_limit: int
    backends: dict          # backend -> {status, note, scenario, register, ...}

    def support(self, backend: str) -> dict:
        return self.backends.get(backend) or {"status": "unavailable",
                                              "note": f"not a {backend} task (a {self.family} map)"}

    def status(self, backend: str) -> str:
        return self.support(backend)["status"]


@functools.lru_cache(maxsize=None)
def all_maps() -> dict[str, MapSpec]:
    with open(MAPS_FILE) as f:
        raw = yaml.safe_load(f)["maps"]
    return {name: MapSpec(name=name, family=d["family"], allies=d["allies"], enemies=d.get("enemies", 0),
                          units=d["units"], difficulty=d["difficulty"], budget=d["budget"],
                          episode_limit=d["episode_limit"], backends=d["backends"])
            for name, d in raw.items()}


def available_maps(backend: str) -> list[str]:
    return [name for name, spec in all_maps().items() if spec.status(backend) != "unavailable"]


def get_map(backend: str, map_name: str) -> MapSpec:
    """The spec of a map the backend can run; a clear error naming the alternatives otherwise."""
    if backend not in BACKENDS:
        raise UserError(f"unknown env '{backend}'; valid envs: {', '.join(BACKENDS)}")
    maps = all_maps()
    if map_name not in maps:
        raise UserError(f"unknown map '{map_name}'; maps on {backend}: {', '.join(available_maps(backend))} "
                        f"(`marie maps` lists every map and backend)")
    spec = maps[map_name]
    support = spec.support(backend)
    if support["status"] == "unavailable":
        others = [b for b in BACKENDS if spec.status(b) != "unavailable"]
        raise UserError(f"map '{map_name}' is unavailable on {backend} ({support.get('note', '')}); "
                        f"it runs on: {', '.join(others) or 'no backend'}; maps on {backend}: "
                        f"{', '.join(available_maps(backend))}")
    return spec


def maps_table() -> str:
    """The registry as a plain-text table (`marie maps`)."""
    header = f"{'map':<18}{'agents':>7}{'enemies':>8}  {'difficulty':<10}{'budget':>9}  " + \
             "".join(f"{b:<15}" for b in BACKENDS)
    lines = [header, "-" * len(header)]
    notes = []
    for name, spec in all_maps().items():
        cells = ""
        for b in BACKENDS:
            sup = spec.support(b)
            if b not in spec.backends:
                cells += f"{'-':<15}"
                continue
            mark = {"exact": "exact", "approximation": "approx", "unavailable": "unavailable"}[sup["status"]]
            if sup.get("note"):
                notes.append(f"  {name} on {b} ({sup['status']}): {sup['note']}")
            cells += f"{mark:<15}"
        lines.append(f"{name:<18}{spec.allies:>7}{spec.enemies:>8}  {spec.difficulty:<10}{spec.budget:>9}  {cells}")
    return "\n".join(lines + ["", "Notes:"] + notes)
