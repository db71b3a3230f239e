"""Figures the experiments draw from their results (mean ± std over seeds), as PNG (the report embeds
them; SVG would double the report's drawing time for no reader)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from grulab.diagnostics.plots import colour, save_figure
from grulab.lab.core import Stat

FORMATS = ("png",)
LINESTYLES = {"default": "-", "pytorch": "-", "orthogonal": ":", "chrono": "--"}
# the lab's cells beyond the diagnostics' families, each with its own fixed colour (purple is in
# no family's hue: RNN red, GRU blue, GRU before cyan, LSTM green)
LAB_COLOURS = {"mingru": "#9467bd"}


def lab_colour(label: str, i: int = 0) -> str:
    """A stable colour for a series label: minGRU's own, else the diagnostics' family colour."""
    low = label.lower()
    for key, value in LAB_COLOURS.items():
        if low.startswith(key):
            return value
    return colour(label, i)


def _style(label: str) -> str:
    for key, ls in LINESTYLES.items():
        if key in label:
            return ls
    return "-"


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[Stat]]], stem: str | os.PathLike, *,
              xlabel: str, ylabel: str, title: str, logx: bool = False, logy: bool = False,
              hlines: Sequence[tuple[float, str]] = (), baseline_curve: tuple[Sequence[float], Sequence[float],
                                                                               str] | None = None) -> Path:
    """One line per series with error bars (std over seeds); returns the PNG path."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for i, (label, (xs, stats)) in enumerate(series.items()):
        m = np.array([s.mean for s in stats], dtype=float)
        sd = np.array([s.std for s in stats], dtype=float)
        ax.errorbar(np.asarray(xs, dtype=float), m, yerr=sd, label=label, color=lab_colour(label, i),
                    linestyle=_style(label), marker="o", markersize=4, capsize=3)
    for value, text in hlines:
        ax.axhline(value, color="0.4", linestyle="-.", linewidth=1)
        ax.annotate(text, (0.01, value), xycoords=("axes fraction", "data"), fontsize=8, color="0.3",
                    va="bottom")
    if baseline_curve is not None:
        bx, by, text = baseline_curve
        ax.plot(bx, by, color="0.4", linestyle="-.", linewidth=1, label=text)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, stem, formats=FORMATS)[0]


def bar_plot(groups: Sequence[str], series: Mapping[str, Sequence[Stat]], stem: str | os.PathLike, *,
             ylabel: str, title: str, hlines: Sequence[tuple[float, str]] = (), logy: bool = False) -> Path:
    """Grouped bars (one group per entry of ``groups``, one bar per series) with std error bars."""
    fig = Figure(figsize=(max(6.0, 1.3 * len(groups) * max(1, len(series)) / 2), 4.2))
    ax = fig.subplots()
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (label, stats) in enumerate(series.items()):
        m = np.array([s.mean for s in stats], dtype=float)
        sd = np.array([s.std for s in stats], dtype=float)
        ax.bar(x + (i - (n - 1) / 2) * width, m, width, yerr=sd, capsize=3, label=label, color=lab_colour(label, i),
               alpha=0.85 if "chrono" not in label else 0.55)
    for value, text in hlines:
        ax.axhline(value, color="0.3", linestyle="-.", linewidth=1, label=text)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, fontsize=9)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, stem, formats=FORMATS)[0]


def gate_histograms(panels: Mapping[str, Mapping[str, np.ndarray]], stem: str | os.PathLike, *, xlabel: str,
                    title: str) -> Path:
    """One panel per model family; in each, step histograms (densities) keyed ``"<hold|write>, <init|trained>"``:
    colour tells hold from write steps, line style initialisation (dashed) from trained (solid)."""
    fig = Figure(figsize=(5.5 * max(1, len(panels)), 4.2))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels))))
    bins = np.linspace(0, 1, 41)
    for ax, (panel, series) in zip(axes, panels.items(), strict=False):
        for label, values in series.items():
            if len(values):
                ax.hist(values, bins=bins, histtype="step", linewidth=1.6, density=True, label=label,
                        color="#1f77b4" if label.startswith("hold") else "#ff7f0e",
                        linestyle="--" if "init" in label else "-")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.set_title(panel)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, stem, formats=FORMATS)[0]
