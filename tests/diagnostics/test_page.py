"""`grulab inspect`: plots (PNG and SVG) and a self-contained page, for fresh and saved models."""

import json

import pytest
import torch

from grulab import io
from grulab.cli import main
from grulab.diagnostics import plot_horizons, run_inspect
from grulab.models import SequenceModel


def test_inspect_fresh_models_writes_figures_and_page(tmp_path):
    out = tmp_path / "fresh"
    assert main(["inspect", "--T", "12", "--batch", "3", "--params", "600", "--out", str(out)]) == 0
    for stem in ("gradient_flow", "horizons", "approximation", "gates_rnn", "gates_gru", "gates_lstm"):
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 6  # every figure embedded: one file to share
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"rnn", "gru", "lstm"}
    assert "approx_rel_gap_median" in summary["gru"] and "approx_rel_gap_median" not in summary["rnn"]
    assert "| rnn |" in (out / "summary.md").read_text()


def test_inspect_saved_model_on_its_task(tmp_path):
    torch.manual_seed(0)
    m = SequenceModel("gru", 10, 6, 10, readout="all", init="chrono", chrono_horizon=20.0)
    path = io.save(m, tmp_path / "copier.safetensors")
    result = run_inspect([path], task="auto", T=5, batch=2, out=tmp_path / "saved")
    assert set(result.summary) == {"copier"}
    # chrono init holds values for about T_max steps: the half-lives say so
    assert result.summary["copier"]["half_life_median"] > 3
    with pytest.raises(ValueError, match="task 'adding' needs input_size 2"):
        run_inspect([path], task="adding", T=5, batch=2, out=tmp_path / "bad")


def test_fresh_models_subset_and_horizon_histogram_with_infinite_values(tmp_path):
    result = run_inspect(cells=["rnn", "lstm"], T=6, batch=2, params=800, out=tmp_path / "m")
    assert set(result.summary) == {"rnn", "lstm"}
    paths = plot_horizons({"closed": [float("inf"), 3.0], "open": [0.5, 1.0]}, tmp_path / "h")
    assert [p.suffix for p in paths] == [".png", ".svg"]


def test_the_library_never_imports_the_lab():
    import subprocess
    import sys

    code = ("import sys, grulab, grulab.diagnostics, grulab.models, grulab.tasks.synthetic; "
            "print(sorted(m for m in sys.modules if m.startswith('grulab.lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
