"""Training one lab run with :func:`grulab.train.fit`: models at a matched parameter count,
deterministic data, and the files every run folder holds.

A run folder (``<out>/<experiment>/<run_id>/``) ends up with ``spec.json`` (the run's parameters),
``config.json``, ``metrics.jsonl``, ``checkpoint.safetensors`` and ``model.safetensors`` (written
by ``fit``), ``model_init.safetensors`` (the weights before training, for diagnostics at
initialisation) and, last, ``result.json`` (what the run measured): a folder with ``result.json``
is finished.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from grulab import io
from grulab.lab.core import LabConfig, RunSpec
from grulab.models import SequenceModel, count_parameters, hidden_for_budget
from grulab.train import FitResult, TrainConfig, fit

INIT_FILE = "model_init.safetensors"
# fixed generator seeds of the held-out sets: every cell and seed is measured on the same sequences
VALID_SEED, TEST_SEED = 999_983, 999_979
CELL_LABELS = {"rnn": "tanh RNN", "gru": "GRU (reset after)", "gru_before": "GRU (reset before)", "lstm": "LSTM",
               "mingru": "minGRU"}
# the seed's comparison: every experiment runs these four
CELLS = ("rnn", "gru", "gru_before", "lstm")
# minGRU (Feng et al. 2024) runs beside them on the memory tasks (copy, adding), at the same budget
MINGRU = "mingru"
LAB_CELLS = (*CELLS, MINGRU)  # every cell the lab's tables know, in table order


def model_init(cell: str, init: str) -> str:
    """The init to use: ``"default"`` is each layer's default (PyTorch's); the tanh RNN has no gates,
    so ``"chrono"`` means ``"orthogonal"`` for it."""
    if init == "default":
        return "pytorch"
    if init == "chrono" and cell == "rnn":
        return "orthogonal"
    return init


def build_model(cell: str, input_size: int, output_size: int, params: int, *, readout: str = "last",
                init: str = "default", horizon: float | None = None, seed: int = 0) -> SequenceModel:
    """A one-layer :class:`~grulab.models.SequenceModel` of ``cell`` sized to ``params``
    parameters, initialised from ``seed`` (``horizon``: the chrono ``T_max``)."""
    torch.manual_seed(seed)
    hidden = hidden_for_budget(cell, input_size, output_size, params)
    chosen = model_init(cell, init)
    return SequenceModel(cell, input_size, hidden, output_size, readout=readout, init=chosen,
                         chrono_horizon=float(horizon) if chosen == "chrono" else None)


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """The generator of training batch ``step`` of run ``seed``: batches are a pure function of
    (seed, step), so a resumed run sees exactly the data of an uninterrupted one."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + salt) % (2**62))


def held_out(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def machine() -> dict[str, Any]:
    """Where a run ran (reported beside the timings)."""
    from grulab.engine.dispatch import ENGINES

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gru_engines": sorted(ENGINES)}


def train_run(
    model: SequenceModel,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Callable[[int], Any],
    evaluate: Callable[[nn.Module], dict[str, float]],
    cfg: LabConfig,
    spec: RunSpec,
    run_dir: Path,
    *,
    monitor: str,
    mode: str = "min",
    progress: bool = True,
    description: str = "",
) -> FitResult:
    """Train with :func:`grulab.train.fit` in ``run_dir``, resuming from its checkpoint if one is
    there; keeps the best weights by ``monitor`` on the validation set."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / INIT_FILE).is_file():
        io.save(model, run_dir / INIT_FILE)
    tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, optimizer="adam", clip=cfg.clip, eval_every=cfg.eval_every,
                     log_every=min(50, cfg.steps), monitor=monitor, mode=mode, seed=spec.seed,
                     checkpoint_every=cfg.checkpoint_every, progress=progress)
    return fit(model, loss_fn, batches, evaluate, tc, run_dir=run_dir, resume=True,
               description=description or spec.run_id)


def fit_summary(result: FitResult, model: SequenceModel) -> dict[str, Any]:
    """The training facts every run reports."""
    return {"seconds": result.seconds, "steps": result.steps, "best_step": result.best_step,
            "parameters": count_parameters(model), "hidden_size": model.rnn.hidden_size,
            "curve": [{k: v for k, v in r.items() if k != "kind"} for r in result.history], "machine": machine()}


def load_init(run_dir: Path) -> nn.Module:
    return io.load(run_dir / INIT_FILE)


def load_trained(run_dir: Path) -> nn.Module:
    return io.load(run_dir / "model.safetensors")
