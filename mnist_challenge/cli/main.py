"""``mnist-challenge`` (``python -m mnist_challenge``): inspect, train, check, check-notebook, report, export-notebook.

Each command is one module of this package with ``add(subparsers)`` and ``run(args)``; the exit codes are
the contract in ``mnist_challenge.common.contract``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnist_challenge.cli import check, check_notebook, export_notebook, inspect, report, train
from mnist_challenge.common.contract import Parser, run_cli

COMMANDS = (inspect, train, check, check_notebook, report, export_notebook)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mnist-challenge", description="MNIST challenge kit: " + __doc__.split(": ", 1)[1].split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, argv)
