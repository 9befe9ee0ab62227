"""``mnist-search digest``: what a staged search learned, from its own files (also written to digest.json)."""

from __future__ import annotations

import argparse

from mnist_challenge.common.contract import Parser

from .flags import add_study_flags, open_named_study


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mnist-search digest",
        description="what a staged search learned: time per stage, screen-vs-full rank correlation, "
        "importances, the winner's shape (also written to digest.json)",
    )
    add_study_flags(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..digest import digest, format_digest

    study, _, folder = open_named_study(args)
    print(format_digest(digest(folder, study.user_attrs.get("stages"))))
    return 0
