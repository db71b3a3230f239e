"""Markdown for benchmark results, and the README section it replaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

START, END = "<!-- bench:start -->", "<!-- bench:end -->"

# (numerator, denominator): "numerator time / denominator time" = how many times faster the denominator is
RATIOS = {
    "streaming": [("onnxruntime", "grulab"), ("torch.nn.GRU", "grulab"), ("torch GRUCell loop", "grulab stream.step")],
    "latency": [("onnxruntime", "grulab stream.step"), ("torch GRUCell", "grulab stream.step"),
                ("onnxruntime", "grulab")],
    "inference": [("onnxruntime", "grulab"), ("torch.nn.GRU", "grulab")],
    "training": [("torch.nn.GRU", "grulab")],
    "mingru": [("grulab GRU", "grulab MinGRU"), ("torch.nn.GRU", "grulab GRU")],
}
TITLES = {
    "streaming": "Streaming inference, batch 1 (µs per step; whole sequence unless marked per-step)",
    "latency": "Real-time streaming, batch 1: one step per call, each after the idle (µs per call)",
    "inference": "Inference, whole sequence (ms)",
    "training": "Training, forward + backward (ms)",
    "mingru": "minGRU (fused CPU kernels, backend auto) against GRU, training forward + backward (ms)",
}


def _shape(s: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in s.items())


def _peak(results: dict[str, Any]) -> float:
    return results.get("peak_gflops", results["sgemm_peak_gflops"])


def _peak_source(results: dict[str, Any]) -> str:
    """Which measurement gave the peak (results written before the panel GEMM have only sgemm)."""
    sgemm, panel = results["sgemm_peak_gflops"], results.get("panel_gemm_peak_gflops")
    if panel is None:
        return "torch.mm sgemm"
    return f"the faster of torch.mm sgemm on 2048² matrices, {sgemm:.0f}, and grulab's panel GEMM, {panel:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table, and the blank line after it."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in rows), ""]


def markdown_table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Measured by `grulab bench` on {m['cpu']} ({m['logical_cpus']} logical CPUs, {m['threads']} threads), "
             f"{m['date']}; torch {m['versions']['torch']}, numba {m['versions'].get('numba')}, "
             f"onnxruntime {m['versions'].get('onnxruntime')}. Medians of alternating runs; matrix-product peak "
             f"{_peak(results):.0f} GFLOP/s ({_peak_source(results)}); \"roofline\" = grulab's matrix-product "
             f"GFLOP/s as a fraction of that peak.", ""]
    for case, title in TITLES.items():
        rows = [r for r in results["rows"] if r["case"] == case]
        if not rows:
            continue
        names = list(dict.fromkeys(k for r in rows for k in r["results"]))
        ratios = [(a, b) for a, b in RATIOS[case] if a in names and b in names]
        lines += [f"**{title}**", ""]
        roofline = any("roofline_fraction" in r for r in rows)
        header = ["shape", *names, *(f"{a} / {b}" for a, b in ratios), *(["roofline"] if roofline else [])]
        body = []
        for r in rows:
            res = r["results"]
            cells = [_shape(r["shape"]), *(f"{res[n]:.2f}" if n in res else "" for n in names)]
            cells += [f"{res[a] / res[b]:.2f}x" for a, b in ratios]
            if roofline:
                cells.append(f"{r['roofline_fraction']:.0%}" if "roofline_fraction" in r else "")
            body.append(cells)
        lines += _table(header, body)
    lines += _bounds_table(results.get("bounds", []))
    return "\n".join(lines)


def _bounds_table(bounds: list[dict[str, Any]]) -> list[str]:
    """The floor of each case (``grulab.bench.bounds``) and the best ratio it leaves against each peer."""
    if not bounds:
        return []
    peers = list(dict.fromkeys(p for b in bounds for p in b["best_ratio"]))
    lines = ["**Bounds measured in this run** (floor: streaming, the recurrent product U h_prev read once per "
             "step on one thread, or split over two threads running at once with a barrier per step, both timed "
             "here, and the input products "
             "at the matrix-product peak; inference and training, the matrix-product FLOPs at that peak; element-wise "
             "work excluded. \"best X / grulab\": the ratio any implementation at the floor would show against "
             "X's time above)", ""]
    header = ["case", "shape", "floor", "grulab", "grulab / floor", *(f"best {p} / grulab" for p in peers)]
    body = [[b["case"], _shape(b["shape"]), f"{b['floor']:.2f} {b['unit']}",
             f"{b['grulab']:.2f}" if b["grulab"] else "", f"{b['grulab'] / b['floor']:.2f}" if b["grulab"] else "",
             *(f"{b['best_ratio'][p]:.2f}x" if p in b["best_ratio"] else "" for p in peers)] for b in bounds]
    at_rate = [b for b in bounds if "best_ratio_at_weight_gradient_rate" in b]
    return lines + _table(header, body) + (_weight_gradient_table(at_rate) if at_rate else [])


def _weight_gradient_table(bounds: list[dict[str, Any]]) -> list[str]:
    """Training rows against the rate the machine's BLAS reaches on the step's largest product."""
    peers = list(dict.fromkeys(p for b in bounds for p in b["best_ratio_at_weight_gradient_rate"]))
    lines = ["**Training at the rate of its largest product** (`torch.mm` forming the weight gradient dU, "
             "3H x T·B x H, timed in this run. \"Step at that rate\": every FLOP of the step at that rate, as if "
             "its small, sequential recurrent products ran as fast as the BLAS runs this large one and its "
             "element-wise work were free; \"best X / grulab\": X's time above over that step)", ""]
    header = ["shape", "dU by torch.mm", "of the peak", "step at that rate", "grulab",
              *(f"best {p} / grulab" for p in peers)]
    body = [[_shape(b["shape"]), f"{b['detail']['weight_gradient_gflops']:.0f} GFLOP/s",
             f"{b['detail']['weight_gradient_fraction']:.0%}",
             f"{b['detail']['step_at_weight_gradient_rate']:.2f} {b['unit']}",
             f"{b['grulab']:.2f}" if b["grulab"] else "",
             *(f"{b['best_ratio_at_weight_gradient_rate'][p]:.2f}x" for p in peers)] for b in bounds]
    return lines + _table(header, body)


def update_readme(path: Path, table: str) -> None:
    """Replace the text between the bench markers of ``path`` with ``table``."""
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} section to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{table}\n{END}{tail}")
