"""``mnist-search reproduce``: retrain a study's best spec (or ``--trial N``) on all 60k training images, the
test set reported and the run judged (exit 0 PASS, 1 FAIL)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_challenge.cli.flags import add_data_flags, add_limit_flags, limits_from_args
from mnist_challenge.common.contract import Parser
from mnist_challenge.common.validate import int_flag, seed_flag

from .flags import add_study_flags, add_trial_flags, open_named_trial


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mnist-search reproduce",
        description="retrain the study's best spec on all 60k training images, test set reported",
    )
    add_study_flags(p)
    add_trial_flags(p)
    p.add_argument("--seed", type=seed_flag, default=1)
    p.add_argument("--threads", type=int_flag(1, 1024), default=None)
    p.add_argument("--out", default=None, help="run directory (default logs/search/<study>/reproduce/seed<S>)")
    add_limit_flags(p)
    add_data_flags(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.common.errors import set_crash_log
    from mnist_challenge.runs.checker import check_run
    from mnist_challenge.runs.experiment import run_experiment
    from mnist_challenge.runs.runlog import check_new_run_dir

    from ..reproduce import reproduction

    study, name, folder, trial = open_named_trial(args)
    spec, cfg = reproduction(
        study, name, trial, epochs=args.epochs, seed=args.seed, train_subset=args.train_subset, threads=args.threads
    )
    rules, limits = limits_from_args(args)
    default_out = folder / "reproduce" / f"trial{trial.number}-seed{args.seed}"
    out = check_new_run_dir(Path(args.out) if args.out else default_out)
    print(f"reproducing trial {trial.number} of {name!r} ({cfg.epochs} epochs, seed {args.seed}) -> {out}")
    set_crash_log(out / "train.log")
    # The run directory's config.json records the trial and study it reproduces.
    run_experiment(
        spec, cfg, out, data_dir=args.data_dir, limits=limits, extra_config={"study": name, "trial": trial.number}
    )
    return 0 if check_run(out, limits, rules.requires).passed else 1
