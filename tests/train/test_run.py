"""``grulab train``: one run, a grid with its summary, config files and flags, resume."""

import json

import pytest
import torch

from grulab import io
from grulab.cli import main
from grulab.train import TrainConfig
from grulab.train.command import PRESETS
from grulab.train.config import RunConfig
from grulab.train.report import RESULTS_END, RESULTS_START, insert_results_section, ordering_verdict
from grulab.train.run import train_grid, train_run

TINY = dict(data="digits-row", hidden=8, params=None, batch_size=16)


def quick(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 12, "eval_every": 6, "log_every": 3, "progress": False, "threads": 1, **kw})


def test_train_run_writes_scores_files_and_model(tmp_path):
    result = train_run(RunConfig(cell="lstm", **TINY), quick(), tmp_path)
    r = result.results
    assert r["cell"] == "lstm" and r["hidden"] == 8 and r["steps"] == 12
    assert set(r["valid"]) == {"valid_accuracy", "valid_nll"} and set(r["test"]) == {"test_accuracy", "test_nll"}
    assert "class prior" in r["baselines"] and r["machine"]["cores"] >= 1
    for name in ("run.json", "results.json", "config.json", "metrics.jsonl", "metrics.csv", "loss_curve.png",
                 "model.safetensors", "checkpoint.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "results.json").read_text())["test"] == r["test"]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("kind,step,") and "valid_nll" in header
    model = io.load(tmp_path / "model.safetensors")
    assert model.config()["cell"] == "lstm"
    # the saved model is the best one: it scores the reported valid metric
    from grulab.tasks.registry import make_task

    got = make_task("digits-row").evaluate(model.eval(), "valid")
    assert got["valid_nll"] == pytest.approx(r["valid"]["valid_nll"], rel=1e-6)


def test_matched_budget_picks_hidden_sizes():
    from grulab.models import count_parameters
    from grulab.tasks.registry import make_task
    from grulab.train.run import build_model

    task = make_task("digits-row")
    counts = {c: count_parameters(build_model(RunConfig(data="digits-row", cell=c, params=3000), task, 0))
              for c in ("rnn", "gru", "lstm")}
    assert all(abs(n - 3000) / 3000 < 0.05 for n in counts.values()), counts


def test_grid_skips_finished_runs_and_summarises(tmp_path):
    run, cfg = RunConfig(**TINY), quick(steps=4, eval_every=2)
    summary = train_grid(run, cfg, ["rnn", "lstm"], [0, 1], tmp_path)
    assert summary["runs"] == 4 and {g["cell"] for g in summary["groups"]} == {"rnn", "lstm"}
    g = summary["groups"][0]
    assert g["seeds"] == [0, 1] and g["metric"] == "nll" and g["test_std"] >= 0
    md = (tmp_path / "summary.md").read_text()
    assert "tanh RNN" in md and "LSTM" in md and "class prior (baseline)" in md and "Machine:" in md
    before = (tmp_path / "rnn" / "seed0" / "results.json").stat().st_mtime_ns
    again = train_grid(run, cfg, ["rnn"], [0], tmp_path)  # finished: skipped, summary still complete
    assert (tmp_path / "rnn" / "seed0" / "results.json").stat().st_mtime_ns == before and again["runs"] == 4
    verdict = summary["verdicts"]["digits-row"]
    assert verdict["verdict"] in ("reproduced", "not reproduced", "mixed")


def test_ordering_verdict_criterion():
    def row(cell, mean, std):
        return {"cell": cell, "test_mean": mean, "test_std": std}

    assert ordering_verdict([row("rnn", 9.0, 0.1), row("gru", 8.5, 0.1), row("lstm", 8.6, 0.1)])["verdict"] \
        == "reproduced"
    v = ordering_verdict([row("rnn", 9.0, 0.1), row("gru", 8.5, 0.1), row("lstm", 8.95, 0.1)])
    assert v["verdict"] == "mixed" and v["vs_rnn"] == {"gru": "better", "lstm": "tie"} and v["gru_vs_lstm"] == \
        "GRU lower"
    assert ordering_verdict([row("rnn", 8.0, 0.1), row("gru", 8.5, 0.1)])["verdict"] == "not reproduced"
    assert ordering_verdict([row("gru", 8.5, 0.1)])["verdict"] == "n/a"


def test_results_section_between_markers(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nsynthetic part\n")
    insert_results_section(doc, "first")
    insert_results_section(doc, "second")
    text = doc.read_text()
    assert text.startswith("# Results\n\nsynthetic part\n") and text.count(RESULTS_START) == 1
    assert "second" in text and "first" not in text and text.rstrip().endswith(RESULTS_END)


# --- the command line -------------------------------------------------------------------------


def test_cli_train_flags_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "digits-row", "--cell", "gru", "--hidden", "8", "--steps", "8", "--eval-every", "4",
            "--checkpoint-every", "4", "--no-progress", "--threads", "1", "--out", str(out), "--batch-size", "8",
            "--clip", "none"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "gru on digits-row" in text and "class prior" in text
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["clip"] is None and saved["monitor"] == "valid_nll" and not saved["progress"]
    first = (out / "model.safetensors").read_bytes()
    assert main([*args, "--resume"]) == 0  # finished: nothing to do, same model
    assert (out / "model.safetensors").read_bytes() == first
    assert main([*args[:-2], "--batch-size", "4", "--resume"]) == 2  # another run in that folder
    assert "cannot resume" in capsys.readouterr().err


def test_cli_config_file_preset_and_errors(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('data = "digits-row"\ncell = "rnn"\nhidden = 6\nbatch_size = 8\n\n[train]\nsteps = 4\n'
                   'eval_every = 2\nprogress = false\nweight_noise = 0.01\nthreads = 1\n')
    out = tmp_path / "a"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--lr", "0.01"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["lr"] == 0.01 and saved["train"]["steps"] == 4 and saved["model"]["hidden_size"] == 6
    assert saved["train"]["weight_noise"] == 0.01
    bad = tmp_path / "bad.toml"
    bad.write_text('data = "digits-row"\nsteps = 4\n')  # a training key outside [train]
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "unknown RunConfig key(s) ['steps']" in capsys.readouterr().err
    assert main(["train", "--data", "nope", "--out", str(tmp_path / "c")]) == 2
    assert "data must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--steps", "many"])
    assert "needs a int" in capsys.readouterr().err
    assert PRESETS["chung2014"]["train"]["weight_noise"] == 0.075 and PRESETS["chung2014"]["train"]["clip"] == 1.0


def test_cli_grid_and_summarize(tmp_path, capsys):
    out = tmp_path / "grid"
    md = tmp_path / "results.md"
    args = ["train", "--data", "digits-row", "--params", "400", "--steps", "4", "--eval-every", "2", "--no-progress",
            "--threads", "1",
            "--batch-size", "8", "--cells", "rnn", "--seeds", "3", "--out", str(out), "--results-md", str(md)]
    assert main(args) == 0
    assert "tanh RNN" in capsys.readouterr().out
    text = md.read_text()
    assert RESULTS_START in text and "Trained by: `grulab train " in text
    for piece in ("--data digits-row", "--params 400", "--no-progress", f"--out {out}", "--cells rnn", "--seeds 3"):
        assert piece in text
    assert (out / "rnn" / "seed3" / "results.json").is_file()
    assert main(["train", "--summarize", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tanh RNN" in printed and "Trained by: `grulab train " in printed  # the grid's command, kept
    assert f"Summary by: `grulab train --summarize {out}`" in printed and "load average" in printed
    assert main(["train", "--summarize", str(tmp_path / "empty")]) == 2


def test_seeds_change_results_but_repeat_exactly(tmp_path):
    a = train_run(RunConfig(cell="rnn", **TINY), quick(seed=1), None).results
    b = train_run(RunConfig(cell="rnn", **TINY), quick(seed=1), None).results
    c = train_run(RunConfig(cell="rnn", **TINY), quick(seed=2), None).results
    assert a["test"] == b["test"] and a["test"] != c["test"]
    assert torch.get_num_threads() >= 1


def test_presets_resolve_per_data_set(tmp_path):
    from grulab.cli import build_parser
    from grulab.train.command import resolve_configs

    def resolve(*argv):
        return resolve_configs(build_parser().parse_args(["train", *argv]))

    run, cfg = resolve("--data", "jsb")
    assert cfg.optimizer == "rmsprop" and cfg.weight_noise == 0.075 and run.params == 20_000  # Chung et al.
    run, cfg = resolve("--data", "co2", "--lr", "0.5")
    assert cfg.optimizer == "adam" and cfg.lr == 0.5 and run.seq_len == 48  # flags win over the preset
    run, cfg = resolve("--data", "jsb", "--preset", "none")
    assert cfg == TrainConfig() and run == RunConfig()
    run, cfg = resolve("--data", "text", "--preset", "chung2014")
    assert cfg.optimizer == "rmsprop" and run.data == "text"


def test_grid_extends_runs_to_a_larger_budget_exactly(tmp_path):
    run = RunConfig(**TINY)
    train_grid(run, quick(steps=4, eval_every=2), ["rnn"], [0], tmp_path / "extended")
    train_grid(run, quick(steps=8, eval_every=2), ["rnn"], [0], tmp_path / "extended")
    train_grid(run, quick(steps=8, eval_every=2), ["rnn"], [0], tmp_path / "direct")
    ext, direct = (json.loads((tmp_path / d / "rnn" / "seed0" / "results.json").read_text())
                   for d in ("extended", "direct"))
    assert ext["steps"] == direct["steps"] == 8 and ext["test"] == direct["test"]


def test_every_train_flag_is_documented_from_the_config_docstrings():
    from grulab.train.command import field_help
    from grulab.train.config import RunConfig, TrainConfig, field_types

    for cls in (RunConfig, TrainConfig):
        helps = field_help(cls)
        missing = [name for name in field_types(cls) if not helps.get(name)]
        assert not missing, f"{cls.__name__} fields without a description in its Args: {missing}"
    assert field_help(RunConfig)["dropout"] == field_help(RunConfig)["num_layers"]  # "num_layers, dropout, ...: "
    assert "grulab.tasks.registry.DATA" in field_help(RunConfig)["data"]  # Sphinx roles are dropped
