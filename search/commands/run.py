"""``mnist-search [--budget B | --study NAME ...]``: run a search. With ``--budget`` the staged search
(screen, promote, confirm); without, a plain single-stage search. Resumes a study of the same settings.

Defaults need nothing: an SQLite file under logs/search/<study>/, the CPU, two single-thread workers
(faster than one two-thread process on two cores: see the README's benchmark section).
"""

from __future__ import annotations

import argparse

from mnist_challenge.cli.flags import add_data_flags, add_setting_flags
from mnist_challenge.common.contract import Parser
from mnist_challenge.common.validate import float_flag, int_flag, positive_int, seed_flag, short_name_flag
from mnist_challenge.engine.train import TrainConfig
from mnist_challenge.runs.budgets import BUDGETS, Budget

from ..plan import (
    DEFAULT_EPOCHS,
    DEFAULT_GRACE_FACTOR,
    DEFAULT_MAX_PARAMS,
    GRACE_FACTOR,
    MAX_EPOCHS,
    STUDY_NAME_MAX,
)
from .flags import add_study_flags


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="mnist-search", description="find the smallest GAP-headed CNN under the assignment's rules")
    add_study_flags(p)
    p.add_argument(
        "--budget",
        choices=sorted(BUDGETS),
        default=None,
        help="run a budget's whole staged search: screen designs on a short complete schedule, promote the "
        "best through longer ones, confirm the top ones with seeds (sets the cap, epochs, pruning)",
    )
    p.add_argument("--rungs", default=None, help="with --budget: the shorter schedules before the full one, e.g. 4,8")
    stage_flags = ("screen", "confirm", "seeds")
    add_setting_flags(p, Budget, only=stage_flags, defaults=dict.fromkeys(stage_flags), help_prefix="with --budget: ")
    p.add_argument(
        "--transfer-from",
        type=short_name_flag(STUDY_NAME_MAX),
        default=None,
        metavar="STUDY",
        help="with --budget: enqueue the confirmed designs of another staged study (under --logs) first, their "
        "relative widths re-fitted to this budget's cap; trials.csv and the summary mark them as transferred",
    )
    p.add_argument(
        "--transfer-top",
        type=int_flag(1, 1000),
        default=None,
        help="with --transfer-from: only its N best confirmed designs (default: all)",
    )
    p.add_argument(
        "--n-trials",
        type=int_flag(1, 100_000),
        default=20,
        help="trials to add in this run, over all workers (default 20)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"epochs per trial; must be < {MAX_EPOCHS + 1} (default {DEFAULT_EPOCHS})",
    )
    p.add_argument(
        "--max-params",
        type=int_flag(1, 10**8),
        default=None,
        help=f"parameter cap, strictly fewer (default {DEFAULT_MAX_PARAMS})",
    )
    p.add_argument(
        "--min-rf", type=int_flag(1, 10_000), default=20, help="minimum receptive field at the head in px (default 20)"
    )
    p.add_argument(
        "--mode",
        choices=("single", "multi"),
        default="single",
        help="single: max val acc under the cap; multi: (val acc, params) Pareto front",
    )
    p.add_argument("--pruner", choices=("hyperband", "median", "sha", "none"), default="hyperband")
    p.add_argument(
        "--workers",
        type=int_flag(1, 256),
        default=None,
        help="worker processes on this machine (default: 2 on CPU, 1 on GPU)",
    )
    p.add_argument(
        "--sampler-seed",
        type=seed_flag,
        default=None,
        help="seed worker i's sampler with this + i, to replay a recorded run (default: drawn per process, "
        "so that every command and machine draws differently; recorded as each trial's sampler_seed)",
    )
    p.add_argument(
        "--timeout",
        type=float_flag(0, None, lo_open=True),
        default=None,
        help="stop starting new trials after this many seconds",
    )
    # The base recipe's settings a search takes, declared in TrainConfig (the search requires --val-size >= 1).
    add_setting_flags(
        p,
        TrainConfig,
        only=("threads", "train_subset", "val_size", "seed", "device"),
        defaults={"seed": 0},
        helps={
            "threads": "torch threads per worker (default: cores / workers)",
            "train_subset": "train each trial on this many images (quick looks, tests)",
            "seed": "training seed of every trial, and part of each sampler's seed",
            "val_size": "validation images held out of the 60k (at least 1: the search selects on them)",
        },
    )
    p.add_argument(
        "--heartbeat", type=int_flag(1, 3600), default=60, help="seconds between trial heartbeats (default 60)"
    )
    p.add_argument(
        "--grace",
        type=int_flag(1, 86_400),
        default=None,
        help=f"a RUNNING trial silent this long is failed and retried; at least {GRACE_FACTOR}x --heartbeat "
        f"(default {DEFAULT_GRACE_FACTOR}x --heartbeat)",
    )
    p.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="SPEC[:KEY=VALUE,...]",
        help="run this spec (preset name or spec.json) first, with the default recipe or the given recipe values "
        "(e.g. compact:lr=0.1,rotation=10); repeatable; skipped if the study already has the same trial",
    )
    p.add_argument(
        "--space",
        type=int,
        choices=(1, 2, 3),
        default=None,
        help="architecture space: 3 (the default for a new study) fits each drawn topology's widths to "
        "--max-params and may draw pool-only transitions and batch 32; 2 the same without those; 1 draws "
        "absolute widths (needed by --enqueue). A study keeps the one it was made with",
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

    from ..plan import SearchRequest, enqueued_params, resolve, run_plan, transferred, validate
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
    return 0
