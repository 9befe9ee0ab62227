"""``python -m mnist_challenge {inspect,train,check,report}``: thin argparse over the library.

Every user mistake ends as one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from typing import Callable, NoReturn, Sequence

from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (it normally prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def run_cli(build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    """Parse, dispatch to ``args.handler`` and turn a ``UserError`` into one line and exit 2."""
    args = build().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# --- inspect -----------------------------------------------------------------------------------------
def torchsummary_table(model, input_size: tuple[int, ...]) -> str:
    """torchsummary's familiar table, captured as text (it prints straight to stdout)."""
    import torchsummary

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        torchsummary.summary(model, input_size, device="cpu")
    return buffer.getvalue()


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspector import format_report, inspect_module
    from .loading import module_from_factory, torchvision_model
    from .model import build_model
    from .spec import load_spec

    if args.spec:
        spec = load_spec(args.spec)
        model = build_model(spec)
        default_size = (spec.in_channels, spec.input_size, spec.input_size)
    elif args.module:
        model, default_size = module_from_factory(args.module), (1, 28, 28)
    else:
        model, default_size = torchvision_model(args.torchvision), (3, 224, 224)
    input_size = tuple(args.input_size) if args.input_size else default_size
    try:
        report = inspect_module(model, input_size)
    except RuntimeError as exc:  # e.g. an input too small for the model's pooling
        raise UserError(f"the model cannot run on input size {input_size}: {str(exc).splitlines()[0]}") from None
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    if args.spec:
        print(torchsummary_table(model, input_size))
    print(format_report(report))
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="receptive field, parameters and MACs of a spec or any nn.Module")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="spec JSON file, or a preset name (classic, compact)")
    source.add_argument("--module", help="FILE.py:Factory or package.module:Factory returning an nn.Module")
    source.add_argument("--torchvision", metavar="NAME", help="a torchvision model name, e.g. resnet18 (random weights)")
    p.add_argument("--input-size", nargs=3, type=positive_int, metavar=("C", "H", "W"), help="input shape without batch (default: the spec's, 1 28 28 for --module, 3 224 224 for --torchvision)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(handler=cmd_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m mnist_challenge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_inspect(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, argv)
