"""The epoch log of an executed notebook, read from its cells' outputs.

Students log one line per epoch in a handful of formats; each is a ``LogFormat``: a regular expression with named
groups for the test accuracy (``acc``, a percentage, or ``correct`` / ``total``) and, where the line has one, the
epoch number (``epoch``). The first format (specific ones first, a generic "test ... accuracy" last) that matches
a line of the outputs is the log; where the line
gives both a count and a percentage (``9941/10000 (99.41%)``) the count is what is judged, and a percentage that
disagrees with it is reported (an edited log).

A run is a sequence of epochs in one cell's output; the numbering starting again at 1, or the log spread over two
cells, means several training runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mnist_challenge.grading.ipynb import Notebook

NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"


@dataclass(frozen=True)
class LogFormat:
    name: str
    pattern: re.Pattern
    example: str


FORMATS = (
    LogFormat(
        "kit",
        re.compile(rf"EPOCH\s+(?P<epoch>\d+)/(?P<of>\d+)\b.*?\btest loss {NUMBER} acc (?P<acc>{NUMBER})%"),
        "EPOCH  3/15 | lr 0.1 | train loss 0.1 acc 97.00% | test loss 0.03 acc 99.10% | 35.0s",
    ),
    LogFormat(
        "course",
        re.compile(
            rf"Test set: Average loss: ?{NUMBER}, Accuracy: ?(?P<correct>\d+)/(?P<total>\d+) \((?P<acc>{NUMBER})%\)"
        ),
        "Test set: Average loss: 0.0206, Accuracy: 9941/10000 (99.41%)",
    ),
    LogFormat(
        "val-percent",
        re.compile(
            rf"(?i)\b(?:val|valid|validation|test) accuracy: ?(?P<correct>\d+)/(?P<total>\d+)\s*\|\s*"
            rf"Percent: ?(?P<acc>{NUMBER})%"
        ),
        "Val Accuracy: 9942/10000 | Percent: 99.42%",
    ),
    LogFormat(
        "epoch-test-accuracy",
        re.compile(
            rf"(?i)\bepoch\s*[:=]?\s*(?P<epoch>\d+)\b.*?\btest[ _]acc(?:uracy)?\s*[:=]?\s*(?P<acc>{NUMBER})\s*%?"
        ),
        "Epoch 12 ... Test Accuracy: 99.41",
    ),
    LogFormat(
        "test-accuracy",
        re.compile(
            rf"(?i)\btest\b[^\n]*?\bacc(?:uracy)?\b\s*[:=]?\s*(?:(?P<correct>\d+)/(?P<total>\d+)\s*\(?)?"
            rf"(?P<acc>{NUMBER})\s*%?"
        ),
        "test ... accuracy: 99.41%",
    ),
)


@dataclass
class Epoch:
    cell: int
    epoch: int | None  # as logged, if the line numbers its epoch
    test_acc: float  # judged: from correct / total where the line has them
    line: str
    claimed_acc: float | None = None  # the line's own percentage, where it also gives a count


@dataclass
class EpochLog:
    format: LogFormat | None
    runs: list[list[Epoch]] = field(default_factory=list)  # each training run, in notebook order
    inconsistent: list[str] = field(default_factory=list)  # lines whose percentage disagrees with their count
    numbering: list[str] = field(default_factory=list)  # epoch numbers out of order within a run

    @property
    def graded(self) -> list[Epoch]:
        """The run the rules judge: the last, the one the notebook ends with."""
        return self.runs[-1] if self.runs else []

    @property
    def every_epoch(self) -> list[Epoch]:
        return [e for run in self.runs for e in run]


def _lines(text: str) -> list[str]:
    """Output lines, with tqdm's carriage-return redraws split apart."""
    return [line for chunk in text.split("\n") for line in chunk.split("\r") if line.strip()]


def _epoch(fmt: LogFormat, match: re.Match, cell: int, line: str) -> Epoch | None:
    groups = match.groupdict()
    try:
        acc = float(groups["acc"])
    except (TypeError, ValueError):
        return None
    claimed = None
    if groups.get("correct") and groups.get("total") and int(groups["total"]) > 0:
        claimed, acc = acc, 100.0 * int(groups["correct"]) / int(groups["total"])
    elif acc <= 1.0 and "%" not in line[match.start("acc") : match.end() + 1]:
        acc *= 100.0  # a fraction (0.9941)
    if not 0.0 <= acc <= 100.0:
        return None
    epoch = int(groups["epoch"]) if groups.get("epoch") else None
    return Epoch(cell, epoch, acc, line.strip(), claimed)


def _matches(fmt: LogFormat, text: str, cell: int) -> list[Epoch]:
    found = []
    for line in _lines(text):
        match = fmt.pattern.search(line)
        if match:
            epoch = _epoch(fmt, match, cell, line)
            if epoch is not None:
                found.append(epoch)
    return found


def _split_runs(epochs: list[Epoch]) -> list[list[Epoch]]:
    """One run per cell; within a cell, a new run where the epoch numbering starts again."""
    runs: list[list[Epoch]] = []
    for e in epochs:
        restart = e.epoch is not None and runs and runs[-1][-1].epoch is not None and e.epoch <= runs[-1][-1].epoch
        if not runs or runs[-1][-1].cell != e.cell or (restart and e.epoch == 1):
            runs.append([e])
        else:
            runs[-1].append(e)
    return runs


def read_epoch_log(notebook: Notebook) -> EpochLog:
    """The notebook's epoch log in the first of ``FORMATS`` (the specific ones first) that matches any line."""
    fmt, epochs = None, []
    for candidate in FORMATS:
        epochs = [e for cell in notebook.code_cells for e in _matches(candidate, cell.output_text, cell.index)]
        if epochs:
            fmt = candidate
            break
    log = EpochLog(fmt, _split_runs(epochs))
    for e in epochs:
        if e.claimed_acc is not None and abs(e.claimed_acc - e.test_acc) >= 0.005 + 1e-9:
            log.inconsistent.append(f"cell {e.cell}: {e.line!r} (the count is {e.test_acc:.2f}%)")
    for run in log.runs:
        numbers = [e.epoch for e in run if e.epoch is not None]
        if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            log.numbering.append(f"cell {run[0].cell}: epochs logged as {numbers}")
    return log
