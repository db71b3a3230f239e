"""The README's train -> save -> export -> ONNX Runtime example runs, and its printed claim holds."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_deploy_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    text = README.read_text()
    section = text.split("## Train, save, export, run in ONNX Runtime", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 13  # the short example the issue asks for
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    diff = float(out.rsplit("=", 1)[1])
    print(out)
    assert diff <= 1e-5 and (tmp_path / "gru.safetensors").is_file() and (tmp_path / "gru.onnx").is_file()
