"""Experiment 4, identity learning: the write gate on the hold steps of the memory tasks.

No training of its own: it traces the gated models the copy and adding experiments trained (and
their initial weights) on fresh sequences, and asks whether ``z`` goes to 0 where the task needs the
state held (LSTM analogue: ``1 − f``, the share of the cell that is forgotten). minGRU's ``z``, which
reads the input only, is shown beside them; the checks are about the GRU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grulab.cells.mingru import mingru_cell
from grulab.diagnostics import trace
from grulab.lab.core import (
    Analysis,
    Check,
    Experiment,
    LabConfig,
    RunResult,
    RunSpec,
    Table,
    fmt_stat,
    stat,
)
from grulab.lab.exp_adding import SOLVED as ADDING_SOLVED
from grulab.lab.exp_copy import SOLVED as COPY_SOLVED
from grulab.lab.figures import gate_histograms
from grulab.lab.training import CELL_LABELS, MINGRU, TEST_SEED, held_out, load_init, load_trained
from grulab.tasks.synthetic import adding_problem, copy_task

CLOSED = 0.05  # "near identity": write gate below 0.05 (a held value keeps > 95% per step)
GATED = ("gru", "gru_before", "lstm", MINGRU)
FAMILY_LABELS = {"lstm": "LSTM: 1 − f", MINGRU: "minGRU: z (from the input only)"}


@dataclass
class IdentityConfig(LabConfig):
    """How many fresh sequences to trace per trained model."""

    probe_size: int = 32


def write_share(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Per step, sequence and unit, the share of the old state replaced: ``z`` (GRU, minGRU) or
    ``1 − f`` (LSTM), layer 0, ``(T, B, H)``."""
    if model.rnn.family == MINGRU:  # (M1): z reads x_t only, so one product gives every step's gate
        W, b_W = model.rnn.direction_parameters(0)
        with torch.no_grad():
            return mingru_cell(x, x.new_zeros(()), W, b_W).z.numpy()
    lt = trace(model, x).layer(0)
    return (lt["z"] if lt.family == "gru" else 1 - lt["f"]).numpy()


def hold_and_write_steps(task: str, x: torch.Tensor, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(T', B)`` masks of the steps where the state must be held and where it is written.

    Copy: symbols are written at steps 0..9 and held through the ``T − 1`` blanks before the
    delimiter. Adding: values are written at the two marked steps and held at the unmarked steps
    after the first mark."""
    n_steps, B = x.shape[:2]
    t = np.arange(n_steps)[:, None].repeat(B, axis=1)
    if task == "copy":
        return (t >= 10) & (t < 10 + T - 1), t < 10
    mark = x[..., 1].numpy() > 0
    after_first = np.cumsum(mark, axis=0) >= 1
    return after_first & ~mark, mark


class IdentityExperiment(Experiment):
    name = "identity"
    number = "4"
    title = "Identity learning: does z go to 0 on hold steps?"
    claim = ("Gates can learn near-identity mappings: z_t ≈ 0 ⇒ h_t ≈ h_(t−1), memory persists by default and "
             "is updated only when useful (seed, 'Core assumptions' 1 and 2).")
    published = ("The seed's assumption. Tallec & Ollivier (2018) show gate values set the memory time scale; "
                 "chrono initialisation starts the gates nearly closed.")
    baseline = (f"'Near identity' = z < {CLOSED} on hold steps (more than 95% of a held value kept per step); at "
                "PyTorch's default initialisation z is about 0.5.")
    Config = IdentityConfig
    requires = ("copy", "adding")

    def quick(self) -> IdentityConfig:
        return IdentityConfig(seeds=1, probe_size=16)

    def runs(self, cfg: LabConfig) -> list[RunSpec]:
        return []

    def _probe(self, task: str, T: int, size: int) -> torch.Tensor:
        g = held_out(TEST_SEED + 2 + T)
        return copy_task(size, T, generator=g)[0] if task == "copy" else adding_problem(size, T, generator=g)[0]

    def analyse(self, cfg: IdentityConfig, results: list[RunResult], fig_dir: Path,  # type: ignore[override]
                others: dict[str, list[RunResult]]) -> Analysis:
        a = Analysis()
        rows_run: list[dict[str, Any]] = []
        pooled: dict[str, dict[str, dict[str, list[np.ndarray]]]] = {}
        for task in ("copy", "adding"):
            for r in others.get(task, []):
                if r["cell"] not in GATED or not (r.path / "model.safetensors").is_file():
                    continue
                T = r["T"]
                x = self._probe(task, T, cfg.probe_size)
                hold, write = hold_and_write_steps(task, x, T)
                solved = r["ce_norm"] < COPY_SOLVED if task == "copy" else r["mse"] < ADDING_SOLVED
                row = {"task": task, "cell": r["cell"], "init": r["init"], "T": T, "seed": r["seed"], "solved": solved}
                for when, loader in (("init", load_init), ("trained", load_trained)):
                    z = write_share(loader(r.path), x)
                    zh, zw = z[hold].ravel(), z[write].ravel()
                    row[f"hold_{when}"] = float(np.median(zh)) if zh.size else float("nan")
                    row[f"write_{when}"] = float(np.median(zw)) if zw.size else float("nan")
                    row[f"closed_{when}"] = float((zh < CLOSED).mean()) if zh.size else float("nan")
                    family = FAMILY_LABELS.get(r["cell"], "GRU (both candidates): z")
                    rng = np.random.default_rng(0)
                    for kind, vals in (("hold", zh), ("write", zw)):
                        take = vals if vals.size <= 4000 else rng.choice(vals, 4000, replace=False)
                        panel = pooled.setdefault(task, {}).setdefault(family, {})
                        panel.setdefault(f"{kind} steps, {when}", []).append(take)
                rows_run.append(row)
        by = {}
        for row in rows_run:
            by.setdefault((row["task"], row["cell"], row["init"]), []).append(row)
        table = []
        for (task, cell, init), rows in by.items():
            table.append([task, f"{CELL_LABELS[cell]}, {init}", f"{sum(r['solved'] for r in rows)}/{len(rows)}",
                          fmt_stat(stat(r["hold_init"] for r in rows)), fmt_stat(stat(r["hold_trained"] for r in rows)),
                          fmt_stat(stat(r["write_trained"] for r in rows)),
                          fmt_stat(stat(r["closed_trained"] for r in rows))])
        a.tables.append(Table("Median write share on hold steps before and after training (GRU, minGRU: z; "
                              "LSTM: 1 − f), "
                              "over all delays and seeds",
                              ["task", "model, init", "solved runs", "hold, at init", "hold, trained",
                               "write steps, trained", f"share of hold values < {CLOSED}"], table))
        for task, panels in pooled.items():
            data = {fam: {k: np.concatenate(v) for k, v in series.items()} for fam, series in panels.items()}
            a.figures.append((f"{task}: distribution of z (LSTM: 1 − f) on hold and write steps, at initialisation "
                              "and after training",
                              gate_histograms(data, fig_dir / f"identity_{task}", xlabel="share of the state replaced",
                                              title=f"{task}: the write gate on hold and write steps")))
        grus = [r for r in rows_run if r["cell"] in ("gru", "gru_before")]
        solved = [r for r in grus if r["solved"]]
        hold = stat(r["hold_trained"] for r in solved)
        a.numbers = {"runs": rows_run}
        a.checks = [
            Check("In GRUs that solved their task, the write gate closes on hold steps (z → 0).",
                  f"mean over solved GRU runs of the median hold-step z < {CLOSED}",
                  hold.mean < CLOSED if solved else None,
                  f"{len(solved)} solved GRU runs; median hold z {fmt_stat(hold)}" if solved else "no GRU run solved "
                  "its task, so there is no learned solution to inspect", "seed"),
            Check("The gates tell holding from writing: z is lower on hold steps than on write steps.",
                  "median hold-step z below the median write-step z in every solved GRU run",
                  all(r["hold_trained"] < r["write_trained"] for r in solved) if solved else None,
                  "; ".join(f"{r['task']} {r['cell']} {r['init']} T={r['T']} s{r['seed']}: hold "
                            f"{r['hold_trained']:.3g} vs write {r['write_trained']:.3g}" for r in solved[:6])
                  + (" …" if len(solved) > 6 else "") if solved else "no solved GRU run", "seed"),
            Check("Training moves the GRU towards identity on hold steps.",
                  "mean over GRU runs of the median hold-step z lower after training than at initialisation",
                  (stat(r["hold_trained"] for r in grus).mean < stat(r["hold_init"] for r in grus).mean)
                  if grus else None,
                  f"at init {fmt_stat(stat(r['hold_init'] for r in grus))}, trained "
                  f"{fmt_stat(stat(r['hold_trained'] for r in grus))} ({len(grus)} runs)", "seed"),
        ]
        return a

