"""The workflow behind ``grulab train``: a task, a model, :func:`fit`, the test score, the files.

One run (:func:`train_run`) writes into its run directory, besides what :func:`fit` writes
(``config.json``, ``metrics.jsonl``, ``model.safetensors``, ``checkpoint.safetensors``):

- ``run.json``: the :class:`RunConfig`, the task's description, the model's size;
- ``results.json``: the best model's valid and test metrics, the baselines' scores on the same
  splits, the best step, the training time, the machine;
- ``metrics.csv`` and ``loss_curve.png``: the log as a table and as a plot.

A grid (:func:`train_grid`) runs several cells and seeds at a matched parameter count, one run
directory each (``<out>/<cell>/seed<k>``), skips the runs that finished, and writes the summary
(:mod:`grulab.train.report`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grulab.io import atomic_write_bytes
from grulab.models import SequenceModel, count_parameters, hidden_for_budget
from grulab.tasks.base import Task
from grulab.train.config import RunConfig, TrainConfig
from grulab.train.distributed import dist_info
from grulab.train.loop import FitResult, cpu_threads, fit

RUN_FILE, RESULTS_FILE = "run.json", "results.json"


@dataclass
class RunResult:
    """A finished run: its directory, the fit, the best model's scores (``results.json``; empty
    off rank 0) and the trained model (holding the best weights)."""

    run_dir: Path | None
    fit: FitResult
    results: dict[str, Any]
    model: torch.nn.Module | None = None


def make_task(run: RunConfig) -> Task:
    from grulab.tasks.registry import make_task as _make

    return _make(run.data, data_path=run.data_path, seq_len=run.seq_len, horizon=run.horizon)


def build_model(run: RunConfig, task: Task, seed: int) -> SequenceModel:
    """The :class:`SequenceModel` for ``task``: ``run.hidden`` units or the budget's, seeded init."""
    hidden = run.hidden or hidden_for_budget(run.cell, task.input_size, task.output_size, run.params,  # type: ignore[arg-type]
                                             num_layers=run.num_layers)
    torch.manual_seed(seed)
    return SequenceModel(run.cell, task.input_size, hidden, task.output_size, num_layers=run.num_layers,
                         readout=task.readout, dropout=run.dropout, init=run.init, backend=run.backend)


def machine_info() -> dict[str, Any]:
    """What the numbers ran on (for reports)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "world_size": dist_info().world_size,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def train_run(run: RunConfig, cfg: TrainConfig, out_dir: str | os.PathLike | None = None, *, resume: bool = False,
              task: Task | None = None, description: str = "") -> RunResult:
    """Train one model on one task, score the best model on valid and test, write the files.

    Args:
        run: data, model and batch size.
        cfg: the training config; its ``monitor`` defaults to the task's validation metric.
        out_dir: the run directory (``None``: no files).
        resume: continue an interrupted run in ``out_dir`` (see :func:`grulab.train.fit`).
        task: a task already built for ``run`` (saves loading the data again in a grid).
        description: a label for the progress bar.

    Returns:
        A :class:`RunResult`; ``results`` holds ``valid``/``test`` metrics of the best model,
        ``baselines``, ``best_step``, ``steps``, ``stopped_early``, ``seconds``, ``parameters``,
        ``hidden`` and ``machine`` (and ``ddp``: whether all processes ended with identical weights,
        under ``torch.distributed``).
    """
    with cpu_threads(cfg.threads):
        return _train_run(run, cfg, out_dir, resume, task, description)


def _train_run(run: RunConfig, cfg: TrainConfig, out_dir: str | os.PathLike | None, resume: bool,
               task: Task | None, description: str) -> RunResult:
    task = task or make_task(run)
    if cfg.monitor is None:
        cfg = cfg.replace(monitor=task.monitor, mode="min")
    info = dist_info()
    path = Path(out_dir) if out_dir is not None else None
    model = build_model(run, task, cfg.seed)
    meta = {"run": run.to_dict(), "task": task.describe(), "hidden": model.rnn.hidden_size,
            "parameters": count_parameters(model)}
    if path is not None and info.is_main:
        _check_same_run(path, meta, resume)
        atomic_write_bytes(path / RUN_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    result = fit(model, task.loss, task.batches(run.batch_size, cfg.seed), lambda m: task.evaluate(m, "valid"), cfg,
                 run_dir=path, resume=resume, description=description or f"{run.cell} on {run.data}")
    results: dict[str, Any] = {}
    ddp = ranks_agree(model) if info.distributed else None
    if info.is_main:
        model.eval()
        scores = {split: task.evaluate(model, split) for split in ("valid", "test")}
        results = {"data": run.data, "cell": run.cell, "seed": cfg.seed, **meta, **scores,
                   "baselines": task.baselines(), "best_step": result.best_step, "steps": result.steps,
                   "stopped_early": result.stopped_early, "seconds": result.seconds, "machine": machine_info(),
                   "metric": getattr(task, "metric_doc", "")}
        if ddp is not None:
            results["ddp"] = ddp
        if path is not None:
            atomic_write_bytes(path / RESULTS_FILE, (json.dumps(results, indent=2) + "\n").encode())
            from grulab.train.report import plot_curves, write_csv

            write_csv(path)
            plot_curves(path, title=f"{run.cell} on {run.data}, seed {cfg.seed}")
    return RunResult(path, result, results, model)


def ranks_agree(model: torch.nn.Module) -> dict[str, Any]:
    """Whether every process ended with the same weights (call on every rank after training).

    Each rank reduces its weights to fingerprints in float64 (sum, sum of squares, sum of
    absolute values, and a position-weighted sum, which sees swapped entries); the ranks' fingerprints
    are gathered and compared exactly. Returns ``{"world_size", "identical", "fingerprints"}``.
    """
    import torch.distributed as dist

    w = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    pos = torch.arange(1, w.numel() + 1, dtype=torch.float64)
    mine = torch.stack([w.sum(), (w * w).sum(), w.abs().sum(), (w * pos).sum()])
    device = next(model.parameters()).device
    gathered = [torch.zeros(4, dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine.to(device))
    rows = [g.cpu().tolist() for g in gathered]
    return {"world_size": len(rows), "identical": all(r == rows[0] for r in rows), "fingerprints": rows}


def _check_same_run(path: Path, meta: dict[str, Any], resume: bool) -> None:
    """Resuming into a folder that holds another run (other data, cell or sizes) is an error."""
    old = path / RUN_FILE
    if resume and old.is_file():
        saved = json.loads(old.read_text())
        if saved.get("run") != meta["run"]:
            changed = sorted(k for k in meta["run"] if saved.get("run", {}).get(k) != meta["run"][k])
            raise ValueError(f"cannot resume {path}: it holds a run with other settings ({', '.join(changed)})")


def is_finished(run_dir: Path, cfg: TrainConfig | None = None) -> bool:
    """True when ``run_dir`` holds the results of a finished run (trained with ``cfg``, if given:
    a run finished with a smaller ``steps`` budget is not, and resuming it extends it)."""
    if not (run_dir / RESULTS_FILE).is_file():
        return False
    if cfg is None:
        return True
    try:
        saved = json.loads((run_dir / "config.json").read_text())["train"]
        results = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError, KeyError):
        return False
    return saved.get("steps") == cfg.steps or (results.get("stopped_early") and saved.get("steps", 0) <= cfg.steps)


def train_grid(run: RunConfig, cfg: TrainConfig, cells: list[str], seeds: list[int],
               out_dir: str | os.PathLike, *, resume: bool = True) -> dict[str, Any]:
    """Train every cell with every seed at ``run``'s settings (a matched parameter budget unless
    ``run.hidden`` is set); finished runs are skipped, interrupted ones resume, and runs finished
    with a smaller ``steps`` budget (not stopped early) continue to the new one. Returns the
    summary (:func:`grulab.train.report.summarize`), also written to ``out_dir``.
    """
    from grulab.models import check_cell
    from grulab.train.report import summarize, write_summary

    if not cells or not seeds:
        raise ValueError("cells and seeds must be non-empty lists")
    for cell in cells:
        check_cell(cell)
    out = Path(out_dir)
    task = make_task(run)
    started = time.perf_counter()
    for cell in cells:
        for seed in seeds:
            run_dir = out / cell / f"seed{seed}"
            if resume and is_finished(run_dir, cfg):
                continue
            train_run(run.replace(cell=cell), cfg.replace(seed=seed), run_dir, resume=resume, task=task,
                      description=f"{cell} seed {seed} on {run.data}")
    if not dist_info().is_main:
        return {}
    summary = summarize(out)
    summary["grid_seconds_this_call"] = time.perf_counter() - started
    write_summary(out, summary)
    return summary
