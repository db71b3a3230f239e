"""The training loop: ``fit`` with evaluation, early stopping, weight noise, checkpoints and resume.

One plain function over four things the caller supplies: a model, ``loss_fn(model, batch)``, the
batches and ``evaluate(model)``. Everything that decides the next step (weights, optimiser state,
every random generator, the early-stopping state, the log) is in the checkpoint, so a resumed run
ends with exactly the weights and metrics of an uninterrupted one.

Run directory layout (``run_dir``)::

    config.json              the TrainConfig, the model's config and class, the description
    metrics.jsonl            one JSON object per line: {"kind": "train", "step", "loss", "grad_norm"}
                             every log_every steps, {"kind": "eval", "step", <metrics>} per evaluation
    model.safetensors        the best model (or the final one without a monitor): grulab.io format
    checkpoint.safetensors   the latest checkpoint (weights, optimiser, RNG states, step, log)
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grulab import io
from grulab.train.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from grulab.train.config import TrainConfig
from grulab.train.distributed import DistInfo, all_mean, broadcast_json, dist_info

CONFIG_FILE, METRICS_FILE, MODEL_FILE, CHECKPOINT_FILE = (
    "config.json", "metrics.jsonl", "model.safetensors", "checkpoint.safetensors")
# fields that may change between an interrupted run and its resumption without changing its result
RESUMABLE_CHANGES = frozenset({"steps", "progress", "checkpoint_every", "device", "threads"})

LossFn = Callable[[nn.Module, Any], Tensor]
Evaluate = Callable[[nn.Module], dict[str, float]]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: the evaluation records, in order: ``{"kind": "eval", "step": s, <metric>: value}``.
        train_log: the training-loss records: ``{"kind": "train", "step", "loss", "grad_norm"}``
            (means over the last ``log_every`` steps, over all processes).
        best: the metrics of the best evaluation (by ``monitor``), or of the last one without a
            monitor; ``None`` without ``evaluate``.
        best_step: the step of ``best`` (``None`` without ``evaluate``).
        stopped_early: whether ``patience`` ended training before ``steps``.
        seconds: wall time spent training, summed over resumed parts.
        steps: optimiser steps taken.
        run_dir: the run directory, if any.
    """

    history: list[dict[str, Any]]
    train_log: list[dict[str, Any]]
    best: dict[str, float] | None
    best_step: int | None
    stopped_early: bool
    seconds: float
    steps: int
    run_dir: Path | None = None

    @property
    def final(self) -> dict[str, Any] | None:
        """The last evaluation record."""
        return self.history[-1] if self.history else None


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg.optimizer`` names, with the config's hyper-parameters."""
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rmsprop_alpha, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor inside (tuples, lists, dicts, objects with ``.to``) on ``device``."""
    if isinstance(batch, Tensor) or (hasattr(batch, "to") and not isinstance(batch, type)):
        return batch.to(device)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # NamedTuple
        return type(batch)(*(move_to(b, device) for b in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


def resolve_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {cfg.device!r} was asked for but CUDA is not available")
        if info.distributed:
            device = torch.device("cuda", info.local_rank)
    return device


class _Batches:
    """Step-indexed access to a callable ``batches(step)`` or an iterable (consumed in order)."""

    def __init__(self, batches: Callable[[int], Any] | Iterable[Any], start: int) -> None:
        self.fn: Callable[[int], Any] | None = None
        self.it: Iterator[Any] | None = None
        if callable(batches):
            self.fn = batches
        elif isinstance(batches, Iterable):
            self.it = iter(batches)
            for _ in range(start):  # resume: skip what the interrupted run consumed
                next(self.it)
        else:
            raise TypeError(f"batches must be a callable batches(step) -> batch or an iterable, "
                            f"got {type(batches).__name__}")

    def get(self, step: int) -> Any:
        """The batch for ``step``; ``StopIteration`` when an iterable is exhausted."""
        return self.fn(step) if self.fn is not None else next(self.it)  # type: ignore[misc]


class _Run:
    """The mutable state of one training run (all of it goes into checkpoints)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.step = 0
        self.records: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_metrics: dict[str, float] | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.finished = False
        self.seconds = 0.0
        self.window: list[list[float]] = []  # (loss, grad norm) of the steps since the last log line

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "config": self.cfg.to_dict(), "records": self.records,
                "best_value": self.best_value, "best_step": self.best_step, "best_metrics": self.best_metrics,
                "bad_evals": self.bad_evals, "stopped_early": self.stopped_early, "finished": self.finished,
                "seconds": self.seconds, "window": self.window}

    def load(self, state: dict[str, Any], best: dict[str, Tensor] | None) -> None:
        for key in ("step", "records", "best_value", "best_step", "best_metrics", "bad_evals", "stopped_early",
                    "finished", "seconds", "window"):
            setattr(self, key, state[key])
        self.best_weights = best

    def observe(self, metrics: dict[str, float], model: nn.Module) -> bool:
        """Update the best model and early stopping with an evaluation; True if it improved."""
        cfg = self.cfg
        if cfg.monitor is None:
            self.best_step, self.best_metrics = self.step, metrics
            return True
        value = metrics[cfg.monitor]
        better = self.best_value is None or (
            value < self.best_value - cfg.min_delta if cfg.mode == "min" else value > self.best_value + cfg.min_delta)
        if better:
            self.best_value, self.best_step, self.best_metrics, self.bad_evals = value, self.step, metrics, 0
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_evals += 1
            if cfg.patience is not None and self.bad_evals >= cfg.patience:
                self.stopped_early = True
        return better


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Callable[[int], Any] | Iterable[Any],
    evaluate: Evaluate | None,
    cfg: TrainConfig | dict[str, Any],
    run_dir: str | Path | None = None,
    resume: bool = False,
    description: str = "",
) -> FitResult:
    """Train ``model`` in place and return what happened.

    Args:
        model: the module to train (moved to ``cfg.device``). Under ``torch.distributed`` (a
            process group is initialised, e.g. by ``torchrun``) it is wrapped in
            ``DistributedDataParallel``; rank 0's initial weights are broadcast to all ranks.
        loss_fn: ``loss_fn(model, batch) -> scalar Tensor``, the loss to minimise. It receives the
            model to *call* (the DDP wrapper when distributed). Under DDP the gradients of the
            ranks are averaged, so each rank's loss should be its share of the global loss
            (e.g. a mean over an equal shard, or its sum divided by the global count times the
            number of ranks).
        batches: ``batches(step) -> batch`` for ``step = 0, 1, ...`` (deterministic given the step
            makes resuming trivial), or an iterable consumed one batch per step (resuming skips
            the batches already used, so it must yield the same sequence again; training ends
            early if it runs out). Tensors in the batch are moved to the device. Under DDP, the
            batch is this rank's shard.
        evaluate: ``evaluate(model) -> {name: float}`` run without gradients in eval mode every
            ``cfg.eval_every`` steps and after the last step (only on rank 0 under DDP), or
            ``None``.
        cfg: a :class:`TrainConfig` (or a dict for :meth:`TrainConfig.from_dict`). ``fit`` seeds
            torch, NumPy and Python's ``random`` with ``cfg.seed`` before training (the caller
            seeds the model's initialisation).
        run_dir: folder for ``config.json``, ``metrics.jsonl``, ``model.safetensors`` and
            ``checkpoint.safetensors`` (only rank 0 writes); ``None``: nothing is written.
        resume: continue from ``run_dir``'s checkpoint if there is one (a finished run returns
            at once); without one, start afresh. The config must match the checkpoint's except
            for ``steps``, ``progress``, ``checkpoint_every``, ``device`` and ``threads``.
        description: a label for the progress bar and ``config.json``.

    Returns:
        A :class:`FitResult`. With ``cfg.monitor`` and ``cfg.restore_best``, the model holds the
        best weights on return.

    Raises:
        FloatingPointError: the loss or the gradient norm became non-finite (the step is named).
        ValueError: bad arguments, a monitor that ``evaluate`` does not return, a checkpoint that
            does not match the model or the config.
    """
    if isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig or a dict, got {type(cfg).__name__}")
    with cpu_threads(cfg.threads):
        return _fit(model, loss_fn, batches, evaluate, cfg, run_dir, resume, description)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` CPU threads for torch and for the Numba kernels of the fused
    GRU engine (``None``: unchanged), then restore both."""
    if threads is None:
        yield
        return
    import numba

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


def _fit(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Callable[[int], Any] | Iterable[Any],
    evaluate: Evaluate | None,
    cfg: TrainConfig,
    run_dir: str | Path | None,
    resume: bool,
    description: str,
) -> FitResult:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable: loss_fn(model, batch) -> scalar Tensor")
    if evaluate is not None and not callable(evaluate):
        raise TypeError("evaluate must be callable evaluate(model) -> dict[str, float], or None")
    if cfg.monitor is not None and evaluate is None:
        raise ValueError(f"monitor={cfg.monitor!r} needs an evaluate function")
    if cfg.patience is not None and cfg.monitor is None:
        raise ValueError("patience (early stopping) needs monitor: the name of a metric returned by evaluate")
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir holding the checkpoint")
    info = dist_info()
    device = resolve_device(cfg, info)
    model.to(device)
    seed_everything(cfg.seed)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 0x5EED)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    optimizer = make_optimizer(params, cfg)
    run = _Run(cfg)
    run_path = Path(run_dir) if run_dir is not None else None
    writer = _Writer(run_path if info.is_main else None)

    checkpoint = run_path / CHECKPOINT_FILE if run_path is not None else None
    if resume and checkpoint is not None and checkpoint.is_file():
        _check_resumable(json.loads(read_checkpoint(checkpoint)[1]["state"])["config"], cfg, checkpoint)
        best, state = restore_checkpoint(checkpoint, model=model, optimizer=optimizer, noise=noise)
        run.load(state, best)
        if run.finished and not run.stopped_early and run.step < cfg.steps:
            run.finished = False  # a finished run resumed with a larger budget continues
        writer.rewrite(run.records)
    else:
        writer.rewrite([])
    writer.write_config(model, cfg, description, info)
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def do_eval() -> dict[str, float] | None:
        if evaluate is None:
            return None
        metrics = _evaluate(model, evaluate) if info.is_main else None
        metrics = broadcast_json(metrics, device)
        if cfg.monitor is not None and cfg.monitor not in metrics:
            raise ValueError(f"monitor {cfg.monitor!r} is not among the metrics evaluate returned: {sorted(metrics)}")
        record = {"kind": "eval", "step": run.step, **metrics}
        run.records.append(record)
        writer.append(record)
        if run.observe(metrics, model) and info.is_main and cfg.monitor is not None and run_path is not None:
            writer.save_model(model, run)  # keep the best model on disk as it appears
        return metrics

    source = _Batches(batches, run.step)
    started = time.perf_counter()
    seconds_before = run.seconds
    last_eval = max((r["step"] for r in run.records if r["kind"] == "eval"), default=None)
    with _ProgressBar(cfg.progress and info.is_main, description, cfg.steps, run.step) as bar:
        while not run.finished and run.step < cfg.steps:
            try:
                batch = move_to(source.get(run.step), device)
            except StopIteration:
                break
            loss, grad_norm = _train_step(net, params, optimizer, loss_fn, batch, cfg, noise, run.step, info)
            run.step += 1
            window = run.window
            window.append([loss, grad_norm])
            bar(run.step, loss)
            if run.step % cfg.log_every == 0:
                mean_loss, mean_norm = all_mean([sum(w[0] for w in window) / len(window),
                                                 sum(w[1] for w in window) / len(window)], device)
                record = {"kind": "train", "step": run.step, "loss": mean_loss, "grad_norm": mean_norm}
                run.records.append(record)
                writer.append(record)
                window.clear()
            if run.step % cfg.eval_every == 0:
                do_eval()
                last_eval = run.step
            if run.stopped_early:
                break
            if cfg.checkpoint_every is not None and run.step % cfg.checkpoint_every == 0 and run.step < cfg.steps:
                run.seconds = seconds_before + time.perf_counter() - started
                writer.checkpoint(model, optimizer, noise, run)
    if not run.finished:
        if last_eval != run.step and run.step > 0:
            do_eval()
        run.finished = True  # the budget is spent, patience ran out or the iterable is exhausted
        run.seconds = seconds_before + time.perf_counter() - started
        writer.checkpoint(model, optimizer, noise, run)
    if cfg.monitor is not None and run.best_weights is not None:
        if cfg.restore_best:
            model.load_state_dict(run.best_weights)
            writer.save_model(model, run)
        elif writer.path is not None:
            best_model = copy.deepcopy(model)
            best_model.load_state_dict(run.best_weights)
            writer.save_model(best_model, run)
    else:
        writer.save_model(model, run)
    history = [r for r in run.records if r["kind"] == "eval"]
    return FitResult(history=history, train_log=[r for r in run.records if r["kind"] == "train"],
                     best=_metrics_only(run.best_metrics), best_step=run.best_step, stopped_early=run.stopped_early,
                     seconds=run.seconds, steps=run.step, run_dir=run_path)


def _metrics_only(metrics: dict[str, Any] | None) -> dict[str, float] | None:
    return None if metrics is None else {k: v for k, v in metrics.items() if k not in ("kind", "step")}


def _train_step(net: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                batch: Any, cfg: TrainConfig, noise: torch.Generator, step: int, info: DistInfo) -> tuple[float, float]:
    """One optimiser step; returns (loss, gradient norm before clipping)."""
    net.train()
    clean = None
    if cfg.weight_noise > 0:
        # Graves-style weight noise: the gradient is taken at w + eps and applied to w
        clean = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=noise, device=p.device, dtype=p.dtype), alpha=cfg.weight_noise)
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(net, batch)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn must return a scalar Tensor, got {type(loss).__name__}"
                        f"{tuple(loss.shape) if isinstance(loss, Tensor) else ''}")
    loss_value = loss.item()
    if not info.distributed and not math.isfinite(loss_value):
        raise FloatingPointError(f"the loss is {loss_value} at step {step + 1}")
    loss.backward()
    if clean is not None:
        with torch.no_grad():
            for p, c in zip(params, clean, strict=True):
                p.copy_(c)
    # clip_grad_norm_ with an infinite bound only measures the norm
    grad_norm = float(nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip is not None else math.inf))
    # after DDP's all-reduce the gradient norm is the same on every rank: every rank stops together
    if not math.isfinite(grad_norm):
        raise FloatingPointError(f"the gradient norm is {grad_norm} at step {step + 1} (loss {loss_value})")
    optimizer.step()
    return loss_value, grad_norm


def _evaluate(model: nn.Module, evaluate: Evaluate) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            metrics = evaluate(model)
    finally:
        model.train(was_training)
    if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
        raise TypeError(f"evaluate must return a dict[str, float], got {type(metrics).__name__}")
    out = {}
    for k, v in metrics.items():
        if k in ("kind", "step"):
            raise ValueError(f"evaluate may not return the reserved metric name {k!r}")
        try:
            out[k] = float(v)
        except (TypeError, ValueError) as e:
            raise TypeError(f"evaluate returned a non-numeric value for {k!r}: {v!r}") from e
    return out


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, source: Path) -> None:
    current = cfg.to_dict()
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(f"cannot resume from {source}: the training config changed ({diffs})")


class _Writer:
    """The run directory's files (a no-op without a run directory or off rank 0)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        if self.path is not None:
            io.atomic_write_bytes(self.path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records).encode())

    def append(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    def write_config(self, model: nn.Module, cfg: TrainConfig, description: str, info: DistInfo) -> None:
        if self.path is None:
            return
        doc = {"train": cfg.to_dict(), "model_class": type(model).__name__,
               "model": model.config() if callable(getattr(model, "config", None)) else None,
               "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "description": description, "world_size": info.world_size}
        io.atomic_write_bytes(self.path / CONFIG_FILE, (json.dumps(doc, indent=2) + "\n").encode())

    def checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, noise: torch.Generator,
                   run: _Run) -> None:
        if self.path is not None:
            save_checkpoint(self.path / CHECKPOINT_FILE, model=model, optimizer=optimizer, noise=noise,
                            best=run.best_weights, state=run.state())

    def save_model(self, model: nn.Module, run: _Run) -> None:
        """``model.safetensors`` with the step and metrics in its ``extra`` metadata."""
        if self.path is None:
            return
        extra = {"step": run.step, "best_step": run.best_step, "metrics": _metrics_only(run.best_metrics)}
        if type(model).__name__ in io.registered():
            io.save(model, self.path / MODEL_FILE, extra=extra)
        else:  # an unregistered class: weights only, still in the safe format
            header = {"format": io.FORMAT, "version": io.VERSION, "class": None, "config": None, "extra": extra}
            io.atomic_write_bytes(self.path / MODEL_FILE, io.encode(model.state_dict(), header))


class _ProgressBar:
    """A rich progress bar with the live loss, or nothing (``enabled=False``)."""

    def __init__(self, enabled: bool, description: str, total: int, start: int) -> None:
        self.enabled, self.description, self.total, self.start = enabled, description or "training", total, start
        self.progress = None

    def __enter__(self) -> Callable[[int, float], None]:
        if not self.enabled:
            return lambda step, loss: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 transient=True)
        self.progress.start()
        task = self.progress.add_task(self.description, total=self.total, completed=self.start, loss="-")
        return lambda step, loss: self.progress.update(task, completed=step, loss=f"{loss:.4f}")

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
