"""Limit 3b, one memory stream: a fast and a slow dependency needed by the same output."""

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
from grulab.tasks.synthetic import FAST_SLOW_MODES, IGNORE, fast_slow_task


@dataclass
class TimescalesConfig(LabConfig):
    """Fast/slow settings (full form): length ``T``, fast lag ``lag``; gated cells use ``init``."""

    T: int = 100
    lag: int = 2
    cells: tuple[str, ...] = CELLS
    init: str = "chrono"
    steps: int = 500
    valid_size: int = 512
    test_size: int = 2000


def step_loss(net: torch.nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(net(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)


def step_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    logits = model(x)
    has = y != IGNORE
    return {"ce": F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE).item(),
            "accuracy": (logits.argmax(-1)[has] == y[has]).float().mean().item()}


class TimescalesExperiment(Experiment):
    name = "timescales"
    number = "7b"
    title = "Limit: one memory stream, a fast and a slow dependency at once"
    claim = ("One state vector must serve every time scale, which limits multi-timescale reasoning (seed, "
             "'Still fails' 3): holding a slow key while tracking fast inputs should cost a GRU more than an LSTM.")
    published = "The seed's limit; no published number for this task."
    baseline = "Per-step accuracy 1/2 (a fair coin); 'both' (fast XOR slow) cannot be solved from either alone."
    Config = TimescalesConfig

    def quick(self) -> TimescalesConfig:
        return TimescalesConfig(seeds=1, T=40, steps=200, valid_size=256, test_size=500)

    def runs(self, cfg: TimescalesConfig) -> list[RunSpec]:  # type: ignore[override]
        return [RunSpec(f"{c}-{m}-T{cfg.T}-s{s}", {"cell": c, "mode": m, "T": cfg.T, "lag": cfg.lag, "seed": s,
                                                   "init": cfg.init, "steps": cfg.steps, "batch": cfg.batch,
                                                   "lr": cfg.lr, "params": cfg.params})
                for m in FAST_SLOW_MODES for c in cfg.cells for s in range(cfg.seeds)]

    def run(self, cfg: TimescalesConfig, spec: RunSpec, run_dir: Path, progress: bool) -> dict[str, Any]:  # type: ignore[override]
        p = spec.params
        T, seed = p["T"], spec.seed
        kw = {"lag": p["lag"], "mode": p["mode"]}
        model = build_model(p["cell"], 2, 2, cfg.params, readout="all", init=p["init"], horizon=T, seed=seed)
        valid = fast_slow_task(cfg.valid_size, T, generator=held_out(VALID_SEED + T), **kw)
        test = fast_slow_task(cfg.test_size, T, generator=held_out(TEST_SEED + T), **kw)
        result = train_run(model, step_loss,
                           lambda step: fast_slow_task(cfg.batch, T, generator=step_generator(seed, step), **kw),
                           lambda m: step_accuracy(m, *valid), cfg, spec, run_dir, monitor="ce", progress=progress,
                           description=f"timescales {spec.run_id}")
        model.eval()
        with torch.no_grad():
            metrics = step_accuracy(model, *test)
        return {**fit_summary(result, model), **metrics, "summary": f"accuracy {metrics['accuracy']:.3f}"}

    def analyse(self, cfg: TimescalesConfig, results: list[RunResult], fig_dir: Path,  # type: ignore[override]
                others: dict[str, list[RunResult]]) -> Analysis:
        a = Analysis()
        by = group(results, "cell", "mode")
        cells = [c for c in CELLS if any(k[0] == c for k in by)]
        acc = {(c, m): stat_of(by.get((c, m), []), "accuracy") for c in cells for m in FAST_SLOW_MODES}
        cost = {}
        for c in cells:  # per seed: the easier single dependency's accuracy minus the mixed one's
            single = {}
            for m in ("fast", "slow"):
                for r in by.get((c, m), []):
                    single[r["seed"]] = min(single.get(r["seed"], 1.0), r["accuracy"])
            cost[c] = stat(single[r["seed"]] - r["accuracy"] for r in by.get((c, "both"), []) if r["seed"] in single)
        a.tables.append(Table(f"Per-step accuracy (chance 0.5), T={cfg.T}, fast lag {cfg.lag}",
                              ["model", "fast only", "slow only", "both (XOR)", "cost of mixing (paired)"],
                              [[CELL_LABELS[c], *(fmt_stat(acc[(c, m)]) for m in ("fast", "slow", "both")),
                                fmt_stat(cost[c])] for c in cells]))
        a.figures.append(("Accuracy on the fast, the slow and the mixed dependency",
                          bar_plot([CELL_LABELS[c] for c in cells],
                                   {m: [acc[(c, m)] for c in cells] for m in ("fast", "slow", "both")},
                                   fig_dir / "timescales", ylabel="per-step accuracy",
                                   title=f"Fast and slow dependencies, T={cfg.T}", hlines=[(0.5, "chance")])))
        a.numbers = {f"{c}:{m}": s.__dict__ for (c, m), s in acc.items()}
        g, l_ = acc.get(("gru", "both")), acc.get(("lstm", "both"))
        gc, lc = cost.get("gru"), cost.get("lstm")
        a.checks = [
            Check("Holding a slow key while tracking fast inputs is harder for the GRU than for the LSTM.",
                  "GRU accuracy on 'both' below the LSTM's beyond the seed spread",
                  clearly_less(g, l_) if g and l_ and g.n and l_.n else None,
                  f"GRU {fmt_stat(g) if g else '–'}, LSTM {fmt_stat(l_) if l_ else '–'}", "seed"),
            Check("Mixing the two time scales costs the GRU more than the LSTM.",
                  "GRU's cost of mixing (min(fast, slow) − both, paired by seed) above the LSTM's beyond the spread",
                  clearly_less(lc, gc) if gc and lc and gc.n and lc.n else None,
                  f"GRU {fmt_stat(gc) if gc else '–'}, LSTM {fmt_stat(lc) if lc else '–'}", "seed"),
        ]
        return a
