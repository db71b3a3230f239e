"""``grulab inspect``: all diagnostics of one or more models on one input, as plots and one page.

:func:`inspect_models` takes models already in memory; :func:`run_inspect` is what the command
line calls: it loads saved models (``grulab.io``) or builds freshly initialised ones at a matched
parameter count, draws an input from a synthetic task, and calls :func:`inspect_models`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grulab.diagnostics.flow import approximation_gap, gradient_flow
from grulab.diagnostics.gates import DEFAULT_THRESHOLD, memory_horizon, saturation
from grulab.diagnostics.html import escape, html_page, image_tag, markdown_table, table_html
from grulab.diagnostics.plots import plot_approximation, plot_gates, plot_gradient_flow, plot_horizons
from grulab.diagnostics.trace import recurrent_module, trace

TASKS = ("auto", "adding", "copy", "random")


@dataclass
class Inspection:
    """What :func:`inspect_models` wrote: the page, the figures and the numbers (``summary``)."""

    page: Path
    figures: list[Path] = field(default_factory=list)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)


def default_loss(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """Half the squared norm of the model's last output, averaged over the batch: a loss that
    depends on the final step only, so its gradient shows how far back the state is reachable."""
    module = recurrent_module(model)
    batch_first = model is module and getattr(module, "batch_first", False)

    def loss(out: Tensor) -> Tensor:
        last = out if out.dim() == 2 else (out[:, -1] if batch_first else out[-1])
        return 0.5 * last.pow(2).sum(-1).mean()

    return loss


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def inspect_models(
    models: Mapping[str, nn.Module],
    x: Tensor,
    out_dir: str | os.PathLike,
    *,
    loss: Callable[[Tensor], Tensor] | None = None,
    losses: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    sample: int = 0,
    title: str = "grulab inspect",
    note: str = "",
) -> Inspection:
    """Trace, gradient flow, approximation gap, saturation and memory horizon of each model.

    Args:
        models: name -> model (grulab layer or ``SequenceModel``); all take the same input ``x``.
        x: input ``(T, B, I)``.
        out_dir: folder for ``index.html`` (self-contained), ``summary.json`` and the figures
            (PNG and SVG): ``gradient_flow``, ``horizons``, ``approximation`` (gated models) and
            ``gates_<name>`` (first layer, sequence ``sample``).
        loss: the loss for the gradient flow (default :func:`default_loss`); ``losses`` per model.
        threshold: the saturation threshold on ``σ'``.

    Returns:
        :class:`Inspection`.
    """
    if not models:
        raise ValueError("models must name at least one model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = Inspection(out / "index.html")
    flows, horizons, gaps, rows_sat = {}, {}, {}, []
    gate_figs = []
    for name, model in models.items():
        model.eval()
        tr = trace(model, x)
        fl = gradient_flow(model, x, (losses or {}).get(name) or loss or default_loss(model))[0]
        flows[name] = fl
        horizons[name] = memory_horizon(tr)[0]
        sats = [s for s in saturation(tr, threshold) if s.layer == 0 and s.direction == 0]
        summary = {f"saturated_{s.gate}": s.share for s in sats}
        if tr.family != "rnn":
            gaps[name] = approximation_gap(tr)[0]
            summary["approx_rel_gap_median"] = float(gaps[name].relative_gap.median())
        hl = horizons[name].half_life
        summary["half_life_median"] = float(np.median(hl.cpu().numpy()))
        summary["span_log10_at_T"] = float(fl.span_log10[-1].mean())
        g = fl.grad_norm_by_distance
        summary["grad_ratio_far_near"] = float(g[-1] / g[0].clamp_min(1e-300))
        result.summary[name] = summary
        rows_sat.append([name, tr.family, ", ".join(f"{s.gate} {s.share:.1%}" for s in sats),
                         _fmt(summary["half_life_median"]), _fmt(summary["span_log10_at_T"]),
                         _fmt(summary.get("approx_rel_gap_median", float("nan")))])
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        gate_figs.append((name, plot_gates(tr.layer(0), out / f"gates_{safe}", sample=sample,
                                           title=f"{name}: gates and state over time (layer 0, sequence {sample})")))
    figs = {"gradient_flow": plot_gradient_flow(flows, out / "gradient_flow"),
            "horizons": plot_horizons(horizons, out / "horizons")}
    if gaps:
        figs["approximation"] = plot_approximation(gaps, out / "approximation")
    result.figures = [p for ps in figs.values() for p in ps] + [p for _, ps in gate_figs for p in ps]
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2, sort_keys=True))

    headers = ["model", "family", f"saturated share (σ′ < {threshold})", "median half-life (steps)",
               "log10 ‖∂h_T/∂h_0‖", "median ‖J−diag(1−z)‖/‖J‖"]
    T, B = x.shape[0], x.shape[1]
    body = [f"<p>Input: {T} steps, batch {B}. {escape(note)}</p>", table_html(headers, rows_sat)]
    captions = {"gradient_flow": "Gradient against distance: the span Jacobian norm and ‖∂L/∂h_t‖.",
                "horizons": "Half-lives of a value written into each unit (∏(1 − z); LSTM ∏ f; RNN diagonal).",
                "approximation": "The seed's ∂h_t/∂h_(t−1) ≈ diag(1 − z_t): step gap and span norms."}
    for key, paths in figs.items():
        body.append(f"<h2>{escape(captions[key])}</h2>{image_tag(paths[0], key)}")
    for name, paths in gate_figs:
        body.append(f"<h2>Gates of {escape(name)}</h2>{image_tag(paths[0], name)}")
    result.page.write_text(html_page(title, "\n".join(body)))
    (out / "summary.md").write_text(f"# {title}\n\n{markdown_table(headers, rows_sat)}\n")
    return result


def inspection_input(task: str, input_size: int, T: int, batch: int,
                     seed: int = 0) -> tuple[Tensor, Tensor | None, str]:
    """An input for inspection: ``(x (T', B, I), target or None, task)`` where ``task`` is resolved
    from ``"auto"`` by the input size (2: adding, 10: copy, else random normal)."""
    from grulab.tasks.synthetic import adding_problem, copy_task

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS!r}, got {task!r}")
    if task == "auto":
        task = {2: "adding", 10: "copy"}.get(input_size, "random")
    g = torch.Generator().manual_seed(seed)
    if task == "adding":
        if input_size != 2:
            raise ValueError(f"task 'adding' needs input_size 2, the model has {input_size}")
        x, y = adding_problem(batch, T, generator=g)
        return x, y, task
    if task == "copy":
        if input_size != 10:
            raise ValueError(f"task 'copy' needs input_size 10 (8 symbols, blank, delimiter), "
                             f"the model has {input_size}")
        x, y = copy_task(batch, T, generator=g)
        return x, y, task
    return torch.randn(T, batch, input_size, generator=g), None, task


def task_loss(task: str, target: Tensor | None, model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The training loss of ``task`` on the model's output (MSE for adding, cross-entropy per step for
    copy), or :func:`default_loss` when the output does not fit the task."""
    out_size = getattr(getattr(model, "head", None), "out_features", None)
    readout = getattr(model, "readout", None)
    if task == "adding" and target is not None and out_size == 1 and readout == "last":
        return lambda out: F.mse_loss(out.squeeze(-1), target.to(out.dtype))
    if task == "copy" and target is not None and out_size == 10 and readout == "all":
        return lambda out: F.cross_entropy(out.flatten(0, 1), target.flatten())
    return default_loss(model)


def run_inspect(
    model_paths: Sequence[str | os.PathLike] = (),
    *,
    cells: Sequence[str] = ("rnn", "gru", "lstm"),
    task: str = "auto",
    T: int = 100,
    batch: int = 16,
    params: int = 5000,
    init: str = "pytorch",
    input_size: int = 2,
    out: str | os.PathLike = "inspect",
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
) -> Inspection:
    """Inspect saved models (``model_paths``), or freshly initialised ``SequenceModel`` s of each of
    ``cells`` at a matched parameter count (``params``) when no path is given.

    The input comes from ``task`` (``"auto"``: from the input size; for fresh models ``"auto"``
    means adding). Losses are the task's own when the model's readout fits it.
    """
    from grulab import io
    from grulab.models import SequenceModel, hidden_for_budget

    if T < 2 or batch < 1:
        raise ValueError(f"T must be >= 2 and batch >= 1, got T={T}, batch={batch}")
    torch.manual_seed(seed)
    models: dict[str, nn.Module] = {}
    if model_paths:
        for p in model_paths:
            m = io.load(p)
            recurrent_module(m)
            models[Path(p).stem] = m
        sizes = {recurrent_module(m).input_size for m in models.values()}
        if len(sizes) != 1:
            raise ValueError(f"the models take different input sizes {sorted(sizes)}; inspect them separately")
        I = sizes.pop()
        note = "Saved models: " + ", ".join(str(p) for p in model_paths) + "."
    else:
        if task == "auto":
            task = "adding"
        I, O, readout = {"adding": (2, 1, "last"), "copy": (10, 10, "all")}.get(task, (input_size, 1, "last"))
        for cell in cells:
            H = hidden_for_budget(cell, I, O, params)
            kw = {"chrono_horizon": float(T)} if init == "chrono" and cell != "rnn" else {}
            models[cell] = SequenceModel(cell, I, H, O, readout=readout,
                                         init=init if (cell != "rnn" or init != "chrono") else "orthogonal", **kw)
        note = f"Freshly initialised ({init}), about {params} parameters each, seed {seed}."
    x, y, task = inspection_input(task, I, T, batch, seed)
    losses = {name: task_loss(task, y, m) for name, m in models.items()}
    return inspect_models(models, x, out, losses=losses, threshold=threshold,
                          title=f"grulab inspect: {', '.join(models)} on {task}", note=note)
