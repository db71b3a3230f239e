"""See inside a recurrent model: traces, gradient flow, the seed's approximation, saturation,
memory horizons, and their plots (``grulab inspect``).

Works on grulab ``GRU`` (both candidates), ``GRUCell``, ``RNN`` and ``LSTM`` layers and on
``SequenceModel``. Everything is computed from the hand-derived math of ``grulab.cells`` run by
the reference engine, in float64 by default.

Example:
    >>> import torch
    >>> from grulab import GRU
    >>> from grulab.diagnostics import trace, gradient_flow, memory_horizon
    >>> gru = GRU(2, 16)
    >>> x = torch.randn(50, 8, 2)
    >>> tr = trace(gru, x)
    >>> flows = gradient_flow(gru, x, lambda y: y[-1].pow(2).sum())
    >>> half_lives = memory_horizon(tr)[0].half_life  # (16,) steps
"""

from grulab.diagnostics.flow import ApproximationGap, GradientFlow, approximation_gap, gradient_flow
from grulab.diagnostics.gates import DEFAULT_THRESHOLD, Horizon, Saturation, memory_horizon, saturation
from grulab.diagnostics.page import Inspection, inspect_models, run_inspect
from grulab.diagnostics.plots import (
    plot_approximation,
    plot_gates,
    plot_gradient_flow,
    plot_horizons,
    save_figure,
)
from grulab.diagnostics.trace import LayerTrace, Trace, trace

__all__ = [
    "DEFAULT_THRESHOLD",
    "ApproximationGap",
    "GradientFlow",
    "Horizon",
    "Inspection",
    "LayerTrace",
    "Saturation",
    "Trace",
    "approximation_gap",
    "gradient_flow",
    "inspect_models",
    "memory_horizon",
    "plot_approximation",
    "plot_gates",
    "plot_gradient_flow",
    "plot_horizons",
    "run_inspect",
    "saturation",
    "save_figure",
    "trace",
]
