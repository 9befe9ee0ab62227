"""``python -m search``: find the best GAP-headed CNN under the assignment's rules.

    python -m search [--study NAME] [--n-trials N] [--epochs 15] [--workers 2] [--storage URL] ...
    python -m search reproduce [--study NAME] [--seed S] [--epochs N]
    python -m search --budget {assignment,compact,tiny,micro}   # screen, promote, confirm
    python -m search fidelity --budget tiny [--designs 20]       # how far short schedules rank truly

Defaults need nothing: an SQLite file under logs/search/<study>/, the CPU, two single-thread workers
(faster than one two-thread process on two cores: see the README's benchmark section).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mnist_challenge.cli import Parser, add_data_flags, add_limit_flags, limits_from_args, run_cli
from mnist_challenge.validate import (
    NAME_MAX,
    check_writable_dir,
    float_flag,
    int_flag,
    make_dir,
    positive_int,
    seed_flag,
    short_name_flag,
)

from .stages import BUDGETS

DEFAULT_STUDY = "mnist-gap"
# A study's name becomes its trials' spec names, "<study>-trial<N>", which must fit a name's NAME_MAX
# characters with room for a trial number of six digits.
STUDY_NAME_MAX = NAME_MAX - len("-trial") - 6
GRACE_FACTOR = 2  # --grace must be at least this many heartbeats: a live trial is never taken for a dead one
DEFAULT_GRACE_FACTOR = 3


def default_workers() -> int:
    """Two single-thread workers on a CPU box with >= 2 cores; one worker on a GPU."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))


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


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m search", description=__doc__.splitlines()[0])
    add_study_flags(p)
    p.add_argument(
        "--budget",
        choices=sorted(BUDGETS),
        default=None,
        help="run a budget's whole staged search: screen designs on a short complete schedule, promote the "
        "best through longer ones, confirm the top ones with seeds (sets the cap, epochs, pruning)",
    )
    p.add_argument("--rungs", default=None, help="with --budget: the shorter schedules before the full one, e.g. 4,8")
    p.add_argument(
        "--screen", type=int_flag(1, 100_000), default=None, help="with --budget: designs screened (default 60)"
    )
    p.add_argument(
        "--confirm",
        type=int_flag(1, 1000),
        default=None,
        help="with --budget: designs confirmed with seeds (default 5)",
    )
    p.add_argument(
        "--seeds", type=int_flag(1, 100), default=None, help="with --budget: seeds per confirmed design (default 3)"
    )
    p.add_argument(
        "--n-trials",
        type=int_flag(1, 100_000),
        default=20,
        help="trials to add in this run, over all workers (default 20)",
    )
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per trial; must be < 20 (default 15)")
    p.add_argument(
        "--max-params", type=int_flag(1, 10**8), default=None, help="parameter cap, strictly fewer (default 20000)"
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
        "--threads", type=int_flag(1, 1024), default=None, help="torch threads per worker (default: cores / workers)"
    )
    p.add_argument(
        "--train-subset",
        type=int_flag(2, 60_000),
        default=None,
        help="train each trial on this many images (quick looks, tests)",
    )
    p.add_argument(
        "--val-size",
        type=int_flag(1, 59_998),
        default=10_000,
        help="validation images held out of the 60k (default 10000)",
    )
    p.add_argument(
        "--seed", type=seed_flag, default=0, help="training seed of every trial, and part of each sampler's seed"
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
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
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
        choices=(1, 2),
        default=None,
        help="architecture space: 2 fits each drawn topology's widths to --max-params (the default for a new "
        "study); 1 draws absolute widths (needed by --enqueue). A study keeps the one it was made with",
    )
    p.add_argument(
        "--export-only",
        action="store_true",
        help="run no trials: rewrite the outputs (trials.csv, best spec, plots) from the storage",
    )
    add_data_flags(p)
    p.set_defaults(handler=cmd_search)
    return p


def study_dir(args: argparse.Namespace) -> Path:
    return Path(args.logs) / (args.study or DEFAULT_STUDY)


def storage_url(args: argparse.Namespace) -> str:
    from .storage import default_storage_url

    return args.storage or default_storage_url(study_dir(args))


def enqueued_params(item: str, base, max_params: int) -> dict:
    """``SPEC`` or ``SPEC:lr=0.1,rotation=10``: the trial params of that spec with that recipe."""
    from mnist_challenge import UserError
    from mnist_challenge.spec import load_spec

    from .space import RECIPE_KEYS, params_from_spec

    source, _, overrides = item.partition(":")
    recipe = base
    for pair in filter(None, overrides.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or key not in RECIPE_KEYS:
            raise UserError(
                f"--enqueue {item!r}: expected KEY=VALUE with KEY one of {sorted(RECIPE_KEYS)}, got {pair!r}"
            )
        kind = type(getattr(base, key))
        try:
            recipe = dataclasses.replace(recipe, **{key: kind(value)})
        except ValueError:
            raise UserError(f"--enqueue {item!r}: {key} must be a {kind.__name__}, got {value!r}") from None
    try:
        return params_from_spec(load_spec(source), recipe, max_params)
    except UserError as exc:
        raise UserError(f"--enqueue {item!r}: {exc}") from None


def validate_search_args(args: argparse.Namespace, base) -> None:
    """Every setting, checked before a study is created or opened for writing: nothing is written when
    any of them is wrong, so the corrected command finds no half-made study."""
    from mnist_challenge import UserError
    from mnist_challenge.data import check_split
    from mnist_challenge.train import resolve_device

    from .runner import refuse_earlier_runs
    from .space import smallest_params
    from .storage import parse_storage_url

    if args.epochs >= 20:
        raise UserError(f"--epochs must be < 20 (the assignment's rule), got {args.epochs}")
    floor = smallest_params()
    if args.max_params <= floor:
        raise UserError(
            f"--max-params {args.max_params}: no spec in the search space has fewer than {floor} parameters"
        )
    if args.enqueue and args.space != 1:
        raise UserError(
            "--enqueue needs --space 1: a known spec has absolute widths, which only the version 1 space "
            "draws (the fitted space scales relative widths to the cap)"
        )
    if args.grace < GRACE_FACTOR * args.heartbeat:
        raise UserError(
            f"--grace {args.grace} must be at least {GRACE_FACTOR}x --heartbeat {args.heartbeat}: a "
            f"live trial would be taken for a dead one and run twice; leave --grace out to use "
            f"{DEFAULT_GRACE_FACTOR}x"
        )
    check_split(base.val_size, base.train_subset, need_val=True)
    resolve_device(base.device)
    check_writable_dir(study_dir(args), "--logs")
    parsed = parse_storage_url(storage_url(args))
    if parsed.get_backend_name() == "sqlite":
        check_writable_dir(Path(parsed.database).parent, "--storage folder")
        if not Path(parsed.database).exists():  # a new database: refuse before creating it (runner checks others)
            refuse_earlier_runs(study_dir(args))


def resolve_budget(args: argparse.Namespace):
    """Fill in what ``--budget`` sets (study name, cap, epochs of the first rung, no pruning), or the
    plain search's defaults; a flag that a budget sets and the user also gave is refused."""
    from mnist_challenge import UserError

    from .stages import budget_from_args

    staged_flags = {"--rungs": args.rungs, "--screen": args.screen, "--confirm": args.confirm, "--seeds": args.seeds}
    if args.budget is None:
        given = [flag for flag, value in staged_flags.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply with --budget")
        args.study = args.study or DEFAULT_STUDY
        args.epochs, args.max_params = args.epochs or 15, args.max_params or 20_000
        return None
    clashing = [
        flag
        for flag, value in (
            ("--epochs", args.epochs),
            ("--max-params", args.max_params),
            ("--enqueue", args.enqueue or None),
            ("--mode multi", args.mode == "multi" or None),
        )
        if value is not None
    ]
    if clashing:
        raise UserError(
            f"--budget {args.budget} sets the cap, the epochs and the stages itself; drop {', '.join(clashing)}"
        )
    budget = budget_from_args(args.budget, args.rungs, args.screen, args.confirm, args.seeds)
    args.study = args.study or f"budget-{budget.name}"
    args.epochs, args.max_params, args.pruner = budget.ladder[0], budget.max_params, "none"
    return budget


def cmd_search(args: argparse.Namespace) -> int:
    from mnist_challenge.train import TrainConfig

    from .objective import SearchSettings
    from .runner import RunPlan, process_sampler_seed, run_search
    from .storage import shown_url

    budget = resolve_budget(args)
    if args.grace is None:
        args.grace = DEFAULT_GRACE_FACTOR * args.heartbeat
    workers = args.workers or default_workers()
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    base = TrainConfig(
        epochs=args.epochs,
        seed=args.seed,
        threads=threads,
        train_subset=args.train_subset,
        val_size=args.val_size,
        device=args.device,
    )
    settings = SearchSettings(
        args.study,
        study_dir(args),
        base,
        args.max_params,
        args.min_rf,
        args.mode == "multi",
        select_last=1 if budget else 3,
        space_version=args.space,
    )
    sampler_seed = args.sampler_seed if args.sampler_seed is not None else process_sampler_seed(args.seed, args.study)
    plan = RunPlan(
        settings,
        storage_url(args),
        args.n_trials,
        workers,
        args.pruner,
        args.seed,
        args.data_dir,
        args.timeout,
        args.heartbeat,
        args.grace,
        sampler_seed=sampler_seed,
        fill_to=budget.screen if budget else None,
        budget=budget.record() if budget else None,
    )
    if args.export_only:
        from .runner import export_study

        export_study(plan)
        return 0
    validate_search_args(args, base)
    from mnist_challenge.data import load_raw

    load_raw(args.data_dir, allow_download=args.download)  # fail on missing data before touching the study
    plan = dataclasses.replace(
        plan, enqueue=tuple(enqueued_params(item, base, args.max_params) for item in args.enqueue)
    )
    what = (
        f"budget {budget.name}: < {budget.max_params:,} params; "
        f"{budget.screen} designs screened on {budget.ladder[0]} epochs, "
        f"promoted through {', '.join(map(str, budget.ladder[1:]))}, top {budget.confirm} x {budget.seeds} seeds"
        if budget
        else f"{args.n_trials} trials, {args.epochs} epochs each"
    )
    shown = shown_url(plan.storage_url)  # never a password on the terminal
    print(f"study {args.study!r}: {what}; {workers} worker(s) x {threads} thread(s), storage {shown}")
    print(
        f"sampler seed {sampler_seed} (worker i: {sampler_seed} + i; --sampler-seed {sampler_seed} replays this "
        f"command's draws on the study as it is now)"
    )
    study = run_search(plan)
    if budget is not None:
        from .runner import finish
        from .stages import confirmed_table, run_stages

        stages = run_stages(study, budget, base, study_dir(args), args.data_dir, workers)
        finish(study, settings)
        print(f"confirmed at {budget.epochs} epochs, validation accuracy over {budget.seeds} seeds:")
        print(confirmed_table(stages))
        if stages["winner"]:
            w = stages["winner"]
            print(
                f"winner: trial {w['trial']}, {w['params']:,} params, val acc {w['mean']:.2f} ± {w['std']:.2f}% "
                f"-> {study_dir(args) / 'best_spec.json'}"
            )
    return 0


# --- reproduce ---------------------------------------------------------------------------------------
def build_reproduce_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m search reproduce",
        description="retrain the study's best spec on all 60k training images, test set reported",
    )
    add_study_flags(p)
    p.add_argument("--trial", type=int_flag(0), default=None, help="a trial number instead of the best")
    p.add_argument("--epochs", type=int_flag(1, 1000), default=None, help="epochs (default: the study's)")
    p.add_argument("--seed", type=seed_flag, default=1)
    p.add_argument("--threads", type=int_flag(1, 1024), default=None)
    p.add_argument(
        "--train-subset", type=int_flag(2, 60_000), default=None, help="train on only this many images (smoke tests)"
    )
    p.add_argument("--out", default=None, help="run directory (default logs/search/<study>/reproduce/seed<S>)")
    add_limit_flags(p)
    add_data_flags(p)
    p.set_defaults(handler=cmd_reproduce)
    return p


def open_existing_study(args: argparse.Namespace):
    """The study ``--study`` names (default the plain search's) from its storage; one error line if none."""
    from .storage import open_existing_study as open_study

    args.study = args.study or DEFAULT_STUDY
    return open_study(storage_url(args), args.study)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mnist_challenge import UserError
    from mnist_challenge.errors import set_crash_log
    from mnist_challenge.experiment import run_experiment
    from mnist_challenge.runlog import check_new_run_dir

    from .outputs import best_trial
    from .runner import base_config_from_study
    from .space import recipe_of_trial, spec_of_trial

    study = open_existing_study(args)
    if args.trial is not None:
        matches = [t for t in study.trials if t.number == args.trial]
        if not matches:
            raise UserError(f"study {args.study!r} has no trial {args.trial}")
        trial = matches[0]
    else:
        trial = best_trial(study)
        if trial is None:
            raise UserError(f"study {args.study!r} has no completed trial yet")
    try:
        spec = spec_of_trial(trial, args.study)
        base = base_config_from_study(study)
        recipe = recipe_of_trial(trial, base)
    except (KeyError, ValueError, TypeError) as exc:  # a draw that never completed, or a study this kit did not make
        raise UserError(
            f"trial {trial.number} of {args.study!r} ({trial.state.name}) cannot be rebuilt: {exc!r} is "
            f"missing or malformed; pick a completed trial"
        ) from None
    stages = study.user_attrs.get("stages") or {}
    epochs = args.epochs or stages.get("budget", {}).get("epochs") or base.epochs  # a staged study's full schedule
    limits = limits_from_args(args)
    # All 60k training images (no validation hold-out): selection is over, the test set is reported.
    # The run directory's config.json records the trial and study it reproduces.
    cfg = dataclasses.replace(
        recipe, epochs=epochs, seed=args.seed, val_size=0, train_subset=args.train_subset, threads=args.threads
    )
    default_out = study_dir(args) / "reproduce" / f"trial{trial.number}-seed{args.seed}"
    out = check_new_run_dir(Path(args.out) if args.out else default_out)
    print(f"reproducing trial {trial.number} of {args.study!r} ({epochs} epochs, seed {args.seed}) -> {out}")
    set_crash_log(out / "train.log")
    run_experiment(
        spec, cfg, out, data_dir=args.data_dir, limits=limits, extra_config={"study": args.study, "trial": trial.number}
    )
    from mnist_challenge.checker import check_run

    return 0 if check_run(out, limits).passed else 1


# --- fidelity ----------------------------------------------------------------------------------------
def build_fidelity_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m search fidelity",
        description="how well each rung's short complete schedule ranks designs: Spearman vs the full schedule",
    )
    p.add_argument("--budget", choices=sorted(BUDGETS), required=True)
    p.add_argument(
        "--designs", type=int_flag(3, 10_000), default=20, help="random designs of the fitted space (default 20)"
    )
    p.add_argument("--rungs", default=None, help="the shorter schedules to score, e.g. 3,5,8 (default: the budget's)")
    p.add_argument("--out", default=None, help="output folder (default logs/search/fidelity/<budget>)")
    p.add_argument("--seed", type=seed_flag, default=0, help="training seed of every run")
    p.add_argument("--sampler-seed", type=seed_flag, default=0, help="which designs are drawn (default 0: replayable)")
    p.add_argument("--workers", type=int_flag(1, 256), default=None, help="worker processes (default: 2 on CPU)")
    p.add_argument("--train-subset", type=int_flag(2, 60_000), default=None, help="train on this many images (tests)")
    p.add_argument("--val-size", type=int_flag(1, 59_998), default=10_000)
    add_data_flags(p)
    p.set_defaults(handler=cmd_fidelity)
    return p


def cmd_fidelity(args: argparse.Namespace) -> int:
    from mnist_challenge.data import check_split, load_raw
    from mnist_challenge.train import TrainConfig

    from .stages import budget_from_args, run_fidelity

    budget = budget_from_args(args.budget, args.rungs, None, None, None)
    workers = args.workers or default_workers()
    base = TrainConfig(seed=args.seed, threads=1, train_subset=args.train_subset, val_size=args.val_size, device="cpu")
    check_split(base.val_size, base.train_subset, need_val=True)
    out = check_writable_dir(Path(args.out) if args.out else Path("logs/search/fidelity") / budget.name, "--out")
    load_raw(args.data_dir, allow_download=args.download)  # before anything is written
    make_dir(out, "--out")
    print(
        f"fidelity study: {args.designs} designs under {budget.max_params:,} params, schedules of "
        f"{', '.join(map(str, budget.ladder))} epochs, {workers} worker(s) -> {out}"
    )
    result = run_fidelity(budget, args.designs, out, base, args.data_dir, workers, args.sampler_seed)
    for epochs, rho in result["spearman_vs_full"].items():
        strict = result["spearman_vs_full_learned"][epochs]
        shown = [f"{r:+.3f}" if r is not None else "n/a" for r in (rho, strict)]
        print(
            f"{epochs:>3} epochs vs {budget.epochs}: Spearman {shown[0]} (all {args.designs} designs), "
            f"{shown[1]} (the {result['learned_designs']} that learned)"
        )
    return 0


# --- digest ------------------------------------------------------------------------------------------
def build_digest_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m search digest",
        description="what a staged search learned: time per stage, screen-vs-full rank correlation, "
        "importances, the winner's shape (also written to digest.json)",
    )
    add_study_flags(p)
    p.set_defaults(handler=cmd_digest)
    return p


def cmd_digest(args: argparse.Namespace) -> int:
    from .digest import digest, format_digest

    study = open_existing_study(args)
    print(format_digest(digest(study_dir(args), study.user_attrs.get("stages"))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "reproduce":
        return run_cli(build_reproduce_parser, argv[1:])
    if argv and argv[0] == "fidelity":
        return run_cli(build_fidelity_parser, argv[1:])
    if argv and argv[0] == "digest":
        return run_cli(build_digest_parser, argv[1:])
    return run_cli(build_parser, argv)
