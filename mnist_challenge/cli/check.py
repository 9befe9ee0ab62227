"""``mnist-challenge check RUN_DIR``: judge a run directory against the rules (exit 0 PASS, 1 FAIL)."""

from __future__ import annotations

import argparse

from mnist_challenge.cli.flags import add_limit_flags, limits_from_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="judge a run directory against the assignment's rules (exit 0 pass, 1 fail)")
    p.add_argument("run_dir")
    add_limit_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.runs.checker import check_run

    rules, limits = limits_from_args(args)
    verdict = check_run(args.run_dir, limits, rules.requires)
    print(verdict.format())
    return 0 if verdict.passed else 1
