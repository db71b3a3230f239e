"""The lab's real-data experiment: its runs, one tiny training run, and its analysis (including the
JSB Chorales table beside the published numbers, from results made up for the test)."""

from pathlib import Path

from grulab.lab import get_experiment
from grulab.lab.core import RunResult, apply_overrides
from grulab.lab.exp_real_data import RealDataConfig


def test_runs_leave_out_missing_music_files(monkeypatch):
    exp = get_experiment("real_data")
    from grulab.lab import exp_real_data

    monkeypatch.setattr(exp_real_data, "available", lambda data: data != "jsb")
    specs = exp.runs(RealDataConfig(datasets=("jsb", "co2"), cells=("rnn", "gru"), seeds=2))
    assert [s.run_id for s in specs] == ["co2-rnn-s0", "co2-rnn-s1", "co2-gru-s0", "co2-gru-s1"]
    assert exp.quick().datasets == ("digits-row",)


def test_one_tiny_run(tmp_path):
    exp = get_experiment("real_data")
    cfg = apply_overrides(exp.quick(), {"steps": 4, "eval_every": 2, "checkpoint_every": 4})
    spec = exp.runs(cfg)[0]
    m = exp.run(cfg, spec, tmp_path / spec.run_id, False)
    assert m["metric"] == "nll" and m["steps"] == 4 and m["parameters"] > 15_000
    assert set(m["baselines"]) == {"majority class", "class prior", "chance"}
    assert (tmp_path / spec.run_id / "model.safetensors").is_file()
    from grulab import io
    from grulab.train.config import RunConfig
    from grulab.train.run import build_model, make_task

    init = io.load(tmp_path / spec.run_id / "model_init.safetensors")  # the weights training started from
    run = RunConfig(data="digits-row", cell=spec.params["cell"], params=cfg.params, batch_size=cfg.batch)
    fresh = build_model(run, make_task(run), spec.seed)
    assert all((a == b).all() for a, b in zip(init.state_dict().values(), fresh.state_dict().values(), strict=True))


def fake(data, cell, seed, test, metric="nll", baselines=None):
    metrics = {"metric": metric, "test": test, "valid": test - 0.1, "hidden_size": 40, "parameters": 20_000,
               "baselines": baselines or {"unigram": 11.06}}
    return RunResult(f"{data}-{cell}-s{seed}", {"data": data, "cell": cell, "seed": seed}, metrics, Path("."))


def test_analysis_puts_jsb_beside_the_published_numbers(tmp_path, monkeypatch):
    import grulab.lab.exp_real_data as mod

    monkeypatch.setattr(mod, "available", lambda data: True)  # the analysis reads results only
    exp = get_experiment("real_data")
    cfg = RealDataConfig(datasets=("jsb",), cells=("rnn", "gru", "lstm"))
    values = {"rnn": [8.60, 8.62, 8.58], "gru": [8.47, 8.49, 8.48], "lstm": [8.55, 8.57, 8.56]}
    results = [fake("jsb", c, s, v) for c, vs in values.items() for s, v in enumerate(vs)]
    a = exp.analyse(cfg, results, tmp_path, {})
    table = a.tables[0]
    assert "Chung et al. 2014" in table.headers and "Bai et al. 2018" in table.headers
    rnn_row = table.rows[0]
    assert rnn_row[0] == "tanh RNN" and rnn_row[-2] == "9.19" and rnn_row[-1] == "8.91"
    assert table.rows[-1][0] == "unigram (baseline)" and table.rows[-1][4] == "11.060"
    holds = {c.statement.split(" on ")[0]: c.holds for c in a.checks}
    assert holds == {"Gated units reach a lower test nll than the tanh RNN": True,
                     "The GRU is comparable to the LSTM": False, "Every cell beats the best baseline": True}
    assert a.verdict == "mixed" and a.figures and a.figures[0][1].is_file()
