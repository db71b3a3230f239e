"""Experiment 2, gradient collapse: the adding problem at growing lengths, the gradient flow at
initialisation and after training, default / orthogonal / chrono initialisation, and minGRU
(Feng et al. 2024) beside the GRU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from grulab.diagnostics import approximation_gap, gradient_flow, trace
from grulab.lab.core import (
    Analysis,
    Check,
    Experiment,
    LabConfig,
    RunResult,
    RunSpec,
    Table,
    aligned,
    fmt_number,
    fmt_stat,
    group,
    not_clearly_above,
    stat_of,
)
from grulab.lab.figures import FORMATS, bar_plot, line_plot
from grulab.lab.training import (
    CELL_LABELS,
    CELLS,
    LAB_CELLS,
    MINGRU,
    TEST_SEED,
    VALID_SEED,
    build_model,
    fit_summary,
    held_out,
    step_generator,
    train_run,
)
from grulab.tasks.synthetic import ADDING_BASELINE_MSE, adding_problem

SOLVED = 0.1 * ADDING_BASELINE_MSE  # "solved": MSE below 10% of predicting the mean
AT_BASELINE = 0.8 * ADDING_BASELINE_MSE  # "stays at the baseline": MSE at least 80% of it
HIGHWAY_DECADES = 2.0  # the GRU's ∂h_T/∂h_0 must beat the RNN's by this many orders of magnitude
APPROX_DECADES = 1.0  # ∏ diag(1 − z) must predict ‖∂h_T/∂h_0‖ within this many orders of magnitude
# the families grulab.diagnostics traces; minGRU's step Jacobian is diag(1 − z) exactly (cells/mingru.py),
# so its flow has no approximation to test and is not recorded
FLOW_CELLS = CELLS


@dataclass
class AddingConfig(LabConfig):
    """Adding-problem settings (full form). Every cell at every length with default initialisation;
    orthogonal and chrono initialisation at ``ablation_T``; gradient flow recorded for seed 0 at
    ``flow_T`` on ``flow_batch`` sequences. ``compare_cells`` (minGRU) run beside ``cells`` at every
    length with default initialisation only; a separate setting, so ``--set cells=...`` means the
    same in every experiment."""

    lengths: tuple[int, ...] = (100, 200, 400, 1000)
    cells: tuple[str, ...] = CELLS
    compare_cells: tuple[str, ...] = (MINGRU,)
    ablation_T: int = 200
    ablation_inits: tuple[str, ...] = ("orthogonal", "chrono")
    flow_T: int = 200
    flow_batch: int = 16
    steps: int = 500
    valid_size: int = 512
    test_size: int = 2000


def adding_loss(net: torch.nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(net(x).squeeze(-1), y)


def flow_record(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    """Span norms and ‖∂L/∂h_t‖ (hand-derived) of ``model`` on ``(x, y)``, and for gated cells the
    span norms ``∏ diag(1 − z)`` (LSTM: ``∏ f``) predicts, as lists for ``result.json``."""
    fl = gradient_flow(model, x, lambda out: F.mse_loss(out.squeeze(-1), y.to(out.dtype)))[0]
    rec = {"span_log10": fl.span_log10.mean(dim=1).tolist(), "grad_by_distance": fl.grad_norm_by_distance.tolist()}
    if model.rnn.family != "rnn":
        gap = approximation_gap(trace(model, x))[0]
        rec["span_approx_log10"] = gap.span_approx_log10.mean(dim=1).tolist()
        rec["step_rel_gap_median"] = float(gap.relative_gap.median())
    return rec


class AddingExperiment(Experiment):
    name = "adding"
    number = "2"
    title = "Gradient collapse: the adding problem"
    claim = ("Gradients through a GRU depend on ∏(1 − z_t), not on ∏ W_hh, so gates can hold a 'gradient highway' "
             "open across long spans (seed, 'What failed' 2; ∂h_t/∂h_(t−1) ≈ 1 − z_t).")
    published = ("Bai et al. (2018), adding problem at T=600: GRU MSE 5.3e-5, LSTM 0.164, tanh RNN 0.177 "
                 "(baseline 0.167): the GRU solved it, LSTM and RNN stayed at the baseline. Feng et al. (2024) report "
                 "that minGRU (gates from the input only, trained by a parallel scan) matches recent sequence models; "
                 "here it runs as one layer at the GRU's parameter count.")
    baseline = "Predicting the mean sum 1 scores MSE 1/6 ≈ 0.167; solved = MSE < 0.0167."
    Config = AddingConfig

    def quick(self) -> AddingConfig:
        return AddingConfig(seeds=1, lengths=(50,), ablation_T=50, flow_T=50, steps=300, valid_size=256,
                            test_size=500)

    def runs(self, cfg: AddingConfig) -> list[RunSpec]:  # type: ignore[override]
        keys = [(c, "default", T) for T in cfg.lengths for c in (*cfg.cells, *cfg.compare_cells)]
        keys += [(c, i, cfg.ablation_T) for i in cfg.ablation_inits for c in cfg.cells
                 if not (c == "rnn" and i == "chrono")]  # the RNN has no gate to set
        specs, seen = [], set()
        for cell, init, T in keys:
            if (cell, init, T) in seen:
                continue
            seen.add((cell, init, T))
            for seed in range(cfg.seeds):
                specs.append(RunSpec(f"{cell}-{init}-T{T}-s{seed}", {
                    "cell": cell, "init": init, "T": T, "seed": seed, "steps": cfg.steps, "batch": cfg.batch,
                    "lr": cfg.lr, "params": cfg.params, "flow": seed == 0 and T == cfg.flow_T and cell in FLOW_CELLS}))
        return specs

    def run(self, cfg: AddingConfig, spec: RunSpec, run_dir: Path, progress: bool) -> dict[str, Any]:  # type: ignore[override]
        p = spec.params
        T, seed = p["T"], spec.seed
        model = build_model(p["cell"], 2, 1, cfg.params, readout="last", init=p["init"], horizon=T, seed=seed)
        valid = adding_problem(cfg.valid_size, T, generator=held_out(VALID_SEED + T))
        test = adding_problem(cfg.test_size, T, generator=held_out(TEST_SEED + T))
        probe = adding_problem(cfg.flow_batch, T, generator=held_out(TEST_SEED + 1 + T))
        flows = {}
        if p["flow"]:
            flows["flow_init"] = flow_record(model, *probe)
        result = train_run(model, adding_loss,
                           lambda step: adding_problem(cfg.batch, T, generator=step_generator(seed, step)),
                           lambda m: {"mse": adding_loss(m, valid).item()}, cfg, spec, run_dir, monitor="mse",
                           progress=progress, description=f"adding {spec.run_id}")
        model.eval()
        with torch.no_grad():
            mse = adding_loss(model, test).item()
        if p["flow"]:
            flows["flow_trained"] = flow_record(model, *probe)
        return {**fit_summary(result, model), "mse": mse, **flows,
                "summary": f"MSE {mse:.4f} (baseline {ADDING_BASELINE_MSE:.3f})"}

    def analyse(self, cfg: AddingConfig, results: list[RunResult], fig_dir: Path,  # type: ignore[override]
                others: dict[str, list[RunResult]]) -> Analysis:
        a = Analysis()
        by = group(results, "cell", "init", "T")
        lengths = sorted({T for (_, i, T) in by if i == "default"})
        cells = [c for c in LAB_CELLS if any(k[0] == c for k in by)]
        series, rows = {}, []
        for c in cells:
            ts = [T for T in lengths if (c, "default", T) in by]
            stats = [stat_of(by[(c, "default", T)], "mse") for T in ts]
            series[CELL_LABELS[c]] = (ts, stats)
            rows.append([CELL_LABELS[c]] + [fmt_stat(s) for s in aligned(lengths, ts, stats)])
        a.tables.append(Table(f"Test MSE, default initialisation (baseline {ADDING_BASELINE_MSE:.3f}, "
                              f"solved < {SOLVED:.4f})", ["model"] + [f"T={T}" for T in lengths], rows))
        a.figures.append(("Test MSE against the sequence length (default initialisation)",
                          line_plot(series, fig_dir / "adding_mse", xlabel="sequence length T", ylabel="test MSE",
                                    title="Adding problem: test MSE", logx=True, logy=True,
                                    hlines=[(ADDING_BASELINE_MSE, "baseline 1/6"), (SOLVED, "solved")])))
        inits = [i for i in ("default", "orthogonal", "chrono")
                 if any(k[1] == i and k[2] == cfg.ablation_T for k in by)]
        ablated = [c for c in cells if any(k[0] == c and k[1] != "default" and k[2] == cfg.ablation_T for k in by)]
        if len(inits) > 1:
            rows_ab = []
            bars = {i: [] for i in inits}
            for c in ablated:
                row = [CELL_LABELS[c]]
                for i in inits:
                    s = stat_of(by.get((c, i, cfg.ablation_T), []), "mse")
                    bars[i].append(s)
                    row.append(fmt_stat(s))
                rows_ab.append(row)
            a.tables.append(Table(f"Initialisation at T={cfg.ablation_T}: test MSE", ["model", *inits], rows_ab))
            a.figures.append((f"Default, orthogonal and chrono initialisation at T={cfg.ablation_T}",
                              bar_plot([CELL_LABELS[c] for c in ablated], bars, fig_dir / "adding_init",
                                       ylabel="test MSE", title=f"Adding problem, T={cfg.ablation_T}: initialisation",
                                       hlines=[(ADDING_BASELINE_MSE, "baseline"), (SOLVED, "solved")], logy=True)))
        flows = {r["cell"]: r.metrics for r in results if r["flow"] and r["init"] == "default"}
        for when, caption in (("flow_init", "at initialisation"), ("flow_trained", "after training")):
            curves = {CELL_LABELS[c]: (m[when]["span_log10"], m[when]["grad_by_distance"])
                      for c, m in flows.items() if when in m}
            if curves:
                from grulab.diagnostics.plots import plot_flow_curves

                png = plot_flow_curves(curves, fig_dir / f"adding_{when}", formats=FORMATS,
                                       title=f"Adding problem, T={cfg.flow_T}: gradient flow {caption}")[0]
                a.figures.append((f"Gradient flow {caption} (T={cfg.flow_T}, seed 0)", png))
        if flows:
            rows_f = []
            for c, m in flows.items():
                for when in ("flow_init", "flow_trained"):
                    if when in m:
                        f = m[when]
                        rows_f.append([CELL_LABELS[c], when.removeprefix("flow_"), fmt_number(f["span_log10"][-1]),
                                       fmt_number(f["span_approx_log10"][-1]) if "span_approx_log10" in f else "–",
                                       fmt_number(f["step_rel_gap_median"]) if "step_rel_gap_median" in f else "–"])
            a.tables.append(Table(f"Gradient highway at T={cfg.flow_T}: log10 ‖∂h_T/∂h_0‖, exact and as ∏ diag(1 − z) "
                                  "(LSTM: ∏ f) predicts, and the median relative step gap ‖J − diag(1 − z)‖/‖J‖",
                                  ["model", "when", "log10 exact", "log10 approximation", "median step gap"], rows_f))
        a.numbers = {f"{c}:{i}:T{T}": stat_of(rs, "mse").__dict__ for (c, i, T), rs in by.items()}
        a.checks = self._checks(by, lengths, flows, cfg)
        return a

    def _checks(self, by: dict, lengths: list[int], flows: dict, cfg: AddingConfig) -> list[Check]:
        T_max = max(lengths) if lengths else None
        src = "Bai et al. 2018"
        checks = []
        gru = stat_of(by.get(("gru", "default", T_max), []), "mse")
        checks.append(Check(f"The GRU solves the adding problem at T={T_max}.", f"mean test MSE < {SOLVED:.4f}",
                            None if gru.n == 0 else gru.mean < SOLVED, f"GRU MSE {fmt_stat(gru)}", src))
        others = {c: stat_of(by.get((c, "default", T_max), []), "mse") for c in ("lstm", "rnn")}
        decided = all(s.n for s in others.values())
        checks.append(Check(f"The LSTM and the tanh RNN stay at the baseline at T={T_max}.",
                            f"mean test MSE >= {AT_BASELINE:.3f} for both",
                            all(s.mean >= AT_BASELINE for s in others.values()) if decided else None,
                            ", ".join(f"{CELL_LABELS[c]} {fmt_stat(s)}" for c, s in others.items()), src))
        trained = {c: m["flow_trained"] for c, m in flows.items() if "flow_trained" in m}
        if "gru" in trained and "rnn" in trained:
            g, r = trained["gru"]["span_log10"][-1], trained["rnn"]["span_log10"][-1]
            checks.append(Check("After training, gradients cross the whole sequence through the GRU but vanish "
                                "through the tanh RNN (the gradient highway).",
                                f"log10 ‖∂h_T/∂h_0‖: GRU exceeds the RNN by more than {HIGHWAY_DECADES:g} "
                                f"at T={cfg.flow_T}",
                                g - r > HIGHWAY_DECADES, f"GRU {fmt_number(g)}, RNN {fmt_number(r)}", "seed"))
            approx = trained["gru"]["span_approx_log10"][-1]
            checks.append(Check("∂h_t/∂h_(t−1) ≈ diag(1 − z_t): the product of the diagonals predicts the span "
                                "norm of the trained GRU.",
                                f"|log10 exact − log10 ∏ diag(1 − z)| <= {APPROX_DECADES:g} at k = T = {cfg.flow_T}",
                                abs(g - approx) <= APPROX_DECADES, f"exact {fmt_number(g)}, approximation "
                                f"{fmt_number(approx)}", "seed"))
        else:
            checks.append(Check("Gradient highway (GRU against the tanh RNN).", "needs seed-0 runs at flow_T", None,
                                "missing runs", "seed"))
        checks.append(mingru_check(by, lengths))
        return checks


def mingru_check(by: dict, lengths: list[int]) -> Check:
    """Feng et al. 2024: minGRU, whose gates read only the input, does as well as the GRU (reset after)
    at every length, both with default initialisation."""
    per_T, outcomes = [], []
    for T in lengths:
        gru, mingru = by.get(("gru", "default", T)), by.get((MINGRU, "default", T))
        if not gru or not mingru:
            outcomes.append(None)
            continue
        g, m = stat_of(gru, "mse"), stat_of(mingru, "mse")
        outcomes.append(not_clearly_above(m, g))
        per_T.append(f"T={T}: minGRU {fmt_stat(m)} vs GRU {fmt_stat(g)}")
    holds = None if not outcomes or None in outcomes else all(outcomes)
    return Check("minGRU, whose gates read only the input, solves the adding problem as well as the GRU at every "
                 "length.",
                 "minGRU's test MSE not clearly above the GRU's (not GRU mean + std < minGRU mean − std; at least "
                 "2 seeds) at every T, default initialisation",
                 holds, "; ".join(per_T) or "missing minGRU or GRU runs", "Feng et al. 2024")

