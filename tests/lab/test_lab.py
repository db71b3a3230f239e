"""The lab on tiny budgets: every experiment runs, writes its files, skips finished runs when rerun,
resumes an interrupted one, and the report is built from the run folders alone."""

import json

import pytest

from grulab.cli import main
from grulab.lab import EXPERIMENTS
from grulab.lab.core import Check, apply_overrides, clearly_less, not_clearly_above, stat, verdict
from grulab.lab.exp_adding import AddingConfig
from grulab.lab.exp_copy import CopyConfig
from grulab.lab.figures import lab_colour
from grulab.lab.report import build_report, markers, write_between_markers
from grulab.lab.runner import make_plan, run_lab
from grulab.lab.training import CELL_LABELS, CELLS, build_model
from grulab.models import hidden_for_budget

# seconds per run: tiny models, a handful of steps, short sequences
TINY = {"steps": "3", "eval_every": "2", "checkpoint_every": "2", "batch": "4", "params": "200",
        "valid_size": "8", "test_size": "8", "delays": "3",
        "variants": "rnn:default,gru:chrono,lstm:default,mingru:chrono",
        "lengths": "6", "ablation_T": "6", "flow_T": "6", "flow_batch": "3", "cells": "rnn,gru,lstm",
        "rarities": "0.5", "T": "6", "n_train": "3", "n_test": "6", "probe_size": "4", "scales": "1,10"}
# the synthetic experiments (real_data, another file of the lab, has its own tests)
SYNTHETIC = ["copy", "adding", "rare_event", "identity", "entangled", "saturation", "counting", "timescales"]
RUN_FILES = ("spec.json", "config.json", "metrics.jsonl", "model.safetensors", "model_init.safetensors",
             "checkpoint.safetensors", "result.json")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    plan = run_lab(SYNTHETIC, out, quick=True, overrides=TINY)
    return out, plan


def test_every_experiment_runs_and_writes_its_files(lab):
    out, plan = lab
    names = [exp.name for exp, _, _ in plan.experiments]
    assert names == SYNTHETIC and set(SYNTHETIC) <= set(EXPERIMENTS)
    assert plan.total > 20
    for exp, _, specs in plan.experiments:
        for spec in specs:
            run = out / exp.name / spec.run_id
            for f in RUN_FILES:
                assert (run / f).is_file(), f"{run}/{f} missing"
            result = json.loads((run / "result.json").read_text())
            assert result["params"] == spec.params and result["metrics"]["steps"] == 3
            assert [json.loads(line)["kind"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(lab, capsys):
    out, plan = lab
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}
    victim = out / "counting" / "gru-N3-s0"
    (victim / "result.json").unlink()  # as if the process died after training, before the result
    capsys.readouterr()
    run_lab(SYNTHETIC, out, quick=True, overrides=TINY)
    printed = capsys.readouterr().out
    assert f"({len(stamps) - 1} already finished, 1 to run" in printed
    assert (victim / "result.json").is_file()
    changed = [p for p, t in stamps.items() if p.parent != victim and p.stat().st_mtime_ns != t]
    assert changed == []  # nothing else was retrained
    # the checkpoint said the run was finished: its metrics log was not extended by a second training
    evals = [json.loads(line) for line in (victim / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [2, 3]


def test_changed_settings_restart_a_run(lab):
    out, _ = lab
    keys = ("steps", "eval_every", "checkpoint_every", "batch", "params", "n_train", "n_test", "cells")
    changed = {k: TINY[k] for k in keys} | {"steps": "4"}
    plan = make_plan(["counting"], quick=True, overrides=changed)
    spec = plan.experiments[0][2][0]
    from grulab.lab.runner import is_finished

    assert not is_finished(out / "counting" / spec.run_id, spec)


def test_report_from_run_folders(lab, tmp_path):
    out, _ = lab
    md_target = tmp_path / "results.md"
    md_target.write_text("# Results\n\nhand-written intro\n\n## Real data\nkept as is\n")
    report = build_report(out, tmp_path / "report", results_md=md_target)
    html = report.html.read_text()
    assert html.count("data:image/png;base64,") >= 10  # figures embedded: one self-contained file
    for name in SYNTHETIC:
        exp = EXPERIMENTS[name]
        assert f"{exp.number}. {exp.title}" in html
    rows = {row[0]: row for row in report.summary_rows}
    assert all(row[2] in ("reproduced", "not reproduced", "mixed", "undetermined") for row in rows.values())
    numbers = json.loads(report.results.read_text())
    assert numbers["copy"]["quick"] is True and numbers["copy"]["runs"] == 4
    text = md_target.read_text()
    BEGIN, END = markers()
    assert "hand-written intro" in text and "## Real data\nkept as is" in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "](report/figures/copy/copy_ce.png)" in text  # links relative to the Markdown file
    write_between_markers(md_target, "new lab section")  # rewriting replaces the block, keeps the rest
    write_between_markers(md_target, "other section", section="real-data")  # another report's block
    text = md_target.read_text()
    assert text.count(BEGIN) == 1 and "<!-- real-data:begin -->\nother section\n<!-- real-data:end -->" in text
    assert text.count(BEGIN) == 1 and "new lab section" in text and "copy_ce.png" not in text
    assert "hand-written intro" in text and "## Real data\nkept as is" in text


def test_cli_list_and_run(tmp_path, capsys):
    assert main(["lab", "list"]) == 0
    assert "counting" in capsys.readouterr().out
    args = ["lab", "run", "counting", "--quick", "--out", str(tmp_path / "c")]
    for key in ("steps", "eval_every", "checkpoint_every", "batch", "params", "n_train", "n_test"):
        args += ["--set", f"{key}={TINY[key]}"]
    assert main(args + ["--set", "cells=gru"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "verdicts" in printed
    with pytest.raises(ValueError, match="unknown setting"):
        main(["lab", "run", "counting", "--quick", "--out", str(tmp_path / "c"), "--set", "stpes=3"])


def test_overrides_are_typed_and_unknown_keys_fail():
    cfg = apply_overrides(CopyConfig(), {"steps": "5", "delays": "10, 20", "lr": "1e-3", "variants": "gru:chrono"})
    assert cfg.steps == 5 and cfg.delays == (10, 20) and cfg.lr == 1e-3 and cfg.variants == ("gru:chrono",)
    with pytest.raises(ValueError, match="unknown setting"):
        apply_overrides(CopyConfig(), {"step": "5"})
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(CopyConfig(), {"steps": "many"})
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        apply_overrides(CopyConfig(), {"seeds": "0"})


def test_verdicts_follow_the_checks():
    c = lambda holds: Check("s", "c", holds, "e")
    assert verdict([c(True), c(True), c(None)]) == "reproduced"
    assert verdict([c(False), c(None)]) == "not reproduced"
    assert verdict([c(True), c(False)]) == "mixed"
    assert verdict([c(None)]) == "undetermined"
    # one seed has no spread: comparisons stay undecided; with seeds, mean ± std must separate
    assert clearly_less(stat([0.1]), stat([0.9])) is None
    assert clearly_less(stat([0.1, 0.2]), stat([0.8, 0.9])) is True
    assert clearly_less(stat([0.1, 0.9]), stat([0.8, 0.9])) is False


def test_mingru_runs_beside_the_gru_on_the_memory_tasks(lab, tmp_path):
    out, plan = lab
    specs = {exp.name: specs for exp, _, specs in plan.experiments}
    assert [s.run_id for s in specs["copy"] if s.params["cell"] == "mingru"] == ["mingru-chrono-T3-s0"]
    # adding: minGRU at every length with default init, not in the init ablation, no gradient flow record
    assert [(s.run_id, s.params["flow"]) for s in specs["adding"] if s.params["cell"] == "mingru"] == [
        ("mingru-default-T6-s0", False)]
    for task, (I, O) in (("copy", (10, 10)), ("adding", (2, 1))):  # sized to the budget like every cell
        (spec,) = [s for s in specs[task] if s.params["cell"] == "mingru"]
        result = json.loads((out / task / spec.run_id / "result.json").read_text())
        assert result["metrics"]["hidden_size"] == hidden_for_budget("mingru", I, O, 200)
    report = build_report(out, tmp_path / "report")
    for task in ("copy", "adding"):
        a = report.analyses[task]
        assert any(row[0].startswith("minGRU") for row in a.tables[0].rows)  # the table shows minGRU
        mine = [c for c in a.checks if "minGRU" in c.statement]
        assert len(mine) == 1 and mine[0].source == "Feng et al. 2024"
        assert mine[0].holds is None and "minGRU" in mine[0].evidence  # one seed: no spread, undecided
        assert [c.statement for c in a.checks if "minGRU" not in c.statement and "minGRU" in c.evidence] == []
    # identity reads minGRU's z (from the input only) beside the GRU's and LSTM's
    rows = report.analyses["identity"].tables[0].rows
    assert {"minGRU, chrono", "minGRU, default"} <= {row[1] for row in rows}
    assert "minGRU" in report.html.read_text()


def test_mingru_is_a_lab_cell_at_the_matched_budget():
    assert "mingru" not in CELLS and CELL_LABELS["mingru"] == "minGRU"
    assert "mingru:default" in CopyConfig().variants and AddingConfig().compare_cells == ("mingru",)
    assert "mingru" not in AddingConfig().cells  # --set cells=... means the seed's cells in every experiment
    assert lab_colour("minGRU, chrono") == lab_colour("minGRU", 5) != lab_colour("GRU (reset after)")
    for cell in ("gru", "mingru"):
        model = build_model(cell, 2, 1, 5000, init="chrono", horizon=100)
        n = sum(p.numel() for p in model.parameters())
        assert abs(n - 5000) / 5000 < 0.02, (cell, n)


def test_not_clearly_above_is_the_mirror_of_clearly_less():
    assert not_clearly_above(stat([0.1]), stat([0.9])) is None
    assert not_clearly_above(stat([0.8, 0.9]), stat([0.1, 0.2])) is False  # clearly worse
    assert not_clearly_above(stat([0.1, 0.2]), stat([0.8, 0.9])) is True  # clearly better
    assert not_clearly_above(stat([0.1, 0.9]), stat([0.4, 0.5])) is True  # within the spread
