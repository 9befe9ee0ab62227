"""``mnist-challenge report ROOT...``: the results table of every run directory under the roots."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="results table (markdown) of every run directory under the ROOTs")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="e.g. logs/runs logs/submission")
    p.add_argument(
        "--update-readme", metavar="README", default=None, help="write the table between the README's results markers"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.runs.report import results_table, update_readme

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
