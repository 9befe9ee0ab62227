"""``python -m mnist_challenge {inspect,train,check,report}``: thin argparse over the library.

Exit codes (``errors.py``): 0 success / PASS, 1 FAIL verdict, 2 bad input (one ``error: ...`` line),
3 internal error (one line; traceback in a log file), 130 interrupted. No traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    InternalError,
    UserError,
    environment_fault,
    install_stop_handlers,
    record_internal_error,
    restore_stop_handlers,
    set_crash_log,
    stopping,
)
from .validate import check_name, check_writable_dir, float_flag, int_flag, name_flag, positive_int, seed_flag


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (it normally prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def run_cli(build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    """Parse, dispatch to ``args.handler`` and apply the exit-code contract (see ``errors.py``)."""
    set_crash_log(None)  # the handler names its run's log once it has one
    previous = install_stop_handlers()
    try:
        args = build().parse_args(argv)
        return args.handler(args) or 0
    except Exception as exc:
        if not stopping():
            return _report_failure(exc)
        # After a stop signal, whatever fails is the stop's doing: a library may have swallowed the
        # KeyboardInterrupt half-way through an import and left a half-made module behind.
        record_internal_error(exc)  # kept in the log for whoever wonders, not reported as a bug
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        restore_stop_handlers(previous)


def _report_failure(exc: Exception) -> int:
    """The exit-code contract for an exception that ended a command: its one line, and its exit code."""
    if isinstance(exc, UserError):
        message, code = f"error: {exc}", EXIT_BAD_INPUT
    elif isinstance(exc, InternalError):
        message, code = f"internal error: {exc}", EXIT_INTERNAL
    elif isinstance(exc, RecursionError):  # only input can nest this deep (a JSON file, a model's forward)
        message, code = "error: the input is nested too deeply to process", EXIT_BAD_INPUT
    elif isinstance(exc, MemoryError):
        message, code = "error: out of memory; use a smaller model, input or batch", EXIT_BAD_INPUT
    elif (fault := environment_fault(exc, getattr(exc, "filename", None) or "a file")) is not None:
        message, code = f"error: {fault}", EXIT_BAD_INPUT  # the machine, not the kit: a full disk, a permission
    else:
        message, code = record_internal_error(exc), EXIT_INTERNAL  # a bug: one line, the traceback in the log
    print(message, file=sys.stderr)
    return code


# --- inspect -----------------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspector import format_report, inspect_module, torchsummary_table
    from .loading import module_from_factory, torchvision_model
    from .model import build_model
    from .spec import load_spec

    given = next(flag for flag in ("spec", "module", "torchvision") if getattr(args, flag) is not None)
    if not getattr(args, given).strip():
        raise UserError(f"--{given} is empty: give a {'spec file or preset name' if given == 'spec' else 'name'}")
    if args.spec is not None:
        spec = load_spec(args.spec)
        model = build_model(spec)
        default_size = (spec.in_channels, spec.input_size, spec.input_size)
    elif args.module is not None:
        model, default_size = module_from_factory(args.module), (1, 28, 28)
    else:
        model, default_size = torchvision_model(args.torchvision), (3, 224, 224)
    input_size = tuple(args.input_size) if args.input_size else default_size
    if args.spec is None:  # the user's (or torchvision's) forward: what it raises is about that model or the input size
        run_forward(model, input_size)
    try:
        report = inspect_module(model, input_size)
    except RuntimeError as exc:  # e.g. an input too small for the model's pooling
        raise UserError(f"the model cannot run on input size {input_size}: {first_line(exc)}") from None
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    if args.spec is not None:
        print(torchsummary_table(model, input_size))
    print(format_report(report))
    return 0


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def run_forward(model, input_size: tuple[int, ...]) -> None:
    """One plain forward pass of a user's model; an exception from it is a ``UserError``."""
    import torch

    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    except Exception as exc:
        raise UserError(f"the model's forward fails on input size {input_size}: {first_line(exc)}") from None


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="receptive field, parameters and MACs of a spec or any nn.Module")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="spec JSON file, or a preset name (classic, compact, tiny)")
    source.add_argument("--module", help="FILE.py:Factory or package.module:Factory returning an nn.Module")
    source.add_argument(
        "--torchvision", metavar="NAME", help="a torchvision model name, e.g. resnet18 (random weights)"
    )
    p.add_argument(
        "--input-size",
        nargs=3,
        type=int_flag(1, 1024),
        metavar=("C", "H", "W"),
        help="input shape without batch (default: the spec's, 1 28 28 for --module, 3 224 224 for --torchvision)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(handler=cmd_inspect)


# --- train ---------------------------------------------------------------------------------------------
def add_train_config_flags(p: argparse.ArgumentParser, epochs_default: int = 15) -> None:
    """Flags for every TrainConfig field; shared by ``train`` and the search's ``reproduce``."""
    from .train import MAX_EPOCHS, OPTIMIZERS, SCHEDULES

    p.add_argument(
        "--epochs", type=int_flag(1, MAX_EPOCHS), default=epochs_default, help=f"epochs (default {epochs_default})"
    )
    p.add_argument("--batch-size", type=int_flag(2, 60_000), default=128)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--lr", type=float_flag(0, 10, lo_open=True), default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--momentum", type=float_flag(0, 1, hi_open=True), default=0.9)
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    p.add_argument("--weight-decay", type=float_flag(0, 1), default=1e-4)
    p.add_argument("--schedule", choices=SCHEDULES, default="onecycle")
    p.add_argument("--step-size", type=int_flag(1, MAX_EPOCHS), default=6, help="StepLR epochs between decays")
    p.add_argument("--gamma", type=float_flag(0, 1, lo_open=True), default=0.1, help="StepLR decay factor")
    p.add_argument("--label-smoothing", type=float_flag(0, 1, hi_open=True), default=0.0)
    p.add_argument("--rotation", type=float_flag(0, 180), default=7.0, help="max random rotation in degrees (0: off)")
    p.add_argument("--translate", type=float_flag(0, 1), default=0.0, help="max random shift, fraction of the side")
    p.add_argument("--scale", type=float_flag(0, 1, hi_open=True), default=0.0, help="random zoom range +/-")
    p.add_argument("--shear", type=float_flag(0, 60), default=0.0, help="max random shear in degrees")
    p.add_argument("--seed", type=seed_flag, default=1)
    p.add_argument(
        "--val-size",
        type=int_flag(0, 59_998),
        default=10_000,
        help="validation images held out of the 60k (0: train on all)",
    )
    p.add_argument("--split-seed", type=seed_flag, default=0, help="which images are held out")
    p.add_argument("--train-subset", type=int_flag(2, 60_000), default=None, help="train on only this many images")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--bf16", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: where the hardware has it)"
    )
    p.add_argument(
        "--channels-last",
        dest="channels_last",
        action="store_const",
        const=True,
        default="auto",
        help="NHWC activations (default auto: on for CPU, off for GPU)",
    )
    p.add_argument(
        "--no-channels-last", dest="channels_last", action="store_const", const=False, help="NCHW activations"
    )
    p.add_argument(
        "--no-pooled-dropout", dest="pooled_dropout", action="store_false", help="plain nn.Dropout (bernoulli_ masks)"
    )
    p.add_argument("--no-fast-maxpool", dest="fast_maxpool", action="store_false", help="plain nn.MaxPool2d")
    p.add_argument(
        "--no-fused-tail",
        dest="fused_tail",
        action="store_false",
        help="plain ReLU/BatchNorm/dropout layers instead of the fused C kernel",
    )
    p.add_argument(
        "--no-cl-weight-grad",
        dest="cl_weight_grad",
        action="store_false",
        help="conv weight gradients in NCHW everywhere",
    )
    p.add_argument(
        "--no-fold-bn-eval",
        dest="fold_bn_eval",
        action="store_false",
        help="evaluate the model as trained, BatchNorm not folded into the convs",
    )
    p.add_argument(
        "--ema-decay",
        type=float_flag(0, 1, hi_open=True),
        default=0.999,
        help="exponential moving average of the weights, evaluated and saved as the model (default 0.999)",
    )
    p.add_argument(
        "--no-ema", dest="ema_decay", action="store_const", const=0.0, help="evaluate and save the last step's weights"
    )
    p.add_argument("--threads", type=int_flag(1, 1024), default=None, help="torch intra-op threads")
    add_data_flags(p)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", default=None, help="directory of MNIST IDX files (default: $MNIST_DATA_DIR, else ./data/mnist)"
    )
    p.add_argument("--download", action="store_true", help="download MNIST with torchvision if the files are missing")


def train_config_from_args(args: argparse.Namespace):
    import dataclasses

    from .train import TrainConfig

    return TrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    )


def cmd_train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .experiment import load_data, require_mnist_shape, run_experiment
    from .runlog import check_new_run_dir
    from .spec import load_spec
    from .train import resolve_device

    # Everything is checked before the data is loaded or a file is written.
    spec = load_spec(args.spec)
    require_mnist_shape(spec)
    cfg = train_config_from_args(args)
    resolve_device(cfg.device)
    name = args.name or check_name(f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}", "the run name (spec name + time)")
    run_dir = check_new_run_dir(Path(check_writable_dir(args.out, "--out")) / name)
    data = load_data(cfg, args.data_dir, allow_download=args.download)
    print(f"run directory: {run_dir}")
    set_crash_log(run_dir / "train.log")
    run_experiment(spec, cfg, run_dir, data=data, data_dir=args.data_dir)
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a spec on MNIST and write a full run directory")
    p.add_argument("--spec", required=True, help="spec JSON file, or a preset name (classic, compact, tiny)")
    p.add_argument("--out", default="logs/runs", help="parent directory of the run directory (default logs/runs)")
    p.add_argument("--name", type=name_flag, default=None, help="run directory name (default: <spec name>-<timestamp>)")
    add_train_config_flags(p)
    p.set_defaults(handler=cmd_train)


# --- check ---------------------------------------------------------------------------------------------
def add_limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-params", type=positive_int, default=20_000, help="parameters must be fewer than this")
    p.add_argument("--max-epochs", type=positive_int, default=19, help="at most this many epochs")
    p.add_argument(
        "--min-acc",
        type=float_flag(0, 100),
        default=99.4,
        help="test accuracy (%%) needed in each of the last k epochs",
    )
    p.add_argument("--last-k", type=positive_int, default=3)


def limits_from_args(args: argparse.Namespace):
    from .checker import Limits

    return Limits(args.max_params, args.max_epochs, args.min_acc, args.last_k)


def cmd_check(args: argparse.Namespace) -> int:
    from .checker import check_run

    verdict = check_run(args.run_dir, limits_from_args(args))
    print(verdict.format())
    return 0 if verdict.passed else 1


def add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="judge a run directory against the assignment's rules (exit 0 pass, 1 fail)")
    p.add_argument("run_dir")
    add_limit_flags(p)
    p.set_defaults(handler=cmd_check)


# --- report --------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from .report import results_table, update_readme

    table = results_table(args.roots)
    if args.update_readme:
        update_readme(
            args.update_readme,
            table,
            f"python -m mnist_challenge report {' '.join(args.roots)} --update-readme {args.update_readme}",
        )
        print(f"updated the results table in {args.update_readme}")
    else:
        print(table)
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="results table (markdown) of every run directory under the ROOTs")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="e.g. logs/runs logs/submission")
    p.add_argument(
        "--update-readme", metavar="README", default=None, help="write the table between the README's results markers"
    )
    p.set_defaults(handler=cmd_report)


# --- export-notebook -----------------------------------------------------------------------------------
def cmd_export_notebook(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from .checker import Limits
    from .data import load_raw, resolve_data_dir
    from .notebook import SMOKE_ENV, execute_notebook, export_notebook, read_run

    spec, _ = read_run(args.run_dir)
    out = Path(args.out or f"submission_{spec.name}.ipynb")
    if out.suffix != ".ipynb":
        raise UserError(f"-o {out}: a notebook file name ends in .ipynb")
    if out.is_dir():
        raise UserError(f"-o {out} is a folder; give the notebook's file name")
    if not out.resolve().parent.is_dir():
        raise UserError(f"-o {out}: the folder {out.resolve().parent} does not exist; create it first")
    check_writable_dir(out.resolve().parent, "-o folder")
    limits = Limits(args.max_params, args.max_epochs, args.min_acc, args.last_k)
    if args.execute:
        load_raw(args.data_dir, allow_download=args.download)  # fail on missing data before writing anything
    nb = export_notebook(args.run_dir, out, limits)
    print(f"wrote {out}")
    if args.execute:
        smoke = os.environ.get(SMOKE_ENV) == "1"
        what = f"{SMOKE_ENV}=1: one epoch on 2,000 images" if smoke else "every epoch on all 60,000 training images"
        print(f"executing it ({what}) ...", flush=True)
        execute_notebook(nb, out, resolve_data_dir(args.data_dir), args.threads)
        verdict = [line for line in _outputs_text(nb).splitlines() if line.startswith("VERDICT:")]
        print(f"executed {out}: {verdict[-1] if verdict else 'no verdict printed'}")
    return 0


def _outputs_text(nb) -> str:
    return "\n".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )


def add_export_notebook(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-notebook",
        help="a self-contained submission notebook (plain PyTorch, no kit import) for a run's spec and recipe",
    )
    p.add_argument("run_dir", help="a run directory (spec.json and config.json)")
    p.add_argument("-o", "--out", default=None, help="notebook file (default submission_<spec name>.ipynb)")
    p.add_argument(
        "--execute", action="store_true", help="also run it here (nbclient) and save it with its outputs and logs"
    )
    p.add_argument(
        "--threads", type=int_flag(1, 1024), default=None, help="with --execute: torch threads in the kernel"
    )
    add_limit_flags(p)
    add_data_flags(p)
    p.set_defaults(handler=cmd_export_notebook)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m mnist_challenge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_inspect(sub)
    add_train(sub)
    add_check(sub)
    add_report(sub)
    add_export_notebook(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, argv)
