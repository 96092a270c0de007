"""The MARIE throughput benchmark stays runnable (smoke size): its floor and its world-model step."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import world_model_throughput as bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("what", ["floor", "wm"])
def test_world_model_throughput_runs_at_smoke_size(what, capsys):
    bench.main(["--preset", "smoke", "--threads", "1", "--repeats", "1", "--only", what])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["what"] == what and row["peak_mb"] > 0
    if what == "floor":
        assert row["gemm_gflops_train"] > 0 and row["read_gb_s"] > 0
        assert row["wm_floor_s"] > 0 and row["imagine_floor_s"] > 0 and row["imagine_kv_read_gb"] > 0
    else:
        assert row["step_s"] > 0 and row["tokens_per_sequence"] > 0


def test_a_training_round_is_split_into_phases_beside_their_floors(capsys):
    bench.main(["--preset", "smoke", "--map", "3m", "--threads", "1", "--repeats", "1", "--only", "round"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    phases = {"environment", "tokenizer", "world_model", "imagination", "ppo"}
    assert set(row["phase_cpu_s"]) == phases and row["agents"] == 3 and row["rounds"] == 1
    assert set(row["phase_floor_s"]) == phases - {"environment"}
    assert all(v > 0 for v in row["phase_gflop"].values()) and row["round_floor_s"] > 0
    assert row["round_cpu_s"] == pytest.approx(sum(row["phase_cpu_s"].values()))
