"""The epoch log of an executed notebook, read from its cells' outputs.

Students log accuracy in a handful of formats; each is a ``LogFormat``: a regular expression with named groups for
the accuracy (``acc``, a percentage or a fraction, or ``correct`` / ``total``), and where the line has them the
epoch number (``epoch``) and which split it is (``split``). Lines without an epoch number take the last epoch
marker printed before them in the same cell (the course's ``EPOCH: 3``, Keras' ``Epoch 3/20``). The first format
(specific ones first, a generic "test ... accuracy" last) that matches a line is the log's format. Where a line
gives both a count and a percentage (``9941/10000 (99.41%)``) the count is judged, and a percentage that disagrees
with it at the precision it was printed with is reported (an edited log; ``{:.1f}%`` of 9946/10000 is 99.5,
which agrees).

Runs are found by structure (``grading.structure``): a cell that trains holds training runs (a new run where the
epoch numbering starts again at 1), and so does a cell whose numbered lines advance (a loop imported from a
file); any other accuracy line is an evaluation (a final ``test(model)``), kept apart and never graded. A line
over a training-set-sized count (more than ``TEST_SET_MAX`` images) is not a test or validation accuracy.

Parsing is linear in the output's size: lines are split on newlines, carriage returns and backspaces, a line
longer than ``WINDOW`` is read in overlapping windows, and the patterns only look a bounded distance ahead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mnist_challenge.grading.ipynb import Notebook
from mnist_challenge.grading.structure import CellCode

NUMBER = r"(?:\d{1,7}(?:\.\d{0,9})?|\.\d{1,9})"
GAP = r"[^\n]{0,160}?"  # a bounded stretch of a line between two parts of a pattern
WINDOW = 2048  # characters of a long line read at once (an epoch line is far shorter)
TEST_SET_MAX = 20_000  # images: MNIST's test set is 10,000, a validation split at most 12,000; 60,000 is training
SPLIT = r"(?P<split>test|validation|valid|val|train|training)"
# "9952/10000", "9952/10000 (99.52%)", "99.52%", "99.52", "0.9952": a count, a percentage or both.
COUNT_OR_PERCENT = (
    rf"(?:(?P<correct>\d{{1,7}}) {{0,2}}/ {{0,2}}(?P<total>\d{{1,7}})"
    rf"(?: {{0,4}}\(? {{0,2}}(?P<acc>{NUMBER}) {{0,2}}%?)?|(?P<alone>{NUMBER}) {{0,2}}%?)"
)


@dataclass(frozen=True)
class LogFormat:
    name: str
    pattern: re.Pattern
    example: str
    keyword: str  # a lowercase word every matching line holds (a cheap test before the pattern)


def _format(name: str, pattern: str, example: str, keyword: str) -> LogFormat:
    return LogFormat(name, re.compile(pattern), example, keyword)


FORMATS = (
    _format(
        "kit",
        rf"EPOCH\s{{1,8}}(?P<epoch>\d{{1,5}})/(?P<of>\d{{1,5}})\b{GAP}\btest loss {NUMBER} acc (?P<acc>{NUMBER})%",
        "EPOCH  3/15 | lr 0.1 | train loss 0.1 acc 97.00% | test loss 0.03 acc 99.10% | 35.0s",
        "epoch",
    ),
    _format(
        "course",
        rf"(?i)\b{SPLIT} set: {{0,4}}Average loss: {{0,4}}-?{NUMBER}(?:e-?\d+)?, {{0,4}}Accuracy: {{0,4}}"
        rf"(?P<correct>\d{{1,7}})/(?P<total>\d{{1,7}}) {{0,4}}\( {{0,2}}(?P<acc>{NUMBER}) {{0,2}}%\)",
        "Test set: Average loss: 0.0206, Accuracy: 9941/10000 (99.41%)",
        "set:",
    ),
    _format(
        "val-percent",
        rf"(?i)\b{SPLIT} accuracy: {{0,8}}(?P<correct>\d{{1,7}})/(?P<total>\d{{1,7}})\s{{0,8}}\|\s{{0,8}}"
        rf"Percent: {{0,8}}(?P<acc>{NUMBER}) {{0,2}}%",
        "Val Accuracy: 9942/10000 | Percent: 99.42%",
        "percent",
    ),
    _format(
        "keras",
        rf"\bval_acc(?:uracy)?: {{0,4}}(?P<acc>{NUMBER})",
        "Epoch 20/20 ... - loss: 0.02 - accuracy: 0.99 - val_loss: 0.02 - val_accuracy: 0.9943",
        "val_acc",
    ),
    _format(
        "val-accuracy",
        rf"(?i)\b(?P<split>validation|valid|val)[ _]?acc(?:uracy)?\b {{0,4}}[:=]? {{0,8}}{COUNT_OR_PERCENT}",
        "Training Accuracy:99.247, Validation Accuracy:99.450",
        "acc",
    ),
    _format(
        "epoch-test-accuracy",
        rf"(?i)\bepoch\s{{0,4}}[:=]?\s{{0,4}}(?P<epoch>\d{{1,5}})\b{GAP}\btest[ _]acc(?:uracy)?\s{{0,4}}[:=]?\s{{0,4}}"
        rf"(?P<acc>{NUMBER})\s{{0,2}}%?",
        "Epoch 12 ... Test Accuracy: 99.41",
        "acc",
    ),
    _format(
        "test-accuracy",
        rf"(?i)\btest\b{GAP}\bacc(?:uracy)?\b\s{{0,4}}[:=]?\s{{0,4}}{COUNT_OR_PERCENT}",
        "test ... accuracy: 99.41%",
        "acc",
    ),
)
EPOCH_MARKER = re.compile(r"(?i)\bepoch\s{0,4}[:=#]?\s{0,4}(?P<n>\d{1,5})\b(?!\.\d)")


@dataclass
class Epoch:
    cell: int
    epoch: int | None  # as logged, or from the marker printed before it in the same cell
    test_acc: float  # judged: from correct / total where the line has them
    line: str
    claimed_acc: float | None = None  # the line's own percentage, where it also gives a count
    decimals: int = 2  # how many decimals the percentage was printed with
    total: int | None = None  # images counted, where the line gives a count
    split: str = "test"  # "test" (test or validation) or "train"
    output_line: int = 0  # the line of the cell's output it was read from (from 1)


@dataclass
class EpochLog:
    format: LogFormat | None
    runs: list[list[Epoch]] = field(default_factory=list)  # each training run, in notebook order
    evaluations: list[Epoch] = field(default_factory=list)  # accuracy lines outside a training loop
    train_set: list[Epoch] = field(default_factory=list)  # lines over a training set's count
    inconsistent: list[str] = field(default_factory=list)  # lines whose percentage disagrees with their count
    numbering: list[str] = field(default_factory=list)  # epoch numbers out of order within a run

    @property
    def graded(self) -> list[Epoch]:
        """The run the rules judge: the last training run, the one the notebook ends with."""
        return self.runs[-1] if self.runs else []

    @property
    def every_epoch(self) -> list[Epoch]:
        return [e for run in self.runs for e in run]


def _lines(text: str) -> list[tuple[int, int, str]]:
    """(line number, offset, text) of each output line, with tqdm's carriage-return redraws and Keras' backspaces
    split apart; a long line as overlapping windows (a pattern spans at most a few hundred characters)."""
    lines = []
    for number, line in enumerate(re.split(r"[\n\r\x08]", text), start=1):
        if len(line) <= WINDOW:
            if line.strip():
                lines.append((number, 0, line))
            continue
        half = WINDOW // 2
        lines += [(number, start, line[start : start + WINDOW]) for start in range(0, len(line) - half, half)]
    return lines


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def _epoch(match: re.Match, cell: int, line: str, marker: int | None, number: int) -> Epoch | None:
    groups = match.groupdict()
    shown = groups.get("acc") or groups.get("alone")
    claimed, total, decimals = None, None, _decimals(shown or "")
    if groups.get("correct") and groups.get("total") and int(groups["total"]) > 0:
        total = int(groups["total"])
        if int(groups["correct"]) > total:
            return None
        acc, claimed = 100.0 * int(groups["correct"]) / total, float(shown) if shown else None
    elif shown is None:
        return None
    elif (acc := float(shown)) <= 1.0 and "%" not in line[match.end() - 1 : match.end() + 2]:
        acc *= 100.0  # a fraction (0.9941)
        decimals = max(decimals - 2, 0)
    if not 0.0 <= acc <= 100.0:
        return None
    split = (groups.get("split") or "test").lower()
    split = "train" if split.startswith("train") or (total or 0) > TEST_SET_MAX else "test"
    epoch = int(groups["epoch"]) if groups.get("epoch") else marker
    return Epoch(cell, epoch, acc, line.strip()[:300], claimed, decimals, total, split, number)


def _matches(fmt: LogFormat, text: str, cell: int) -> list[Epoch]:
    found, marker, seen = [], None, set()
    for number, offset, line in _lines(text):
        lower = line.lower()
        if "epoch" in lower:
            markers = list(EPOCH_MARKER.finditer(line))
            if markers and (fmt.keyword not in lower or markers[0].start() < 2):
                marker = int(markers[-1]["n"])  # "EPOCH: 3", Keras' "Epoch 3/20" on a line of its own
        if fmt.keyword not in lower:
            continue
        match = fmt.pattern.search(line)
        if match and (number, offset + match.start()) not in seen:
            seen.add((number, offset + match.start()))  # one line read in two overlapping windows
            epoch = _epoch(match, cell, line, marker, number)
            if epoch is not None:
                found.append(epoch)
                if epoch.split == "test" and (epoch.epoch is None or epoch.epoch == marker):
                    marker = None  # a marker numbers the first test line after it only
    return found


def _advancing(entries: list[Epoch]) -> bool:
    numbers = [e.epoch for e in entries if e.epoch is not None]
    return len(numbers) >= 2 and all(b > a for a, b in zip(numbers, numbers[1:]))


def _split_runs(entries: list[Epoch]) -> tuple[list[list[Epoch]], list[Epoch]]:
    """A training cell's lines as runs (a new one where the numbering starts again at 0 or 1), and the lines
    that are evaluations (unnumbered lines in a cell whose other lines are numbered: a final test)."""
    numbered = any(e.epoch is not None for e in entries)
    runs: list[list[Epoch]] = []
    evaluations = []
    for e in entries:
        if numbered and e.epoch is None:
            evaluations.append(e)
        elif runs and not (e.epoch is not None and e.epoch <= 1 and runs[-1][-1].epoch not in (None, 0)):
            runs[-1].append(e)
        else:
            runs.append([e])
    return runs, evaluations


def _join_continued(runs: list[list[Epoch]]) -> list[list[Epoch]]:
    """A run that goes on in a later cell (epochs 11-15 after 1-10) is one run."""
    joined: list[list[Epoch]] = []
    for run in runs:
        last = joined[-1][-1].epoch if joined else None
        if last is not None and run[0].epoch is not None and run[0].epoch == last + 1 and run[0].epoch > 1:
            joined[-1] = joined[-1] + run
        else:
            joined.append(run)
    return joined


def read_epoch_log(notebook: Notebook, structure: dict[int, CellCode] | None = None) -> EpochLog:
    """The notebook's epoch log in the first of ``FORMATS`` (the specific ones first) that matches any line;
    ``structure`` (``grading.structure.read_structure``) says which cells train."""
    structure = structure or {}
    fmt, found = None, []
    for candidate in FORMATS:
        found = [(cell.index, _matches(candidate, cell.output_text, cell.index)) for cell in notebook.code_cells]
        if any(entries for _, entries in found):
            fmt = candidate
            break
    log = EpochLog(fmt)
    runs = []
    for index, entries in found:
        log.train_set += [e for e in entries if e.split == "train"]
        tests = [e for e in entries if e.split == "test"]
        if not tests:
            continue
        code = structure.get(index)
        if (code is not None and code.trains) or _advancing(tests) or (code is None and len(tests) > 1):
            cell_runs, evaluations = _split_runs(tests)
            runs += cell_runs
            log.evaluations += evaluations
        else:
            log.evaluations += tests
    log.runs = _join_continued(runs)
    for _, entries in found:
        for e in entries:
            if e.claimed_acc is not None and abs(e.claimed_acc - e.test_acc) > 0.5 * 10.0**-e.decimals + 1e-9:
                log.inconsistent.append(
                    f"cell {e.cell}, output line {e.output_line}: {e.line!r} (the count is {e.test_acc:.2f}%)"
                )
    for run in log.runs:
        numbers = [e.epoch for e in run if e.epoch is not None]
        if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            log.numbering.append(f"cell {run[0].cell}: epochs logged as {numbers}")
    return log
