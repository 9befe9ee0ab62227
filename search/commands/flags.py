"""Flags more than one search command takes: where a study lives."""

from __future__ import annotations

import argparse

from mnist_challenge.common.validate import short_name_flag

from ..plan import DEFAULT_STUDY, STUDY_NAME_MAX, storage_url, study_dir


def add_study_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--study",
        type=short_name_flag(STUDY_NAME_MAX),
        default=None,
        help=f"study name, also its folder under --logs (default {DEFAULT_STUDY}; with --budget B: budget-B)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default sqlite:///logs/search/<study>/study.db); "
        "postgresql://... to share one study between machines",
    )
    p.add_argument("--logs", default="logs/search", help="parent of the study's output directory (default logs/search)")


def open_named_study(args: argparse.Namespace):
    """The study ``--study`` names (default the plain search's), its folder and its storage; one error line
    if the storage has no such study."""
    from ..storage import open_existing_study

    name = args.study or DEFAULT_STUDY
    folder = study_dir(args.logs, name)
    return open_existing_study(storage_url(args.storage, folder), name), name, folder
