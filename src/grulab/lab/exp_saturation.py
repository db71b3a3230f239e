"""Limit 2, saturating gates: the adding problem with its inputs scaled up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grulab.diagnostics import DEFAULT_THRESHOLD, saturation, trace
from grulab.lab.core import (
    Analysis,
    Check,
    Experiment,
    LabConfig,
    RunResult,
    RunSpec,
    Table,
    clearly_less,
    fmt_stat,
    group,
    stat_of,
)
from grulab.lab.exp_adding import SOLVED, adding_loss
from grulab.lab.figures import line_plot
from grulab.lab.training import (
    CELL_LABELS,
    CELLS,
    TEST_SEED,
    VALID_SEED,
    build_model,
    fit_summary,
    held_out,
    step_generator,
    train_run,
)
from grulab.tasks.synthetic import ADDING_BASELINE_MSE, adding_problem


@dataclass
class SaturationConfig(LabConfig):
    """Input-scale sweep on the adding problem (full form): inputs multiplied by each of ``scales``."""

    scales: tuple[float, ...] = (1.0, 10.0, 100.0)
    T: int = 100
    cells: tuple[str, ...] = CELLS
    steps: int = 500
    probe_size: int = 64
    valid_size: int = 512
    test_size: int = 2000


def scaled(batch: tuple, scale: float) -> tuple:
    x, y = batch
    return x * scale, y


def saturated_share(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Share of gate units (all gates of layer 0; tanh units for the RNN) with σ' below
    ``DEFAULT_THRESHOLD``, over the probe batch and its steps."""
    sats = [s for s in saturation(trace(model, x), DEFAULT_THRESHOLD) if s.layer == 0 and s.direction == 0]
    return sum(s.share for s in sats) / len(sats)


class SaturationExperiment(Experiment):
    name = "saturation"
    number = "6"
    title = "Limit: saturating gates"
    claim = ("Gates are sigmoids: under large activations they saturate, become insensitive and make optimisation "
             "fragile; GRUs reduce gradient problems, they do not eliminate them (seed, 'Still fails' 2).")
    published = ("The seed's limit. Related: Gulcehre et al. (2016) and Chandar et al. (2019) on saturating "
                 "gates slowing or stopping learning.")
    baseline = "Adding problem: MSE 1/6 for predicting the mean; solved = MSE < 0.0167."
    Config = SaturationConfig

    def quick(self) -> SaturationConfig:
        return SaturationConfig(seeds=1, scales=(1.0, 100.0), T=50, steps=300, probe_size=32, valid_size=256,
                                test_size=500)

    def runs(self, cfg: SaturationConfig) -> list[RunSpec]:  # type: ignore[override]
        return [RunSpec(f"{c}-x{s:g}-s{seed}", {"cell": c, "scale": s, "T": cfg.T, "seed": seed, "steps": cfg.steps,
                                                 "batch": cfg.batch, "lr": cfg.lr, "params": cfg.params})
                for s in cfg.scales for c in cfg.cells for seed in range(cfg.seeds)]

    def run(self, cfg: SaturationConfig, spec: RunSpec, run_dir: Path, progress: bool) -> dict[str, Any]:  # type: ignore[override]
        p = spec.params
        T, s, seed = p["T"], p["scale"], spec.seed
        model = build_model(p["cell"], 2, 1, cfg.params, readout="last", seed=seed)
        valid = scaled(adding_problem(cfg.valid_size, T, generator=held_out(VALID_SEED + T)), s)
        test = scaled(adding_problem(cfg.test_size, T, generator=held_out(TEST_SEED + T)), s)
        probe = scaled(adding_problem(cfg.probe_size, T, generator=held_out(TEST_SEED + 1 + T)), s)[0]
        at_init = saturated_share(model, probe)
        result = train_run(model, adding_loss,
                           lambda step: scaled(adding_problem(cfg.batch, T, generator=step_generator(seed, step)), s),
                           lambda m: {"mse": adding_loss(m, valid).item()}, cfg, spec, run_dir, monitor="mse",
                           progress=progress, description=f"saturation {spec.run_id}")
        model.eval()
        with torch.no_grad():
            mse = adding_loss(model, test).item()
        trained = saturated_share(model, probe)
        return {**fit_summary(result, model), "mse": mse, "saturated_init": at_init, "saturated_trained": trained,
                "summary": f"MSE {mse:.4f}, saturated {at_init:.0%} at init, {trained:.0%} trained"}

    def analyse(self, cfg: SaturationConfig, results: list[RunResult], fig_dir: Path,  # type: ignore[override]
                others: dict[str, list[RunResult]]) -> Analysis:
        a = Analysis()
        by = group(results, "cell", "scale")
        scales = sorted({k[1] for k in by})
        cells = [c for c in CELLS if any(k[0] == c for k in by)]
        rows = []
        for c in cells:
            for s in scales:
                rs = by.get((c, s), [])
                rows.append([CELL_LABELS[c], f"{s:g}", fmt_stat(stat_of(rs, "saturated_init")),
                             fmt_stat(stat_of(rs, "saturated_trained")), fmt_stat(stat_of(rs, "mse"))])
        a.tables.append(Table(f"Saturated share of gate units (σ' < {DEFAULT_THRESHOLD}; RNN: tanh' < it) and "
                              f"test MSE, T={cfg.T}", ["model", "input scale", "saturated at init", "saturated trained",
                                             "test MSE"], rows))
        for metric, ylabel, stem, hl, logy in (
                ("saturated_init", "saturated share at initialisation", "saturation_share", [], False),
                ("mse", "test MSE", "saturation_mse",
                 [(ADDING_BASELINE_MSE, "baseline 1/6"), (SOLVED, "solved")], True)):
            series = {CELL_LABELS[c]: ([s for s in scales if (c, s) in by],
                                       [stat_of(by[(c, s)], metric) for s in scales if (c, s) in by]) for c in cells}
            a.figures.append((f"{ylabel.capitalize()} against the input scale",
                              line_plot(series, fig_dir / stem, xlabel="input scale", ylabel=ylabel,
                                        title=f"Input scale sweep, adding T={cfg.T}", logx=True, logy=logy,
                                        hlines=hl)))
        a.numbers = {f"{c}:x{s:g}": {m: stat_of(rs, m).__dict__ for m in ("mse", "saturated_init")}
                     for (c, s), rs in by.items()}
        gru = [stat_of(by.get(("gru", s), []), "saturated_init") for s in scales]
        mse = [stat_of(by.get(("gru", s), []), "mse") for s in scales]
        decided = len(scales) > 1 and all(g.n for g in gru)
        a.checks = [
            Check("The GRU's gates saturate as the input grows.",
                  "GRU saturated share at initialisation increases with every step up in scale and exceeds 50% at "
                  "the largest",
                  (all(b.mean > a_.mean for a_, b in zip(gru, gru[1:], strict=False)) and gru[-1].mean > 0.5)
                  if decided else None,
                  ", ".join(f"×{s:g}: {fmt_stat(g)}" for s, g in zip(scales, gru, strict=True)), "seed"),
            Check("Saturation makes the GRU's optimisation fragile.",
                  "GRU test MSE at the largest scale above the MSE at the smallest beyond the seed spread",
                  clearly_less(mse[0], mse[-1]) if decided else None,
                  ", ".join(f"×{s:g}: {fmt_stat(m)}" for s, m in zip(scales, mse, strict=True)), "seed"),
        ]
        return a
