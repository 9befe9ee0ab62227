"""``mnist-challenge report ROOT...``: the results table of every run directory under the roots."""

from __future__ import annotations

import argparse

from mnist_challenge.common.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="results table (markdown) of every run directory under the ROOTs")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="e.g. logs/runs logs/submission")
    p.add_argument(
        "--update",
        "--update-readme",
        dest="update",
        metavar="FILE",
        action="append",
        default=None,
        help="write the tables between the markers FILE holds (the journal's results table, the README's headline "
        "table); repeatable, e.g. --update README.md --update docs/results.md",
    )
    p.add_argument(
        "--frontier",
        metavar="PNG",
        default=None,
        help="instead of the table: draw test accuracy against parameters (log axis) for every confirmed search "
        "design and retrained seed<N> design under the ROOTs, e.g. logs/search logs/submission",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.runs import report as tables

    if args.frontier:
        return draw(args)
    found = tables.report(args.roots)
    if not args.update:
        print(found.table)
        return 0
    blocks = {
        (tables.START, tables.END): found.table,
        (tables.HEADLINE_START, tables.HEADLINE_END): tables.headline_table(found.seeded),
    }
    command = " ".join(["python -m mnist_challenge report", *args.roots, *(f"--update {f}" for f in args.update)])
    updates = [tables.updated(path, blocks, command) for path in args.update]  # all checked before any is written
    for update in updates:
        tables.write_update(update)
        print(f"updated the {' and '.join(update.tables)} table(s) in {update.path}")
    return 0


def draw(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mnist_challenge.common.validate import check_writable_dir, make_dir
    from mnist_challenge.runs.frontier import draw_frontier, frontier_designs

    out = Path(args.frontier)
    if out.suffix != ".png" or out.is_dir():
        raise UserError(f"--frontier {out}: give a .png file name")
    check_writable_dir(out.resolve().parent, "--frontier folder")
    if args.update:
        raise UserError("--frontier draws the picture; run --update on its own for the tables")
    designs = frontier_designs([Path(r) for r in args.roots])
    make_dir(out.resolve().parent, "--frontier folder")  # checked above; created only once the designs are read
    draw_frontier(designs, out)
    for d in sorted(designs, key=lambda d: (d.budget, d.params)):
        spread = f" ± {d.std:.2f}" if len(d.seeds) > 1 else ""
        kind = "retrained" if d.retrained else ("search winner" if d.winner else "search")
        kind += " (history)" if d.history else ""
        seeds = f"{d.mean:.2f}{spread} % over {len(d.seeds)} seed(s)"
        print(f"{d.budget:<10} {d.params:>7,} params  {seeds}  {kind}: {d.label}")
    print(f"wrote {out}")
    return 0
