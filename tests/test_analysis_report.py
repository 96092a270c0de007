"""The analysis on run directories written as the runtime writes them (eval.csv with both action modes,
eval_episodes.csv, meta.json with cpu_s and eval_protocol) and on older ones without them: runs identified
by their meta.json, captions that say what is shown, the reference reproduction beside ours, the cost table,
the marl-eval export read back by marl-eval itself, and the figures' axes and colours."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.cli import main as analysis_main
from analysis.cost import cost_table
from analysis.export import marl_eval_json
from analysis.items import Settings
from analysis.load import collect, plan_from_scan
from analysis.report import build_report
from analysis.tables import comparison
from marie.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("marie_workflow_plan_analysis_report_test", ROOT / "workflows" / "plan.py")
WP = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = WP
spec.loader.exec_module(WP)

from marie.envs.registry import all_maps  # noqa: E402
# a SMAC map that is an approximation on SMAX (marie/envs/maps.yaml says which)
APPROX = next(m for m, sp in all_maps().items() if sp.family == "smac" and sp.status("smax") == "approximation"
              and sp.difficulty == "Easy")
FAST = Settings(reps=20, points=9, formats=("png",))
EPISODES, EVERY, STEPS = 4, 1000, 2000


def write_run(rundir: Path, *, algo: str, map_name: str, seed: int, wins: list[int], preset: str = "smoke",
              env: str = "smax", device: str = "cpu", wall_s: float = 3600.0, cpu_s: float | None = 1800.0,
              mode: str = "greedy", steps: int = STEPS, variant: str | None = None, sampled_offset: int = 1):
    """A run directory as the runtime writes it. wins[i] = episodes won (of EPISODES) at the i-th evaluation
    (env steps 0, EVERY, ..., steps) in the protocol's mode; the other mode wins sampled_offset fewer."""
    rundir.mkdir(parents=True, exist_ok=True)
    points = list(range(0, steps + 1, EVERY))
    assert len(wins) == len(points)
    ev, eps = [], []
    for i, (s, k) in enumerate(zip(points, wins)):
        per_mode = {}
        for m in ("greedy", "sampled"):
            km = k if m == mode else max(0, k - sampled_offset)
            won = [1 if e < km else 0 for e in range(EPISODES)]
            ret = [10.0 * w + 0.5 * e for e, w in enumerate(won)]
            eps += [{"env_steps": s, "mode": m, "episode": e, "won": won[e], "return": ret[e], "length": 20 + e}
                    for e in range(EPISODES)]
            per_mode[m] = (np.mean(won), np.mean(ret), np.std(ret))
        wr, rm, rs = per_mode[mode]
        ev.append({"env_steps": s, "win_rate": wr, "return_mean": rm, "return_std": rs, "episodes": EPISODES,
                   "length_mean": 21.5, "wall_s": 10.0 * (i + 1), "eval_mode": mode,
                   "win_rate_greedy": per_mode["greedy"][0], "return_mean_greedy": per_mode["greedy"][1],
                   "win_rate_sampled": per_mode["sampled"][0], "return_mean_sampled": per_mode["sampled"][1]})
    pd.DataFrame(ev).to_csv(rundir / "eval.csv", index=False)
    pd.DataFrame(eps).to_csv(rundir / "eval_episodes.csv", index=False)
    meta = {"status": "completed", "algo": algo, "env": env, "map": map_name, "seed": seed, "preset": preset,
            "steps": steps, "env_steps": steps, "wall_s": wall_s, "device": device, "suite_commit": "abc",
            "eval_protocol": {"episodes": EPISODES, "every": EVERY, "mode": mode}}
    if cpu_s is not None:
        meta["cpu_s"] = cpu_s
    if variant:
        meta["variant"] = variant
    (rundir / "meta.json").write_text(json.dumps(meta))
    (rundir / "config.yaml").write_text(f"run: {{eval_episodes: {EPISODES}, eval_every: {EVERY}, "
                                        f"eval_sample: {'true' if mode == 'sampled' else 'false'}}}\n")
    (rundir / "run.log").write_text("log\n")


# final wins (of 4) per (map, algo) and seed 0, 1; curves rise linearly from 0
FINAL = {("3m", "marie"): [4, 4], ("3m", "qmix"): [2, 1], ("3m", "mappo"): [0, 0],
         (APPROX, "marie"): [3, 4], (APPROX, "qmix"): [1, 1], (APPROX, "mappo"): [1, 0]}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """Runs made with `marie run --out NAME` under names that say nothing (no seedN folders)."""
    root = tmp_path_factory.mktemp("scan")
    for (m, algo), finals in FINAL.items():
        for seed, k in enumerate(finals):
            write_run(root / f"{m}_{algo}_try{seed}" / "out", algo=algo, map_name=m, seed=seed, wins=[0, k // 2, k])
    # an older run directory: no eval_episodes.csv, no eval_mode/both-mode columns, no cpu_s/eval_protocol
    old = root / "old_random"
    write_run(old, algo="random", map_name="3m", seed=0, wins=[0, 0, 0], cpu_s=None)
    (old / "eval_episodes.csv").unlink()
    ev = pd.read_csv(old / "eval.csv")
    ev[["env_steps", "win_rate", "return_mean", "return_std", "episodes", "length_mean", "wall_s"]].to_csv(
        old / "eval.csv", index=False)
    meta = json.loads((old / "meta.json").read_text())
    meta.pop("eval_protocol")
    (old / "meta.json").write_text(json.dumps(meta))
    return root


def test_scan_identifies_runs_by_meta_with_the_workflows_method_names(scanned):
    plan = plan_from_scan(scanned)
    keys = {r["key"] for r in plan["runs"]}
    assert len(keys) == len(plan["runs"]) == 13
    assert "smax/3m/MAPPO/seed1" in keys and "smax/3m/Random/seed0" in keys
    exp = plan["experiments"]["smac"]
    assert list(exp["variants"])[:3] == ["MARIE", "MAPPO", "QMIX"]  # the workflow's method order
    run = next(r for r in plan["runs"] if r["key"] == f"smax/{APPROX}/QMIX/seed0")
    assert run["difficulty"] == "Easy" and run["steps"] == STEPS and run["log"].endswith("run.log")


def test_scan_refuses_two_runs_with_one_identity(scanned, tmp_path):
    for name in ("first", "second"):
        write_run(tmp_path / name, algo="mappo", map_name="3m", seed=0, wins=[0, 1, 2])
    with pytest.raises(UserError, match="first.*second|second.*first"):
        plan_from_scan(tmp_path)
    assert analysis_main(["report", "--runs", str(tmp_path), "--out", str(tmp_path / "r")]) == 2


def test_scan_gives_one_variant_per_preset(tmp_path):
    write_run(tmp_path / "a", algo="mappo", map_name="3m", seed=0, wins=[0, 1, 2], preset="smoke")
    write_run(tmp_path / "b", algo="mappo", map_name="3m", seed=0, wins=[0, 1, 2], preset="small")
    keys = {r["key"] for r in plan_from_scan(tmp_path)["runs"]}
    assert keys == {"smax/3m/MAPPO-smoke/seed0", "smax/3m/MAPPO-small/seed0"}


def test_tidy_has_both_modes_and_copes_with_old_run_directories(scanned):
    coll = collect(plan_from_scan(scanned))
    t = coll.tidy.set_index(["key", "env_steps"])
    new = t.loc[("smax/3m/QMIX/seed0", STEPS)]
    assert new["win_rate"] == new["win_rate_greedy"] == 0.5 and new["win_rate_sampled"] == 0.25
    assert new["eval_mode"] == "greedy"
    old = t.loc[("smax/3m/Random/seed0", STEPS)]
    assert old["eval_mode"] == "greedy" and old["win_rate_greedy"] == 0.0 and np.isnan(old["win_rate_sampled"])
    runs = coll.runs.set_index("key")
    assert runs.loc["smax/3m/Random/seed0", "eval_episodes"] == EPISODES  # from config.yaml
    assert not runs.loc["smax/3m/Random/seed0", "has_episodes"] and runs.loc["smax/3m/QMIX/seed0", "has_episodes"]


def test_report_of_scanned_runs_has_paper_columns_captions_costs_and_links(scanned, tmp_path):
    res = build_report(plan_from_scan(scanned), tmp_path / "rep", settings=FAST)
    items = {it.name: it for it in res["items"]}
    md = (tmp_path / "rep/items/table1/table1.md").read_text()
    body = md[md.index("| map"):]
    row = next(ln for ln in body.splitlines() if ln.startswith("| 3m "))
    assert "| Easy |" in row and "99.5 (0.4)" in row  # the paper's MARIE on 3m beside ours
    assert "100.0 (0.0)" in row  # ours: MARIE won 4/4 with both seeds
    head = md[:md.index("| map")]
    assert "not the paper's setting" in head and "`smoke`" in head and "2k of the paper's 100k" in head
    assert f"{EPISODES} episodes per point every 1k env steps, greedy actions" in head and "backend `smax`" in head
    assert APPROX in head and "approximation" in head  # the approximation's note, from the map registry
    assert f"| {APPROX} | Easy |" in body and "approximation †" in body.split(f"| {APPROX} ")[1].splitlines()[0]
    # MARIE beats QMIX and MAPPO on 3m by more than the seeds' spread: bold; on 3s_vs_3z 87.5 (12.5) vs 25 (0): bold
    assert "**100.0 (0.0)**" in row
    assert items["fig14"].status == "ok" and "MARIE" in items["fig14"].markdown  # complete MARIE runs found
    assert any("not the paper's setting" in c for c in items["fig3"].caption + items["fig13"].caption)
    page = (tmp_path / "rep/index.md").read_text()
    assert "| field | value |" in page and "| | |" not in page
    assert "[run directory](" in page and "[log](" in page
    assert "| **total** | all | 13 |" in page
    html = (tmp_path / "rep/index.html").read_text()
    assert "<a href='" in html and "run directory</a>" in html


def test_bold_only_outside_the_seeds_spread():
    scores = pd.DataFrame({"map": ["3m"] * 4, "column": ["A", "A", "B", "B"], "seed": [0, 1, 0, 1],
                           "win_rate": [0.9, 0.5, 0.6, 0.4]})
    close = comparison(scores, None, title="t", rows=["map"], columns=["A", "B"])
    assert "**" not in close.to_markdown()          # 70 (20) vs 50 (10): the intervals overlap
    apart = scores.assign(win_rate=[0.9, 0.8, 0.2, 0.1])
    assert "**85.0 (5.0)**" in comparison(apart, None, title="t", rows=["map"], columns=["A", "B"]).to_markdown()
    one = apart[apart["seed"] == 0]                  # one seed: no spread known, no bold
    assert "**" not in comparison(one, None, title="t", rows=["map"], columns=["A", "B"]).to_markdown()


def test_reference_reproduction_beside_ours_and_the_papers(scanned, tmp_path):
    ref = tmp_path / "reproduced" / "small"
    for seed, k in enumerate([2, 3]):   # laid out like results/runs
        write_run(ref / "runs/smax/3m/MARIE" / f"seed{seed}", algo="marie", map_name="3m", seed=seed,
                  wins=[0, 1, k], preset="small")
    (ref / "README.md").write_text("reference\n")
    assert analysis_main(["report", "--runs", str(scanned), "--out", str(tmp_path / "rep"), "--items", "table1",
                          "--reps", "20", "--reference", str(ref)]) == 0
    t1 = pd.read_csv(tmp_path / "rep/items/table1/table1.csv")
    r = t1[(t1["source"] == "reference") & (t1["map"] == "3m") & (t1["column"] == "MARIE")].iloc[0]
    assert r["mean"] == pytest.approx(62.5) and r["std"] == pytest.approx(12.5) and r["n"] == 2
    md = (tmp_path / "rep/items/table1/table1.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| map"))
    assert header.index("MARIE (ours)") < header.index("MARIE (reference)") < header.index("MARIE (paper)")
    assert "Reference reproduction" in md and "`small`" in md
    assert "README" in (tmp_path / "rep/index.md").read_text()


def test_cost_table_per_method_and_map_and_total(tmp_path):
    write_run(tmp_path / "a", algo="marie", map_name="3m", seed=0, wins=[0, 1, 2], device="cuda", wall_s=7200,
              cpu_s=3600)
    write_run(tmp_path / "b", algo="marie", map_name="3m", seed=1, wins=[0, 1, 2], device="cuda", wall_s=3600,
              cpu_s=3600)
    write_run(tmp_path / "c", algo="qmix", map_name="3m", seed=0, wins=[0, 1, 2], wall_s=1800, cpu_s=None)
    costs = cost_table(collect(plan_from_scan(tmp_path)).runs).set_index(["variant", "map"])
    assert costs.loc[("MARIE", "3m"), "gpu_h"] == pytest.approx(3.0)
    assert costs.loc[("MARIE", "3m"), "cpu_h"] == pytest.approx(2.0)
    assert costs.loc[("QMIX", "3m"), "gpu_h"] == 0 and costs.loc[("QMIX", "3m"), "without_cpu_s"] == 1
    total = costs.loc[("total", "all")]
    assert total["runs"] == 3 and total["wall_h"] == pytest.approx(3.5) and total["gpu_h"] == pytest.approx(3.0)


def test_phase_split_per_10k_steps_with_the_rest_of_the_wall_time(tmp_path):
    from analysis.cost import phase_markdown, phase_split
    for seed, wall in ((0, 1000.0), (1, 2000.0)):   # 2000 env steps each: x5 to 10k
        write_run(tmp_path / f"m{seed}", algo="marie", map_name="3m", seed=seed, wins=[0, 1, 2], wall_s=wall)
        pd.DataFrame({"env_steps": [1000, 2000], "time_tokenizer_s": [1.0, 1.0], "time_world_model_s": [10.0, 30.0],
                      "time_imagination_s": [np.nan, 20.0], "time_ppo_s": [np.nan, 8.0]}).to_csv(
            tmp_path / f"m{seed}" / "train.csv", index=False)
    write_run(tmp_path / "q", algo="qmix", map_name="3m", seed=0, wins=[0, 1, 2])   # no phases logged: left out
    split = phase_split(collect(plan_from_scan(tmp_path)).runs)
    assert len(split) == 1
    r = split.iloc[0]
    assert r["runs"] == 2 and r["tokenizer"] == pytest.approx(10.0) and r["world model"] == pytest.approx(200.0)
    assert r["imagination"] == pytest.approx(100.0) and r["PPO"] == pytest.approx(40.0)
    assert r["total"] == pytest.approx(7500.0) and r["rest"] == pytest.approx(7500.0 - 350.0)
    assert "| MARIE | 3m | 2 | 10 (0%) | 200 (3%) | 100 (1%) | 40 (1%) | 7,150 (95%) | 7,500 |" in phase_markdown(split)


def test_marl_eval_export_per_episode_and_per_variant(tmp_path):
    cfg = {"backend": "smax", "results": str(tmp_path), "seeds": [0, 1], "preset": "smoke",
           "eval": {"interval": EVERY, "episodes": EPISODES}, "maps": {"3s_vs_5z": {"difficulty": "Hard", "budget": STEPS}},
           "methods": {"MARIE": {"algo": "marie"}, "MAMBA": {"algo": "mamba"}},
           "experiments": {"horizon": {"env": "{backend}", "maps": ["3s_vs_5z"], "variants": {
               "MARIE-H8": {"method": "MARIE", "label": "8", "set": {"params.horizon": 8}},
               "MAMBA-H8": {"method": "MAMBA", "label": "8", "set": {"params.imagination_horizon": 8}}}}}}
    plan = WP.build_plan(cfg, registered={"marie": "x:X", "mamba": "x:X"}, check=False).to_json()
    for r in plan["runs"]:
        k = 4 if r["method"] == "MARIE" else 0
        write_run(Path(r["rundir"]), algo=r["algo"], map_name=r["map"], seed=r["seed"], wins=[0, k // 2, k])
    data, notes = marl_eval_json(collect(plan).experiment("horizon"))
    algos = data["smax"]["3s_vs_5z"]
    assert set(algos) == {"MARIE-H8", "MAMBA-H8"}
    marie, mamba = algos["MARIE-H8"]["seed_0"], algos["MAMBA-H8"]["seed_1"]
    assert [marie[f"step_{i}"]["step_count"] for i in range(2)] == [EVERY, STEPS] and "step_2" not in marie
    assert marie["step_1"]["win_rate"] == [1.0] * EPISODES and mamba["step_1"]["win_rate"] == [0.0] * EPISODES
    assert marie["step_1"]["return"] == [10.0, 10.5, 11.0, 11.5]   # every episode, the protocol's mode
    assert marie["absolute_metrics"] == {k: v for k, v in marie["step_1"].items() if k != "step_count"}
    assert any("environment_name='smax'" in n for n in notes)
    (tmp_path / "horizon.json").write_text(json.dumps(data))


def test_marl_eval_reads_the_export(scanned, tmp_path, monkeypatch):
    """InstaDeep's marl-eval, its documented pipeline: an optional dev extra (docs/workflow.md)."""
    pytest.importorskip("marl_eval")
    pytest.importorskip("colorcet")
    from marl_eval.plotting_tools.plotting import sample_efficiency_curves
    from marl_eval.utils.data_processing_utils import create_matrices_for_rliable, data_process_pipeline
    coll = collect(plan_from_scan(scanned))
    keep = coll.runs["variant"].isin(["MARIE", "QMIX", "MAPPO"])  # equal seeds and steps for marl-eval
    coll.runs = coll.runs[keep]
    data, _ = marl_eval_json(coll.experiment("smac"))
    raw = json.loads(json.dumps(data))
    processed = data_process_pipeline(raw_data=raw, metrics_to_normalize=["return"])
    assert processed["extra"]["evaluation_interval"]["smax"] == EVERY
    matrices, tensors = create_matrices_for_rliable(data_dictionary=processed, environment_name="smax",
                                                    metrics_to_normalize=["return"])
    assert matrices["mean_win_rate"]["marie"].shape == (2, 2)  # 2 seeds x 2 maps
    assert matrices["mean_win_rate"]["marie"][:, list(data["smax"]).index("3m")].tolist() == [1.0, 1.0]
    assert tensors["mean_win_rate"]["qmix"].shape == (2, 2, 2)  # seeds x maps x evaluations after step 0
    monkeypatch.chdir(tmp_path)  # marl-eval writes its tables into the working directory
    ax, iqm, _ = sample_efficiency_curves(tensors, metric_name="win_rate", metrics_to_normalize=["return"])
    assert iqm["MARIE"].tolist() == pytest.approx([0.5, 1.0])  # IQM over seeds x maps at each evaluation
    assert ax.get_lines()[0].get_xdata().tolist() == [0, EVERY]  # marl-eval draws step_i at i x interval
    ax.figure.savefig(tmp_path / "sample_efficiency.png")
    assert (tmp_path / "sample_efficiency.png").stat().st_size > 0


def test_figures_axes_and_one_colour_per_method():
    curves = pd.concat([pd.DataFrame({"map": "3m", "label": lab, "env_steps": np.linspace(0, 4000, 9),
                                      "mean": np.zeros(9), "lower": np.zeros(9), "upper": np.zeros(9), "n": 2})
                        for lab in ("MARIE", "QMIX", "MAPPO")])   # identical curves
    paper = pd.DataFrame({"map": ["3m"], "label": ["MARIE"], "mean": [0.995], "steps": [100000]})
    fig = plots.curves_figure(curves, group="label", ylim=(0, 1), paper_final=paper)
    ax = fig.axes[0]
    assert ax.get_ylim() == (0, 1) and ax.get_xlim() == (0, 4000)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert {lab: lines[lab].get_color() for lab in ("MARIE", "QMIX", "MAPPO")} == \
        {lab: plots.METHOD_COLORS[lab] for lab in ("MARIE", "QMIX", "MAPPO")}
    assert len({lines[lab].get_marker() for lab in ("MARIE", "QMIX", "MAPPO")}) == 3  # told apart when identical
    assert len({str(lines[lab].get_markevery()) for lab in ("MARIE", "QMIX", "MAPPO")}) == 3
    star = lines["_paper"]
    assert star.get_markeredgecolor() == plots.METHOD_COLORS["MARIE"]
    assert plots.PAPER_FINAL_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]
    assert star.get_xdata()[0] == 4000 and star.get_ydata()[0] == pytest.approx(0.995)
    agg = pd.DataFrame([{"method": m, "aggregate": a, "estimate": e, "lower": e, "upper": e}
                        for m, e in (("MARIE", 1.0), ("QMIX", 0.4), ("MAPPO", 0.0)) for a in ("Mean", "IQM")])
    fig13 = plots.interval_figure(agg)
    for ax in fig13.axes:
        assert ax.get_xlim() == (0, 1)
        est = {tuple(ln.get_xdata()): ln.get_color() for ln in ax.get_lines() if ln.get_marker() not in ("None", "")}
        assert est == {(1.0,): plots.METHOD_COLORS["MARIE"], (0.4,): plots.METHOD_COLORS["QMIX"],
                       (0.0,): plots.METHOD_COLORS["MAPPO"]}   # every method drawn, MARIE at 1 and MAPPO at 0
        assert all(not ln.get_clip_on() for ln in ax.get_lines())
    poi = pd.DataFrame({"reference": "MARIE", "baseline": ["QMIX", "MAPPO"], "probability": [0.7, 0.9],
                        "lower": [0.6, 0.8], "upper": [0.8, 1.0]})
    ax14 = plots.improvement_figure(poi).axes[0]
    assert ax14.get_xlim() == (0, 1)
    colours = [ln.get_color() for ln in ax14.get_lines() if ln.get_marker() not in ("None", "")]
    assert colours == [plots.METHOD_COLORS["QMIX"], plots.METHOD_COLORS["MAPPO"]]
    assert plots._colors(["QMIX (official SMACv2)"])["QMIX (official SMACv2)"] == plots.METHOD_COLORS["QMIX"]
    import matplotlib.pyplot as plt
    plt.close("all")


def test_demo_report_says_demo(tmp_path):
    cfg = {"backend": "smax", "results": str(tmp_path), "seeds": [0, 1], "preset": "small",
           "eval": {"interval": 10000, "episodes": 10}, "maps": {"3m": {"difficulty": "Easy", "budget": 100000}},
           "methods": {"MARIE": {"algo": "marie"}, "QMIX": {"algo": "qmix"}},
           "experiments": {"smac": {"env": "{backend}", "maps": ["3m"], "methods": ["MARIE", "QMIX"]}},
           "tiers": {"demo": {"experiment": "smac", "maps": ["3m"], "seeds": [0, 1], "steps": STEPS, "preset": "smoke",
                              "eval": {"interval": EVERY, "episodes": EPISODES}}}}
    plan = WP.build_plan(cfg, demo=True, registered={"marie": "x:X", "qmix": "x:X"}, check=False).to_json()
    for r in plan["runs"]:
        write_run(Path(r["rundir"]), algo=r["algo"], map_name=r["map"], seed=r["seed"], wins=[0, 1, 2 + r["seed"]])
    build_report(plan, tmp_path / "report", target="demo", settings=FAST, items=["table1", "fig3"])
    page = (tmp_path / "report/index.md").read_text()
    assert "Target `all_smac`" not in page and "Target `demo`" in page
    first_number = page.index("| 3m")
    assert page.index("not the paper's setting") < first_number
    # equal wins: the report says plainly that MARIE is not ahead, and points to the CPU reproduction
    assert page.index("support no claim about MARIE") < first_number and "docs/reproduction.md" in page
    assert page.index("3m: MARIE **not** ahead") < first_number


def test_report_says_map_by_map_whether_marie_is_ahead(scanned):
    from analysis.load import collect, plan_from_scan
    from analysis.report import marie_statement
    line, _ = marie_statement(collect(plan_from_scan(scanned)), "scan")
    assert "3m: MARIE ahead (1.00 vs QMIX 0.38)" in line and "within" not in line.split(";")[0]
    assert f"{APPROX}: MARIE ahead" in line


def test_report_says_whether_marie_leads_earlier_in_the_budget(scanned):
    from analysis.load import collect, plan_from_scan
    from analysis.report import marie_statement
    _, earlier = marie_statement(collect(plan_from_scan(scanned)), "scan")
    assert earlier.startswith("Earlier in the budget")
    first = earlier.split(": ", 1)[1].split(";")[0]
    # 3m: MARIE wins 2 of 4 at step 1000 in both seeds, QMIX 1 and 0 (a 2-seed bootstrap spans both)
    assert first == ("3m (2 MARIE seed(s)): at 25% MARIE ahead, CIs apart (MARIE 0.25 [0.25, 0.25] vs QMIX 0.06 "
                     "[0.00, 0.12]), at 50% MARIE ahead, CIs apart (MARIE 0.50 [0.50, 0.50] vs QMIX 0.12 [0.00, 0.25])")


def test_export_says_what_marl_eval_cannot_read(scanned):
    data, notes = marl_eval_json(collect(plan_from_scan(scanned)).experiment("smac"))
    assert "Random" in data["smax"]["3m"] and "Random" not in data["smax"][APPROX]
    assert any(f"{APPROX} lacks Random" in n for n in notes)
    assert any("1 run(s) have no eval_episodes.csv" in n and "smax/3m/Random/seed0" in n for n in notes)
    assert data["smax"]["3m"]["Random"]["seed_0"]["step_1"]["win_rate"] == [0.0]  # one value: its mean


def test_caption_warns_before_the_setting_and_only_off_the_papers_setting():
    from analysis.describe import caption
    runs = pd.DataFrame({"variant": ["MARIE", "QMIX", "QMIX"], "map": ["3m", "3m", "8m"], "env": "smax",
                         "preset": "paper", "budget": 100000, "last_env_steps": 100000, "eval_episodes": 10,
                         "eval_every": 10000, "eval_mode": "greedy", "has_episodes": True})
    (only,) = caption(runs)
    assert "not the paper" not in only and "preset `paper`" in only and "100k env steps per run" in only
    assert "10 episodes per point every 10k env steps, greedy actions" in only
    short = runs.assign(last_env_steps=[100000, 50000, 100000], eval_mode=["greedy", "sampled", "greedy"])
    warn, mixed, text = caption(short)
    assert warn.startswith("**Ours: not the paper's setting**") and "3m 50k/100k of the paper's 100k" in warn
    assert "different evaluation protocols" in mixed and "greedy and sampled" in mixed


def test_the_marie_statement_reads_the_return_where_there_is_no_win_rate():
    """MaMuJoCo has no win rate: the sentence before every table compares final returns instead."""
    from types import SimpleNamespace
    from analysis.report import marie_statement
    rows = [("MARIE", 0, -5.0), ("MARIE", 1, -7.0), ("MAPPO", 0, 900.0), ("MAPPO", 1, 1000.0)]
    runs = pd.DataFrame([{"key": f"{m}{s}", "complete": True, "difficulty": "", "label": m} for m, s, _ in rows])
    tidy = pd.DataFrame([{"key": f"{m}{s}", "env": "mamujoco", "map": "HalfCheetah-2x3", "method": m, "variant": m,
                          "seed": s, "budget": 100, "env_steps": x, "win_rate": np.nan,
                          "return_mean": r if x else 0.0, "wall_s": 1.0} for m, s, r in rows for x in (0, 100)])
    lines = marie_statement(SimpleNamespace(runs=runs, tidy=tidy), "cpu_mamujoco")
    assert "final return" in lines[0] and "MARIE **not** ahead (-6.0; best MAPPO 950.0)" in lines[0]
    assert lines[1].startswith("Earlier in the budget") and "return" in lines[1]


def test_report_provenance_calls_only_code_changes_uncommitted(tmp_path):
    """The committed reproductions' data, which `collect` rewrites just before it builds their report, do not make
    the report's code "with uncommitted changes"; a changed code file does."""
    import subprocess
    from analysis.report import _git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    data = tmp_path / "paper_figures" / "reproduced" / "tier" / "README.md"
    data.parent.mkdir(parents=True)
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "report.py").write_text("code\n")
    data.write_text("runs: 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    data.write_text("runs: 2\n")
    assert "uncommitted" not in _git_commit(tmp_path)
    (tmp_path / "analysis" / "report.py").write_text("changed code\n")
    assert _git_commit(tmp_path).endswith("(with uncommitted changes)")
