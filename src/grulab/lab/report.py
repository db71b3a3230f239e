"""The lab's report, built from run folders only (a figure is redrawn without retraining).

``build_report(lab_dir)`` reads ``<lab_dir>/<experiment>/experiment.json`` and every finished run's
``result.json``, runs each experiment's analysis and writes, into the report folder:

* ``report.html``: one self-contained page (figures embedded);
* ``summary.md``: the same in Markdown, figures linked;
* ``results.json``: every aggregated number, check and verdict;
* ``figures/<experiment>/*.png|svg``.

With ``results_md``, the Markdown is also written between the markers ``<!-- lab:begin -->`` and
``<!-- lab:end -->`` of that file (``section`` renames them; other parts of the file are left as
they are), so several reports can share one results page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grulab.diagnostics.html import escape, html_page, image_tag, markdown_table, table_html
from grulab.io import atomic_write_bytes
from grulab.lab.core import Analysis, Experiment, RunResult, config_from_dict, fmt_number
from grulab.lab.runner import EXPERIMENT_FILE, RESULT_FILE


def markers(section: str = "lab") -> tuple[str, str]:
    """The comment lines that delimit a generated section of a Markdown file."""
    if not section or not all(c.isalnum() or c in "-_" for c in section):
        raise ValueError(f"section must be a name of letters, digits, '-' or '_', got {section!r}")
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
VERDICT_CLASS = {"reproduced": "reproduced", "not reproduced": "not-reproduced", "mixed": "mixed",
                 "undetermined": "muted"}


@dataclass
class Report:
    html: Path
    markdown: Path
    results: Path
    summary_rows: list[list[str]] = field(default_factory=list)
    analyses: dict[str, Analysis] = field(default_factory=dict)


def read_results(exp_dir: Path, *, diverged: bool = False) -> list[RunResult]:
    """Every finished run of one experiment folder, in folder-name order: those that trained to the
    end, or (``diverged=True``) those whose loss or gradient became non-finite."""
    out = []
    for path in sorted(exp_dir.glob(f"*/{RESULT_FILE}")):
        data = json.loads(path.read_text())
        if bool(data["metrics"].get("diverged")) == diverged:
            out.append(RunResult(data["run_id"], data["params"], data["metrics"], path.parent))
    return out


def _machines(results: list[RunResult]) -> list[str]:
    seen = []
    for r in results:
        m = r.metrics.get("machine")
        if m:
            text = f"{m['processor']}, {m['cpus']} CPUs, torch {m['torch']}, GRU engines {', '.join(m['gru_engines'])}"
            if text not in seen:
                seen.append(text)
    return seen


def build_report(lab_dir: str | os.PathLike, report_dir: str | os.PathLike | None = None, *,
                 results_md: str | os.PathLike | None = None, title: str = "grulab lab report",
                 section: str = "lab") -> Report:
    """Analyse every experiment found in ``lab_dir`` and write the report (module docstring)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the analyses trace small models: threads only slow them down
    try:
        return _build_report(lab_dir, report_dir, results_md, title, section)
    finally:
        torch.set_num_threads(threads)


def _build_report(lab_dir: str | os.PathLike, report_dir: str | os.PathLike | None,
                  results_md: str | os.PathLike | None, title: str, section: str) -> Report:
    from grulab.lab import EXPERIMENTS

    lab_dir = Path(lab_dir)
    if not lab_dir.is_dir():
        raise FileNotFoundError(f"lab folder {lab_dir} does not exist (run `grulab lab run` first)")
    report_dir = Path(report_dir) if report_dir is not None else lab_dir / "report"
    fig_root = report_dir / "figures"
    found = [(exp, lab_dir / exp.name) for exp in EXPERIMENTS.values()
             if (lab_dir / exp.name / EXPERIMENT_FILE).is_file()]
    if not found:
        raise ValueError(f"{lab_dir} holds no experiment folder (expected <name>/{EXPERIMENT_FILE})")
    all_results = {exp.name: read_results(d) for exp, d in found}
    for name in {dep for exp, _ in found for dep in exp.requires}:
        if name not in all_results and (lab_dir / name).is_dir():
            all_results[name] = read_results(lab_dir / name)
    report = Report(report_dir / "report.html", report_dir / "summary.md", report_dir / "results.json")
    sections_html, sections_md, numbers = [], [], {}
    total_seconds, total_runs, quick_any = 0.0, 0, False
    for exp, exp_dir in found:
        meta = json.loads((exp_dir / EXPERIMENT_FILE).read_text())
        cfg = config_from_dict(exp.Config, meta["config"])
        quick_any |= bool(meta.get("quick"))
        results = all_results[exp.name]
        expected = len(exp.runs(cfg))
        others = {d: all_results.get(d, []) for d in exp.requires}
        analysis = exp.analyse(cfg, results, fig_root / exp.name, others)
        failed = read_results(exp_dir, diverged=True)
        if failed:
            analysis.notes.append(f"{len(failed)} run(s) diverged (non-finite loss or gradient) and are left out of "
                                  f"the means: {', '.join(r.run_id for r in failed)}.")
        report.analyses[exp.name] = analysis
        seconds = sum(r.metrics.get("seconds", 0.0) for r in results)
        total_seconds += seconds
        total_runs += len(results)
        form = "quick" if meta.get("quick") else "full"
        done = len(results) + len(failed)
        status = f"{done}/{expected} runs" if expected else "analysis of other runs"
        report.summary_rows.append([exp.number, exp.title, analysis.verdict, status, form, fmt_number(seconds / 60)])
        numbers[exp.name] = {"verdict": analysis.verdict, "config": meta["config"], "quick": meta.get("quick"),
                             "runs": len(results), "expected_runs": expected, "train_seconds": seconds,
                             "checks": [asdict(c) for c in analysis.checks], "numbers": analysis.numbers,
                             "machines": _machines(results)}
        sections_html.append(_section_html(exp, analysis, form, status, cfg.to_dict()))
        sections_md.append(_section_md(exp, analysis, form, status, cfg.to_dict(), report_dir))
    headers = ["#", "experiment", "verdict", "runs", "form", "training (min)"]
    machines = sorted({m for n in numbers.values() for m in n["machines"]})
    intro = (f"{total_runs} runs, {fmt_number(total_seconds / 60)} minutes of training in total"
             f"{' (quick form: small budgets, one seed; verdicts are indicative only)' if quick_any else ''}. "
             f"Machine: {'; '.join(machines) or 'not recorded'}. Verdicts are computed from the pre-declared "
             f"criteria of docs/claims.md: reproduced (every check holds), not reproduced (none holds), mixed.")
    summary_html = table_html(headers, report.summary_rows)
    page = f"<p>{escape(intro)}</p>{summary_html}" + "\n".join(sections_html)
    atomic_write_bytes(report.html, html_page(title, page).encode())
    md = f"{intro}\n\n{markdown_table(headers, report.summary_rows)}\n\n" + "\n\n".join(sections_md) + "\n"
    atomic_write_bytes(report.markdown, f"# {title}\n\n{md}".encode())
    atomic_write_bytes(report.results, (json.dumps(numbers, indent=1, sort_keys=True, default=str) + "\n").encode())
    if results_md is not None:
        write_between_markers(Path(results_md), _relink(md, report_dir, Path(results_md).parent), section)
    return report


def _checks_rows(analysis: Analysis) -> list[list[str]]:
    return [[c.statement, c.source, c.criterion, {True: "holds", False: "does not hold", None: "undecided"}[c.holds],
             c.evidence] for c in analysis.checks]


CHECK_HEADERS = ["statement", "source", "criterion (pre-declared)", "outcome", "measured"]


def format_settings(cfg: dict[str, Any]) -> str:
    """``key=value`` pairs as ``--set`` takes them (tuples comma-separated)."""
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}"
                     for k, v in cfg.items())


def _section_html(exp: Experiment, a: Analysis, form: str, status: str, cfg: dict[str, Any]) -> str:
    cls = VERDICT_CLASS[a.verdict]
    parts = [f"<h2>{escape(exp.number)}. {escape(exp.title)}: <span class=\"{cls}\">{escape(a.verdict)}</span></h2>",
             f"<p><b>Claim.</b> {escape(exp.claim)}</p>", f"<p><b>Published.</b> {escape(exp.published)}</p>",
             f"<p><b>Baseline.</b> {escape(exp.baseline)}</p>",
             f"<p class=\"muted\">{escape(form)} form, {escape(status)}; settings: {escape(format_settings(cfg))}</p>",
             table_html(CHECK_HEADERS, _checks_rows(a))]
    for t in a.tables:
        parts.append(f"<h3>{escape(t.title)}</h3>{table_html(t.headers, t.rows)}")
    for caption, png in a.figures:
        parts.append(f"<h3>{escape(caption)}</h3>{image_tag(png, caption)}")
    parts += [f"<p class=\"muted\">{escape(n)}</p>" for n in a.notes]
    return "\n".join(parts)


def _section_md(exp: Experiment, a: Analysis, form: str, status: str, cfg: dict[str, Any], base: Path) -> str:
    parts = [f"## {exp.number}. {exp.title}: **{a.verdict}**", "", f"**Claim.** {exp.claim}", "",
             f"**Published.** {exp.published}", "", f"**Baseline.** {exp.baseline}", "",
             f"_{form} form, {status}; settings: {format_settings(cfg)}_", "",
             markdown_table(CHECK_HEADERS, _checks_rows(a))]
    for t in a.tables:
        parts += ["", f"**{t.title}**", "", markdown_table(t.headers, t.rows)]
    for caption, png in a.figures:
        parts += ["", f"![{caption}]({os.path.relpath(png, base).replace(os.sep, '/')})"]
    parts += ["", *[f"_{n}_" for n in a.notes]] if a.notes else []
    return "\n".join(parts)


def _relink(md: str, report_dir: Path, target_dir: Path) -> str:
    """Rewrite figure links relative to ``report_dir`` as links relative to ``target_dir``."""
    prefix = os.path.relpath(report_dir, target_dir).replace(os.sep, "/")
    if prefix == ".":
        return md
    return md.replace("](figures/", f"]({prefix}/figures/")


def write_between_markers(path: Path, content: str, section: str = "lab") -> None:
    """Put ``content`` between the ``section``'s markers in ``path`` (appending them if absent),
    leaving everything outside them unchanged."""
    begin, end = markers(section)
    text = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{content.rstrip()}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    atomic_write_bytes(path, text.encode())


def summary_table(report: Report) -> tuple[Sequence[str], list[list[str]]]:
    return ["#", "experiment", "verdict", "runs", "form", "training (min)"], report.summary_rows
