"""The benchmark cases, the alternating timer, and the result files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

import grulab
from grulab.bench.bounds import compute_bounds, panel_gemm_peak
from grulab.bench.report import markdown_table, update_readme

Contestants = dict[str, Callable[[], Any]]


@dataclass
class BenchConfig:
    """What to run. ``quick`` shrinks every case to a smoke test (seconds)."""

    quick: bool = False
    repeats: int = 15
    cases: tuple[str, ...] = ("streaming", "latency", "inference", "training", "mingru")
    out_dir: str = "benchmarks/results"
    threads: int | None = None  # default: torch.get_num_threads()
    seed: int = 0
    stream_hidden: tuple[int, ...] = (64, 128, 256, 512)
    stream_steps: int = 1000
    train_batches: tuple[int, ...] = (16, 64)
    train_hidden: tuple[int, ...] = (128, 256, 512)
    mingru_lengths: tuple[int, ...] = (256, 1024, 4096)
    settle: float = 0.1  # seconds of idle before each call (see time_alternating)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.cases) - set(CASES)
        if unknown:
            raise ValueError(f"unknown bench cases {sorted(unknown)}; choose from {', '.join(CASES)}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not 0 <= self.settle <= 1:
            raise ValueError(f"settle must be in [0, 1] seconds, got {self.settle}")
        if self.quick:  # a smoke run: timings are not the point
            self.repeats = min(self.repeats, 3)
            self.settle = min(self.settle, 0.01)
            self.stream_hidden, self.stream_steps = (32,), 50
            self.train_batches, self.train_hidden = (4,), (32,)
            self.mingru_lengths = (64,)


def time_alternating(contestants: Contestants, repeats: int, warmup: int = 7,
                     settle: float = 0.0) -> dict[str, dict[str, float]]:
    """Median, min and max seconds per call of each contestant, timed in alternating rounds.

    ``warmup`` untimed calls each come first: compilation, allocation, caches, and grulab's path
    tuner, which measures each of its three paths on a small batch twice (the first call of each
    is dropped) before it settles on one: six calls.

    ``settle`` seconds of sleep precede each call: thread pools spin for a while after a call
    (ONNX Runtime's by default, for 20-40 ms here; OpenMP's under torch), and a spinning pool left
    by one contestant would take a core from the next one's call (a two-thread grulab run right
    after ONNX Runtime took 21.8 ms instead of 11.2 with a 20 ms pause, 11.9 with 40 ms).

    Each round starts one contestant further along, so every contestant follows every other one
    equally often: on this machine the first call after the idle that follows some contestants
    paid for it (after the GRUCell loop, allocating and writing 250 KB took 450-900 us against
    30-45 us for the same code right after it), and a fixed order put that on one contestant."""
    for fn in contestants.values():
        for _ in range(warmup):  # under the timed calls' conditions (idle first), which a tuner learns
            if settle:
                time.sleep(settle)
            fn()
    samples: dict[str, list[float]] = {k: [] for k in contestants}
    names = list(contestants)
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            fn = contestants[name]
            if settle:
                time.sleep(settle)
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in samples.items()}


def sgemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best sgemm throughput of ``torch.mm`` on this machine, GFLOP/s (the roofline)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gru_flops(T: int, B: int, I: int, H: int, backward: bool) -> float:
    """Matrix-product FLOPs of one GRU layer (element-wise work excluded): forward
    ``2·T·B·3H·(I + H)``; the backward adds ``dh`` through ``U``, ``dW`` and ``dU`` (``dx`` is not
    needed when the input does not require a gradient)."""
    fwd = 2 * T * B * 3 * H * (I + H)
    return fwd + (2 * T * B * 3 * H * (H + I + H) if backward else 0)


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    versions = {"grulab": grulab.__version__, "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("numba", "onnxruntime"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# ------------------------------------------------------------------------------------------- ORT
def _ort_session(model: grulab.GRU, threads: int, tmp: Path) -> Any | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = grulab.export_onnx(model, tmp / f"gru_{id(model)}.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_runner(sess: Any, x: torch.Tensor, h0: torch.Tensor) -> Callable[[], Any]:
    feeds = {"input": x.numpy(), "h0": h0.numpy()}
    return lambda: sess.run(None, feeds)


# ------------------------------------------------------------------------------------------ cases
def _pair(I: int, H: int, seed: int) -> tuple[torch.nn.GRU, grulab.GRU]:
    torch.manual_seed(seed)
    ref = torch.nn.GRU(I, H)
    return ref, grulab.GRU.from_torch(ref)


def case_streaming(cfg: BenchConfig, threads: int, tmp: Path) -> list[dict[str, Any]]:
    return [_streaming_row(H, cfg, threads, tmp) for H in cfg.stream_hidden]


def _streaming_row(H: int, cfg: BenchConfig, threads: int, tmp: Path) -> dict[str, Any]:
    T, I = cfg.stream_steps, max(1, H // 2)
    ref, ours = _pair(I, H, cfg.seed)
    x = torch.randn(T, 1, I)
    contestants: Contestants = {"grulab": lambda: ours(x), "torch.nn.GRU": lambda: ref(x)}
    sess = _ort_session(ours, threads, tmp)
    if sess is not None:
        contestants["onnxruntime"] = _ort_runner(sess, x, torch.zeros(1, 1, H))
    stream = ours.stream()
    xn = x[:, 0].numpy()
    cell = torch.nn.GRUCell(I, H)
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in ref.state_dict().items()})

    def step_loop() -> None:
        stream.reset()
        for t in range(T):
            stream.step(xn[t])

    def cell_loop() -> None:
        h = torch.zeros(1, H)
        for t in range(T):
            h = cell(x[t], h)

    contestants["grulab stream.step"] = step_loop
    contestants["torch GRUCell loop"] = cell_loop
    with torch.no_grad():
        timing = time_alternating(contestants, cfg.repeats, settle=cfg.settle)
    return {"case": "streaming", "shape": {"B": 1, "T": T, "I": I, "H": H}, "unit": "us/step",
            "results": {k: v["median"] / T * 1e6 for k, v in timing.items()}, "flops": gru_flops(T, 1, I, H, False),
            "timing": timing}


def case_latency(cfg: BenchConfig, threads: int, tmp: Path) -> list[dict[str, Any]]:
    """Real-time streaming: one step per call, each after the idle (a frame arriving now and then),
    microseconds per call. No roofline: a cold step is latency, not FLOPs."""
    return [_latency_row(H, cfg, threads, tmp) for H in cfg.stream_hidden]


def _latency_row(H: int, cfg: BenchConfig, threads: int, tmp: Path) -> dict[str, Any]:
    I = max(1, H // 2)
    ref, ours = _pair(I, H, cfg.seed)
    x = torch.randn(1, 1, I)
    stream = ours.stream()
    x_t = x[0].numpy()
    cell = torch.nn.GRUCell(I, H)
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in ref.state_dict().items()})
    h = torch.zeros(1, H)
    contestants: Contestants = {"grulab stream.step": lambda: stream.step(x_t), "grulab": lambda: ours(x)}
    sess = _ort_session(ours, threads, tmp)
    if sess is not None:
        contestants["onnxruntime"] = _ort_runner(sess, x, torch.zeros(1, 1, H))
    contestants |= {"torch GRUCell": lambda: cell(x[0], h), "torch.nn.GRU": lambda: ref(x)}
    with torch.no_grad():
        timing = time_alternating(contestants, cfg.repeats, settle=cfg.settle)
    return {"case": "latency", "shape": {"B": 1, "T": 1, "I": I, "H": H}, "unit": "us",
            "results": {k: v["median"] * 1e6 for k, v in timing.items()}, "timing": timing}


def case_inference(cfg: BenchConfig, threads: int, tmp: Path) -> list[dict[str, Any]]:
    T, B, I, H = (256, 64, 128, 256) if not cfg.quick else (16, 4, 8, 16)
    ref, ours = _pair(I, H, cfg.seed)
    x = torch.randn(T, B, I)
    contestants: Contestants = {}
    with torch.no_grad():
        contestants["grulab"] = lambda: ours(x)
        contestants["torch.nn.GRU"] = lambda: ref(x)
        sess = _ort_session(ours, threads, tmp)
        if sess is not None:
            contestants["onnxruntime"] = _ort_runner(sess, x, torch.zeros(1, B, H))
        timing = time_alternating(contestants, cfg.repeats, settle=cfg.settle)
    return [{"case": "inference", "shape": {"B": B, "T": T, "I": I, "H": H}, "unit": "ms",
             "results": {k: v["median"] * 1e3 for k, v in timing.items()}, "flops": gru_flops(T, B, I, H, False),
             "timing": timing}]


def _train_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        y, h_n = model(x)
        (y.sum() + h_n.sum()).backward()

    return step


def case_training(cfg: BenchConfig, threads: int, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    T, I = (256, 128) if not cfg.quick else (16, 8)
    for B in cfg.train_batches:
        for H in cfg.train_hidden:
            ref, ours = _pair(I, H, cfg.seed)
            x = torch.randn(T, B, I)
            timing = time_alternating({"grulab": _train_step(ours, x), "torch.nn.GRU": _train_step(ref, x)},
                                      cfg.repeats, settle=cfg.settle)
            rows.append({"case": "training", "shape": {"B": B, "T": T, "I": I, "H": H}, "unit": "ms",
                         "results": {k: v["median"] * 1e3 for k, v in timing.items()},
                         "flops": gru_flops(T, B, I, H, True), "timing": timing})
    return rows


def case_mingru(cfg: BenchConfig, threads: int, tmp: Path) -> list[dict[str, Any]]:
    """Training time against length: minGRU (backend auto: its fused CPU kernels) against the GRU."""
    rows = []
    B, I, H = (16, 128, 256) if not cfg.quick else (4, 8, 16)
    for T in cfg.mingru_lengths:
        torch.manual_seed(cfg.seed)
        gru = grulab.GRU(I, H)
        mingru = grulab.MinGRU(I, H)
        x = torch.randn(T, B, I)
        timing = time_alternating({"grulab GRU": _train_step(gru, x), "grulab MinGRU": _train_step(mingru, x),
                                   "torch.nn.GRU": _train_step(grulab.GRU.to_torch(gru), x)},
                                  max(3, cfg.repeats // 3), settle=cfg.settle)
        rows.append({"case": "mingru", "shape": {"B": B, "T": T, "I": I, "H": H}, "unit": "ms",
                     "results": {k: v["median"] * 1e3 for k, v in timing.items()},
                     "flops": gru_flops(T, B, I, H, True), "roofline_of": "grulab GRU", "timing": timing})
    return rows


CASES = {"streaming": case_streaming, "latency": case_latency, "inference": case_inference,
         "training": case_training, "mingru": case_mingru}


def run_bench(cfg: BenchConfig | None = None, console: Console | None = None,
              update_readme_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the benchmark grid, write JSON and Markdown under ``cfg.out_dir``, return the results."""
    cfg = cfg or BenchConfig()
    console = console or Console()
    threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    sgemm = sgemm_peak(512 if cfg.quick else 2048)
    panel = panel_gemm_peak(threads)
    peak = max(sgemm, panel)
    results: dict[str, Any] = {"machine": machine_info(threads), "sgemm_peak_gflops": sgemm,
                               "panel_gemm_peak_gflops": panel, "peak_gflops": peak,
                               "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(cfg.cases))
        for name in cfg.cases:
            progress.update(task, description=f"benchmarking {name}")
            for row in CASES[name](cfg, threads, Path(tmp)):
                # the roofline of the contestant the FLOP count describes (minGRU rows count the GRU's
                # FLOPs, so they take its time), else the fastest grulab entry of the row
                of = row.get("roofline_of")
                best = row["timing"][of]["median"] if of else min(
                    v["median"] for k, v in row["timing"].items() if k.startswith("grulab"))
                if "flops" in row:
                    row["gflops_grulab"] = row["flops"] / best / 1e9
                    row["roofline_fraction"] = row["gflops_grulab"] / peak
                results["rows"].append(row)
            progress.advance(task)
        progress.update(task, description="measuring the bounds")
        results["bounds"] = compute_bounds(results["rows"], peak, threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench-quick" if cfg.quick else "bench"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    table = markdown_table(results)
    (out / f"{stem}.md").write_text(table)
    console.print(table, soft_wrap=True, markup=False)
    if update_readme_path is not None:
        update_readme(Path(update_readme_path), table)
    return results
