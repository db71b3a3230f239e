"""Limit 3a, one memory stream: counting a^n b^n as in Weiss, Goldberg & Yahav (2018)."""

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
    stat_of,
)
from grulab.lab.figures import bar_plot
from grulab.lab.training import CELL_LABELS, CELLS, build_model, fit_summary, step_generator, train_run
from grulab.tasks.synthetic import IGNORE, anbn_strings

ACCEPT = 0.01  # a string is accepted when every next-symbol probability on it exceeds this (Weiss et al.)
BEYOND = 1.5  # "counts beyond the training range": largest accepted n at least 1.5 × the largest trained n


@dataclass
class CountingConfig(LabConfig):
    """a^n b^n settings (full form): train on ``n`` in ``1..n_train``, test acceptance up to ``n_test``."""

    n_train: int = 20
    n_test: int = 200
    cells: tuple[str, ...] = CELLS
    steps: int = 1500


def next_symbol_loss(net: torch.nn.Module, batch: tuple) -> torch.Tensor:
    x, y, lengths = batch
    return F.cross_entropy(net(x, lengths=lengths).flatten(0, 1), y.flatten(), ignore_index=IGNORE)


def accepted(model: torch.nn.Module, n_a: torch.Tensor, n_b: torch.Tensor) -> torch.Tensor:
    """Whether each string ``a^{n_a} b^{n_b}`` is accepted: every next symbol on it, ``</s>`` included,
    gets probability above ``ACCEPT``. Returns ``(B,)`` bool."""
    x, y, lengths = anbn_strings(n_a, n_b)
    probs = torch.softmax(model(x, lengths=lengths), dim=-1)  # (L, B, 3)
    valid = y != IGNORE
    p_next = probs.gather(-1, y.clamp_min(0)[..., None])[..., 0]
    return torch.where(valid, p_next > ACCEPT, torch.ones_like(valid)).all(dim=0)


def counting_metrics(model: torch.nn.Module, n_test: int) -> dict[str, Any]:
    """How far the model counts, on ``n = 1 .. n_test``:

    * ``max_n``: largest ``n`` such that for every ``k <= n`` the model accepts ``a^k b^k`` *and*
      rejects both near misses ``a^k b^(k+1)`` and ``a^k b^(k-1)`` (it recognises the language
      that far; a model that accepts everything counts nothing);
    * ``max_accept``: largest ``n`` with every ``a^k b^k``, ``k <= n``, accepted;
    * ``first_false_accept``: smallest ``n`` whose near miss is accepted (``n_test + 1``: none).
    """
    n = torch.arange(1, n_test + 1)
    ok = accepted(model, n, n)
    wrong = accepted(model, n, n + 1) | accepted(model, n, n - 1)

    def prefix(good: torch.Tensor) -> int:  # how many leading entries hold
        return n_test if bool(good.all()) else int(torch.nonzero(~good)[0, 0].item())

    first_false = int(n[wrong][0].item()) if bool(wrong.any()) else n_test + 1
    return {"max_n": prefix(ok & ~wrong), "max_accept": prefix(ok), "first_false_accept": first_false,
            "accepted_share": ok.float().mean().item()}


class CountingExperiment(Experiment):
    name = "counting"
    number = "7a"
    title = "Limit: one memory stream, counting a^n b^n"
    claim = ("A single gated state limits what a GRU can represent (seed, 'Still fails' 3): counting needs an "
             "unbounded, additively updated counter, which the LSTM's cell provides and the GRU's interpolation "
             "h = (1 − z) h_prev + z h̃ does not.")
    published = ("Weiss, Goldberg & Yahav (2018): trained on a^n b^n, their LSTM learned to count and accepted "
                 "strings far beyond the training range; their GRU did not, and accepted wrong strings early.")
    baseline = (f"Acceptance: every next-symbol probability > {ACCEPT}. A model counts to n when it accepts "
                "a^k b^k and rejects a^k b^(k±1) for every k ≤ n (an untrained model accepts everything and "
                "counts to 0); compared with the largest trained n.")
    Config = CountingConfig

    def quick(self) -> CountingConfig:
        return CountingConfig(seeds=1, n_train=10, n_test=50, steps=400)

    def runs(self, cfg: CountingConfig) -> list[RunSpec]:  # type: ignore[override]
        return [RunSpec(f"{c}-N{cfg.n_train}-s{s}", {"cell": c, "n_train": cfg.n_train, "n_test": cfg.n_test,
                                                     "seed": s, "steps": cfg.steps, "batch": cfg.batch, "lr": cfg.lr,
                                                     "params": cfg.params})
                for c in cfg.cells for s in range(cfg.seeds)]

    def run(self, cfg: CountingConfig, spec: RunSpec, run_dir: Path, progress: bool) -> dict[str, Any]:  # type: ignore[override]
        p = spec.params
        N, seed = p["n_train"], spec.seed
        model = build_model(p["cell"], 3, 3, cfg.params, readout="all", seed=seed)
        valid = anbn_strings(torch.arange(1, N + 1))

        def batches(step: int) -> tuple:
            n = torch.randint(1, N + 1, (cfg.batch,), generator=step_generator(seed, step))
            return anbn_strings(n)

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            n = torch.arange(1, N + 1)
            return {"ce": next_symbol_loss(m, valid).item(),
                    "train_range_accepted": accepted(m, n, n).float().mean().item()}

        result = train_run(model, next_symbol_loss, batches, evaluate, cfg, spec, run_dir, monitor="ce",
                           progress=progress, description=f"counting {spec.run_id}")
        model.eval()
        with torch.no_grad():
            metrics = counting_metrics(model, p["n_test"])
        return {**fit_summary(result, model), **metrics,
                "summary": f"counts to n={metrics['max_n']}, accepts a^n b^n to n={metrics['max_accept']}, first "
                           f"near miss accepted at n={metrics['first_false_accept']}"}

    def analyse(self, cfg: CountingConfig, results: list[RunResult], fig_dir: Path,  # type: ignore[override]
                others: dict[str, list[RunResult]]) -> Analysis:
        a = Analysis()
        by = group(results, "cell")
        cells = [c for c in CELLS if (c,) in by]
        metrics = ("max_n", "max_accept", "first_false_accept", "accepted_share")
        stats = {c: {m: stat_of(by[(c,)], m) for m in metrics} for c in cells}
        a.tables.append(Table(f"Counting: trained on n ≤ {cfg.n_train}, tested up to n = {cfg.n_test}",
                              ["model", "counts correctly up to n", "accepts a^k b^k up to n",
                               "first near miss accepted at n", f"share of a^n b^n, n ≤ {cfg.n_test}, accepted"],
                              [[CELL_LABELS[c], *(fmt_stat(stats[c][m]) for m in metrics)] for c in cells]))
        bars = {"counts correctly up to n": [stats[c]["max_n"] for c in cells],
                "first near miss accepted": [stats[c]["first_false_accept"] for c in cells]}
        a.figures.append(("Largest accepted n and first accepted near miss",
                          bar_plot([CELL_LABELS[c] for c in cells], bars, fig_dir / "counting", ylabel="n",
                                   title=f"a^n b^n, trained on n ≤ {cfg.n_train}",
                                   hlines=[(cfg.n_train, "largest trained n")])))
        a.numbers = {c: {m: s.__dict__ for m, s in st.items()} for c, st in stats.items()}
        lstm, gru = stats.get("lstm", {}).get("max_n"), stats.get("gru", {}).get("max_n")
        lf, gf = stats.get("lstm", {}).get("first_false_accept"), stats.get("gru", {}).get("first_false_accept")
        a.checks = [
            Check("The LSTM counts beyond the training range.",
                  f"LSTM mean 'counts correctly up to n' >= {BEYOND} × {cfg.n_train}",
                  lstm.mean >= BEYOND * cfg.n_train if lstm else None, f"LSTM {fmt_stat(lstm) if lstm else '–'}",
                  "Weiss et al. 2018"),
            Check("The GRU generalises less far than the LSTM.",
                  "GRU 'counts correctly up to n' below the LSTM's beyond the seed spread",
                  clearly_less(gru, lstm) if gru and lstm else None,
                  f"GRU {fmt_stat(gru) if gru else '–'}, LSTM {fmt_stat(lstm) if lstm else '–'}", "Weiss et al. 2018"),
            Check("The GRU accepts wrong strings earlier than the LSTM.",
                  "GRU's first accepted near miss below the LSTM's beyond the seed spread",
                  clearly_less(gf, lf) if gf and lf else None,
                  f"GRU {fmt_stat(gf) if gf else '–'}, LSTM {fmt_stat(lf) if lf else '–'}", "Weiss et al. 2018"),
        ]
        return a
