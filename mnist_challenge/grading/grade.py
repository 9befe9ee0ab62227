"""Grade an executed notebook from its own outputs: the rules, and what looks misrepresented.

Each rule is PASS, FAIL or UNVERIFIABLE (the notebook does not show what the rule needs: no outputs, no epoch log
the parser can read, a model the grader cannot build); the verdict is FAIL if any rule fails, else UNVERIFIABLE if
any rule cannot be verified, else PASS. Parameters, the FC rule and the required layers come from the model rebuilt
from the notebook's own code (``grading.build``), never from what the notebook prints; epochs and accuracies come
from its epoch log (``grading.epoch_log``).

Flags are reported beside the verdict for a grader to look at; they do not change it:

* a torchsummary total that disagrees with the rebuilt model;
* an accuracy claimed in a markdown cell or the file name that no logged epoch reached;
* execution counts that run backwards, outputs without an execution count, the model's class run after the
  training cell (the model shown is not the one trained), epoch lines printed by no code in the notebook;
* epoch lines whose percentage disagrees with their own count, epoch numbers out of order;
* more than one training run (the last is graded), and a best run that is not the last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_challenge.common.errors import UserError
from mnist_challenge.grading.build import BUILD_TIMEOUT, NotebookModel, notebook_model, split_target
from mnist_challenge.grading.epoch_log import EpochLog, read_epoch_log
from mnist_challenge.grading.ipynb import Notebook, read_notebook
from mnist_challenge.runs.checker import Limits, accuracy_rule, epochs_rule, linear_rule, params_rule, requirement_rules

PASS, FAIL, UNVERIFIABLE = "PASS", "FAIL", "UNVERIFIABLE"
TORCHSUMMARY_TOTAL = re.compile(r"Total params: ([\d,]+)")
CLAIMED_ACCURACY = re.compile(r"(?<![\d.])(99[._]\d{1,3}|100(?:\.0+)?)\s*%")
FILENAME_ACCURACY = re.compile(r"(?<!\d)(99[._]\d{1,3})(?!\d)")
# The text a format's lines begin with, which the code that prints them must contain.
PRINTED_BY = {"kit": "EPOCH", "course": "Test set", "val-percent": "Percent"}


@dataclass
class Grade:
    path: str
    rules: list[dict[str, Any]] = field(default_factory=list)  # rule, result, figure
    flags: list[str] = field(default_factory=list)
    model: str | None = None  # which model was graded, in words
    params: int | None = None
    params_claimed: int | None = None
    has_linear: bool | None = None
    log_format: str | None = None
    epochs: int | None = None
    test_acc: list[float] = field(default_factory=list)
    error: str | None = None  # the notebook could not be read at all

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        results = {r["result"] for r in self.rules}
        return FAIL if FAIL in results else UNVERIFIABLE if UNVERIFIABLE in results else PASS

    def as_dict(self) -> dict[str, Any]:
        return {
            "notebook": self.path,
            "model": self.model,
            "params": self.params,
            "params_claimed": self.params_claimed,
            "has_linear": self.has_linear,
            "log_format": self.log_format,
            "epochs": self.epochs,
            "test_acc": [round(a, 4) for a in self.test_acc],
            "rules": self.rules,
            "flags": self.flags,
            "verdict": self.verdict,
            "error": self.error,
        }

    def format(self) -> str:
        lines = [f"== {self.path}"]
        if self.error:
            return "\n".join([*lines, f"error: {self.error}", "VERDICT: ERROR"])
        if self.model:
            lines.append(f"model: {self.model}")
        if self.log_format:
            lines.append(f"epoch log: format {self.log_format!r}, {self.epochs} epoch(s) in the graded run")
        lines += [f"[{r['result']}] {r['rule']}: {r['figure']}" for r in self.rules]
        lines += [f"FLAG: {flag}" for flag in self.flags]
        lines.append(f"VERDICT: {self.verdict}")
        return "\n".join(lines)


def _judged(rule: dict[str, Any]) -> dict[str, Any]:
    return {"rule": rule["rule"], "result": PASS if rule["passed"] else FAIL, "figure": rule["figure"]}


def _unverifiable(rule: str, why: str) -> dict[str, Any]:
    return {"rule": rule, "result": UNVERIFIABLE, "figure": why}


def _model_rules(grade: Grade, built: NotebookModel | None, why: str, limits: Limits) -> None:
    if built is None:
        grade.rules.append(_unverifiable(f"parameters < {limits.max_params:,}", why))
        grade.rules.append(_unverifiable("no fully connected layer", why))
        return
    grade.params, grade.has_linear = built.report["params"], built.report["has_linear"]
    grade.rules.append(_judged(params_rule(grade.params, limits)))
    grade.rules.append(_judged(linear_rule(grade.has_linear, built.linear_sites)))


def _log_rules(grade: Grade, notebook: Notebook, log: EpochLog, limits: Limits) -> None:
    epochs_name, acc_name = epochs_rule(0, limits)["rule"], accuracy_rule([], limits)["rule"]
    if not notebook.has_outputs:
        why = "the notebook has no outputs: the logs are not visible"
    elif not log.runs:
        why = "no epoch log the grader can read in the outputs"
    else:
        run = log.graded
        grade.log_format, grade.epochs = log.format.name, len(run)
        grade.test_acc = [e.test_acc for e in run]
        grade.rules.append(_judged(epochs_rule(len(run), limits)))
        grade.rules.append(_judged(accuracy_rule(grade.test_acc, limits)))
        return
    grade.rules.append(_unverifiable(epochs_name, why))
    grade.rules.append(_unverifiable(acc_name, why))


def _summary_flags(grade: Grade, notebook: Notebook) -> None:
    totals = [int(m.replace(",", "")) for c in notebook.code_cells for m in TORCHSUMMARY_TOTAL.findall(c.output_text)]
    if totals:
        grade.params_claimed = totals[-1]
        if grade.params is not None and grade.params_claimed != grade.params:
            grade.flags.append(
                f"torchsummary shows {grade.params_claimed:,} parameters; the model built from the notebook's code "
                f"has {grade.params:,}"
            )


def _claim_flags(grade: Grade, notebook: Notebook, log: EpochLog) -> None:
    claims = [(float(m.replace("_", ".")), "a markdown cell") for c in notebook.cells if c.kind == "markdown"
              for m in CLAIMED_ACCURACY.findall(c.source)]  # fmt: skip
    claims += [(float(m.replace("_", ".")), "the file name") for m in FILENAME_ACCURACY.findall(Path(grade.path).stem)]
    logged = [e.test_acc for e in log.every_epoch]
    best = max(logged, default=None)
    for value, where in claims:
        if best is None:
            grade.flags.append(f"{where} claims {value:g}% but no epoch log is visible")
        elif value > best + 0.005:
            grade.flags.append(f"{where} claims {value:g}% but no logged epoch reached it (best {best:.2f}%)")


def _order_flags(grade: Grade, notebook: Notebook, log: EpochLog, built: NotebookModel | None) -> None:
    counted = [(c.index, c.execution_count) for c in notebook.code_cells if c.execution_count is not None]
    for (cell_a, count_a), (cell_b, count_b) in zip(counted, counted[1:]):
        if count_b < count_a:
            grade.flags.append(
                f"execution counts run backwards: cell {cell_b} ran as [{count_b}] after cell {cell_a} ran as "
                f"[{count_a}] (run out of order, or edited and re-run)"
            )
            break
    silent = [c.index for c in notebook.code_cells if c.outputs and c.execution_count is None]
    if silent:
        grade.flags.append(f"outputs without an execution count in cell(s) {silent} (pasted or edited outputs)")
    if built is not None and log.runs:
        counts = {c.index: c.execution_count for c in notebook.cells}
        trained_at = counts.get(log.graded[-1].cell)
        for name, (cell, _) in built.source.classes.items():
            defined_at = counts.get(cell)
            if trained_at is not None and defined_at is not None and defined_at > trained_at:
                grade.flags.append(
                    f"class {name} (cell {cell}, [{defined_at}]) was run after the training cell ([{trained_at}]): "
                    "the model shown may not be the one trained"
                )
    marker = PRINTED_BY.get(log.format.name) if log.format else None
    if marker and not any(marker in c.source for c in notebook.code_cells):
        grade.flags.append(
            f"the epoch lines ({log.format.name!r} format, starting {marker!r}) are printed by no code in the "
            "notebook: the outputs were edited or pasted"
        )


def _log_flags(grade: Grade, log: EpochLog, limits: Limits) -> None:
    for line in log.inconsistent:
        grade.flags.append(f"an epoch line's percentage disagrees with its own count: {line}")
    for numbers in log.numbering:
        grade.flags.append(f"epoch numbers out of order: {numbers}")
    if len(log.runs) > 1:
        cells = sorted({run[0].cell for run in log.runs})
        grade.flags.append(f"{len(log.runs)} training runs logged (cells {cells}); the last one is graded")
        k = limits.last_k

        def worst_of_last(run: list) -> float:
            return min(e.test_acc for e in run[-k:])

        best = max(range(len(log.runs)), key=lambda i: worst_of_last(log.runs[i]))
        if best != len(log.runs) - 1 and worst_of_last(log.runs[best]) > worst_of_last(log.graded):
            grade.flags.append(
                f"an earlier run (cell {log.runs[best][0].cell}) did better in its last {k} epochs than the last run: "
                "quoting it would quote the best of several runs"
            )


def grade_notebook(
    target: str, limits: Limits = Limits(), requires: tuple[str, ...] = (), timeout: float = BUILD_TIMEOUT
) -> Grade:
    """The grade of one notebook (``FILE.ipynb[:NAME]``) by ``limits``, with the layer kinds ``requires`` names
    (``runs.budgets.REQUIREMENTS``); a file that is not a readable notebook is a ``Grade`` with ``error`` set, so
    that a batch goes on."""
    path, _ = split_target(target)
    grade = Grade(str(path))
    try:
        notebook = read_notebook(path)
    except UserError as exc:
        grade.error = str(exc)
        return grade
    built, why = None, ""
    try:
        built = notebook_model(target, timeout=timeout, notebook=notebook)
        grade.model = built.source.chosen
    except UserError as exc:
        why = f"the model cannot be built from the notebook: {exc}"
    log = read_epoch_log(notebook)
    _model_rules(grade, built, why, limits)
    _log_rules(grade, notebook, log, limits)
    if requires:
        if built is None:
            grade.rules += [_unverifiable(r["rule"], why) for r in requirement_rules({}, requires)]
        else:
            grade.rules += [_judged(r) for r in requirement_rules(built.usage, requires)]
    _summary_flags(grade, notebook)
    _claim_flags(grade, notebook, log)
    _order_flags(grade, notebook, log, built)
    _log_flags(grade, log, limits)
    return grade
