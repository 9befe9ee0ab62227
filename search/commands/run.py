"""``mnist-search [--budget B | --single-stage ...]``: run a search. By default the staged search (screen,
promote, confirm) of the assignment budget, or of ``--budget B``; ``--single-stage`` a plain Optuna search.
Resumes a study of the same settings.

Defaults need nothing: an SQLite file under logs/search/<study>/, the CPU, two single-thread workers
(faster than one two-thread process on two cores: see the README's benchmark section).
"""

from __future__ import annotations

import argparse
import dataclasses

from mnist_challenge.cli.flags import add_data_flags, add_setting_flags
from mnist_challenge.common.contract import Parser
from mnist_challenge.engine.train import TrainConfig
from mnist_challenge.runs.budgets import Budget

from ..plan import SearchRequest
from .flags import add_study_flags


def add_request_flags(p: argparse.ArgumentParser) -> None:
    """A flag for each ``SearchRequest`` field declared with ``plan.option``, from its declaration."""
    for f in dataclasses.fields(SearchRequest):
        option = f.metadata.get("option")
        if option is None:
            continue
        default = list(f.default) if option.get("action") == "append" else f.default  # argparse appends to it
        p.add_argument("--" + f.name.replace("_", "-"), default=default, **option)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="mnist-search", description="find the smallest GAP-headed CNN under the assignment's rules")
    add_study_flags(p)
    add_request_flags(p)
    stage_flags = ("screen", "confirm", "seeds")
    add_setting_flags(p, Budget, only=stage_flags, defaults=dict.fromkeys(stage_flags), help_prefix="staged search: ")
    # The base recipe's settings a search takes, declared in TrainConfig (the search requires --val-size >= 1).
    add_setting_flags(
        p,
        TrainConfig,
        only=("threads", "train_subset", "val_size", "seed", "device"),
        defaults={"seed": 0, "val_size": None, "train_subset": None},
        helps={
            "threads": "torch threads per worker (default: cores / workers)",
            "train_subset": "train each trial on this many images (quick looks, tests; --budget demo: 5,000)",
            "seed": "training seed of every trial, and part of each sampler's seed",
            "val_size": "validation images held out of the 60k (at least 1: the search selects on them; default "
            "10,000, --budget demo: 2,000)",
        },
    )
    p.add_argument(
        "--export-only",
        action="store_true",
        help="run no trials: rewrite the outputs (trials.csv, best spec, plots) from the storage",
    )
    add_data_flags(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.engine.data import load_raw

    from ..plan import enqueued_params, resolve, run_plan, transferred, validate
    from ..runner import export_study, finish, process_sampler_seed, run_search
    from ..stages import confirmed_table, run_stages
    from ..storage import shown_url

    search = resolve(SearchRequest.from_namespace(args))
    r = search.request
    sampler_seed = r.sampler_seed if r.sampler_seed is not None else process_sampler_seed(r.seed, search.study)
    if args.export_only:
        export_study(run_plan(search, sampler_seed))
        return 0
    validate(search)
    load_raw(r.data_dir, allow_download=args.download)  # fail on missing data before touching the study
    enqueue = tuple(enqueued_params(item, search.base, search.max_params) for item in r.enqueue)
    plan = run_plan(search, sampler_seed, enqueue, transferred(search))  # another study read before ours is written
    print(
        f"study {search.study!r}: {search.describe()}; {search.workers} worker(s) x {search.threads} thread(s), "
        f"storage {shown_url(plan.storage_url)}"  # never a password on the terminal
    )
    print(
        f"sampler seed {sampler_seed} (worker i: {sampler_seed} + i; --sampler-seed {sampler_seed} replays this "
        f"command's draws on the study as it is now)"
    )
    study = run_search(plan)
    budget = search.budget
    if budget is not None:
        stages = run_stages(study, budget, search.base, search.study_dir, r.data_dir, search.workers)
        finish(study, plan.settings)
        print(f"confirmed at {budget.epochs} epochs, validation accuracy over {budget.seeds} seeds:")
        print(confirmed_table(stages))
        if stages["winner"]:
            w = stages["winner"]
            print(
                f"winner: trial {w['trial']}, {w['params']:,} params, val acc {w['mean']:.2f} ± {w['std']:.2f}% "
                f"-> {search.study_dir / 'best_spec.json'}"
            )
            if budget.notebook:
                from ..demo import winner_notebook

                return winner_notebook(w["run_dir"], search.study_dir / "winner.ipynb", budget.name, r.data_dir)
    return 0
