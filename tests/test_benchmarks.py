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
