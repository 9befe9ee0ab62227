"""Run directories found under report roots, and how they group into designs trained with several seeds.

One reader for the results tables (``report``) and the frontier picture (``report --frontier``), so both count
the same runs, file them under the same budget and call the same designs superseded:

* every directory holding an ``epochs.csv`` is a run; a root given twice, or one inside another, counts it once;
* a run's budget is the first folder of its path named after a budget (``logs/submission/tiny/seed1``);
* runs of one design with several seeds are ``.../seed<N>/`` folders beside one another;
* a design under a version folder after its budget (``logs/submission/micro/v1/seed1``) is superseded history.
"""

from __future__ import annotations

import re
from pathlib import Path

from mnist_challenge.common.errors import UserError
from mnist_challenge.runs.budgets import BUDGETS

SEED_DIR = re.compile(r"seed(\d+)")
VERSION_DIR = re.compile(r"v\d+")


def found_runs(roots: list[Path]) -> list[tuple[Path, Path]]:
    """``(root, run)`` for every run under the roots, each run once, in path order within each root."""
    found, seen = [], set()
    for root in roots:
        if not root.is_dir():
            raise UserError(f"not a directory: {root}")
        for run in sorted(p.parent for p in root.rglob("epochs.csv")):
            if run.resolve() not in seen:
                seen.add(run.resolve())
                found.append((root, run))
    return found


def budget_folder(run: Path, root: Path) -> str | None:
    """The budget a run's folders name (the first one under the root, else the root's own name), if any."""
    for part in run.relative_to(root).parts if run != root else ():
        if part in BUDGETS:
            return part
    return root.name if root.name in BUDGETS else None


def seed_groups(found: list[tuple[Path, Path]], default: str | None = None) -> dict[tuple[str, Path], list[Path]]:
    """The seed runs of each design, keyed by (budget, design folder). A design whose path names no budget is
    filed under ``default``, or left out when there is none."""
    groups: dict[tuple[str, Path], list[Path]] = {}
    for root, run in found:
        budget = budget_folder(run, root) or default
        if budget is not None and SEED_DIR.fullmatch(run.name):
            groups.setdefault((budget, run.parent), []).append(run)
    return groups


def superseded(design: Path, budget: str) -> bool:
    """A design kept as history: a version folder follows its budget's folder (``micro/v1/``)."""
    parts = design.parts
    after = parts[parts.index(budget) + 1 :] if budget in parts else parts
    return any(VERSION_DIR.fullmatch(part) for part in after)
