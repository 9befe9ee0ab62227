"""``mnist-search fidelity --budget B``: how well each rung's short complete schedule ranks designs, as
Spearman's rank correlation against the full schedule (what chooses a budget's rungs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_challenge.cli.flags import add_data_flags
from mnist_challenge.common.contract import Parser
from mnist_challenge.common.validate import check_writable_dir, int_flag, make_dir, seed_flag
from mnist_challenge.runs.budgets import BUDGETS


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mnist-search fidelity",
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
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.engine.data import check_split, load_raw
    from mnist_challenge.engine.train import TrainConfig
    from mnist_challenge.runs.budgets import resolve_budget

    from ..plan import default_workers
    from ..stages import run_fidelity

    budget = resolve_budget(args.budget, args.rungs, None, None, None)
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
