"""Model files: safetensors + JSON, no pickle, atomic, clear errors on corruption or mismatch."""

import json

import pytest
import torch

import grulab
from grulab import io


@pytest.mark.parametrize("make", [
    lambda: grulab.GRU(3, 5, num_layers=2, bidirectional=True, reset="before", batch_first=True),
    lambda: grulab.GRU(3, 5, bias=False).double(),
    lambda: grulab.RNN(3, 5, nonlinearity="relu"),
    lambda: grulab.LSTM(3, 5, num_layers=2),
    lambda: grulab.GRUCell(3, 5, reset="before"),
])
def test_round_trip_is_exact(tmp_path, make):
    model = make()
    path = io.save(model, tmp_path / "m.safetensors", extra={"note": "hi"})
    back, extra = io.load_with_extra(path)
    assert type(back) is type(model) and back.config() == model.config() and extra == {"note": "hi"}
    for (n, a), (m, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert n == m and a.dtype == b.dtype and torch.equal(a, b)


def test_file_is_plain_safetensors_with_json_header(tmp_path):
    path = io.save(grulab.GRU(2, 3), tmp_path / "m.safetensors")
    data = path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    meta = json.loads(header["__metadata__"]["grulab"])
    assert meta["class"] == "GRU" and meta["config"]["hidden_size"] == 3
    assert b"\x80\x04" not in data[:16]  # no pickle protocol header


def test_corrupted_truncated_and_foreign_files(tmp_path):
    path = io.save(grulab.GRU(2, 3), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        io.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        io.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="not a grulab file"):
        io.load(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "absent.safetensors")


def test_mismatched_tensors_and_unknown_class(tmp_path):
    model = grulab.GRU(2, 3)
    header = {"format": "grulab", "version": 1, "class": "GRU", "config": {**model.config(), "hidden_size": 4}}
    io.atomic_write_bytes(tmp_path / "bad.safetensors", io.encode(model.state_dict(), header))
    with pytest.raises(ValueError, match=r"tensor 'U_l0' is torch.float32\(9, 3\), the model expects"):
        io.load(tmp_path / "bad.safetensors")
    header = {"format": "grulab", "version": 1, "class": "os.system", "config": {}}
    io.atomic_write_bytes(tmp_path / "evil.safetensors", io.encode({}, header))
    with pytest.raises(ValueError, match="unknown model class 'os.system'"):
        io.load(tmp_path / "evil.safetensors")
    with pytest.raises(TypeError, match="expected a LSTM"):
        io.load(io.save(model, tmp_path / "ok.safetensors"), expect=grulab.LSTM)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = io.save(grulab.GRU(2, 3), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save(grulab.GRU(2, 3), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def test_unregistered_class_is_refused(tmp_path):
    with pytest.raises(TypeError, match="not a registered grulab model class"):
        io.save(torch.nn.Linear(2, 3), tmp_path / "x.safetensors")
