"""``mnist-search winner-rules``: which winner rule would have picked a design that passes on every seed, in each
committed staged study (``search.winner_rule``); also written to ``winner_rules.json`` under ``--logs``."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_challenge.common.contract import Parser


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mnist-search winner-rules",
        description="re-analyse the staged studies: each candidate winner rule's pick (validation only) and how "
        "its held-out test runs fared",
    )
    p.add_argument("--logs", default="logs/search", help="the folder of the studies (default logs/search)")
    p.add_argument(
        "--apply",
        action="store_true",
        help="also name each finished staged study's winner by the adopted rule and rewrite its summary.json, "
        "best_spec.json and digest.json (nothing is trained)",
    )
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.common.errors import UserError

    from ..winner_rule import analyse, format_analysis, reapply, write_analysis

    logs = Path(args.logs)
    if not logs.is_dir():
        raise UserError(f"--logs {args.logs}: not a folder of studies")
    result = analyse(logs)
    if not result["studies"]:
        raise UserError(f"--logs {args.logs}: no staged study with confirmed designs in it")
    print(format_analysis(result))
    write_analysis(result, logs / "winner_rules.json")
    print(f"wrote {logs / 'winner_rules.json'}")
    if args.apply:
        for study_dir in sorted(p for p in logs.glob("budget-*") if (p / "study.db").is_file()):
            old, new = reapply(study_dir)
            if new is not None:
                print(f"{study_dir.name}: winner trial {new}" + ("" if new == old else f" (was trial {old})"))
    return 0
