"""The training configuration: one flat, typed dataclass; unknown keys fail loudly.

Built in code (``TrainConfig(steps=2000, lr=1e-3)``), from a dictionary (``TrainConfig.from_dict``,
e.g. a parsed TOML table or ``config.json``) or from flat ``key=value`` overrides. Every field is
checked when the object is made, so a typo or a wrong type is an error before any training runs.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

OPTIMIZERS = ("adam", "rmsprop", "sgd")
MODES = ("min", "max")
C = TypeVar("C", bound="TypedConfig")


class TypedConfig:
    """Base of the flat, typed configuration dataclasses: fields are checked against their type
    hints when the object is made (ints are accepted for floats), unknown keys fail loudly."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a mapping; a key that is not a field raises ``ValueError`` naming it."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict needs a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (checked like a new config; unknown keys fail)."""
        return self.from_dict({**self.to_dict(), **changes})


@dataclass
class TrainConfig(TypedConfig):
    """How to train: budget, optimiser, regularisation, evaluation, early stopping, checkpoints.

    Args:
        steps: number of optimiser steps (the budget; early stopping may end sooner).
        lr: learning rate.
        optimizer: ``"adam"``, ``"rmsprop"`` or ``"sgd"``.
        momentum: momentum for ``"sgd"`` and ``"rmsprop"`` (ignored by Adam).
        rmsprop_alpha: RMSProp's smoothing constant of the squared-gradient average.
        weight_decay: L2 penalty passed to the optimiser.
        clip: clip the global gradient norm to this value (``None``: no clipping).
        weight_noise: standard deviation of Gaussian noise added to every parameter for each
            forward/backward pass (Graves 2011; Chung et al. 2014 used 0.075); the gradient
            computed at the noisy weights updates the clean ones. ``0``: off.
        eval_every: run ``evaluate`` every this many steps (and always after the last step).
        log_every: write the mean training loss to the log every this many steps.
        monitor: the metric of ``evaluate`` that decides the best model and early stopping
            (``None``: the final model is the result, no early stopping).
        mode: ``"min"`` if a smaller ``monitor`` is better, ``"max"`` otherwise.
        patience: stop after this many evaluations without improvement (``None``: never); needs
            ``monitor`` (``grulab train`` fills it with the task's validation metric).
        min_delta: an improvement must beat the best value by more than this.
        restore_best: load the best weights into the model at the end (needs ``monitor``).
        seed: seeds the model's random draws during training (dropout, weight noise).
        checkpoint_every: write a checkpoint every this many steps (``None``: only at the end;
            needs a run directory). Checkpoints make ``resume`` exact.
        progress: show a progress bar with the live loss.
        device: where to train (``"cpu"``, ``"cuda"``, ``"cuda:1"``...); under torchrun with CUDA each
            process uses its local rank's GPU.
        threads: CPU threads for torch and for the fused GRU engine's Numba kernels during
            training (``None``: leave their settings). Small recurrent models train fastest with 1
            thread per process, more so on a busy machine.
    """

    steps: int = 1000
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    rmsprop_alpha: float = 0.99
    weight_decay: float = 0.0
    clip: float | None = 1.0
    weight_noise: float = 0.0
    eval_every: int = 100
    log_every: int = 10
    monitor: str | None = None
    mode: str = "min"
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    seed: int = 0
    checkpoint_every: int | None = None
    progress: bool = True
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("steps", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "checkpoint_every", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        for name in ("momentum", "weight_decay", "weight_noise", "min_delta"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.rmsprop_alpha < 1:
            raise ValueError(f"rmsprop_alpha must be in [0, 1), got {self.rmsprop_alpha}")
        if self.clip is not None and not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"clip must be a positive finite number or None, got {self.clip}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS!r}, got {self.optimizer!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES!r}, got {self.mode!r}")


@dataclass
class RunConfig(TypedConfig):
    """What ``grulab train`` trains: the data, the model, the batch size.

    Args:
        data: a task name of :data:`grulab.tasks.registry.DATA` (``"jsb"``, ``"text"``, ...).
        data_path: where the polyphonic ``.mat`` files are (music only; default: ``$GRULAB_DATA``,
            then ``../shared/data``).
        seq_len: music: crop training sequences to this many frames; text and forecasting:
            training window length (``None``: the task's default).
        horizon: forecasting: steps ahead (``None``: one season).
        cell: ``"rnn"`` (tanh), ``"gru"`` (reset after, the seed's candidate), ``"gru_before"``,
            ``"lstm"``, or another name in :data:`grulab.models.CELLS`.
        hidden: hidden units per layer; ``None``: chosen so the model has about ``params``
            parameters (:func:`grulab.models.hidden_for_budget`).
        params: the parameter budget used when ``hidden`` is ``None``.
        num_layers, dropout, init, backend: passed to :class:`grulab.models.SequenceModel`.
        batch_size: the global batch (sequences per optimiser step, over all processes).
    """

    data: str = "jsb"
    data_path: str | None = None
    seq_len: int | None = None
    horizon: int | None = None
    cell: str = "gru"
    hidden: int | None = None
    params: int | None = 20_000
    num_layers: int = 1
    dropout: float = 0.0
    init: str = "pytorch"
    backend: str = "auto"
    batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden is None and self.params is None:
            raise ValueError("give hidden (units) or params (a parameter budget)")
        for name in ("hidden", "params", "seq_len", "horizon"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        for name in ("num_layers", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type hint; ints are accepted where floats are expected."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name} must be a {hint.__name__}, got None")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a new field with an unsupported type is a programming error
        raise TypeError(f"unsupported field type {hint!r} for {name}")
    kind = f"{hint.__name__} or None" if optional else hint.__name__
    raise TypeError(f"{name} must be a {kind}, got {value!r} ({type(value).__name__})")


def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """``{field: (type, optional)}`` of a config dataclass (for command-line flags built from it)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        hint, optional = hints[f.name], False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional, hint = len(args) < len(typing.get_args(hint)), args[0]
        out[f.name] = (hint, optional)
    return out
