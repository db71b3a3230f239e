"""``grulab lab list | run | report`` (and ``grulab demo``): argument parsing and printing around
:func:`grulab.lab.runner.run_lab` and :func:`grulab.lab.report.build_report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

DEFAULT_OUT = "runs/lab"


def default_out(quick: bool) -> str:
    """Quick and full runs go to different folders, so neither overwrites the other."""
    return DEFAULT_OUT + ("-quick" if quick else "")


def parse_settings(items: list[str] | None) -> dict[str, str]:
    """``["steps=10", "lr=1e-3"]`` -> ``{"steps": "10", "lr": "1e-3"}`` (typed later by the config)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", required=True)
    sub.add_parser("list", help="the experiments, the claim each tests and its settings")
    p = sub.add_parser("run", help="run experiments (finished runs are skipped), then write the report")
    p.add_argument("names", nargs="+", metavar="NAME", help="experiment names (see `grulab lab list`) or 'all'")
    add_run_arguments(p)
    p = sub.add_parser("report", help="one self-contained HTML report and a Markdown summary from a lab folder")
    p.add_argument("dir", help="the lab folder given to `grulab lab run --out`")
    p.add_argument("--report-dir", default=None, help="where to write the report (default DIR/report)")
    p.add_argument("--results-md", default=None,
                   help="also write the Markdown between the markers <!-- SECTION:begin --> and <!-- SECTION:end --> "
                        "of this file (e.g. docs/results.md)")
    p.add_argument("--section", default="lab", help="the marker name for --results-md (default: lab)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the quick form: small budgets, one seed")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: 3 full, 1 quick)")
    p.add_argument("--out", default=None, help=f"lab folder (default {DEFAULT_OUT}, or {DEFAULT_OUT}-quick)")
    p.add_argument("--set", dest="settings", action="append", metavar="KEY=VALUE",
                   help="override a setting of the experiments' configs (repeatable; unknown keys fail)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each")


def lab_list(console: Console | None = None) -> None:
    from grulab.lab import EXPERIMENTS
    from grulab.lab.report import format_settings

    console = console or Console()
    table = RichTable(title="grulab lab experiments")
    for col in ("name", "#", "tests", "runs full / quick", "full-form settings (--set KEY=VALUE)"):
        table.add_column(col, overflow="fold")
    for exp in EXPERIMENTS.values():
        cfg = exp.config()
        settings = format_settings(cfg.to_dict())
        runs = f"{len(exp.runs(cfg))} / {len(exp.runs(exp.config(quick=True)))}"
        table.add_row(exp.name, exp.number, exp.title, runs, settings)
    console.print(table)


def print_summary(report: object, console: Console) -> None:
    table = RichTable(title="grulab lab: verdicts")
    for col in ("#", "experiment", "verdict", "runs", "form", "training (min)"):
        table.add_column(col)
    colours = {"reproduced": "green", "not reproduced": "red", "mixed": "yellow"}
    for row in report.summary_rows:  # type: ignore[attr-defined]
        c = colours.get(row[2], "white")
        table.add_row(*row[:2], f"[{c}]{row[2]}[/{c}]", *row[3:])
    console.print(table)
    console.print(f"report: {Path(report.html).resolve()}")  # type: ignore[attr-defined]
    console.print(f"summary: {Path(report.markdown).resolve()}")  # type: ignore[attr-defined]


def lab_run(names: str | list[str], *, quick: bool, seeds: int | None, out: str | None, settings: list[str] | None,
            jobs: int, console: Console | None = None) -> int:
    """Run the experiments, then build the report and print its verdict table and path."""
    from grulab.lab.report import build_report
    from grulab.lab.runner import run_lab

    console = console or Console()
    folder = out or default_out(quick)
    run_lab([names] if isinstance(names, str) else list(names), folder, quick=quick, seeds=seeds,
            overrides=parse_settings(settings), jobs=jobs, console=console)
    print_summary(build_report(folder), console)
    return 0


def lab_report(folder: str, report_dir: str | None = None, results_md: str | None = None, section: str = "lab",
               console: Console | None = None) -> int:
    from grulab.lab.report import build_report

    print_summary(build_report(folder, report_dir, results_md=results_md, section=section), console or Console())
    return 0


def main(args: argparse.Namespace) -> int:
    if args.lab_command == "list":
        lab_list()
        return 0
    if args.lab_command == "run":
        return lab_run(args.names, quick=args.quick, seeds=args.seeds, out=args.out, settings=args.settings,
                       jobs=args.jobs)
    return lab_report(args.dir, args.report_dir, args.results_md, args.section)
