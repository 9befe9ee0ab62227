"""``python -m mnist_challenge report ROOT``: the results tables, generated from run directories.

Every directory under ROOT that holds an ``epochs.csv`` is a run. A run under a folder named after a
budget (``assignment``, ``compact``, ``tiny``, ``micro``, ``nano``, ``pico``) is judged against that budget's
limits; any other run against the assignment's. Nothing in the tables is typed by hand: params, RF and MACs come
from the run's inspection, accuracies from its epochs.csv, the verdict from the checker.

Two tables, each written between its own markers in any file that has them (``--update FILE``): the journal's
(``results``: every run, then every design trained with several seeds) and the README's headline (``headline``:
one row per budget, its current submission design, and the notebook made from it).
"""

from __future__ import annotations

import re
import stat
import statistics
from pathlib import Path
from typing import NamedTuple

from mnist_challenge.common.errors import UserError
from mnist_challenge.common.files import display_path, write_atomic
from mnist_challenge.runs.budgets import BUDGETS
from mnist_challenge.runs.checker import check_run, read_inspection
from mnist_challenge.runs.runlog import read_epochs
from mnist_challenge.runs.seed_runs import budget_folder, found_runs, seed_groups

START, END = "<!-- results:start -->", "<!-- results:end -->"
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
NOTEBOOK = "notebooks/submission_{budget}.ipynb"  # the notebook exported from a budget's current design


class SeedRun(NamedTuple):
    params: int
    last3: list[float]  # test accuracy in the last 3 epochs
    passed: bool


def code_cell(path: Path) -> str:
    """A path as a table cell: ``|`` would end the cell, so it is escaped (GitHub honours ``\\|`` in code)."""
    return "`" + display_path(path).replace("|", "\\|") + "`"


class Report(NamedTuple):
    table: str  # the journal's: one row per run, then one per design trained with several seeds
    seeded: dict[tuple[str, Path], list[SeedRun]]  # (budget, design folder): its seed runs


def results_table(roots: list[str | Path] | str | Path) -> str:
    """One row per run; below it, one row per design trained with several seeds (``.../seed<N>/`` folders)."""
    return report(roots).table


def report(roots: list[str | Path] | str | Path) -> Report:
    """Every run under the roots, judged once; the journal's table and the seed runs of each design."""
    roots = [Path(r) for r in roots] if isinstance(roots, list) else [Path(roots)]
    found = found_runs(roots)
    if not found:
        raise UserError(f"no run directories (with epochs.csv) under {', '.join(map(str, roots))}")
    lines = [
        "| budget | run | params | RF (head) | MACs | epochs | test acc, last 3 epochs | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    judged: dict[Path, SeedRun] = {}
    for root, run in found:
        budget = budget_folder(run, root) or "assignment"  # a run under no budget folder: the assignment's rules
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
        judged[run] = SeedRun(inspection.get("params", 0), last3, verdict.passed)
    seeded = {key: [judged[run] for run in runs] for key, runs in seed_groups(found, "assignment").items()}
    if seeded:
        lines += ["", *seed_summary(seeded)]
    return Report("\n".join(lines), seeded)


def over_seeds(runs: list[SeedRun]) -> str:
    """Mean ± sample std over the seeds of each seed's last-3-epoch mean (no ± for one seed)."""
    means = [statistics.fmean(r.last3) for r in runs]
    spread = f" ± {statistics.stdev(means):.2f}" if len(means) > 1 else ""
    return f"{statistics.fmean(means):.2f}{spread}"


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
        accuracy = over_seeds(runs)
        worst = min(a for r in runs for a in r.last3)
        passing = sum(r.passed for r in runs)
        lines.append(
            f"| {budget} | {code_cell(design)} | {runs[0].params:,} | {len(runs)} | "
            f"{accuracy} | {worst:.2f} | {passing} of {len(runs)} |"
        )
    return lines


def headline_table(seeded: dict[tuple[str, Path], list[SeedRun]]) -> str:
    """The README's table: per budget, largest first, its current design (a ``<budget>/seed<N>`` folder, not a
    superseded ``<budget>/v<N>/``): parameters, seeds passing, mean ± std over seeds, and its notebook."""
    lines = [
        "| budget: rules | params | seeds passing | test acc, last 3 epochs: mean ± std over seeds | notebook |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    current = [(b, d, runs) for (b, d), runs in seeded.items() if d.name == b]  # not <budget>/v1/: history
    for budget, design, runs in sorted(current, key=lambda c: -BUDGETS[c[0]].max_params):
        accuracy = over_seeds(runs)
        limits = BUDGETS[budget].limits
        link = notebook_link(budget, design)
        lines.append(
            f"| {budget}: < {limits.max_params:,} params, ≤ {limits.max_epochs} epochs | {runs[0].params:,} | "
            f"{sum(r.passed for r in runs)} of {len(runs)} | {accuracy} % | {link} |"
        )
    return "\n".join(lines)


def notebook_link(budget: str, design: Path) -> str:
    """A link to the budget's submission notebook when it was exported from one of this design's runs (its
    ``Exported from `<run>` `` line), else why there is none: a table never links a notebook of another design."""
    notebook = Path(NOTEBOOK.format(budget=budget))
    if not notebook.is_file():
        return "none yet"
    source = re.search(r"Exported from `([^`]+)`", notebook.read_text(encoding="utf-8", errors="replace"))
    if source is None or Path(source[1]).parent != design:
        return f"{notebook.name} is of an earlier design"
    return f"[{notebook.name}]({notebook.as_posix()})"


class Update(NamedTuple):
    path: Path
    text: str  # the file with its tables replaced
    mode: int  # its permissions, kept
    tables: list[str]  # the names of the tables written ("results", "headline")


def updated(path: str | Path, blocks: dict[tuple[str, str], str], command: str) -> Update:
    """The file with the text between each pair of markers it holds replaced by that block's fresh table, not yet
    written (every file named is checked before any is written). None of the markers, or a read-only file: an
    error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--update {path}: no such file")
    path = path.resolve() if path.is_symlink() else path  # a link stays a link: the file it points to is updated
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise UserError(f"--update {path}: cannot read it as text ({exc})") from None
    present = [
        (m, t) for m, t in blocks.items() if m[0] in text and m[1] in text and text.index(m[0]) < text.index(m[1])
    ]
    if not present:
        raise UserError(f"{path} has none of the markers {', '.join(f'{a} ... {b}' for a, b in blocks)}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o222:  # checked by mode, not os.access: root may write anything, but the owner said no
        raise UserError(f"--update {path}: the file is read-only; make it writable first if you mean it")
    marker = f"<!-- generated by `{command}`; do not edit by hand -->"
    for (start, end), table in present:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{marker}\n{table}\n{end}{tail}"
    return Update(path, text, mode, [start.split(":")[0].removeprefix("<!-- ") for (start, _), _ in present])


def write_update(update: Update) -> None:
    """The new text beside the file, then swapped in: a failed write never leaves a half file or a ``.tmp``."""

    def write(tmp: Path) -> None:
        tmp.write_text(update.text, encoding="utf-8")
        tmp.chmod(update.mode)  # the file keeps its permissions

    write_atomic(update.path, write)
