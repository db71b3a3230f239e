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


def test_flipped_bit_in_the_weights_is_detected(tmp_path):
    path = io.save(grulab.GRU(2, 3), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's bytes: safetensors' layout is still valid
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted: its tensors do not match the checksum"):
        io.load(tmp_path / "flipped.safetensors")


def test_malformed_headers_are_value_errors(tmp_path):
    from safetensors.torch import save as st_save

    for grulab_meta, match in [("[1, 2]", "a JSON object was expected"),
                               ('{"format": "grulab", "version": 1, "class": "GRU", "config": [2, 3]}',
                                "'config' must be a dict"),
                               ('{"format": "grulab", "version": 1, "class": 7}', "'class' must be a str")]:
        (tmp_path / "h.safetensors").write_bytes(st_save({"a": torch.zeros(1)}, metadata={"grulab": grulab_meta}))
        with pytest.raises(ValueError, match=match):
            io.load(tmp_path / "h.safetensors")


def test_a_failed_load_changes_nothing():
    # load builds a fresh model and checks every tensor before copying any: nothing is half-loaded
    model = grulab.GRU(2, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {**before, "U_l0": torch.zeros(9, 4)}
    with pytest.raises(ValueError, match="tensor 'U_l0'"):
        io.load_state_strict(model, {k: torch.ones_like(v) if k != "U_l0" else bad[k] for k, v in before.items()},
                             "bad")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_every_builtin_class_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    from grulab.models import SequenceModel

    models = [SequenceModel("mingru", 2, 4, 1), SequenceModel("lngru", 2, 4, 1), grulab.MinGRU(2, 3),
              grulab.LayerNormGRU(2, 3), grulab.RegularizedGRU(2, 3, zoneout=0.1)]
    for i, model in enumerate(models):
        io.save(model, tmp_path / f"{i}.safetensors")
    code = ("import sys; from grulab import io; "
            "print([type(io.load(p)).__name__ for p in sys.argv[1:]])")
    out = subprocess.run([sys.executable, "-c", code, *sorted(map(str, tmp_path.glob("*.safetensors")))],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["SequenceModel", "SequenceModel", "MinGRU", "LayerNormGRU", "RegularizedGRU"])
