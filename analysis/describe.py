"""What a table or figure shows, in its own caption: the backend, the preset, the budget actually run and
the evaluation protocol of the runs it is made of, and, first of all, whether that is the paper's setting.

The paper's setting is the preset `paper` at each map's budget of the paper (the map registry's `budget`,
marie/envs/maps.yaml; Table 1's steps for SMAC). Anything else (the demo, `small`, `smoke`, a shorter
budget) is said before any number.
"""
from __future__ import annotations

import pandas as pd

PAPER_PRESET = "paper"


def _paper_budget(map_name: str) -> int | None:
    from marie.envs.registry import all_maps
    spec = all_maps().get(map_name)
    return spec.budget if spec else None


def _steps(n) -> str:
    n = int(n)
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def setting(runs: pd.DataFrame) -> dict:
    """The setting of these runs (rows of Collection.runs): backend, presets, budgets run, protocol."""
    if not len(runs):
        return {}
    by = lambda col: runs.groupby(col, sort=False)["variant"].apply(list).to_dict()
    ran = runs.assign(run_steps=runs["last_env_steps"].fillna(runs["budget"]).astype(int))
    budgets = ran.groupby("map", sort=False)["run_steps"].agg(lambda s: sorted(set(s))).to_dict()
    reduced = {m: (b, _paper_budget(m)) for m, b in budgets.items()
               if _paper_budget(m) is not None and min(b) < _paper_budget(m)}
    presets = {str(k): v for k, v in by("preset").items()}
    return {"backend": sorted({str(e) for e in runs["env"]}), "presets": presets, "budgets": budgets,
            "reduced": reduced, "not_paper_preset": sorted(p for p in presets if p != PAPER_PRESET),
            "episodes": sorted({int(e) for e in runs["eval_episodes"].dropna()}),
            "every": sorted({int(e) for e in runs["eval_every"].dropna()}),
            "modes": sorted({str(m) for m in runs["eval_mode"].dropna() if m}), "runs": len(runs),
            "per_episode": int(runs["has_episodes"].fillna(False).astype(bool).sum())}


def caption(runs: pd.DataFrame, whose: str = "Ours") -> list[str]:
    """Caption lines: a warning first where this is not the paper's setting, then the setting."""
    s = setting(runs)
    if not s:
        return [f"{whose}: no complete runs yet."]
    out = []
    if s["not_paper_preset"] or s["reduced"]:
        why = []
        if s["not_paper_preset"]:
            why.append(f"preset {', '.join(f'`{p}`' for p in s['not_paper_preset'])} (the paper's: `{PAPER_PRESET}`)")
        if s["reduced"] and len(s["reduced"]) == len(s["budgets"]) > 2:   # every map: say it once
            ours = sorted({x for b, _ in s["reduced"].values() for x in b})
            paper = sorted({p for _, p in s["reduced"].values()})
            why.append(f"budget {'/'.join(_steps(x) for x in ours)} env steps per run, the paper's "
                       f"{_steps(paper[0])}{'-' + _steps(paper[-1]) if len(paper) > 1 else ''} per map")
        elif s["reduced"]:
            why.append("budget " + ", ".join(f"{m} {'/'.join(_steps(x) for x in b)} of the paper's {_steps(p)}"
                                              for m, (b, p) in s["reduced"].items()) + " env steps")
        out.append(f"**{whose}: not the paper's setting**: {'; '.join(why)}. Do not read these numbers as the "
                   f"paper's.")
    if len(s["modes"]) > 1 or len(s["episodes"]) > 1:
        out.append(f"**{whose}: runs with different evaluation protocols** ({' and '.join(s['modes'])} actions, "
                   f"{'/'.join(map(str, s['episodes']))} episodes): their numbers are not comparable.")
    budgets = {tuple(b) for b in s["budgets"].values()}
    budget = ("/".join(_steps(x) for x in next(iter(budgets))) + " env steps per run" if len(budgets) == 1 else
              ", ".join(f"{m} {'/'.join(_steps(x) for x in b)}" for m, b in s["budgets"].items()) + " env steps")
    modes = " and ".join(s["modes"]) or "unknown"
    eps = "/".join(map(str, s["episodes"])) or "?"
    every = (" every " + "/".join(_steps(x) for x in s["every"]) + " env steps") if s["every"] else ""
    per_ep = ("" if s["per_episode"] == s["runs"] else
              f"; {s['runs'] - s['per_episode']} run(s) predate per-episode records (eval_episodes.csv)")
    out.append(f"{whose}: backend `{', '.join(s['backend'])}`; preset {_presets(s['presets'])}; budget run: {budget}; "
               f"evaluation: {eps} episodes per point{every}, {modes} actions (both modes' "
               + ("returns are in tidy.csv: return_mean_greedy, return_mean_sampled" if s["backend"] == ["mamujoco"]
                  else "win rates are in tidy.csv: win_rate_greedy, win_rate_sampled")
               + f"){per_ep}; {s['runs']} run(s).")
    return out


def _presets(presets: dict[str, list]) -> str:
    if len(presets) == 1:
        return f"`{next(iter(presets))}`"
    return ", ".join(f"`{p}` ({', '.join(sorted(set(v)))})" for p, v in presets.items())
