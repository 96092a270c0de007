"""The analysis on synthetic run directories with known values: Table 1 means and standard deviations,
rliable IQM, missing/unfinished/short runs reported by name, the report and the marl-eval export."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("marie_workflow_plan_analysis_test", ROOT / "workflows" / "plan.py")
WP = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = WP
spec.loader.exec_module(WP)

from analysis import stats  # noqa: E402
from analysis.items import Settings  # noqa: E402
from analysis.load import collect  # noqa: E402
from analysis.report import build_report  # noqa: E402
from analysis.tables import final_scores, summarize  # noqa: E402

REGISTERED = {"marie": "x:X", "qmix": "x:X", "random": "x:X"}
SEEDS = [0, 1, 2, 3]
# final win rates per (map, variant) and seed
FINAL = {
    ("3m", "MARIE"): [1.0, 0.9, 0.8, 0.7],
    ("3m", "QMIX"): [0.5, 0.25, 0.25, 0.0],
    ("8m", "MARIE"): [0.6, 0.6, 0.4, 0.4],
    ("8m", "QMIX"): [0.1, 0.2, 0.3, 0.4],
    ("3m", "Random"): [0.0, 0.0, 0.0, 0.0],
    ("8m", "Random"): [0.0, 0.0, 0.0, 0.0],
    ("3m", "QMIX-eps10k"): [0.2, 0.4, 0.6, 0.8],
}
BUDGET = 1000
# a Table 1 map SMAX cannot run (the registry changes as maps are added; a MaMuJoCo task never runs on SMAX)
from marie.envs.registry import all_maps  # noqa: E402
OFF = next((m for m, sp in all_maps().items() if sp.family == "smac" and sp.status("smax") == "unavailable"),
           "HalfCheetah-2x3")


def make_plan(root: Path) -> dict:
    cfg = {"backend": "smax", "results": str(root), "seeds": SEEDS, "preset": "smoke",
           "eval": {"interval": 500, "episodes": 4},
           "maps": {"3m": {"difficulty": "Easy", "budget": BUDGET}, "8m": {"difficulty": "Easy", "budget": BUDGET},
                    OFF: {"difficulty": "Easy", "budget": BUDGET}},
           "methods": {"MARIE": {"algo": "marie"}, "QMIX": {"algo": "qmix"}, "Random": {"algo": "random"},
                       "MAMBA": {"algo": "mamba"}},
           "experiments": {"smac": {"env": "{backend}", "maps": ["3m", "8m", OFF],
                                    "methods": ["MARIE", "QMIX", "Random", "MAMBA"]},
                           "epsilon": {"env": "{backend}", "maps": ["3m"],
                                       "variants": {"QMIX-eps10k": {"method": "QMIX", "label": "10000",
                                                                    "set": {"params.epsilon_anneal_time": 10000}}}}},
           "analysis": {"bootstrap_reps": 50}}
    return WP.build_plan(cfg, registered=REGISTERED, check=False).to_json()


def write_run(rundir: Path, finals: float, status: str = "completed", last_steps: int = BUDGET, seed: int = 0):
    rundir.mkdir(parents=True, exist_ok=True)
    steps = [s for s in (0, 500, 1000) if s <= last_steps]
    rows = ["env_steps,win_rate,return_mean,return_std,episodes,length_mean,wall_s"]
    for i, s in enumerate(steps):
        w = finals * s / BUDGET
        rows.append(f"{s},{w},{2 * w},0.1,4,20,{10.0 * (i + 1)}")
    (rundir / "eval.csv").write_text("\n".join(rows) + "\n")
    meta = {"status": status, "env_steps": last_steps, "suite_commit": "abc123", "backend_version": "jaxmarl 0.2.0",
            "versions": {"torch": "2.13.0"}, "device": "cpu", "host": "test", "algo": "x", "preset": "smoke",
            "wall_s": 30.0, "message": "boom" if status == "failed" else ""}
    (rundir / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    plan = make_plan(root / "results")
    for (m, variant), finals in FINAL.items():
        for seed, f in zip(SEEDS, finals):
            if (m, variant, seed) == ("8m", "Random", 3):
                continue  # a missing run
            rundir = Path(plan["root"]) / "runs" / "smax" / m / variant / f"seed{seed}"
            write_run(rundir, f, seed=seed)
    # an unfinished run and a short one replace two QMIX-eps10k seeds
    write_run(Path(plan["root"]) / "runs/smax/3m/QMIX-eps10k/seed2", 0.6, status="running", last_steps=500)
    write_run(Path(plan["root"]) / "runs/smax/3m/QMIX-eps10k/seed3", 0.8, status="completed", last_steps=500)
    return plan


def test_plan_has_the_expected_runs(synthetic):
    keys = {r["key"] for r in synthetic["runs"]}
    assert len(keys) == 2 * 3 * 4 + 4  # 2 available maps x 3 registered methods x 4 seeds + eps10k on 3m
    assert {s["key"] for s in synthetic["skipped"]} >= {f"smax/{OFF}/MARIE/seed0", "smax/3m/MAMBA/seed0"}


def test_table_means_and_stds_are_the_known_values(synthetic):
    coll = collect(synthetic)
    scores = final_scores(coll.experiment("smac"))
    summary = summarize(scores, ["map", "variant"], scale=100).set_index(["map", "variant"])
    for (m, v), finals in FINAL.items():
        if v == "QMIX-eps10k":
            continue
        vals = np.array(finals[:3] if (m, v) == ("8m", "Random") else finals)
        assert summary.loc[(m, v), "mean"] == pytest.approx(100 * vals.mean())
        assert summary.loc[(m, v), "std"] == pytest.approx(100 * vals.std())
    assert summary.loc[("3m", "MARIE"), "mean"] == pytest.approx(85.0)
    assert summary.loc[("3m", "MARIE"), "std"] == pytest.approx(11.180339887)
    assert summary.loc[("8m", "Random"), "n"] == 3


def test_iqm_and_aggregates(synthetic):
    coll = collect(synthetic)
    scores = final_scores(coll.experiment("smac")).assign(column=lambda d: d["method"])
    mats, tasks, notes = stats.score_matrices(scores, columns=["MARIE", "QMIX", "Random"])
    assert tasks == ["3m", "8m"]
    assert mats["MARIE"].shape == (4, 2)
    assert mats["Random"].shape == (3, 2) and any("Random" in n and "3" in n for n in notes)
    # IQM of MARIE's 8 scores {1, .9, .8, .7, .6, .6, .4, .4}: mean of the middle four (.8, .7, .6, .6)
    assert stats.iqm(mats["MARIE"]) == pytest.approx(0.675)
    agg = stats.aggregate_intervals(mats, reps=50).set_index(["method", "aggregate"])
    assert agg.loc[("MARIE", "IQM"), "estimate"] == pytest.approx(0.675)
    assert agg.loc[("MARIE", "Mean"), "estimate"] == pytest.approx(np.mean(FINAL[("3m", "MARIE")] + FINAL[("8m", "MARIE")]))
    assert agg.loc[("QMIX", "Median"), "estimate"] == pytest.approx(np.median([0.25, 0.25]))
    lo, hi = agg.loc[("MARIE", "IQM"), ["lower", "upper"]]
    assert lo <= 0.675 <= hi
    poi = stats.improvement(mats, "MARIE", reps=50).set_index("baseline")
    assert poi.loc["Random", "probability"] == pytest.approx(1.0)
    # 3m: MARIE beats QMIX in all 16 pairs; 8m: 15 of 16 (0.4 vs 0.4 ties count half: 8 + 4 x 1.75)
    assert poi.loc["QMIX", "probability"] == pytest.approx((1.0 + 15 / 16) / 2)


def test_missing_unfinished_and_short_runs_are_reported_by_name(synthetic):
    coll = collect(synthetic)
    probs = {(p.key, p.kind) for p in coll.problems.itertuples()}
    assert ("smax/8m/Random/seed3", "missing") in probs
    assert ("smax/3m/QMIX-eps10k/seed2", "running") in probs
    assert ("smax/3m/QMIX-eps10k/seed3", "short") in probs
    assert (f"smax/{OFF}/MARIE/seed0", "unavailable") in probs
    assert ("smax/3m/MAMBA/seed1", "unregistered") in probs
    complete = set(coll.runs.loc[coll.runs["complete"], "key"])
    assert "smax/3m/QMIX-eps10k/seed3" not in complete and "smax/3m/QMIX-eps10k/seed0" in complete


def test_report_builds_with_tables_figures_and_missing_runs(synthetic, tmp_path):
    res = build_report(synthetic, tmp_path / "report", settings=Settings(reps=50, points=10, formats=("png",)))
    items = {it.name: it for it in res["items"]}
    assert items["table1"].status == "ok" and items["fig3"].status == "ok" and items["fig13"].status == "ok"
    assert items["fig14"].status == "ok" and items["table11"].status == "ok"
    assert items["fig7"].status in ("unavailable", "not-in-plan")
    t1 = pd.read_csv(tmp_path / "report/items/table1/table1.csv")
    ours = t1[(t1["source"] == "ours") & (t1["map"] == "3m") & (t1["column"] == "MARIE")].iloc[0]
    assert ours["mean"] == pytest.approx(85.0) and ours["std"] == pytest.approx(11.18, abs=0.01)
    paper = t1[(t1["source"] == "paper") & (t1["map"] == "3m") & (t1["column"] == "MARIE")].iloc[0]
    assert paper["mean"] == pytest.approx(99.5)
    md = (tmp_path / "report/items/table1/table1.md").read_text()
    assert "85.0 (11.2)" in md and "99.5 (0.4)" in md and OFF in md
    assert r"\begin{tabular}" in (tmp_path / "report/items/table1/table1.tex").read_text()
    t11 = (tmp_path / "report/items/table11/table11.md").read_text()
    assert "QMIX (t_eps=10000) (ours)" in t11 and "[n=2]" in t11  # two eps10k seeds are not complete
    page = (tmp_path / "report/index.md").read_text()
    for name in ("smax/8m/Random/seed3", "smax/3m/QMIX-eps10k/seed2", f"smax/{OFF}/MARIE/seed0", "MAMBA (algo `mamba`)"):
        assert name in page
    assert "items/fig3/fig3.png" in page and (tmp_path / "report/items/fig3/fig3.png").exists()
    html = (tmp_path / "report/index.html").read_text()
    assert "<table>" in html and "fig13.png" in html and "abc123" in html


def test_marl_eval_export_layout(synthetic, tmp_path):
    from analysis.export import marl_eval_json
    data, notes = marl_eval_json(collect(synthetic).experiment("smac"))
    run = data["smax"]["3m"]["MARIE"]["seed_0"]
    # old run directories (no eval_episodes.csv): one value per evaluation; the untrained one is left out
    assert run["step_0"] == {"step_count": 500, "win_rate": [0.5], "return": [1.0]}
    assert run["step_1"]["step_count"] == BUDGET and run["absolute_metrics"]["win_rate"] == [1.0]
    assert "step_2" not in run and any("eval_episodes.csv" in n for n in notes)
    assert "seed_3" not in data["smax"]["8m"]["Random"]  # the missing run is not exported
    json.dumps(data)


def test_sample_efficiency_fractions_and_steps_to_threshold_hand_computed():
    from analysis.items import sample_efficiency
    rows = [("A", 0, 0.0), ("A", 10, 0.2), ("A", 20, 0.6), ("B", 0, 0.0), ("B", 10, 0.4), ("B", 20, 0.2)]
    tidy = pd.DataFrame([{"map": "m", "variant": "X", "seed": seed, "budget": 20, "env_steps": step,
                          "win_rate": v} for seed, step, v in rows])
    out = sample_efficiency(tidy, "win_rate", [0.25, 0.5, 1.0], 0.3, reps=200, confidence=0.95).iloc[0]
    assert out["seeds"] == 2 and out["budget"] == 20
    assert out["at_0.25_mean"] == pytest.approx(0.15)          # step 5: seeds 0.1 and 0.2 (interpolated)
    assert out["at_0.5_mean"] == pytest.approx(0.3) and out["at_1_mean"] == pytest.approx(0.4)
    assert out["at_1_lo"] == pytest.approx(0.2) and out["at_1_hi"] == pytest.approx(0.6)  # bootstrap of 2 seeds
    assert out["steps_to_threshold"] == 10                       # mean 0.3 first reached at step 10
    never = sample_efficiency(tidy, "win_rate", [1.0], 0.5, reps=200, confidence=0.95).iloc[0]
    assert np.isnan(never["steps_to_threshold"])
    no_threshold = sample_efficiency(tidy, "win_rate", [1.0], None, reps=200, confidence=0.95).iloc[0]
    assert "steps_to_threshold" not in no_threshold and no_threshold["at_1_mean"] == pytest.approx(0.4)


def test_gain_over_the_initial_return_and_whether_it_improves_hand_computed():
    """cpu_mamujoco's pre-registered criterion: the per-seed gain (value at the budget minus the first
    evaluation's) and "improves" only where its CI lies above 0."""
    from analysis.items import sample_efficiency
    rows = {"up": [(0, -10.0, 0.0), (10, 0.0, 20.0)], "mixed": [(0, -5.0, 5.0), (10, 5.0, -15.0)],
            "down": [(0, 0.0, 0.0), (10, -2.0, -4.0)]}   # (step, seed 0, seed 1)
    tidy = pd.DataFrame([{"map": "m", "variant": v, "seed": seed, "budget": 10, "env_steps": step,
                          "return_mean": vals[seed]} for v, pts in rows.items() for step, *vals in pts
                         for seed in (0, 1)])
    t = sample_efficiency(tidy, "return_mean", [0, 1.0], None, reps=500, confidence=0.95, gain=True).set_index("variant")
    assert t.loc["up", "at_0_mean"] == pytest.approx(-5.0) and t.loc["up", "gain_mean"] == pytest.approx(15.0)
    assert (t.loc["up", "gain_lo"], t.loc["up", "gain_hi"]) == pytest.approx((10.0, 20.0))   # gains 10 and 20
    assert t.loc["up", "improves"] == "improves" and t.loc["up", "first_step"] == 0
    assert t.loc["mixed", "gain_mean"] == pytest.approx(-5.0) and t.loc["mixed", "improves"] == "not clearly"
    assert t.loc["down", "improves"] == "worse"                                             # gains -2 and -4
    assert "gain_mean" not in sample_efficiency(tidy, "return_mean", [1.0], None, reps=50, confidence=0.95)


def test_action_ranking_table_means_over_seeds_hand_computed():
    from analysis.items import ACTION_RANKING, action_ranking_table
    per_run = pd.DataFrame([{"map": "m", "method": "MARIE", "seed": s, "corr_within_state_mean": c, "corr_all": 0.5,
                             "true_sum_mean": -1.0, "imagined_sum_mean": i} for s, c, i in
                            ((0, 0.0, 1.0), (1, 0.2, 3.0))])
    t = action_ranking_table(per_run, reps=500, confidence=0.95).iloc[0]
    assert t["seeds"] == 2 and t["corr_within_state_mean_mean"] == pytest.approx(0.1)
    assert (t["corr_within_state_mean_lo"], t["corr_within_state_mean_hi"]) == pytest.approx((0.0, 0.2))
    assert t["imagined_sum_mean_mean"] == pytest.approx(2.0) and t["corr_all_lo"] == pytest.approx(0.5)
    assert set(ACTION_RANKING) <= {c[:-5] for c in t.index if c.endswith("_mean")}


def test_training_series_bins_train_metrics_and_interpolates_evaluations_hand_computed(tmp_path):
    from analysis.items import training_series
    rundir = tmp_path / "run"
    rundir.mkdir()
    # budget 20 in 2 bins, (0, 10] and (10, 20]: entropy 1.0 and 0.8 fall in the first, 0.2 in the second;
    # a round logged before training (NaN entropy) and the row at step 0 are not averaged in
    pd.DataFrame({"env_steps": [0, 4, 10, 12, 20], "entropy": [9.0, 1.0, 0.8, np.nan, 0.2],
                  "wm_obs_loss": [np.nan, np.nan, 0.5, 0.7, 0.9]}).to_csv(rundir / "train.csv", index=False)
    runs = pd.DataFrame([{"key": "k", "rundir": str(rundir), "map": "m", "variant": "MARIE", "seed": 0, "budget": 20}])
    tidy = pd.DataFrame({"key": "k", "env_steps": [0, 10, 20], "return_mean": [0.0, 4.0, 2.0]})
    out = training_series(runs, tidy, {"entropy": "", "wm_obs_loss": "", "not_logged": ""}, {"return_mean": ""}, bins=2)
    got = {(r.metric, r.env_steps): r.value for r in out.itertuples()}
    assert got == pytest.approx({("entropy", 5.0): 0.9, ("entropy", 15.0): 0.2, ("wm_obs_loss", 5.0): 0.5,
                                 ("wm_obs_loss", 15.0): 0.8, ("return_mean", 5.0): 2.0, ("return_mean", 15.0): 3.0})


def test_intervention_readout_against_the_control_hand_computed(tmp_path):
    """The diagnosis read-out: win rate at the budget and entropy over its last 10 %, each intervention
    against the control (above with the CIs apart, within them, or not)."""
    from analysis.items import intervention_readout
    final = {("C", 0): 0.0, ("C", 1): 0.2, ("X", 0): 0.6, ("X", 1): 0.8, ("Y", 0): 0.1, ("Y", 1): 0.3}
    late_entropy = {("C", 0): 0.1, ("C", 1): 0.2, ("X", 0): 0.5, ("X", 1): 0.5, ("Y", 0): 0.1, ("Y", 1): 0.1}
    runs, tidy = [], []
    for (variant, seed), win in final.items():
        d = tmp_path / variant / str(seed)
        d.mkdir(parents=True)
        # step 10 is outside the last 10 % of a 20-step budget; steps 19 and 20 are inside
        e = late_entropy[(variant, seed)]
        pd.DataFrame({"env_steps": [10, 19, 20], "entropy": [9.0, e - 0.05, e + 0.05]}).to_csv(d / "train.csv")
        runs.append({"key": f"{variant}{seed}", "map": "m", "variant": variant, "seed": seed, "budget": 20,
                     "rundir": str(d)})
        tidy += [{"key": f"{variant}{seed}", "map": "m", "variant": variant, "seed": seed, "budget": 20,
                  "env_steps": x, "win_rate": w} for x, w in ((0, 0.0), (20, win))]
    t = intervention_readout(pd.DataFrame(runs), pd.DataFrame(tidy), "C", "win_rate", [0.5, 1.0], 0.25, "entropy",
                             0.1, reps=500, confidence=0.95).set_index("variant")
    assert t.loc["C", "entropy_last_mean"] == pytest.approx(0.15) and t.loc["X", "at_1_mean"] == pytest.approx(0.7)
    assert t.loc["X", "at_0.5_mean"] == pytest.approx(0.35)
    assert t.loc["X", "win_rate_vs_control"] == "above, CIs apart"          # [0.6, 0.8] against [0.0, 0.2]
    assert t.loc["X", "entropy_vs_control"] == "higher, CIs apart"          # 0.5 against [0.1, 0.2]
    assert t.loc["Y", "win_rate_vs_control"] == "above, within the CIs"     # 0.2 [0.1, 0.3] against 0.1 [0.0, 0.2]
    assert t.loc["Y", "entropy_vs_control"] == "not higher"
    assert t.loc["C", "win_rate_vs_control"] == "" and t.loc["X", "steps_to_threshold"] == 20


def test_rliable_intervals_are_the_same_at_every_rebuild():
    """rliable resamples from NumPy's global generator whatever random_state says: the report seeds it for the
    call (and restores it), so a rebuilt report prints the same CIs."""
    m = {"A": np.random.default_rng(0).random((4, 3)), "B": np.random.default_rng(1).random((4, 3))}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first, again = stats.aggregate_intervals(m, reps=300), stats.aggregate_intervals(m, reps=300)
    assert first.equals(again)
    assert stats.improvement(m, "A", reps=300).equals(stats.improvement(m, "A", reps=300))
    assert (np.random.get_state()[1] == before).all()         # the caller's global generator is left alone
