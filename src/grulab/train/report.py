"""Reports that read run directories only: CSV logs, loss curves, grid summaries, Markdown.

Everything here can be redrawn from the files :func:`grulab.train.run.train_run` writes, without
training again (``grulab train --summarize DIR``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from grulab.io import atomic_write_bytes
from grulab.train.loop import METRICS_FILE

SUMMARY_JSON, SUMMARY_MD, GRID_FILE = "summary.json", "summary.md", "grid.json"
RESULTS_START, RESULTS_END = "<!-- real-data:start -->", "<!-- real-data:end -->"
SECTION_TITLE = ("## Real data\n\nWritten by `grulab train --summarize DIR --results-md docs/results.md` from the run "
                 "folders; data sets, metrics and protocol: [real_data.md](real_data.md).")
CELL_NAMES = {"rnn": "tanh RNN", "gru": "GRU (reset after)", "gru_before": "GRU (reset before)", "lstm": "LSTM",
              "mingru": "minGRU"}
DATA_NAMES = {"jsb": "JSB Chorales", "nottingham": "Nottingham", "musedata": "MuseData", "piano": "Piano-midi.de",
              "chorales21": "music21 Bach chorales (not comparable to the literature)", "text": "pydoc_data text",
              "digits-pixel": "digits, pixel by pixel", "digits-row": "digits, row by row", "co2": "Mauna Loa CO2",
              "sunspots": "sunspots"}

# Published test NLL (nats per time step) on the benchmark splits: citations, not measurements.
PUBLISHED: dict[str, dict[str, Any]] = {
    "jsb": {
        "Chung et al. 2014": {
            "values": {"rnn": 9.19, "gru": 8.54, "lstm": 8.67},
            "source": "Chung, Gulcehre, Cho, Bengio, 'Empirical Evaluation of Gated Recurrent Neural Networks on "
                      "Sequence Modeling', arXiv:1412.3555, Table 2 (test, ~20k parameters: tanh 100, GRU 46, "
                      "LSTM 36 units). GRU 8.54 as listed by Papers with Code; tanh 9.19 and LSTM 8.67 as quoted "
                      "from the paper by github.com/2j2h5/lstm-gru (the paper itself was not readable here).",
        },
        "Bai et al. 2018": {
            "values": {"rnn": 8.91, "gru": 8.43, "lstm": 8.45},
            "source": "Bai, Kolter, Koltun, 'An Empirical Evaluation of Generic Convolutional and Recurrent Networks "
                      "for Sequence Modeling', arXiv:1803.01271 (larger, tuned models), as quoted in the grulab "
                      "issue; not re-checked against the paper here.",
        },
    },
}


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_csv(run_dir: str | Path) -> Path:
    """``metrics.csv``: one row per record of ``metrics.jsonl`` (columns: kind, step, then metrics)."""
    records = read_records(run_dir)
    columns = ["kind", "step"] + sorted({k for r in records for k in r} - {"kind", "step"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return atomic_write_bytes(Path(run_dir) / "metrics.csv", buf.getvalue().encode())


def plot_curves(run_dir: str | Path, title: str = "") -> Path | None:
    """``loss_curve.png``: the training loss and the validation metrics against the step."""
    records = read_records(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss", lw=1, alpha=0.7)
    for key in sorted({k for r in evals for k in r} - {"kind", "step"}):
        ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=key, ms=3)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss / metric")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / "loss_curve.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(out_dir: str | Path) -> dict[str, Any]:
    """Aggregate every ``results.json`` under ``out_dir`` by (data, cell): mean and std over seeds.

    Returns ``{"groups": [...], "baselines": {data: ...}, "published": {...}, "verdicts": {...},
    "machine": ...}``; each group has ``data, cell, seeds, hidden, parameters``, the primary
    metric's ``valid``/``test`` mean and std, ``steps`` and ``seconds`` (mean per run).
    """
    out = Path(out_dir)
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("**/results.json"))]
    if not runs:
        raise FileNotFoundError(f"no results.json under {out}: nothing to summarise")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["data"], r["cell"]), []).append(r)
    rows, baselines = [], {}
    for (data, cell), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], _cell_order(kv[0][1]))):
        metric = rs[0]["task"]["monitor"].removeprefix("valid_")
        valid = _mean_std([r["valid"][f"valid_{metric}"] for r in rs])
        test = _mean_std([r["test"][f"test_{metric}"] for r in rs])
        rows.append({"data": data, "cell": cell, "metric": metric, "seeds": sorted(r["seed"] for r in rs),
                     "hidden": rs[0]["hidden"], "parameters": rs[0]["parameters"],
                     "valid_mean": valid[0], "valid_std": valid[1], "test_mean": test[0], "test_std": test[1],
                     "test_values": [r["test"][f"test_{metric}"] for r in sorted(rs, key=lambda r: r["seed"])],
                     "other_test": {k.removeprefix("test_"): _mean_std([r["test"][k] for r in rs])
                                    for k in sorted(rs[0]["test"]) if k != f"test_{metric}"},
                     "steps": statistics.fmean(r["steps"] for r in rs),
                     "best_step": statistics.fmean(r["best_step"] for r in rs),
                     "seconds": statistics.fmean(r["seconds"] for r in rs),
                     "train": rs[0]["run"], "metric_doc": rs[0].get("metric", "")})
        baselines[data] = {name: dict(scores) for name, scores in rs[0]["baselines"].items()}
    datas = sorted({row["data"] for row in rows})
    loads = [r["machine"]["load_average"][0] for r in runs if r.get("machine", {}).get("load_average")]
    commands = sorted({json.loads(p.read_text()).get("command") for p in out.glob(f"**/{GRID_FILE}")} - {None})
    return {"groups": rows, "baselines": baselines, "commands": commands,
            "load_average": [min(loads), max(loads)] if loads else None,
            "published": {d: PUBLISHED[d] for d in datas if d in PUBLISHED},
            "verdicts": {d: ordering_verdict([r for r in rows if r["data"] == d]) for d in datas},
            "machine": runs[0].get("machine", {}), "runs": len(runs),
            "total_seconds": sum(r["seconds"] for r in runs)}


def _cell_order(cell: str) -> int:
    order = list(CELL_NAMES)
    return order.index(cell) if cell in order else len(order)


def ordering_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Does the published ordering hold? Criterion, fixed in advance (Chung et al. 2014's claim):
    the gated units (GRU, LSTM) reach a lower test score than the tanh RNN.

    For each gated cell: ``"better"`` when its mean + std is below the RNN's mean - std,
    ``"worse"`` when its mean - std is above the RNN's mean + std, ``"tie"`` otherwise. The
    verdict is ``"reproduced"`` if every gated cell is better, ``"not reproduced"`` if any is
    worse, ``"mixed"`` otherwise; ``"n/a"`` without an RNN or a gated cell. Also reports whether
    GRU and LSTM are within each other's mean ± std ("comparable", the paper's second finding).
    """
    by_cell = {r["cell"]: r for r in rows}
    rnn = by_cell.get("rnn")
    gated = [c for c in ("gru", "gru_before", "lstm") if c in by_cell]
    if rnn is None or not gated:
        return {"verdict": "n/a", "criterion": "needs the tanh RNN and at least one gated cell"}
    comparisons = {}
    for c in gated:
        g = by_cell[c]
        if g["test_mean"] + g["test_std"] < rnn["test_mean"] - rnn["test_std"]:
            comparisons[c] = "better"
        elif g["test_mean"] - g["test_std"] > rnn["test_mean"] + rnn["test_std"]:
            comparisons[c] = "worse"
        else:
            comparisons[c] = "tie"
    verdict = ("reproduced" if all(v == "better" for v in comparisons.values())
               else "not reproduced" if any(v == "worse" for v in comparisons.values()) else "mixed")
    out: dict[str, Any] = {"verdict": verdict, "vs_rnn": comparisons,
                           "criterion": "each gated cell's test mean + std below the tanh RNN's mean - std"}
    if "gru" in by_cell and "lstm" in by_cell:
        g, l_ = by_cell["gru"], by_cell["lstm"]
        out["gru_vs_lstm"] = ("comparable" if abs(g["test_mean"] - l_["test_mean"]) <= g["test_std"] + l_["test_std"]
                              else ("GRU lower" if g["test_mean"] < l_["test_mean"] else "LSTM lower"))
    return out


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def summary_markdown(summary: dict[str, Any], command: str | None = None) -> str:
    """The summary as Markdown tables, with the published numbers beside ours."""
    lines: list[str] = []
    order = list(DATA_NAMES)  # the music benchmark first
    for data in sorted({r["data"] for r in summary["groups"]}, key=lambda d: (order.index(d) if d in order else 99, d)):
        rows = [r for r in summary["groups"] if r["data"] == data]
        metric = rows[0]["metric"]
        published = summary.get("published", {}).get(data, {})
        seeds = sorted({s for r in rows for s in r["seeds"]})
        lines.append(f"#### {DATA_NAMES.get(data, data)}: test {metric}, mean ± std over seeds "
                     f"({', '.join(map(str, seeds))})")
        lines.append("")
        others = sorted({k for r in rows for k in r.get("other_test", {})})
        head = ["cell", "hidden", "parameters", "seeds", f"valid {metric}", f"test {metric}",
                *[f"test {k}" for k in others], *published, "best step", "steps", "seconds per run"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in rows:
            pub = [f"{p['values'][r['cell']]:.2f}" if r["cell"] in p["values"] else "" for p in published.values()]
            lines.append(f"| {CELL_NAMES.get(r['cell'], r['cell'])} | {r['hidden']} | {r['parameters']:,} | "
                         f"{len(r['seeds'])} | {_fmt(r['valid_mean'], r['valid_std'])} | "
                         f"{_fmt(r['test_mean'], r['test_std'])} | "
                         + " | ".join([*(_fmt(*r["other_test"][k]) if k in r.get("other_test", {}) else ""
                                         for k in others), *pub,
                                      f"{r['best_step']:.0f}", f"{r['steps']:.0f}", f"{r['seconds']:.0f}"])
                         + " |")
        for name, scores in summary["baselines"].get(data, {}).items():
            v, t = scores.get(f"valid_{metric}"), scores.get(f"test_{metric}")
            extra = [f"{scores[f'test_{k}']:.3f}" if f"test_{k}" in scores else "" for k in others]
            if t is None and not any(extra):
                continue
            cells = [f"{name} (baseline)", "", "", "", "" if v is None else f"{v:.3f}",
                     "" if t is None else f"{t:.3f}", *extra,
                     *[""] * (len(head) - 6 - len(extra))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        verdict = summary["verdicts"].get(data, {})
        if verdict.get("verdict", "n/a") != "n/a":
            vs = ", ".join(f"{CELL_NAMES.get(c, c)} {v}" for c, v in verdict["vs_rnn"].items())
            lines.append(f"Chung et al. (2014)'s finding, gated units below the tanh RNN (criterion: "
                         f"{verdict['criterion']}): **{verdict['verdict']}** (against the tanh RNN: {vs})."
                         + (f" GRU vs LSTM: {verdict['gru_vs_lstm']}." if "gru_vs_lstm" in verdict else ""))
            lines.append("")
        if rows[0].get("metric_doc"):
            lines.append(f"Metric: {rows[0]['metric_doc']}.")
            lines.append("")
        for name, p in published.items():
            lines.append(f"- {name}: {p['source']}")
        if published:
            lines.append("")
    m = summary.get("machine", {})
    load = summary.get("load_average")
    lines.append(f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')} with "
                 f"{m.get('torch_threads', '?')} threads, {m.get('world_size', 1)} process(es). "
                 f"{summary['runs']} runs, {summary['total_seconds'] / 60:.1f} minutes of training in all"
                 + (f"; the 1-minute load average at the end of the runs was {load[0]:.1f} to {load[1]:.1f} on "
                    f"{m.get('cores', '?')} cores (a shared machine: times are noisy)" if load else "") + ".")
    trained_by = summary.get("commands", [])
    if trained_by:
        lines.append("")
        lines.append("Trained by: " + "; ".join(f"`{c}`" for c in trained_by))
    if command and command not in trained_by:
        lines.append("")
        lines.append(f"Summary by: `{command}`")
    return "\n".join(lines) + "\n"


def write_summary(out_dir: str | Path, summary: dict[str, Any], command: str | None = None) -> Path:
    """``summary.json`` and ``summary.md`` in ``out_dir``; returns the Markdown file's path."""
    out = Path(out_dir)
    atomic_write_bytes(out / SUMMARY_JSON, (json.dumps(summary, indent=2, default=_json_default) + "\n").encode())
    return atomic_write_bytes(out / SUMMARY_MD, summary_markdown(summary, command).encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def insert_results_section(results_md: str | Path, section: str) -> Path:
    """Put ``section`` between the real-data markers of ``results_md`` (appended with the markers
    if they are absent); the rest of the file is left as it is."""
    path = Path(results_md)
    text = path.read_text() if path.is_file() else ""
    block = f"{RESULTS_START}\n{SECTION_TITLE}\n\n{section.rstrip()}\n{RESULTS_END}"
    if RESULTS_START in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_START, 1)
        _, tail = rest.split(RESULTS_END, 1)
        text = head + block + tail
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    return atomic_write_bytes(path, text.encode())
