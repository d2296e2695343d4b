"""`tandem plan` on the tiny model: a ranked table and a plot; bad arguments are refused with
what to write. `tandem calibrate` on the tiny model writes a profile the planner reads."""

import re

import pytest

from runtime.cli import main
from scheduler.planner.profiles import load_profile

WORKLOAD = "name: tiny\ninput_len: 64\noutput_len: 8\nrate: 5.0\nnum_prompts: 60\n"


@pytest.fixture
def workload(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(WORKLOAD)
    return path


def test_plan_prints_a_ranked_table_and_writes_the_plot(tiny_model_dir, workload, tmp_path, capsys):
    plot = tmp_path / "plan.png"
    argv = ["plan", "--model", str(tiny_model_dir), "--workload", str(workload)]
    argv += ["--slo", "ttft=200,tpot=50", "--profiles", "l4,cpu-spr-48c", "--ratios", "1:1"]
    assert main([*argv, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if re.match(r"\d+ \| ", ln)]
    # 2 profiles x 2 colocated budgets + 4 ordered pairs at 1:1
    assert len(rows) == 8
    costs = [float(r.split(" | ")[6]) for r in rows]
    assert costs == sorted(costs)
    assert "colocated 1x l4" in out and "1P l4 : 1D cpu-spr-48c" in out
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--slo", "ttft=200", "expected ttft=MS,tpot=MS"),
        ("--profiles", "no-such-gpu", "no profile 'no-such-gpu'"),
        ("--ratios", "1:0", "expected P:D pairs"),
    ],
)
def test_plan_refuses_bad_arguments_saying_what_to_write(
    tiny_model_dir, workload, capsys, flag, value, message
):
    args = {"--slo": "ttft=200,tpot=50", "--profiles": "l4", "--ratios": "1:1", flag: value}
    argv = ["plan", "--model", str(tiny_model_dir), "--workload", str(workload)]
    assert main([*argv, *(x for kv in args.items() for x in kv)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # the engine's step costs, the matmul, copy and gRPC measurements
def test_calibrate_measures_the_local_profile_the_planner_then_uses(
    tiny_model_dir, workload, tmp_path, capsys
):
    out = tmp_path / "local.yaml"
    assert main(["calibrate", "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    local = load_profile(out)
    assert local.engine is not None and local.engine.prefill_token_s > 0
    assert local.peak_flops > 1e8 and local.memory_bandwidth > 1e8
    assert local.network_bandwidth > 1e7 and 0 < local.mfu <= 1 and 0 < local.mbu <= 1
    capsys.readouterr()
    argv = ["plan", "--model", str(tiny_model_dir), "--workload", str(workload)]
    argv += ["--slo", "ttft=2000,tpot=500", "--profiles", str(out), "--ratios", "1:1"]
    assert main(argv) == 0
    assert "1P local : 1D local" in capsys.readouterr().out
