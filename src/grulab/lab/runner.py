"""Running experiments: resumable, optionally in parallel processes.

Rerunning skips every run whose folder holds a ``result.json`` for the same parameters; a run
interrupted mid-way resumes from its last checkpoint (so at most ``checkpoint_every`` steps of the
current run are lost); a run whose parameters changed (say, a quick folder rerun in full form) is
started afresh.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console

from grulab.io import atomic_write_bytes
from grulab.lab.core import Experiment, LabConfig, RunSpec, apply_overrides, config_from_dict

RESULT_FILE, SPEC_FILE, EXPERIMENT_FILE = "result.json", "spec.json", "experiment.json"


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def is_finished(run_dir: Path, spec: RunSpec) -> bool:
    """True when ``run_dir`` holds the result of exactly this run."""
    result = run_dir / RESULT_FILE
    if not result.is_file():
        return False
    try:
        return json.loads(result.read_text()).get("params") == spec.params
    except json.JSONDecodeError:
        return False


def prepare_run_dir(run_dir: Path, spec: RunSpec) -> None:
    """Keep a folder holding a partial run of this spec (to resume it); clear one of another spec."""
    spec_file = run_dir / SPEC_FILE
    if run_dir.exists():
        try:
            same = json.loads(spec_file.read_text()) == spec.params
        except (FileNotFoundError, json.JSONDecodeError):
            same = False
        if not same:
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not spec_file.is_file():
        write_json(spec_file, spec.params)


def execute(name: str, cfg_data: dict[str, Any], spec: RunSpec, run_dir: str, progress: bool) -> dict[str, Any]:
    """Train and measure one run, then write its ``result.json`` (a process-pool entry point)."""
    import torch

    from grulab.lab import get_experiment

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small recurrent kernels: threads only add synchronisation (and suffer on a busy machine)
    try:
        return _execute(get_experiment(name), cfg_data, spec, run_dir, progress)
    finally:
        torch.set_num_threads(threads)


def run_cost(spec: RunSpec) -> float:
    """Rough cost of a run: sequence length times optimiser steps."""
    p = spec.params
    length = p.get("T") or 2 * p.get("n_train", 10) + 1
    return float(length) * float(p.get("steps", 1))


def _execute(exp: Experiment, cfg_data: dict[str, Any], spec: RunSpec, run_dir: str, progress: bool) -> dict[str, Any]:
    cfg = config_from_dict(exp.Config, cfg_data)
    path = Path(run_dir)
    prepare_run_dir(path, spec)
    started = time.perf_counter()
    try:
        metrics = exp.run(cfg, spec, path, progress)
    except FloatingPointError as e:  # a diverged run is a result too: recorded, left out of the means, counted
        metrics = {"diverged": True, "error": str(e), "summary": f"diverged: {e}"}
    result = {"run_id": spec.run_id, "params": spec.params, "metrics": metrics,
              "wall_seconds": time.perf_counter() - started}
    write_json(path / RESULT_FILE, result)
    return result


@dataclass
class Plan:
    """The experiments to run, each with its config and runs."""

    experiments: list[tuple[Experiment, LabConfig, list[RunSpec]]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(specs) for _, _, specs in self.experiments)


def resolve(names: Sequence[str]) -> list[Experiment]:
    """Experiments by name (``"all"``: every one), with those they require first, no repeats."""
    from grulab.lab import EXPERIMENTS, get_experiment

    wanted = list(EXPERIMENTS) if "all" in names else list(names)
    out: list[Experiment] = []

    def add(n: str) -> None:
        exp = get_experiment(n)
        for dep in exp.requires:
            add(dep)
        if exp not in out:
            out.append(exp)

    for n in wanted:
        add(n)
    return out


def make_plan(names: Sequence[str], *, quick: bool, seeds: int | None = None,
              overrides: dict[str, str] | None = None) -> Plan:
    """Configs and runs of the chosen experiments. An override must be a setting of at least one of
    them (it applies to every experiment that has it); anything else is an error."""
    overrides = dict(overrides or {})
    exps = resolve(names)
    unused = set(overrides)
    plan = Plan()
    for exp in exps:
        cfg = exp.config(quick)
        mine = {k: v for k, v in overrides.items() if hasattr(cfg, k)}
        if seeds is not None:
            mine["seeds"] = seeds
        cfg = apply_overrides(cfg, mine)
        unused -= set(mine)
        plan.experiments.append((exp, cfg, exp.runs(cfg)))
    if unused:
        raise ValueError(f"unknown setting(s) {sorted(unused)} for experiments {[e.name for e in exps]}")
    return plan


def run_lab(
    names: Sequence[str],
    out: str | Path,
    *,
    quick: bool = False,
    seeds: int | None = None,
    overrides: dict[str, str] | None = None,
    jobs: int = 1,
    console: Console | None = None,
) -> Plan:
    """Run the chosen experiments into ``out/<experiment>/<run_id>/``, skipping finished runs.

    Args:
        names: experiment names, or ``["all"]``.
        out: the lab folder.
        quick: the quick form of each experiment (small budgets, one seed).
        seeds: override the number of seeds.
        overrides: flat ``setting -> value`` changes to the configs (typed; unknown ones fail).
        jobs: runs trained at the same time in separate processes (1: in this process, with a
            progress bar per run).
    """
    console = console or Console()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    plan = make_plan(names, quick=quick, seeds=seeds, overrides=overrides)
    out = Path(out)
    todo: list[tuple[str, dict[str, Any], RunSpec, str]] = []
    for exp, cfg, specs in plan.experiments:
        exp_dir = out / exp.name
        exp_dir.mkdir(parents=True, exist_ok=True)
        write_json(exp_dir / EXPERIMENT_FILE, {"name": exp.name, "quick": quick, "config": cfg.to_dict()})
        for spec in specs:
            if not is_finished(exp_dir / spec.run_id, spec):
                todo.append((exp.name, cfg.to_dict(), spec, str(exp_dir / spec.run_id)))
    # two seeds of every setting first, cheapest first, then the other seeds: a lab stopped part-way
    # still has every experiment in its report, with a spread to compare where it could afford one
    todo.sort(key=lambda item: (item[2].seed >= 2, item[2].seed >= 2 and item[2].seed, run_cost(item[2])))
    skipped = plan.total - len(todo)
    console.print(f"[bold]grulab lab[/bold]: {len(plan.experiments)} experiment(s), {plan.total} runs "
                  f"({skipped} already finished, {len(todo)} to run, {jobs} job(s)) in {out}")
    started = time.perf_counter()
    done = 0

    def report(result: dict[str, Any], name: str) -> None:
        nonlocal done
        done += 1
        m = result["metrics"]
        console.print(f"  [{done}/{len(todo)}] {name}/{result['run_id']}: {m.get('summary', '')} "
                      f"({m.get('seconds', 0.0):.0f} s)")

    if jobs == 1 or len(todo) <= 1:
        for name, cfg_data, spec, run_dir in todo:
            report(execute(name, cfg_data, spec, run_dir, progress=True), name)
    else:  # workers train without their own bars; one bar here counts finished runs
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool, \
                Progress(TextColumn("lab runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                         console=console, transient=True) as bar:
            task = bar.add_task("runs", total=len(todo))
            pending: dict[Future, str] = {pool.submit(execute, n, c, s, d, False): n for n, c, s, d in todo}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    report(fut.result(), pending.pop(fut))
                    bar.advance(task)
    if todo:
        console.print(f"trained {len(todo)} run(s) in {time.perf_counter() - started:.0f} s")
    return plan
