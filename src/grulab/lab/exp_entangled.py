"""Limit 1, memory entangled with output: echo every input while remembering the first one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from grulab.lab.core import (
    Analysis,
    Check,
    Experiment,
    LabConfig,
    RunResult,
    RunSpec,
    Table,
    clearly_less,
    clearly_positive,
    fmt_stat,
    group,
    stat,
    stat_of,
)
from grulab.lab.figures import bar_plot
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
from grulab.tasks.synthetic import IGNORE, echo_recall_task

N_SYMBOLS = 8


@dataclass
class EntangledConfig(LabConfig):
    """Echo-while-remembering settings (full form). ``echo`` 1 asks for the per-step echo, 0 is the
    control without it (recall only); gated cells use ``init`` (chrono: horizon ``T``)."""

    lengths: tuple[int, ...] = (25, 100)
    cells: tuple[str, ...] = CELLS
    echo_delay: int = 1
    init: str = "chrono"
    steps: int = 600
    valid_size: int = 512
    test_size: int = 2000


def echo_loss(logits: torch.Tensor, echo: torch.Tensor, recall: torch.Tensor, echo_weight: float) -> torch.Tensor:
    """Recall cross-entropy at the query step plus ``echo_weight`` × the mean echo cross-entropy."""
    T = echo.shape[0] - 1
    loss = F.cross_entropy(logits[T], recall)
    if echo_weight:
        loss = loss + echo_weight * F.cross_entropy(logits.flatten(0, 1), echo.flatten(), ignore_index=IGNORE)
    return loss


def echo_metrics(model: torch.nn.Module, x: torch.Tensor, echo: torch.Tensor, recall: torch.Tensor,
                 echo_weight: float) -> dict[str, float]:
    logits = model(x)
    T = echo.shape[0] - 1
    has = echo != IGNORE
    return {"loss": echo_loss(logits, echo, recall, echo_weight).item(),
            "recall": (logits[T].argmax(-1) == recall).float().mean().item(),
            "echo": (logits.argmax(-1)[has] == echo[has]).float().mean().item()}


class EntangledExperiment(Experiment):
    name = "entangled"
    number = "5"
    title = "Limit: memory entangled with output"
    claim = ("A GRU stores memory in the vector it outputs, so output pressure can corrupt memory; a model with a "
             "separate, protected memory (the LSTM's cell) should suffer less (seed, 'Still fails' 1).")
    published = ("The seed's limit; no published number. The LSTM's exposed h = o ⊙ tanh(c) with a separate c "
                 "is the structural separation the seed says comes next.")
    baseline = "Recall and echo accuracy 1/8 (chance over 8 symbols)."
    Config = EntangledConfig

    def quick(self) -> EntangledConfig:
        return EntangledConfig(seeds=1, lengths=(20,), steps=300, valid_size=256, test_size=500)

    def runs(self, cfg: EntangledConfig) -> list[RunSpec]:  # type: ignore[override]
        return [RunSpec(f"{c}-{'echo' if e else 'silent'}-T{T}-s{s}",
                        {"cell": c, "echo": e, "T": T, "seed": s, "init": cfg.init, "steps": cfg.steps,
                         "batch": cfg.batch, "lr": cfg.lr, "params": cfg.params, "echo_delay": cfg.echo_delay})
                for T in cfg.lengths for e in (1, 0) for c in cfg.cells for s in range(cfg.seeds)]

    def run(self, cfg: EntangledConfig, spec: RunSpec, run_dir: Path, progress: bool) -> dict[str, Any]:  # type: ignore[override]
        p = spec.params
        T, seed, w = p["T"], spec.seed, float(p["echo"])
        model = build_model(p["cell"], N_SYMBOLS + 1, N_SYMBOLS, cfg.params, readout="all", init=p["init"],
                            horizon=T, seed=seed)
        kw = {"n_symbols": N_SYMBOLS, "echo_delay": cfg.echo_delay}
        valid = echo_recall_task(cfg.valid_size, T, generator=held_out(VALID_SEED + T), **kw)
        test = echo_recall_task(cfg.test_size, T, generator=held_out(TEST_SEED + T), **kw)

        def loss_fn(net: torch.nn.Module, batch: tuple) -> torch.Tensor:
            x, echo, recall = batch
            return echo_loss(net(x), echo, recall, w)

        result = train_run(model, loss_fn,
                           lambda step: echo_recall_task(cfg.batch, T, generator=step_generator(seed, step), **kw),
                           lambda m: echo_metrics(m, *valid, w), cfg, spec, run_dir, monitor="loss",
                           progress=progress, description=f"entangled {spec.run_id}")
        model.eval()
        with torch.no_grad():
            metrics = echo_metrics(model, *test, w)
        return {**fit_summary(result, model), **metrics,
                "summary": f"recall {metrics['recall']:.3f}, echo {metrics['echo']:.3f}"}

    def analyse(self, cfg: EntangledConfig, results: list[RunResult], fig_dir: Path,  # type: ignore[override]
                others: dict[str, list[RunResult]]) -> Analysis:
        a = Analysis()
        by = group(results, "cell", "echo", "T")
        lengths = sorted({k[2] for k in by})
        cells = [c for c in CELLS if any(k[0] == c for k in by)]
        rows = []
        drops: dict[tuple[str, int], Any] = {}
        for T in lengths:
            for c in cells:
                silent, echo = by.get((c, 0, T), []), by.get((c, 1, T), [])
                paired = {r["seed"]: r["recall"] for r in silent}
                d = stat(paired[r["seed"]] - r["recall"] for r in echo if r["seed"] in paired)
                drops[(c, T)] = d
                rows.append([f"T={T}", CELL_LABELS[c], fmt_stat(stat_of(silent, "recall")),
                             fmt_stat(stat_of(echo, "recall")), fmt_stat(d), fmt_stat(stat_of(echo, "echo"))])
        a.tables.append(Table("Recall of the first symbol without and with the per-step echo (chance 0.125)",
                              ["delay", "model", "recall, silent", "recall, echoing", "drop (paired by seed)",
                               "echo accuracy"], rows))
        for T in lengths:
            bars = {"silent (recall only)": [stat_of(by.get((c, 0, T), []), "recall") for c in cells],
                    "echoing every step": [stat_of(by.get((c, 1, T), []), "recall") for c in cells]}
            a.figures.append((f"Recall with and without output pressure, T={T}",
                              bar_plot([CELL_LABELS[c] for c in cells], bars, fig_dir / f"entangled_T{T}",
                                       ylabel="recall accuracy", title=f"Echo while remembering, T={T}",
                                       hlines=[(1 / N_SYMBOLS, "chance")])))
        a.numbers = {f"{c}:T{T}": {"drop": d.__dict__} for (c, T), d in drops.items()}
        T = max(lengths) if lengths else None
        g, l_ = drops.get(("gru", T)), drops.get(("lstm", T))
        a.checks = [
            Check(f"Output pressure corrupts the GRU's memory (T={T}).",
                  "GRU recall drop (silent − echoing, paired by seed) above zero beyond its spread (mean − std > 0, "
                  "at least 2 seeds)",
                  clearly_positive(g),
                  f"GRU drop {fmt_stat(g) if g else '–'}", "seed"),
            Check(f"The LSTM's separate cell protects memory better than the GRU's single state (T={T}).",
                  "GRU recall drop above the LSTM's beyond the seed spread",
                  clearly_less(l_, g),
                  f"GRU drop {fmt_stat(g) if g else '–'}, LSTM drop {fmt_stat(l_) if l_ else '–'}", "seed"),
        ]
        return a
