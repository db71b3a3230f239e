"""ONNX export of grulab GRUs, built operator by operator with the ``onnx`` package.

Each layer becomes one ONNX ``GRU`` node (``direction="bidirectional"`` when the model is), so any
runtime with the standard operator runs the exported file: no custom operators, no tracing.

The conversion is exact up to the runtime's arithmetic:

* ONNX packs the gates ``[z, r, h]`` like grulab, but its ``z`` *keeps*:
  ``H_t = (1 - z_t) ⊙ h_t + z_t ⊙ H_{t-1}``. With ``z_keep = σ(-a_z) = 1 - z_write``, negating
  the ``z`` rows of every weight and bias turns one into the other (``docs/conventions.md``).
* ``linear_before_reset=1`` is grulab's ``reset="after"`` candidate
  (``r ⊙ (U_h h + b_Uh)``); ``0`` is ``reset="before"`` (``U_h (r ⊙ h) + b_Uh``).
* ``B = [b_W; b_U]`` per direction (ONNX calls them ``Wb`` and ``Rb``).

The graph takes the initial state ``h0 (L*D, B, H)`` as an input and returns the final state
``h_n`` as an output, with dynamic time and batch axes, so a deployed model streams a long
sequence chunk by chunk: feed each chunk with the previous chunk's ``h_n``.

``onnx`` and ``onnxruntime`` are optional (``pip install grulab[onnx]``); only this module
imports them, and it says so clearly when they are missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grulab.io import atomic_write_bytes

DEFAULT_OPSET = 17
ORT_TOLERANCE = 1e-5  # what export promises: ONNX Runtime matches grulab within this (float32)
_MIN_OPSET = 14  # GRU-14: the last revision of the operator's semantics before type additions


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(f"ONNX support needs the optional package {module!r}: "
                          f"pip install 'grulab[onnx]' (or pip install {module})") from e


def _to_onnx_gates(p: Tensor) -> np.ndarray:
    """grulab rows ``[z_write; r; h]`` → ONNX rows ``[z_keep; r; h]`` (negate z), float32."""
    z, r, h = p.detach().to("cpu", torch.float64).chunk(3, dim=0)
    return torch.cat([-z, r, h], dim=0).to(torch.float32).numpy()


def _exportable_gru(model: nn.Module) -> tuple[nn.Module, nn.Module | None, str | None]:
    """``(gru, head, readout)`` of a model this module can export, or a ``TypeError``."""
    from grulab.layers import GRU
    from grulab.models import SequenceModel

    def check(m: nn.Module) -> nn.Module:
        if callable(getattr(m, "as_gru", None)):  # a variant whose evaluation form may be a plain GRU
            try:
                m = m.as_gru()
            except ValueError as e:
                raise TypeError(f"{type(m).__name__} cannot be exported to the ONNX GRU operator: {e}") from e
        if not isinstance(m, GRU):
            raise TypeError(f"export_onnx supports grulab.GRU and SequenceModel with a GRU cell; "
                            f"got {type(m).__name__}")
        return m

    if isinstance(model, SequenceModel):
        return check(model.rnn), model.head, model.readout
    return check(model), None, None


def _make_graph(gru: nn.Module, head: nn.Module | None, readout: str | None, batch_first: bool,
                with_lengths: bool, name: str) -> Any:
    onnx = _require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    L, D, H, I = gru.num_layers, gru.num_directions, gru.hidden_size, gru.input_size
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> list[str]:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", **attrs))
        return outputs

    x_in = "input"
    x = node("Transpose", [x_in], ["x_time_major"], perm=[1, 0, 2])[0] if batch_first else x_in
    seq_lens = node("Cast", ["lengths"], ["lengths_i32"], to=TensorProto.INT32)[0] if with_lengths else ""
    finals = []
    for layer in range(L):
        params = [gru.direction_parameters(layer, d) for d in range(D)]
        W = np.stack([_to_onnx_gates(p[0]) for p in params])  # (D, 3H, I_layer)
        R = np.stack([_to_onnx_gates(p[1]) for p in params])  # (D, 3H, H)
        gru_inputs = [x, const(f"W_l{layer}", W), const(f"R_l{layer}", R)]
        if gru.bias:
            Bias = np.stack([np.concatenate([_to_onnx_gates(p[2]), _to_onnx_gates(p[3])]) for p in params])
            gru_inputs.append(const(f"B_l{layer}", Bias))  # (D, 6H): [Wb; Rb]
        else:
            gru_inputs.append("")
        s = const(f"h0_start_l{layer}", np.array([layer * D], dtype=np.int64))
        e = const(f"h0_end_l{layer}", np.array([layer * D + D], dtype=np.int64))
        h0_layer = node("Slice", ["h0", s, e], [f"h0_l{layer}"])[0]  # (D, B, H)
        gru_inputs += [seq_lens, h0_layer]
        y, y_h = node("GRU", gru_inputs, [f"Y_l{layer}", f"Y_h_l{layer}"], hidden_size=H,
                      direction="bidirectional" if D == 2 else "forward",
                      linear_before_reset=1 if gru.reset == "after" else 0)
        finals.append(y_h)
        # Y (T, D, B, H) -> (T, B, D*H): forward output first, then reverse, as grulab concatenates
        y = node("Transpose", [y], [f"Y_tbdh_l{layer}"], perm=[0, 2, 1, 3])[0]
        shape = const(f"shape_l{layer}", np.array([0, 0, D * H], dtype=np.int64))
        x = node("Reshape", [y, shape], [f"out_l{layer}"])[0]
    h_n = node("Concat", finals, ["h_n"], axis=0)[0] if L > 1 else node("Identity", finals, ["h_n"])[0]

    if head is None:
        out = x
        out_shape: list[Any] = ["T", "B", D * H]
    else:
        Wt = const("head_weight_T", head.weight.detach().to("cpu", torch.float32).numpy().T.copy())
        b = const("head_bias", head.bias.detach().to("cpu", torch.float32).numpy())
        O = head.out_features
        if readout == "all":
            out = node("Add", [node("MatMul", [x, Wt], ["head_mm"])[0], b], ["head_out"])[0]
            out_shape = ["T", "B", O]
        else:
            # the last layer's final states, both directions side by side: (D, B, H) -> (B, D*H)
            s = const("last_start", np.array([(L - 1) * D], dtype=np.int64))
            e = const("last_end", np.array([L * D], dtype=np.int64))
            last = node("Slice", [h_n, s, e], ["last_states"])[0]
            last = node("Transpose", [last], ["last_bdh"], perm=[1, 0, 2])[0]
            last = node("Reshape", [last, const("last_shape", np.array([0, D * H], dtype=np.int64))],
                        ["last_flat"])[0]
            out = node("Gemm", [last, Wt, b], ["head_out"])[0]
            out_shape = ["B", O]
    if batch_first and out_shape[0] == "T":
        out = node("Transpose", [out], ["output"], perm=[1, 0, 2])[0]
        out_shape = ["B", "T", out_shape[2]]
    else:
        out = node("Identity", [out], ["output"])[0]

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("input", f32, ["B", "T", I] if batch_first else ["T", "B", I]),
              helper.make_tensor_value_info("h0", f32, [L * D, "B", H])]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["B"]))
    outputs = [helper.make_tensor_value_info("output", f32, out_shape),
               helper.make_tensor_value_info("h_n", f32, [L * D, "B", H])]
    return onnx, helper.make_graph(nodes, name, inputs, outputs, initializer=inits)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    batch_first: bool | None = None,
    lengths: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``model`` as an ONNX file that any ONNX runtime can run, atomically.

    Args:
        model: a :class:`grulab.GRU` (either candidate, any number of layers, bidirectional or
            not) or a :class:`grulab.models.SequenceModel` with a ``"gru"``/``"gru_before"`` cell
            (the linear readout is exported too).
        path: the ``.onnx`` file to write.
        batch_first: layout of the graph's ``input`` (and ``output``); defaults to the model's.
        lengths: add an int64 ``lengths (B,)`` input (padding semantics as in grulab: outputs past
            a length are zero, ``h_n`` is the state at the last valid step, ``h0`` for length 0).
        opset: ONNX opset to target (>= 14).

    The graph's inputs are ``input`` ``(T, B, I)`` (``(B, T, I)`` batch-first), ``h0``
    ``(L*D, B, H)`` and optionally ``lengths``; its outputs are ``output`` (as the model's: the
    layer output ``(T, B, D*H)``, or the readout ``(B, O)``/``(T, B, O)``) and ``h_n``
    ``(L*D, B, H)``. ``T`` and ``B`` are dynamic. Weights are stored as float32.

    Returns:
        The path written.

    Example:
        >>> gru = grulab.GRU(8, 16, num_layers=2)
        >>> export_onnx(gru, "gru.onnx")                      # doctest: +SKIP
        >>> y, h_n = run_onnx("gru.onnx", x.numpy(), h0.numpy())  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a grulab module, got {type(model).__name__}")
    gru, head, readout = _exportable_gru(model)
    if batch_first is None:
        batch_first = gru.batch_first
    if not isinstance(batch_first, bool) or not isinstance(lengths, bool):
        raise TypeError(f"batch_first and lengths must be bools, got {batch_first!r} and {lengths!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < _MIN_OPSET:
        raise ValueError(f"opset must be an int >= {_MIN_OPSET}, got {opset!r}")
    onnx, graph = _make_graph(gru, head, readout, batch_first, lengths, type(model).__name__)
    from onnx import helper

    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="grulab")
    onnx.checker.check_model(proto, full_check=True)
    return atomic_write_bytes(path, proto.SerializeToString())


def run_onnx(
    path: str | os.PathLike,
    input: np.ndarray,
    h0: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported file in ONNX Runtime (CPU): ``(output, h_n)`` as NumPy arrays.

    ``h0`` defaults to zeros of the shape the graph declares (``(L*D, B, H)``); ``lengths`` is
    needed exactly when the file was exported with ``lengths=True``.
    """
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name: i for i in session.get_inputs()}
    x = np.asarray(input, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"input must be 3-D (time and batch axes as exported), got shape {x.shape}")
    if h0 is None:
        batch = x.shape[0] if names["input"].shape[0] == "B" else x.shape[1]
        LD, _, H = names["h0"].shape
        h0 = np.zeros((LD, batch, H), dtype=np.float32)
    feeds = {"input": x, "h0": np.asarray(h0, dtype=np.float32)}
    if ("lengths" in names) != (lengths is not None):
        raise ValueError("lengths must be given exactly when the file was exported with lengths=True")
    if lengths is not None:
        feeds["lengths"] = np.asarray(lengths, dtype=np.int64)
    output, h_n = session.run(["output", "h_n"], feeds)
    return output, h_n


def _grulab_outputs(model: nn.Module, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """What the exported graph computes, from the grulab model itself: ``(output, h_n)``."""
    from grulab.models import SequenceModel

    if isinstance(model, SequenceModel):
        out, h_n = model.forward_with_state(x, h0)
        if model.readout == "last":
            out = model(x, hx=h0)
        return out, h_n
    return model(x, h0)


def verify_onnx(model: nn.Module, path: str | os.PathLike, *, T: int = 16, B: int = 3,
                seed: int = 0) -> float:
    """Run ``model`` (in evaluation mode) and the exported file in ONNX Runtime on the same random
    input and initial state; returns the largest absolute difference over ``output`` and ``h_n``."""
    gru, _, _ = _exportable_gru(model)
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(T, B, gru.input_size, generator=gen, dtype=dtype)
    if gru.batch_first:
        x = x.transpose(0, 1).contiguous()
    h0 = torch.randn(gru.num_layers * gru.num_directions, B, gru.hidden_size, generator=gen, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ours = _grulab_outputs(model, x, h0)
    finally:
        model.train(was_training)
    onnx = _require("onnx")
    has_lengths = any(i.name == "lengths" for i in onnx.load(str(path)).graph.input)
    theirs = run_onnx(path, x.float().numpy(), h0.float().numpy(),
                      np.full(B, T, dtype=np.int64) if has_lengths else None)
    return max(float(np.abs(a.float().numpy() - b).max()) for a, b in zip(ours, theirs, strict=True))


def export_model_file(model_path: str | os.PathLike, onnx_path: str | os.PathLike, *, lengths: bool = False,
                      opset: int = DEFAULT_OPSET, verify: bool = True) -> tuple[Path, float | None]:
    """``grulab export MODEL --onnx OUT``: load a grulab model file (:func:`grulab.io.load`, no
    pickle), export it (:func:`export_onnx`, in the model's own layout) and, with ``verify``,
    measure the largest difference between grulab and ONNX Runtime on a random input.

    Returns ``(path written, max |difference|)`` (``None`` without ``verify``).
    """
    from grulab import io

    model = io.load(model_path).eval()
    path = export_onnx(model, onnx_path, lengths=lengths, opset=opset)
    return path, (verify_onnx(model, path) if verify else None)
