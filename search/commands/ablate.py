"""``mnist-search ablate --study S --change KEY=VALUE[,...]``: a study's design (its best, or ``--trial N``) trained
with its own recipe and with the change, the same seeds for both, on the study's split and full schedule; the
two compared on validation accuracy (``search.ablation``). Resumable: the same command keeps finished runs."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mnist_challenge.cli.flags import add_data_flags
from mnist_challenge.common.contract import Parser
from mnist_challenge.common.errors import UserError
from mnist_challenge.common.validate import check_writable_dir, int_flag

from .flags import add_study_flags, add_trial_flags, open_named_trial


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mnist-search ablate",
        description="train a study's design with its recipe and with a change, same seeds, compared on validation",
    )
    add_study_flags(p)
    add_trial_flags(p)
    p.add_argument(
        "--change", required=True, metavar="KEY=VALUE[,...]", help="recipe settings of the changed arm, e.g. "
        "brightness=0.2,contrast=0.2 (any setting of `train` but epochs and seed)",
    )  # fmt: skip
    p.add_argument("--seeds", type=int_flag(1, 100), default=3, help="seeds 1..N for each arm (default 3)")
    p.add_argument("--workers", type=int_flag(1, 256), default=None, help="worker processes (default: 2 on CPU)")
    p.add_argument("--out", default=None, help="output folder (default logs/ablation/<study>-trial<N>-<change>)")
    add_data_flags(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from mnist_challenge.common.validate import make_dir
    from mnist_challenge.engine.data import check_split, load_raw
    from mnist_challenge.engine.train import RECIPE_KEYS

    from ..ablation import BASE, ablation_jobs, format_summary, summarise, write_summary
    from ..plan import default_workers, recipe_with
    from ..reproduce import rebuilt
    from ..stages import run_jobs

    study, name, _, trial = open_named_trial(args)
    spec, recipe = rebuilt(study, name, trial, args.epochs)
    recipe = dataclasses.replace(recipe, threads=1, train_subset=args.train_subset)
    changed = recipe_with(recipe, args.change, set(RECIPE_KEYS) - {"epochs", "seed"}, f"--change {args.change!r}")
    if changed == recipe:
        raise UserError(f"--change {args.change!r}: that is the trial's recipe already; nothing to compare")
    check_split(recipe.val_size, recipe.train_subset, need_val=True)
    label = re.sub(r"[^A-Za-z0-9.=,_-]", "_", args.change).replace(",", "_").replace("=", "")
    default_out = Path("logs/ablation") / f"{name}-trial{trial.number}-{label}"
    out = check_writable_dir(Path(args.out) if args.out else default_out, "--out")
    load_raw(args.data_dir, allow_download=args.download)  # before anything is written
    make_dir(out, "--out")
    workers = args.workers or default_workers()
    jobs = ablation_jobs(trial.number, spec, {BASE: recipe, "changed": changed}, list(range(1, args.seeds + 1)), out)
    print(
        f"ablation: trial {trial.number} of {name!r} ({spec.name}), {args.change} against its own recipe, "
        f"seeds 1-{args.seeds}, {recipe.epochs} epochs, {workers} worker(s) -> {out}"
    )
    run_jobs(jobs, recipe, args.data_dir, workers, "ablation", out)
    summary = summarise(jobs, args.change) | {"study": name, "trial": trial.number, "epochs": recipe.epochs}
    print(format_summary(summary))
    print(f"written: {write_summary(summary, out)}")
    return 0
