"""The pieces every experiment shares: configs with typed overrides, run specs, results, checks
and verdicts.

An experiment (one file in ``grulab/lab/``) is an :class:`Experiment` with a config dataclass
(defaults = the full form; :meth:`Experiment.quick` the quick form), a list of runs, a function
that trains and measures one run, and an analysis that turns the runs' results into tables,
figures, :class:`Check` s and a verdict. The verdict is computed from the checks, each of which is
a pre-declared criterion evaluated on the measured numbers: nothing is written in advance.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

VERDICTS = ("reproduced", "not reproduced", "mixed", "undetermined")


@dataclass
class LabConfig:
    """Settings every experiment has. Subclasses add their own; all fields are flat and typed.

    Args:
        seeds: number of seeds per setting (runs use seeds ``0 .. seeds-1``).
        steps: optimiser steps per run (the fixed budget).
        batch: sequences per step.
        lr: Adam's learning rate.
        clip: gradient-norm clipping.
        params: the matched parameter count every cell is sized to (``hidden_for_budget``).
        eval_every: evaluate on the validation set every this many steps.
        checkpoint_every: checkpoint every this many steps (an interrupted run resumes there).
    """

    seeds: int = 3
    steps: int = 1000
    batch: int = 64
    lr: float = 2e-3
    clip: float = 1.0
    params: int = 5000
    eval_every: int = 100
    checkpoint_every: int = 250

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse(name: str, text: Any, hint: Any) -> Any:
    """Convert an override (a string from the command line, or a value) to the field's type."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if text is None or (isinstance(text, str) and text.lower() == "none"):
            return None
        hint = args[0]
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        parts = text.split(",") if isinstance(text, str) else list(text)
        return tuple(_parse(name, p.strip() if isinstance(p, str) else p, item) for p in parts if p != "")
    try:
        if hint is bool:
            if isinstance(text, bool):
                return text
            if str(text).lower() in ("1", "true", "yes"):
                return True
            if str(text).lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(text, float) and not text.is_integer():
                raise ValueError
            return int(text)
        if hint is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        return str(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"override {name}={text!r}: expected {getattr(hint, '__name__', hint)}") from e


def apply_overrides(cfg: LabConfig, overrides: dict[str, Any]) -> LabConfig:
    """A copy of ``cfg`` with ``overrides`` (strings or values) converted to each field's type.

    Raises ``ValueError`` naming an unknown key and listing the known ones.
    """
    hints = typing.get_type_hints(type(cfg))
    known = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for {type(cfg).__name__}; known: {sorted(known)}")
    changes = {k: _parse(k, v, hints[k]) for k, v in overrides.items()}
    out = dataclasses.replace(cfg, **changes)
    for name in ("seeds", "steps", "batch", "params", "eval_every", "checkpoint_every"):
        if getattr(out, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(out, name)}")
    return out


def config_from_dict(cls: type[LabConfig], data: dict[str, Any]) -> LabConfig:
    """Rebuild a config saved with :meth:`LabConfig.to_dict` (unknown keys fail)."""
    return apply_overrides(cls(), data)


@dataclass(frozen=True)
class RunSpec:
    """One training run: a unique id (its folder name) and its JSON parameters (seed included)."""

    run_id: str
    params: dict[str, Any]

    @property
    def seed(self) -> int:
        return int(self.params["seed"])


@dataclass
class RunResult:
    """A finished run read back from its folder: the spec's parameters and what it measured."""

    run_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    path: Path

    def __getitem__(self, key: str) -> Any:
        return self.params[key] if key in self.params else self.metrics[key]


@dataclass
class Check:
    """One pre-declared criterion and its outcome on the measured numbers.

    ``holds`` is ``None`` when the runs needed to decide it are missing (e.g. a quick run without
    the longest delay)."""

    statement: str
    criterion: str
    holds: bool | None
    evidence: str
    source: str = ""  # "seed" or the paper the statement comes from


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Analysis:
    """What an experiment's analysis produced from its runs."""

    checks: list[Check] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG path; an SVG lies beside)
    numbers: dict[str, Any] = field(default_factory=dict)  # for results.json
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return verdict(self.checks)


def verdict(checks: Sequence[Check]) -> str:
    """``reproduced`` if every decided check holds, ``not reproduced`` if none does, ``mixed``
    otherwise; ``undetermined`` when no check could be decided."""
    decided = [c.holds for c in checks if c.holds is not None]
    if not decided:
        return "undetermined"
    if all(decided):
        return "reproduced"
    if not any(decided):
        return "not reproduced"
    return "mixed"


class Experiment:
    """Base class of the lab's experiments (one subclass per file, registered in ``grulab.lab``).

    Subclasses set the class attributes and implement :meth:`runs`, :meth:`run` and
    :meth:`analyse`.
    """

    name: ClassVar[str]
    number: ClassVar[str]  # as in docs/claims.md
    title: ClassVar[str]
    claim: ClassVar[str]  # the seed's claim (or limit) this tests, in one sentence
    published: ClassVar[str]  # what the literature reports, with citations
    baseline: ClassVar[str]  # what "chance" or "memoryless" scores, so "solved" has a number
    Config: ClassVar[type[LabConfig]] = LabConfig
    requires: ClassVar[tuple[str, ...]] = ()  # experiments whose runs this one analyses

    def config(self, quick: bool = False) -> LabConfig:
        return self.quick() if quick else self.Config()

    def quick(self) -> LabConfig:
        """The quick form (seconds to a minute); the default config is the full form."""
        raise NotImplementedError

    def runs(self, cfg: LabConfig) -> list[RunSpec]:
        raise NotImplementedError

    def run(self, cfg: LabConfig, spec: RunSpec, run_dir: Path, progress: bool) -> dict[str, Any]:
        """Train and measure one run in ``run_dir``; return its metrics (JSON)."""
        raise NotImplementedError

    def analyse(self, cfg: LabConfig, results: list[RunResult], fig_dir: Path,
                others: dict[str, list[RunResult]]) -> Analysis:
        """Tables, figures (written under ``fig_dir``), checks. ``others`` holds the results of the
        experiments in ``requires``."""
        raise NotImplementedError


# --- statistics over seeds ----------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (0 for one value) of a quantity over seeds."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return fmt_stat(self)


def stat(values: Iterable[float]) -> Stat:
    v = [float(x) for x in values]
    if not v:
        return Stat(math.nan, math.nan, 0)
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return Stat(m, s, len(v))


def fmt_number(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    ax = abs(x)
    if ax != 0 and (ax < 1e-3 or ax >= 1e4):
        return f"{x:.2e}"
    return f"{x:.3g}" if ax < 10 else f"{x:.1f}"


def fmt_stat(s: Stat) -> str:
    if s.n == 0:
        return "–"
    return fmt_number(s.mean) if s.n == 1 else f"{fmt_number(s.mean)} ± {fmt_number(s.std)}"


def clearly_less(a: Stat | None, b: Stat | None) -> bool | None:
    """``a`` below ``b`` beyond the seed-to-seed spread: ``mean_a + std_a < mean_b − std_b``.

    ``None`` (undecided) unless both sides have at least two seeds: one seed has no spread to
    compare against."""
    if a is None or b is None or a.n < 2 or b.n < 2:
        return None
    return a.mean + a.std < b.mean - b.std


def not_clearly_above(a: Stat | None, b: Stat | None) -> bool | None:
    """``a`` (a loss) does at least as well as ``b`` within the seed-to-seed spread: not
    :func:`clearly_less` ``(b, a)``. ``None`` unless both sides have at least two seeds."""
    below = clearly_less(b, a)
    return None if below is None else not below


def clearly_positive(s: Stat | None) -> bool | None:
    """``s`` above zero beyond its seed-to-seed spread (``mean − std > 0``); ``None`` under 2 seeds."""
    if s is None or s.n < 2:
        return None
    return s.mean - s.std > 0


def group(results: Iterable[RunResult], *keys: str) -> dict[tuple, list[RunResult]]:
    """Results grouped by the values of ``keys`` (seeds fall together), in first-seen order."""
    out: dict[tuple, list[RunResult]] = {}
    for r in results:
        out.setdefault(tuple(r.params[k] for k in keys), []).append(r)
    return out


def stat_of(results: Iterable[RunResult], metric: str | Callable[[RunResult], float]) -> Stat:
    get = metric if callable(metric) else (lambda r: r.metrics[metric])
    return stat(get(r) for r in results)


def aligned(all_x: Sequence[Any], xs: Sequence[Any], values: Sequence[Stat]) -> list[Stat]:
    """``values`` (measured at ``xs``) placed at the positions of ``all_x``; gaps are empty stats."""
    lookup = dict(zip(xs, values, strict=True))
    return [lookup.get(x, stat([])) for x in all_x]
