"""Real data: tanh RNN, GRU (both candidates) and LSTM at a matched parameter count on real
sequences, with Chung et al. (2014)'s protocol, the JSB Chorales numbers beside theirs.

The training and scoring are :func:`grulab.train.run.train_run` (what ``grulab train`` runs); this
file only chooses the runs and reads their results. The polyphonic music benchmark needs its files
(``../shared/data`` or ``GRULAB_DATA``): without them its runs are left out and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grulab import io
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
from grulab.lab.figures import bar_plot
from grulab.lab.training import CELL_LABELS, INIT_FILE, machine
from grulab.train.config import RunConfig, TrainConfig
from grulab.train.report import DATA_NAMES, PUBLISHED
from grulab.train.run import build_model, make_task, train_run

MUSIC = ("jsb", "nottingham", "musedata", "piano")


@dataclass
class RealDataConfig(LabConfig):
    """Chung et al. (2014)'s protocol on every data set (full form): one recurrent layer sized to
    ``params`` parameters, RMSProp, gradient-norm clipping at ``clip``, Gaussian weight noise of std
    ``weight_noise``, early stopping on the validation metric (``patience`` evaluations) with the
    best weights restored, at most ``steps`` steps. ``lr``, ``batch`` and ``steps`` are ours."""

    datasets: tuple[str, ...] = ("jsb", "digits-row", "co2")
    cells: tuple[str, ...] = ("rnn", "gru", "gru_before", "lstm")
    steps: int = 5000
    batch: int = 16
    lr: float = 1e-3
    params: int = 20_000
    eval_every: int = 50
    checkpoint_every: int = 500
    weight_noise: float = 0.075
    patience: int = 20


def available(data: str) -> bool:
    """False when a music benchmark's file is missing (its runs are then left out)."""
    if data not in MUSIC:
        return True
    from grulab.tasks.base import find_data
    from grulab.tasks.music import POLYPHONIC

    try:
        find_data(POLYPHONIC[data])
        return True
    except FileNotFoundError:
        return False


class RealDataExperiment(Experiment):
    name = "real_data"
    number = "R"
    title = "Real data: polyphonic music, digits and a time series at a matched parameter count"
    claim = ("Gated units (GRU, LSTM) model real sequences better than the tanh RNN at the same parameter count, "
             "and the GRU is comparable to the LSTM (Chung et al. 2014).")
    published = ("Chung et al. (2014), JSB Chorales test NLL at ~20k parameters: tanh 9.19, GRU 8.54, LSTM 8.67; "
                 "Bai et al. (2018), larger tuned models: 8.91 / 8.43 / 8.45.")
    baseline = ("Per-key unigram (JSB test NLL 11.06 nats per step); class prior (digits); last value and "
                "seasonal naive forecasts (CO2).")
    Config = RealDataConfig

    def quick(self) -> RealDataConfig:
        return RealDataConfig(datasets=("digits-row",), cells=("rnn", "gru", "lstm"), seeds=1, steps=150,
                              eval_every=50, checkpoint_every=150)

    def runs(self, cfg: RealDataConfig) -> list[RunSpec]:  # type: ignore[override]
        return [RunSpec(f"{data}-{cell}-s{seed}", {"data": data, "cell": cell, "seed": seed, "steps": cfg.steps,
                                                   "params": cfg.params, "batch": cfg.batch, "lr": cfg.lr})
                for data in cfg.datasets if available(data) for cell in cfg.cells for seed in range(cfg.seeds)]

    def run(self, cfg: RealDataConfig, spec: RunSpec, run_dir: Path, progress: bool) -> dict[str, Any]:  # type: ignore[override]
        p = spec.params
        run = RunConfig(data=p["data"], cell=p["cell"], params=cfg.params, batch_size=cfg.batch)
        train = TrainConfig(steps=cfg.steps, lr=cfg.lr, optimizer="rmsprop", clip=cfg.clip,
                            weight_noise=cfg.weight_noise, eval_every=cfg.eval_every, patience=cfg.patience,
                            checkpoint_every=cfg.checkpoint_every, seed=spec.seed, progress=progress, threads=1)
        task = make_task(run)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / INIT_FILE).is_file():  # the lab's run folders keep the initial weights
            io.save(build_model(run, task, spec.seed), run_dir / INIT_FILE)
        r = train_run(run, train, run_dir, resume=True, task=task, description=f"real data {spec.run_id}").results
        metric = r["task"]["monitor"].removeprefix("valid_")
        test = r["test"][f"test_{metric}"]
        return {"metric": metric, "test": test, "valid": r["valid"][f"valid_{metric}"], "scores": r["test"],
                "baselines": {k: v.get(f"test_{metric}") for k, v in r["baselines"].items()},
                "seconds": r["seconds"], "steps": r["steps"], "best_step": r["best_step"],
                "parameters": r["parameters"], "hidden_size": r["hidden"], "machine": machine(),
                "summary": f"test {metric} {test:.4f}"}

    def analyse(self, cfg: RealDataConfig, results: list[RunResult], fig_dir: Path,  # type: ignore[override]
                others: dict[str, list[RunResult]]) -> Analysis:
        a = Analysis()
        missing = [d for d in cfg.datasets if not available(d)]
        if missing:
            a.notes.append(f"Left out (data files not found): {', '.join(missing)}. See docs/real_data.md.")
        by = group(results, "data", "cell")
        for data in [d for d in cfg.datasets if any(k[0] == d for k in by)]:
            cells = [c for c in cfg.cells if (data, c) in by]
            metric = by[(data, cells[0])][0].metrics["metric"]
            pub = PUBLISHED.get(data, {})
            rows = []
            stats = {c: stat_of(by[(data, c)], "test") for c in cells}
            for c in cells:
                rs = by[(data, c)]
                rows.append([CELL_LABELS.get(c, c), rs[0].metrics["hidden_size"], rs[0].metrics["parameters"],
                             fmt_stat(stat_of(rs, "valid")), fmt_stat(stats[c]),
                             *[f"{v['values'][c]:.2f}" if c in v["values"] else "–" for v in pub.values()]])
            baselines = by[(data, cells[0])][0].metrics["baselines"]
            for name, value in baselines.items():
                if value is not None:
                    rows.append([f"{name} (baseline)", "", "", "", f"{value:.3f}", *["" for _ in pub]])
            a.tables.append(Table(f"{DATA_NAMES.get(data, data)}: test {metric} (mean ± std over seeds)",
                                  ["model", "hidden", "parameters", f"valid {metric}", f"test {metric}", *pub], rows))
            best_baseline = min(v for v in baselines.values() if v is not None)
            a.figures.append((f"{DATA_NAMES.get(data, data)}: test {metric} by cell",
                              bar_plot([CELL_LABELS.get(c, c) for c in cells], {f"test {metric}": list(stats.values())},
                                       fig_dir / f"real_data_{data}", ylabel=f"test {metric}",
                                       title=f"{DATA_NAMES.get(data, data)} at ~{cfg.params:,} parameters",
                                       hlines=[(best_baseline, "best baseline")])))
            a.checks += self._checks(data, metric, stats, best_baseline)
            a.numbers[data] = {c: s.__dict__ for c, s in stats.items()}
        return a

    @staticmethod
    def _checks(data: str, metric: str, stats: dict[str, Any], baseline: float) -> list[Check]:
        name = DATA_NAMES.get(data, data)
        checks = []
        rnn = stats.get("rnn")
        gated = {c: s for c, s in stats.items() if c in ("gru", "gru_before", "lstm")}
        if rnn is not None and gated:
            better = {c: clearly_less(s, rnn) for c, s in gated.items()}
            checks.append(Check(f"Gated units reach a lower test {metric} than the tanh RNN on {name}.",
                                "each gated cell's mean + std below the tanh RNN's mean − std",
                                all(better.values()),
                                ", ".join(f"{CELL_LABELS.get(c, c)} {fmt_stat(gated[c])}" for c in gated)
                                + f" vs tanh RNN {fmt_stat(rnn)}", "Chung et al. 2014"))
        if "gru" in stats and "lstm" in stats:
            g, l_ = stats["gru"], stats["lstm"]
            checks.append(Check(f"The GRU is comparable to the LSTM on {name}.",
                                "|mean GRU − mean LSTM| ≤ std GRU + std LSTM",
                                abs(g.mean - l_.mean) <= g.std + l_.std if min(g.n, l_.n) > 1 else None,
                                f"GRU {fmt_stat(g)}, LSTM {fmt_stat(l_)}", "Chung et al. 2014"))
        checks.append(Check(f"Every cell beats the best baseline on {name}.",
                            f"each mean test {metric} < {baseline:.4g}",
                            all(s.mean < baseline for s in stats.values()),
                            ", ".join(f"{CELL_LABELS.get(c, c)} {fmt_stat(s)}" for c, s in stats.items()), "grulab"))
        return checks

