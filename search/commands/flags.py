"""Flags more than one search command takes: where a study lives."""

from __future__ import annotations

import argparse

from mnist_challenge.common.validate import int_flag, short_name_flag

from ..plan import DEFAULT_STUDY, STUDY_NAME_MAX, storage_url, study_dir


def add_study_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--study",
        type=short_name_flag(STUDY_NAME_MAX),
        default=None,
        help=f"study name, also its folder under --logs (default budget-B for --budget B, so {DEFAULT_STUDY} "
        "without one; single-stage with --single-stage)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default sqlite:///logs/search/<study>/study.db); "
        "postgresql://... to share one study between machines",
    )
    p.add_argument("--logs", default="logs/search", help="parent of the study's output directory (default logs/search)")


def open_named_study(args: argparse.Namespace):
    """The study ``--study`` names (default the main job's, ``budget-assignment``), its folder and its storage;
    one error line if the storage has no such study."""
    from ..storage import open_existing_study

    name = args.study or DEFAULT_STUDY
    folder = study_dir(args.logs, name)
    return open_existing_study(storage_url(args.storage, folder), name), name, folder


def add_trial_flags(p: argparse.ArgumentParser) -> None:
    """Which trial of the study a command retrains, on how many epochs and images (reproduce, ablate)."""
    p.add_argument("--trial", type=int_flag(0), default=None, help="a trial number instead of the best")
    p.add_argument("--epochs", type=int_flag(1, 1000), default=None, help="epochs (default: the study's)")
    p.add_argument(
        "--train-subset", type=int_flag(2, 60_000), default=None, help="train on only this many images (smoke tests)"
    )


def open_named_trial(args: argparse.Namespace):
    """``open_named_study``, and the trial ``--trial`` names (default the study's best)."""
    from ..reproduce import choose_trial

    study, name, folder = open_named_study(args)
    return study, name, folder, choose_trial(study, name, args.trial)
