"""``grulab train``: flags and TOML config files onto :mod:`grulab.train.run`.

Every field of :class:`~grulab.train.config.RunConfig` and
:class:`~grulab.train.config.TrainConfig` is a flag (``--batch-size``, ``--weight-noise``...;
``none`` for an optional value). Settings are taken, later ones winning, from the defaults, a
``--preset``, a ``--config`` TOML file (top-level keys for the run, a ``[train]`` table for
training) and the flags. An unknown key anywhere is an error.

Under ``torchrun --nproc_per_node=N -m grulab train ...`` the process group is initialised from
the environment (gloo on CPU, nccl with ``--device cuda``) and the global batch is shared by the
processes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from grulab.train.config import RunConfig, TrainConfig, field_types

# Chung et al. 2014's protocol for the polyphonic music benchmark (section 4.2 of the paper):
# RMSProp, gradient-norm clipping at 1, weight noise of std 0.075, early stopping on valid,
# ~20k parameters. Learning rate, batch size and budget are ours (they are not reported there).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "chung2014": {
        "run": {"params": 20_000, "num_layers": 1, "batch_size": 16},
        "train": {"optimizer": "rmsprop", "lr": 1e-3, "clip": 1.0, "weight_noise": 0.075, "steps": 5000,
                  "eval_every": 50, "patience": 20, "log_every": 10, "checkpoint_every": 500, "threads": 1},
    },
}


def _parse_value(kind: type, optional: bool, name: str):  # noqa: ANN202 (argparse type callable)
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null", "off"):
            return None
        try:
            return kind(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')} needs a {kind.__name__}, got {text!r}") from e

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``grulab train`` flags."""
    parser.add_argument("--config", help="a TOML file: run keys at the top level, training keys under [train]")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named protocol (chung2014: Chung et al.'s)")
    parser.add_argument("--out", default=None, help="run directory (grid: its parent folder); default runs/<data>")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--cells", help="comma-separated cells to compare at a matched parameter count (a grid)")
    parser.add_argument("--seeds", help="comma-separated seeds (a grid)")
    parser.add_argument("--summarize", metavar="DIR", help="only summarise the finished runs under DIR")
    parser.add_argument("--results-md", metavar="FILE", help="also put the summary into FILE between the "
                        "real-data markers (e.g. docs/results.md)")
    for group, cls in (("run", RunConfig), ("training", TrainConfig)):
        g = parser.add_argument_group(f"{group} settings")
        for name, (kind, optional) in field_types(cls).items():
            flag = "--" + name.replace("_", "-")
            if kind is bool:
                g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
            else:
                g.add_argument(flag, dest=name, type=_parse_value(kind, optional, name), default=argparse.SUPPRESS,
                               metavar=kind.__name__.upper() + ("|none" if optional else ""))


def load_toml(path: str) -> dict[str, dict[str, Any]]:
    """``{"run": {...}, "train": {...}}`` from a TOML file; unknown keys fail when the configs are built."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    with open(path, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from e
    train = doc.pop("train", {})
    if not isinstance(train, dict):
        raise ValueError(f"{path}: 'train' must be a table ([train])")
    return {"run": doc, "train": train}


def resolve_configs(args: argparse.Namespace) -> tuple[RunConfig, TrainConfig]:
    """Defaults < preset < config file < flags, checked (unknown keys and bad types fail)."""
    run: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for layer in (PRESETS.get(args.preset or "", {}), load_toml(args.config) if args.config else {}):
        run.update(layer.get("run", {}))
        train.update(layer.get("train", {}))
    run_fields, train_fields = field_types(RunConfig), field_types(TrainConfig)
    for name, value in vars(args).items():
        if name in run_fields:
            run[name] = value
        elif name in train_fields:
            train[name] = value
    return RunConfig.from_dict(run), TrainConfig.from_dict(train)


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise ValueError(f"--{name} takes comma-separated integers, got {text!r}") from e


def main(args: argparse.Namespace) -> int:
    """Run ``grulab train`` with parsed ``args``; returns the exit status (2 for a usage error,
    reported in one line rather than a traceback)."""
    try:
        return _main(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"grulab train: error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from grulab.train.distributed import dist_info, init_from_env, shutdown
    from grulab.train.report import insert_results_section, summarize, summary_markdown, write_summary
    from grulab.train.run import train_grid, train_run

    console = Console()
    command = "grulab " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    if args.summarize:
        summary = summarize(args.summarize)
        md = write_summary(args.summarize, summary, command)
        if args.results_md:
            insert_results_section(args.results_md, summary_markdown(summary, command))
        console.print(md.read_text())
        return 0
    run, cfg = resolve_configs(args)
    info = init_from_env(cfg.device)
    try:
        out = args.out or f"runs/{run.data}"
        if args.cells or args.seeds:
            cells = args.cells.split(",") if args.cells else [run.cell]
            seeds = _int_list(args.seeds, "seeds") if args.seeds else [cfg.seed]
            summary = train_grid(run, cfg, cells, seeds, out, resume=True)
            if info.is_main:
                md = write_summary(out, summary, command)
                if args.results_md:
                    insert_results_section(args.results_md, summary_markdown(summary, command))
                console.print(md.read_text())
            return 0
        result = train_run(run, cfg, out, resume=args.resume)
        if dist_info().is_main:
            _print_run(console, result.results, out)
        return 0
    finally:
        shutdown()


def _print_run(console: Any, results: dict[str, Any], out: str) -> None:
    from rich.table import Table

    table = Table(title=f"{results['cell']} on {results['data']}: {results['parameters']:,} parameters "
                        f"(hidden {results['hidden']}), best step {results['best_step']} of {results['steps']}"
                        + (" (stopped early)" if results["stopped_early"] else ""))
    table.add_column("model")
    keys = [*results["valid"], *results["test"]]
    for k in keys:
        table.add_column(k, justify="right")
    scores = {**results["valid"], **results["test"]}
    table.add_row("trained", *(f"{scores[k]:.4f}" for k in keys))
    for name, base in results["baselines"].items():
        table.add_row(f"{name} (baseline)", *(f"{base[k]:.4f}" if k in base else "" for k in keys))
    console.print(table)
    console.print(f"{results['seconds']:.1f} s of training; files in {out}/ (metrics.csv, loss_curve.png, "
                  f"model.safetensors, results.json)")
