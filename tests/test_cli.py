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


def test_demo_is_the_quick_lab(monkeypatch):
    calls = []
    monkeypatch.setattr("grulab.lab.command.lab_run", lambda name, **kw: calls.append((name, kw)) or 0)
    assert main(["demo", "--jobs", "2"]) == 0
    assert calls == [("all", {"quick": True, "seeds": None, "out": None, "settings": None, "jobs": 2})]
