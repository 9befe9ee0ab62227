"""``mnist-challenge inspect``: receptive field, parameters and MACs of a spec, a user's module or a torchvision
model."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from mnist_challenge.common.errors import UserError
from mnist_challenge.common.validate import int_flag


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="receptive field, parameters and MACs of a spec or any nn.Module")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="spec JSON file, or a preset name (classic, compact, tiny)")
    source.add_argument("--module", help="FILE.py:Factory or package.module:Factory returning an nn.Module")
    source.add_argument(
        "--torchvision", metavar="NAME", help="a torchvision model name, e.g. resnet18 (random weights)"
    )
    source.add_argument(
        "--notebook",
        metavar="FILE.ipynb[:NAME]",
        help="the model a notebook defines (only its imports, classes, functions and constants run, in a "
        "subprocess); NAME picks a class or variable, default: the model the notebook trains",
    )
    p.add_argument(
        "--input-size",
        nargs=3,
        type=int_flag(1, 1024),
        metavar=("C", "H", "W"),
        help="input shape without batch (default: the spec's, 1 28 28 for --module, 3 224 224 for --torchvision)",
    )
    p.add_argument(
        "--output",
        metavar="KEY",
        help="for a model that returns a dict or a tuple: the key or index whose RF to report (default: the first)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(handler=run)


def load_model(args: argparse.Namespace):
    """The model the flags name and the input size to inspect it at; a user's or torchvision's model has run
    one forward pass (what it raises is about that model or the input size)."""
    from mnist_challenge.architecture.loading import module_from_factory, run_forward, torchvision_model
    from mnist_challenge.architecture.model import build_model
    from mnist_challenge.architecture.spec import load_spec

    if args.spec is not None:
        spec = load_spec(args.spec)
        default_size = (spec.in_channels, spec.input_size, spec.input_size)
        return build_model(spec), tuple(args.input_size) if args.input_size else default_size
    if args.module is not None:
        model, default_size = module_from_factory(args.module), (1, 28, 28)
    else:
        model, default_size = torchvision_model(args.torchvision), (3, 224, 224)
    input_size = tuple(args.input_size) if args.input_size else default_size
    run_forward(model, input_size)
    return model, input_size


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.architecture.inspector import format_report, inspect_module, torchsummary_table
    from mnist_challenge.architecture.loading import first_line

    given = next(flag for flag in ("spec", "module", "torchvision", "notebook") if getattr(args, flag) is not None)
    if not getattr(args, given).strip():
        raise UserError(f"--{given} is empty: give a {'spec file or preset name' if given == 'spec' else 'name'}")
    if args.notebook is not None:
        return run_notebook(args)
    with contextlib.redirect_stdout(sys.stderr):  # what the model prints must not mix with the report (--json)
        model, input_size = load_model(args)
        try:
            report = inspect_module(model, input_size, args.output)
        except ValueError as exc:  # a scripted module, an --output the model does not have
            raise UserError(str(exc)) from None
        except RuntimeError as exc:  # e.g. an input too small for the model's pooling
            raise UserError(f"the model cannot run on input size {input_size}: {first_line(exc)}") from None
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    if args.spec is not None:
        print(torchsummary_table(model, input_size))
    print(format_report(report))
    return 0


def run_notebook(args: argparse.Namespace) -> int:
    """``--notebook``: the report of the model the notebook defines, as ``--module`` prints it."""
    from mnist_challenge.grading.build import notebook_model

    size = tuple(args.input_size) if args.input_size else (1, 28, 28)
    built = notebook_model(args.notebook, size, output_choice=args.output)
    print(f"note: {built.notebook.path}: the model is {built.source.chosen}", file=sys.stderr)
    print(json.dumps(built.report, indent=2) if args.json else built.text)
    return 0
