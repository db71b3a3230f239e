"""``grulab bench``: grulab against torch.nn.GRU and ONNX Runtime, side by side in one process.

Every case builds its contestants from the same weights, warms each up, then times them in
alternating rounds (A, B, C, A, B, C, ...) so that drifts in machine load hit all of them alike,
and reports medians and ratios. Each case also reports its fraction of the machine's sgemm peak
(measured at the start of the run with ``torch.mm``), the roofline a GEMM-bound recurrence can
approach. Results are written as JSON and as a Markdown table under ``benchmarks/results/``.
"""

from grulab.bench.harness import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
