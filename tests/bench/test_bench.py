"""`grulab bench --quick`: every case runs, files are written, ratios and roofline are computed."""

import json

import pytest

from grulab.bench import BenchConfig, run_bench
from grulab.bench.harness import gru_flops, time_alternating
from grulab.bench.report import END, START, update_readme
from grulab.cli import main


def test_quick_bench_writes_results_and_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    assert main(["bench", "--quick", "--out", str(tmp_path / "res"), "--update-readme", str(readme)]) == 0
    data = json.loads((tmp_path / "res" / "bench-quick.json").read_text())
    assert data["peak_gflops"] == max(data["sgemm_peak_gflops"], data["panel_gemm_peak_gflops"]) > 0
    cases = {r["case"] for r in data["rows"]}
    assert cases == {"streaming", "latency", "inference", "training", "mingru"}
    for row in data["rows"]:
        assert all(v > 0 for v in row["results"].values())
        assert row["case"] == "latency" or 0 < row["roofline_fraction"]
    latency = next(r for r in data["rows"] if r["case"] == "latency")
    assert {"grulab stream.step", "grulab", "onnxruntime", "torch GRUCell", "torch.nn.GRU"} <= set(latency["results"])
    assert "one step per call" in readme.read_text() and "onnxruntime / grulab stream.step" in readme.read_text()
    stream = next(r for r in data["rows"] if r["case"] == "streaming")
    expected = {"grulab", "torch.nn.GRU", "onnxruntime", "grulab stream.step", "torch GRUCell loop"}
    assert expected <= set(stream["results"])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "Training, forward + backward" in text and "torch.nn.GRU / grulab" in text
    bounds = {b["case"]: b for b in data["bounds"]}
    assert set(bounds) == {"streaming", "inference", "training"} and "Bounds measured in this run" in text
    assert "Training at the rate of its largest product" in text
    assert bounds["training"]["detail"]["weight_gradient_gflops"] > 0
    for b in data["bounds"]:
        assert b["floor"] > 0 and b["best_ratio"]


def test_bounds_are_floors_of_the_measured_rows():
    """The floor of a product-bound case is its FLOPs at the peak; a peer's best ratio is its time
    over that floor; the streaming floor is the faster recurrent product plus the input products."""
    from grulab.bench.bounds import compute_bounds, stream_floor

    row = {"case": "training", "shape": {"B": 2, "T": 8, "I": 4, "H": 16}, "unit": "ms", "flops": 2e9,
           "results": {"grulab": 30.0, "torch.nn.GRU": 40.0}}
    (b,) = compute_bounds([row], peak_gflops=100.0, threads=1)
    assert b["floor"] == pytest.approx(20.0) and b["best_ratio"] == {"torch.nn.GRU": pytest.approx(2.0)}
    rate = b["detail"]["weight_gradient_gflops"]  # torch.mm's rate on a (48 x 16 rows) x 16 product, measured
    assert rate > 0 and b["detail"]["weight_gradient_fraction"] == pytest.approx(rate / 100.0)
    at_rate = 2e9 / (rate * 1e9) * 1e3
    assert b["detail"]["step_at_weight_gradient_rate"] == pytest.approx(at_rate)
    assert b["best_ratio_at_weight_gradient_rate"] == {"torch.nn.GRU": pytest.approx(40.0 / at_rate)}
    f = stream_floor(8, 32, 100.0, threads=1)
    assert f["split_2_threads_s"] == float("inf") and 0 < f["matvec_1_thread_s"] < 1e-3
    assert f["floor_s"] == pytest.approx(f["matvec_1_thread_s"] + 2 * 3 * 32 * 8 / 100e9)
    f = stream_floor(8, 32, 100.0, threads=2)  # the split's skeleton: two threads at once, a barrier per step
    assert 0 < f["split_2_threads_s"] < 1e-3
    assert f["floor_s"] == pytest.approx(min(f["matvec_1_thread_s"], f["split_2_threads_s"]) + 2 * 3 * 32 * 8 / 100e9)


def test_alternating_timer_and_flops():
    calls = []
    timing = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                               "c": lambda: calls.append("c")}, repeats=4, warmup=1)
    # warm-up, then rounds that start one contestant further along: each follows each other equally
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert set(timing) == {"a", "b", "c"} and all(v["min"] <= v["median"] <= v["max"] for v in timing.values())
    assert gru_flops(2, 3, 4, 5, False) == 2 * 2 * 3 * 15 * 9
    assert gru_flops(1, 1, 1, 1, True) == 2 * 3 * 2 + 2 * 3 * 3


def test_settle_sleeps_before_every_call(monkeypatch):
    import grulab.bench.harness as harness

    sleeps = []
    monkeypatch.setattr(harness.time, "sleep", sleeps.append)
    time_alternating({"a": lambda: None, "b": lambda: None}, repeats=4, warmup=1, settle=0.01)
    assert sleeps == [0.01] * (2 + 8)  # the warmup calls too: a path tuner learns the timed conditions
    with pytest.raises(ValueError, match="settle must be"):
        BenchConfig(settle=-1)


def test_mingru_roofline_uses_the_gru_time(tmp_path):
    res = run_bench(BenchConfig(quick=True, cases=("mingru",), out_dir=str(tmp_path), settle=0))
    for row in res["rows"]:
        gru = row["timing"]["grulab GRU"]["median"]
        assert row["gflops_grulab"] == pytest.approx(row["flops"] / gru / 1e9)


def test_bad_config_and_readme_without_markers(tmp_path):
    with pytest.raises(ValueError, match="unknown bench cases"):
        BenchConfig(cases=("streaming", "gpu"))
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        BenchConfig(repeats=0)
    p = tmp_path / "R.md"
    p.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- bench:start -->"):
        update_readme(p, "table")


def test_run_bench_subset(tmp_path):
    res = run_bench(BenchConfig(quick=True, cases=("inference",), out_dir=str(tmp_path)))
    assert [r["case"] for r in res["rows"]] == ["inference"]
