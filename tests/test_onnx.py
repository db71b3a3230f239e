"""ONNX export: the exported file, run in ONNX Runtime, matches grulab within 1e-5."""

import builtins

import numpy as np
import pytest
import torch

import grulab
from grulab.export import export_onnx, run_onnx
from grulab.models import SequenceModel

pytest.importorskip("onnxruntime")
ORT_MATCH = 1e-5  # issue contract: the exported file matches grulab within 1e-5 (float32)


def assert_match(name: str, ours: torch.Tensor, theirs: np.ndarray) -> None:
    diff = float(np.abs(ours.detach().numpy() - theirs).max()) if theirs.size else 0.0
    print(f"{name}: max |grulab - ORT| = {diff:.2e}")
    assert ours.shape == theirs.shape and diff <= ORT_MATCH


@pytest.mark.parametrize("reset", ["after", "before"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (3, False), (2, True)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_gru_matches_onnx_runtime(tmp_path, reset, num_layers, bidirectional, batch_first):
    gru = grulab.GRU(4, 6, num_layers=num_layers, bidirectional=bidirectional, reset=reset,
                     batch_first=batch_first)
    path = export_onnx(gru, tmp_path / "gru.onnx")
    B, T = 3, 9
    x = torch.randn(B, T, 4) if batch_first else torch.randn(T, B, 4)
    h0 = torch.randn(num_layers * gru.num_directions, B, 6)
    with torch.no_grad():
        y, h_n = gru(x, h0)
    y_ort, h_ort = run_onnx(path, x.numpy(), h0.numpy())
    assert_match("output", y, y_ort)
    assert_match("h_n", h_n, h_ort)


@pytest.mark.parametrize("reset", ["after", "before"])
@pytest.mark.parametrize("splits", [[12], [1] * 12, [5, 7], [3, 1, 6, 2]])
def test_streaming_chunk_by_chunk_carries_the_state(tmp_path, reset, splits):
    # a deployed model sees a long sequence in chunks, feeding each chunk the previous h_n
    gru = grulab.GRU(3, 5, num_layers=2, reset=reset, init="orthogonal")
    path = export_onnx(gru, tmp_path / "stream.onnx")
    x = torch.randn(12, 2, 3)
    with torch.no_grad():
        y_full, h_full = gru(x)
    h = np.zeros((2, 2, 5), dtype=np.float32)
    outs, t = [], 0
    for n in splits:
        y, h = run_onnx(path, x[t:t + n].numpy(), h)
        outs.append(y)
        t += n
    assert_match("streamed output", y_full, np.concatenate(outs))
    assert_match("streamed h_n", h_full, h)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_input(tmp_path, bidirectional):
    gru = grulab.GRU(3, 4, num_layers=2, bidirectional=bidirectional, batch_first=True, bias=False)
    path = export_onnx(gru, tmp_path / "len.onnx", lengths=True)
    x, lengths = torch.randn(4, 8, 3), torch.tensor([8, 3, 0, 6])
    with torch.no_grad():
        y, h_n = gru(x, lengths=lengths)
    y_ort, h_ort = run_onnx(path, x.numpy(), lengths=lengths.numpy())
    assert_match("padded output", y, y_ort)
    assert_match("h_n at each length", h_n, h_ort)
    with pytest.raises(ValueError, match="lengths must be given exactly when"):
        run_onnx(path, x.numpy())


@pytest.mark.parametrize("cell", ["gru", "gru_before"])
@pytest.mark.parametrize("readout", ["last", "all"])
def test_sequence_model_with_its_readout(tmp_path, cell, readout):
    model = SequenceModel(cell, 3, 7, 2, num_layers=2, readout=readout, bidirectional=readout == "last").eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    x = torch.randn(10, 4, 3)
    with torch.no_grad():
        y, h_n = model.forward_with_state(x) if readout == "all" else (model(x), model.rnn(x)[1])
    y_ort, h_ort = run_onnx(path, x.numpy())
    assert_match(f"readout {readout}", y, y_ort)
    assert_match("h_n", h_n, h_ort)


def test_float64_model_exports_float32_weights(tmp_path):
    gru = grulab.GRU(2, 3).double()
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    y_ort, _ = run_onnx(export_onnx(gru, tmp_path / "d.onnx"), x.numpy())
    with torch.no_grad():
        assert_match("float64 model in float32 runtime", gru(x)[0].float(), y_ort)


def test_graph_declares_dynamic_axes_and_standard_operators(tmp_path):
    import onnx

    proto = onnx.load(str(export_onnx(grulab.GRU(2, 3, num_layers=2, bidirectional=True), tmp_path / "g.onnx")))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("GRU") == 2 and {n.domain for n in proto.graph.node} == {""}
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]}
    assert dims == {"input": ["T", "B", 2], "h0": [4, "B", 3], "output": ["T", "B", 6], "h_n": [4, "B", 3]}


def test_refuses_what_the_gru_operator_cannot_express(tmp_path):
    with pytest.raises(TypeError, match="supports grulab.GRU and SequenceModel with a GRU cell"):
        export_onnx(grulab.LSTM(2, 3), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="supports grulab.GRU"):
        export_onnx(SequenceModel("rnn", 2, 3, 1), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset must be an int >= 14"):
        export_onnx(grulab.GRU(2, 3), tmp_path / "x.onnx", opset=9)
    with pytest.raises(TypeError, match="batch_first and lengths must be bools"):
        export_onnx(grulab.GRU(2, 3), tmp_path / "x.onnx", lengths="yes")
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnx_package_gives_a_clear_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ImportError, match=r"pip install 'grulab\[onnx\]'"):
        export_onnx(grulab.GRU(2, 3), tmp_path / "x.onnx")


@pytest.mark.parametrize("make", [
    lambda: grulab.GRU(3, 4, num_layers=2, batch_first=True, reset="before"),
    lambda: SequenceModel("gru", 3, 5, 2, bidirectional=True),
    lambda: SequenceModel("gru_before", 3, 5, 2, readout="all"),
])
def test_export_a_model_file_and_verify_it(tmp_path, make):
    from grulab import io
    from grulab.export import export_model_file

    model_path = io.save(make(), tmp_path / "model.safetensors")
    for lengths in (False, True):
        path, diff = export_model_file(model_path, tmp_path / "model.onnx", lengths=lengths)
        print(f"grulab vs ORT on a random input: {diff:.2e}")
        assert path.is_file() and diff <= ORT_MATCH
    with pytest.raises(TypeError, match="supports grulab.GRU"):
        export_model_file(io.save(grulab.MinGRU(2, 3), tmp_path / "min.safetensors"), tmp_path / "min.onnx")


def test_verify_notices_a_file_that_is_not_the_model(tmp_path):
    from grulab.export import verify_onnx

    a, b = grulab.GRU(3, 4), grulab.GRU(3, 4)
    path = export_onnx(a, tmp_path / "a.onnx")
    assert verify_onnx(a, path) <= ORT_MATCH and verify_onnx(b, path) > 1e-2


def test_cli_export(tmp_path, capsys):
    from grulab import io
    from grulab.cli import main

    model_path = io.save(SequenceModel("gru", 3, 5, 2, num_layers=2), tmp_path / "m.safetensors")
    assert main(["export", str(model_path), "--onnx", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    diff = float(out.split("max |diff| = ")[1].split()[0])
    assert (tmp_path / "m.onnx").is_file() and diff <= ORT_MATCH and "(ok," in out
    assert main(["export", str(model_path), "--onnx", str(tmp_path / "n.onnx"), "--no-verify", "--lengths"]) == 0
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        (tmp_path / "junk.safetensors").write_bytes(b"junk")
        main(["export", str(tmp_path / "junk.safetensors"), "--onnx", str(tmp_path / "j.onnx")])
