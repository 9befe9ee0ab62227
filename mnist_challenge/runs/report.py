"""``python -m mnist_challenge report ROOT``: the results table, generated from run directories.

Every directory under ROOT that holds an ``epochs.csv`` is a run. A run under a folder named after a
budget (``assignment``, ``compact``, ``tiny``, ``micro``, ``nano``) is judged against that budget's limits; any
other run against the assignment's. Nothing in the table is typed by hand: params, RF and MACs come from the
run's inspection, accuracies from its epochs.csv, the verdict from the checker.
"""

from __future__ import annotations

import os
import re
import stat
import statistics
from pathlib import Path
from typing import NamedTuple

from mnist_challenge.common.errors import UserError
from mnist_challenge.runs.budgets import BUDGETS
from mnist_challenge.runs.checker import check_run, read_inspection
from mnist_challenge.runs.runlog import read_epochs

START, END = "<!-- results:start -->", "<!-- results:end -->"
SEED_DIR = re.compile(r"seed\d+")  # runs of one design with several seeds sit in .../seed<N>/ folders


class SeedRun(NamedTuple):
    params: int
    last3: list[float]  # test accuracy in the last 3 epochs
    passed: bool


def code_cell(path: Path) -> str:
    """A path as a table cell: ``|`` would end the cell, so it is escaped (GitHub honours ``\\|`` in code)."""
    return "`" + str(path).replace("|", "\\|") + "`"


def find_runs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"not a directory: {root}")
    return sorted(p.parent for p in root.rglob("epochs.csv"))


def budget_of(run: Path, root: Path) -> str:
    for part in run.relative_to(root).parts if run != root else ():
        if part in BUDGETS:
            return part
    return root.name if root.name in BUDGETS else "assignment"


def results_table(roots: list[str | Path] | str | Path) -> str:
    """One row per run; below it, one row per design trained with several seeds (``.../seed<N>/`` folders)."""
    roots = [Path(r) for r in roots] if isinstance(roots, list) else [Path(roots)]
    found = [(root, run) for root in roots for run in find_runs(root)]
    if not found:
        raise UserError(f"no run directories (with epochs.csv) under {', '.join(map(str, roots))}")
    lines = [
        "| budget | run | params | RF (head) | MACs | epochs | test acc, last 3 epochs | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    seeded: dict[tuple[str, Path], list[SeedRun]] = {}
    for root, run in found:
        budget = budget_of(run, root)
        verdict = check_run(run, BUDGETS[budget].limits)  # validates the run's files first
        inspection = read_inspection(run)
        rows = read_epochs(run)
        failed = [r["rule"] for r in verdict.rules if not r["passed"]]
        last3 = [r["test_acc"] for r in rows[-3:]]
        lines.append(
            f"| {budget} | {code_cell(run)} | {inspection.get('params', 0):,} | "
            f"{inspection.get('receptive_field_head') or '-'} | {inspection.get('macs', 0):,} | "
            f"{len(rows)} | {', '.join(f'{a:.2f}' for a in last3)} | "
            f"{'PASS' if verdict.passed else 'FAIL: ' + '; '.join(failed)} |"
        )
        if SEED_DIR.fullmatch(run.name):
            seeded.setdefault((budget, run.parent), []).append(
                SeedRun(inspection.get("params", 0), last3, verdict.passed)
            )
    if seeded:
        lines += ["", *seed_summary(seeded)]
    return "\n".join(lines)


def seed_summary(seeded: dict[tuple[str, Path], list[SeedRun]]) -> list[str]:
    """Per design: mean ± sample std over seeds of each seed's mean test accuracy in its last 3 epochs,
    the worst single epoch among them (the rule is per epoch), and how many seeds pass. Every seed counts:
    a missed seed is in the mean, not dropped."""
    lines = [
        "| budget | design (seeds) | params | seeds | test acc, last 3 epochs: mean ± std over seeds | "
        "worst epoch | seeds passing |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for (budget, design), runs in seeded.items():
        means = [statistics.fmean(r.last3) for r in runs]
        spread = f" ± {statistics.stdev(means):.2f}" if len(means) > 1 else ""
        worst = min(a for r in runs for a in r.last3)
        passing = sum(r.passed for r in runs)
        lines.append(
            f"| {budget} | {code_cell(design)} | {runs[0].params:,} | {len(runs)} | "
            f"{statistics.fmean(means):.2f}{spread} | {worst:.2f} | {passing} of {len(runs)} |"
        )
    return lines


def update_readme(readme: str | Path, table: str, command: str) -> None:
    """Replace the text between the results markers in the README with the fresh table."""
    path = Path(readme)
    if not path.is_file():
        raise UserError(f"--update-readme {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise UserError(f"--update-readme {path}: cannot read it as text ({exc})") from None
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise UserError(f"{path} has no {START} ... {END} markers")
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o222:  # checked by mode, not os.access: root may write anything, but the owner said no
        raise UserError(f"--update-readme {path}: the file is read-only; make it writable first if you mean it")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:  # write beside it, then swap: a failed write never leaves a half README
        marker = f"<!-- generated by `{command}`; do not edit by hand -->"
        tmp.write_text(f"{head}{START}\n{marker}\n{table}\n{END}{tail}", encoding="utf-8")
        tmp.chmod(mode)  # the README keeps its permissions
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"--update-readme {path}: cannot write it ({exc.strerror or exc})") from None
