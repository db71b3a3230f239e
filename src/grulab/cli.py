"""The ``grulab`` command. Thin: every subcommand is one library call."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import grulab
    from grulab.engine.dispatch import ENGINES

    print(f"grulab {grulab.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"GRU engines available: {', '.join(sorted(ENGINES))}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from grulab.lab.command import lab_run

    return lab_run("all", quick=True, seeds=args.seeds, out=args.out, settings=args.settings, jobs=args.jobs)


def _cmd_lab(args: argparse.Namespace) -> int:
    from grulab.lab.command import main as lab_main

    return lab_main(args)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from grulab.diagnostics import run_inspect

    result = run_inspect(args.models, cells=args.cells.split(","), task=args.task, T=args.T, batch=args.batch,
                         params=args.params, init=args.init, out=args.out, seed=args.seed)
    print(f"wrote {len(result.figures)} figures and {result.page}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from grulab.train.command import main as train_main

    return train_main(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from grulab.export import ORT_TOLERANCE, export_model_file

    path, diff = export_model_file(args.model, args.onnx, lengths=args.lengths, opset=args.opset,
                                   verify=not args.no_verify)
    print(f"wrote {path}")
    if diff is not None:
        verdict = "ok" if diff <= ORT_TOLERANCE else "MISMATCH"
        print(f"ONNX Runtime vs grulab on a random input: max |diff| = {diff:.2e} ({verdict}, "
              f"tolerance {ORT_TOLERANCE:.0e})")
        return 0 if diff <= ORT_TOLERANCE else 1
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from grulab.bench import BenchConfig, run_bench

    cases = tuple(args.cases.split(",")) if args.cases else BenchConfig.cases
    cfg = BenchConfig(quick=args.quick, repeats=args.repeats, cases=cases, out_dir=args.out, threads=args.threads,
                      settle=args.settle)
    run_bench(cfg, update_readme_path=args.update_readme)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grulab", description="Gated Recurrent Units: library and lab.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions and available engines")
    p.set_defaults(func=_cmd_info)
    from grulab.lab.command import add_arguments as add_lab_arguments
    from grulab.lab.command import add_run_arguments as add_lab_run_arguments

    p = sub.add_parser("demo", help="every lab experiment in quick form (= grulab lab run all --quick)")
    add_lab_run_arguments(p)
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("lab", help="experiments that put the seed's claims to the test: list, run, report")
    add_lab_arguments(p)
    p.set_defaults(func=_cmd_lab)
    p = sub.add_parser("inspect", help="gates, gradient flow, saturation and memory horizons of models, as a page")
    p.add_argument("models", nargs="*", help="saved model files (grulab.io); none: fresh models of --cells")
    p.add_argument("--cells", default="rnn,gru,lstm", help="cells to initialise when no model file is given")
    p.add_argument("--task", default="auto", choices=["auto", "adding", "copy", "random"], help="input data")
    p.add_argument("--T", type=int, default=100, help="sequence length (copy: the delay)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--params", type=int, default=5000, help="matched parameter count of fresh models")
    p.add_argument("--init", default="pytorch", choices=["pytorch", "orthogonal", "chrono"])
    p.add_argument("--out", default="inspect", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_inspect)
    from grulab.train.command import add_arguments as add_train_arguments

    p = sub.add_parser("train", help="train RNN/GRU/LSTM on real data (music, text, digits, time series); "
                       "works under torchrun")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("bench", help="time grulab against torch.nn.GRU and ONNX Runtime in one process")
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run of every case (seconds)")
    p.add_argument("--repeats", type=int, default=15, help="alternating timed rounds per case")
    p.add_argument("--cases", default="", help="comma-separated subset of streaming,latency,inference,training,mingru")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON and Markdown results")
    p.add_argument("--threads", type=int, default=None, help="threads for every contestant (default: torch's)")
    p.add_argument("--settle", type=float, default=0.1,
                   help="seconds of idle before each call, so no contestant's spinning pool takes a core from the "
                        "next (ONNX Runtime's spins for 20-40 ms after a run)")
    p.add_argument("--update-readme", metavar="README", default=None,
                   help="replace the README's bench section with the new table")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("export", help="export a grulab model file (GRU or SequenceModel) to ONNX")
    p.add_argument("model", help="a model file written by grulab.io.save (.safetensors)")
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument("--lengths", action="store_true", help="add an int64 lengths (B,) input for padded batches")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 14)")
    p.add_argument("--no-verify", action="store_true", help="skip the check against ONNX Runtime")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
