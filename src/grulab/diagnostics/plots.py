"""Figures for the diagnostics (matplotlib, no pyplot state): each function builds one figure and
writes it as PNG and SVG beside each other (``stem.png``, ``stem.svg``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from grulab.diagnostics.flow import ApproximationGap, GradientFlow
from grulab.diagnostics.gates import Horizon
from grulab.diagnostics.trace import LayerTrace

FORMATS = ("png", "svg")
TINY = 1e-300  # floor for log axes: norms below it are drawn at it
# one colour per model family, so every figure reads the same way
COLOURS = {"rnn": "#d62728", "gru": "#1f77b4", "gru_before": "#17becf", "lstm": "#2ca02c"}


def colour(name: str, i: int = 0) -> str:
    """A stable colour for a model name or label (``"gru_before"``, ``"GRU (reset before)"``,
    ``"tanh RNN"``, ``"lstm, chrono"``...): its family's, or matplotlib's cycle otherwise."""
    low = name.lower()
    if low.startswith("gru") and ("before" in low):
        return COLOURS["gru_before"]
    for key in ("gru", "lstm", "rnn"):
        if low.startswith(key) or low.startswith(f"tanh {key}"):
            return COLOURS[key]
    return f"C{i % 10}"


def save_figure(fig: Figure, stem: str | os.PathLike, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` to ``stem.png`` and ``stem.svg`` (creating the folder); returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        # fixed metadata keep the SVG byte-identical between runs (no date stamp)
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths


def plot_gates(lt: LayerTrace, stem: str | os.PathLike, *, sample: int = 0, title: str = "") -> list[Path]:
    """Heat maps over time (x) and units (y) of each gate and the state of one sequence.

    GRU: ``z`` (write), ``r``, ``h̃``, ``h``; LSTM: ``i``, ``f``, ``o``, ``c``, ``h``; RNN: ``h``.
    """
    names = {"gru": ("z", "r", "h_tilde", "h"), "lstm": ("i", "f", "o", "c", "h"), "rnn": ("h",)}[lt.family]
    fig = Figure(figsize=(9, 1.6 + 1.5 * len(names)))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        v = lt[name][:, sample].T.detach().cpu().numpy()  # (H, T)
        gate = name in ("z", "r", "i", "f", "o")
        lim = 1.0 if gate else max(1.0, float(np.abs(v).max()))  # states: symmetric, c may exceed 1
        im = ax.imshow(v, aspect="auto", interpolation="nearest", origin="lower",
                       cmap="viridis" if gate else "RdBu_r", vmin=0.0 if gate else -lim, vmax=lim)
        ax.set_ylabel(f"{'h̃' if name == 'h_tilde' else name}\nunit")
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1].set_xlabel("step t")
    fig.suptitle(title or f"{lt.family.upper()} layer {lt.layer}: gates and state over time (sequence {sample})")
    return save_figure(fig, stem)


def _log_floor(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, TINY)


def plot_gradient_flow(flows: Mapping[str, GradientFlow], stem: str | os.PathLike, *, title: str = "") -> list[Path]:
    """Gradient against distance on a log axis, one line per model (RNN/GRU/LSTM on one figure).

    Left: ``‖∂h_T/∂h_{T−k}‖₂`` (geometric mean over the batch) against ``k``. Right:
    ``‖∂L/∂h_t‖`` against the distance ``T − t`` from the last step.
    """
    curves = {name: (fl.span_log10.mean(dim=1).cpu().numpy(), fl.grad_norm_by_distance.detach().cpu().numpy())
              for name, fl in flows.items()}
    return plot_flow_curves(curves, stem, title=title)


def plot_flow_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], stem: str | os.PathLike, *,
                     title: str = "", formats: Sequence[str] = FORMATS) -> list[Path]:
    """:func:`plot_gradient_flow` from stored numbers: per model ``(span_log10 (K,), ‖∂L/∂h‖ by
    distance (T,))``, e.g. read back from a run's results."""
    fig = Figure(figsize=(11, 4))
    ax_span, ax_grad = fig.subplots(1, 2)
    for i, (name, (span_log10, grad)) in enumerate(curves.items()):
        c = colour(name, i)
        span = np.asarray(span_log10, dtype=float)
        ax_span.plot(np.arange(len(span)), _log_floor(10.0 ** span.clip(-300, 300)), color=c, label=name)
        g = np.asarray(grad, dtype=float)
        ax_grad.plot(np.arange(len(g)), _log_floor(g), color=c, label=name)
    for ax, ylabel in ((ax_span, "‖∂h_T / ∂h_(T−k)‖₂"), (ax_grad, "‖∂L / ∂h_t‖")):
        ax.set_yscale("log")
        ax.set_xlabel("distance k = T − t (steps)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    ax_span.legend()
    fig.suptitle(title or "Gradient flow through time")
    return save_figure(fig, stem, formats)


def plot_horizons(horizons: Mapping[str, Horizon | Sequence[float] | np.ndarray], stem: str | os.PathLike, *,
                  title: str = "", cap: float | None = None) -> list[Path]:
    """Histograms of per-unit half-lives (steps, log axis), one per model on shared bins.
    Half-lives above ``cap`` (default: the largest finite one) are drawn in the last bin."""
    data = {}
    for name, h in horizons.items():
        v = h.half_life.detach().cpu().numpy() if isinstance(h, Horizon) else np.asarray(h, dtype=float)
        data[name] = v
    finite = np.concatenate([v[np.isfinite(v)] for v in data.values()] or [np.ones(1)])
    finite = finite[finite > 0] if (finite > 0).any() else np.ones(1)
    hi = cap or max(2.0, float(finite.max()))
    lo = min(float(finite.min()), hi / 2)
    bins = np.logspace(math.log10(lo), math.log10(hi) + 1e-9, 30)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for i, (name, v) in enumerate(data.items()):
        ax.hist(np.clip(v, lo, hi), bins=bins, histtype="step", linewidth=1.8, color=colour(name, i),
                label=f"{name} (median {np.median(v):.3g})")
    ax.set_xscale("log")
    ax.set_xlabel("half-life of a written value (steps)")
    ax.set_ylabel("units")
    ax.legend()
    ax.set_title(title or "Memory horizon per unit")
    return save_figure(fig, stem)


def plot_approximation(gaps: Mapping[str, ApproximationGap], stem: str | os.PathLike, *,
                       title: str = "") -> list[Path]:
    """How well ``∂h_t/∂h_{t−1} ≈ diag(1 − z_t)`` holds: the relative step gap over time (median over
    the batch) and the span norms of the exact product against the approximated one."""
    fig = Figure(figsize=(11, 4))
    ax_gap, ax_span = fig.subplots(1, 2)
    for i, (name, g) in enumerate(gaps.items()):
        c = colour(name, i)
        ax_gap.plot(g.relative_gap.median(dim=1).values.cpu().numpy(), color=c, label=name)
        exact = 10.0 ** g.span_exact_log10.mean(dim=1).clip(-300, 300).cpu().numpy()
        approx = 10.0 ** g.span_approx_log10.mean(dim=1).clip(-300, 300).cpu().numpy()
        ax_span.plot(_log_floor(exact), color=c, label=f"{name}: exact ∏J")
        ax_span.plot(_log_floor(approx), color=c, linestyle="--", label=f"{name}: ∏ diag(1 − z)")
    ax_gap.set_xlabel("step t")
    ax_gap.set_ylabel("‖J_t − diag(1 − z_t)‖₂ / ‖J_t‖₂")
    ax_span.set_yscale("log")
    ax_span.set_xlabel("distance k (steps)")
    ax_span.set_ylabel("‖∂h_T / ∂h_(T−k)‖₂")
    for ax in (ax_gap, ax_span):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "The seed's approximation ∂h_t/∂h_(t−1) ≈ diag(1 − z_t)")
    return save_figure(fig, stem)
