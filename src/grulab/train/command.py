"""``grulab train``: flags and TOML config files onto :mod:`grulab.train.run`.

Every field of :class:`~grulab.train.config.RunConfig` and
:class:`~grulab.train.config.TrainConfig` is a flag (``--batch-size``, ``--weight-noise``...;
``none`` for an optional value). Settings are taken, later ones winning, from the defaults, a
preset (``--preset``, else the data set's default protocol), a ``--config`` TOML file (top-level
keys for the run, a ``[train]`` table for training) and the flags. An unknown key anywhere is an
error.

Under ``torchrun --nproc_per_node=N -m grulab train ...`` the process group is initialised from
the environment (gloo on CPU, nccl with ``--device cuda``) and the global batch is shared by the
processes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grulab.io import atomic_write_bytes
from grulab.train.config import RunConfig, TrainConfig, field_types
from grulab.train.presets import DEFAULT_PRESET, PRESETS, preset_for


def _parse_value(kind: type, optional: bool, name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null", "off"):
            return None
        try:
            return kind(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')} needs a {kind.__name__}, got {text!r}") from e

    return parse


def field_help(cls: type) -> dict[str, str]:
    """Each field's description from the ``Args:`` section of ``cls``'s docstring (one entry may
    describe several fields: ``num_layers, dropout: ...``), so the flags' help is the documentation."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    if "Args:" not in doc:
        return {}
    entries: list[tuple[list[str], list[str]]] = []
    for line in doc.split("Args:", 1)[1].splitlines():
        head, sep, text = line.strip().partition(": ")
        if line.startswith("    ") and not line.startswith("     ") and sep:
            entries.append(([n.strip() for n in head.split(",")], [text]))
        elif line.strip() and entries:
            entries[-1][1].append(line.strip())
    plain = lambda words: re.sub(r":\w+:`([^`]+)`", r"\1", " ".join(words)).replace("``", "").replace("%", "%%")
    return {name: plain(words) for names, words in entries for name in names}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``grulab train`` flags."""
    parser.add_argument("--config", help="a TOML file: run keys at the top level, training keys under [train]")
    parser.add_argument("--preset", choices=[*sorted(PRESETS), "none"],
                        help="a named protocol (chung2014: Chung et al.'s for music; digits, text, forecast: grulab's "
                        "budgets; see grulab.train.presets). Default: the data set's own; none: bare defaults")
    parser.add_argument("--out", default=None, help="run directory (grid: its parent folder); default runs/<data>")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--cells", help="comma-separated cells to compare at a matched parameter count (a grid)")
    parser.add_argument("--seeds", help="comma-separated seeds (a grid)")
    parser.add_argument("--summarize", metavar="DIR", help="only summarise the finished runs under DIR")
    parser.add_argument("--results-md", metavar="FILE", help="also put the summary into FILE between the "
                        "real-data markers (e.g. docs/results.md)")
    for group, cls in (("run", RunConfig), ("training", TrainConfig)):
        g = parser.add_argument_group(f"{group} settings")
        helps = field_help(cls)
        for name, (kind, optional) in field_types(cls).items():
            flag = "--" + name.replace("_", "-")
            default = getattr(cls, name, None)
            text = f"{helps.get(name, '')} (default: {default})".strip()
            if kind is bool:
                g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
            else:
                g.add_argument(flag, dest=name, type=_parse_value(kind, optional, name), default=argparse.SUPPRESS,
                               metavar=kind.__name__.upper() + ("|none" if optional else ""), help=text)


def load_toml(path: str) -> dict[str, dict[str, Any]]:
    """``{"run": {...}, "train": {...}}`` from a TOML file; unknown keys fail when the configs are built."""
    try:
        import tomllib
    except ModuleNotFoundError as e:  # Python 3.10 has no TOML reader in its standard library
        raise ValueError("--config TOML files need Python 3.11 or newer (tomllib); use flags instead") from e

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
    """Defaults < preset < config file < flags, checked (unknown keys and bad types fail).

    Without ``--preset`` the data set's default protocol applies (:func:`preset_for`: Chung et
    al.'s for music); ``--preset none`` uses the bare defaults.
    """
    file = load_toml(args.config) if args.config else {}
    run_fields, train_fields = field_types(RunConfig), field_types(TrainConfig)
    flags_run = {k: v for k, v in vars(args).items() if k in run_fields}
    flags_train = {k: v for k, v in vars(args).items() if k in train_fields}
    data = flags_run.get("data", file.get("run", {}).get("data", RunConfig.data))
    if args.preset == "none":
        preset: dict[str, dict[str, Any]] = {}
    elif args.preset:
        preset = PRESETS[args.preset]
    else:
        preset = preset_for(data) if data in DEFAULT_PRESET else {}
    run: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for layer in (preset, file, {"run": flags_run, "train": flags_train}):
        run.update(layer.get("run", {}))
        train.update(layer.get("train", {}))
    return RunConfig.from_dict(run), TrainConfig.from_dict(train)


def command_line(args: argparse.Namespace) -> str:
    """The ``grulab train`` command that reproduces ``args`` (the flags that were given)."""
    config_fields = {**field_types(RunConfig), **field_types(TrainConfig)}
    parts = ["grulab", "train"]
    for name, value in vars(args).items():
        flag = "--" + name.replace("_", "-")
        if name in config_fields:  # present only when given (argparse.SUPPRESS)
            if isinstance(value, bool):
                parts.append(flag if value else "--no-" + flag[2:])
            else:
                parts += [flag, shlex.quote("none" if value is None else str(value))]
        elif name not in ("func", "command") and value not in (None, False):
            parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(parts)


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
    from grulab.train.report import GRID_FILE, insert_results_section, summarize, summary_markdown, write_summary
    from grulab.train.run import train_grid, train_run

    console = Console()
    command = command_line(args)
    if args.summarize:
        summary = summarize(args.summarize)
        md = write_summary(args.summarize, summary, command)
        if args.results_md:
            insert_results_section(args.results_md, summary_markdown(summary, command))
        print(md.read_text())
        return 0
    run, cfg = resolve_configs(args)
    info = init_from_env(cfg.device)
    try:
        out = args.out or f"runs/{run.data}"
        if args.cells or args.seeds:
            cells = args.cells.split(",") if args.cells else [run.cell]
            seeds = _int_list(args.seeds, "seeds") if args.seeds else [cfg.seed]
            if info.is_main:  # the summary names the command that trained the runs
                Path(out).mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(Path(out) / GRID_FILE, (json.dumps({"command": command}) + "\n").encode())
            summary = train_grid(run, cfg, cells, seeds, out, resume=True)
            if info.is_main:
                md = write_summary(out, summary, command)
                if args.results_md:
                    insert_results_section(args.results_md, summary_markdown(summary, command))
                print(md.read_text())
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
