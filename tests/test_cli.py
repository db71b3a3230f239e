"""The grulab command line."""

import subprocess
import sys

from grulab.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    assert "GRU engines available" in capsys.readouterr().out


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "grulab", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


def test_demo_runs_briefly(capsys):
    assert main(["demo", "--T", "20", "--steps", "100"]) == 0
    out = capsys.readouterr().out
    assert "GRU" in out and "tanh RNN" in out and "baseline 0.167" in out
