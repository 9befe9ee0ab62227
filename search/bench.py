"""Search throughput at a budget: the version 1 search (absolute widths, Hyperband over one long schedule)
against the staged search of the fitted space (``--budget``), same cap, same draws, same data, one run.

    python -m search.bench [--budget tiny] [--draws 12] [--train-subset 5000] [--json FILE]

Why this figure: wall time per trial says little when half the draws are thrown away before training or
stopped after a few epochs of a long schedule. What a search buys with its hours is training on designs
that fit the cap, so the headline is *full-fidelity-equivalent trials per hour*: epochs trained (every
run, every rung and seed) divided by the budget's full epochs, per hour of wall time. Beside it: designs
scored on a complete schedule per hour (a pruned trial has no such score), and the share of draws
rejected before training. Both searches run in fresh temporary folders with the same workers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist_challenge.cli.flags import add_data_flags
from mnist_challenge.common.contract import Parser, run_cli
from mnist_challenge.common.errors import UserError
from mnist_challenge.common.validate import int_flag
from mnist_challenge.runs.budgets import BUDGETS
from mnist_challenge.runs.runlog import read_epochs


def epochs_trained(study_dir: Path) -> tuple[int, int]:
    """Epoch rows over every run folder of a study, and how many runs finished (a verdict is written last)."""
    epochs = finished = 0
    for csv in study_dir.rglob("epochs.csv"):
        epochs += len(read_epochs(csv.parent))
        finished += (csv.parent / "verdict.json").is_file()
    return epochs, finished


def study_figures(study_dir: Path, study_name: str, full_epochs: int, seconds: float) -> dict[str, Any]:
    """What one finished search did with its wall time, read back from its storage and run folders."""
    import optuna

    from .outputs import completed
    from .storage import default_storage_url

    study = optuna.load_study(study_name=study_name, storage=default_storage_url(study_dir))
    trials = study.get_trials(deepcopy=False)
    rejected = sum(str(t.user_attrs.get("reason", "")).startswith("rejected before training") for t in trials)
    epochs, finished = epochs_trained(study_dir)
    hours = seconds / 3600
    return {
        "seconds": round(seconds, 1),
        "draws": len(trials),
        "rejected": rejected,
        "rejected_fraction": round(rejected / len(trials), 3) if trials else 0.0,
        "epochs_trained": epochs,
        "runs_finished": finished,
        "designs_scored": len(completed(study)),
        "full_fidelity_equivalent_trials_per_hour": round(epochs / full_epochs / hours, 1),
        "designs_scored_per_hour": round(len(completed(study)) / hours, 1),
    }


def run_one(label: str, flags: list[str], study: str, full_epochs: int) -> dict[str, Any]:
    from .commands.main import main as search_main

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if search_main(["--study", study, "--logs", tmp, *flags]) != 0:
            raise UserError(f"the {label} search failed")
        seconds = time.perf_counter() - start
        return study_figures(Path(tmp) / study, study, full_epochs, seconds)


def run_bench(args: argparse.Namespace) -> int:
    from mnist_challenge.cli.bench import write_json

    if args.json:  # checked now, not after minutes of searching
        write_json(Path(args.json), {})
    budget = BUDGETS[args.budget]
    shared = [
        "--train-subset",
        str(args.train_subset),
        "--val-size",
        str(args.val_size),
        "--seed",
        "0",
        "--sampler-seed",
        str(args.sampler_seed),
        "--workers",
        str(args.workers),
        "--threads",
        "1",
    ]
    shared += ["--data-dir", args.data_dir] if args.data_dir else []
    before = [
        "--single-stage",
        "--space",
        "1",
        "--max-params",
        str(budget.max_params),
        "--epochs",
        str(budget.epochs),
        "--pruner",
        "hyperband",
        "--n-trials",
        str(args.draws),
    ]
    after = ["--budget", budget.name, "--screen", str(args.draws)]
    figures = {
        "budget": budget.name,
        "max_params": budget.max_params,
        "full_epochs": budget.epochs,
        "draws": args.draws,
        "train_subset": args.train_subset,
        "val_size": args.val_size,
        "workers": args.workers,
        "before (space 1, Hyperband)": run_one("version 1", before + shared, "bench-v1", budget.epochs),
        "after (--budget, fitted space)": run_one("staged", after + shared, "bench-staged", budget.epochs),
    }
    print_table(figures)
    if args.json:
        write_json(Path(args.json), figures)
    return 0


def print_table(figures: dict[str, Any]) -> None:
    searches = [k for k in figures if k.startswith(("before", "after"))]
    print(
        f"\nbudget {figures['budget']} (< {figures['max_params']:,} params, {figures['full_epochs']} epochs), "
        f"{figures['draws']} draws each, {figures['train_subset']:,} training images, {figures['workers']} workers"
    )
    rows = [
        ("wall seconds", "seconds"),
        ("draws", "draws"),
        ("rejected before training", "rejected"),
        ("epochs trained", "epochs_trained"),
        ("designs scored on a complete schedule", "designs_scored"),
        ("designs scored per hour", "designs_scored_per_hour"),
        ("full-fidelity-equivalent trials per hour", "full_fidelity_equivalent_trials_per_hour"),
    ]
    print(f"{'':<42}" + "".join(f"{name:>32}" for name in searches))
    for label, key in rows:
        print(f"{label:<42}" + "".join(f"{figures[name][key]:>32}" for name in searches))
    old, new = (figures[name]["full_fidelity_equivalent_trials_per_hour"] for name in searches)
    ratio = f"{new / old:.2f}x" if old else "n/a (the version 1 search trained nothing)"
    print(f"RATIO full-fidelity-equivalent trials/h, after / before: {ratio}")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m search.bench", description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="tiny")
    p.add_argument("--draws", type=int_flag(3, 10_000), default=12, help="designs drawn by each search (default 12)")
    p.add_argument(
        "--train-subset",
        type=int_flag(100, 60_000),
        default=5_000,
        help="training images per epoch (default 5000: minutes, not hours)",
    )
    p.add_argument("--val-size", type=int_flag(100, 20_000), default=2_000)
    p.add_argument("--workers", type=int_flag(1, 256), default=2, help="worker processes, one thread each (default 2)")
    p.add_argument("--sampler-seed", type=int_flag(0), default=0, help="which designs are drawn (default 0)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    add_data_flags(p)
    p.set_defaults(handler=run_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
