"""Grade an executed notebook from its own outputs: the rules, and what looks misrepresented.

Each rule is PASS, FAIL or UNVERIFIABLE (the notebook does not show what the rule needs: no outputs, no epoch log
the parser can read, a model the grader cannot build); the verdict is FAIL if any rule fails, else UNVERIFIABLE if
any rule cannot be verified, else PASS. Parameters, the FC rule and the required layers come from the model rebuilt
from the notebook's own code (``grading.build``), never from what the notebook prints — except that the notebook's
own torchsummary of the trained model can make a rule FAIL when the model cannot be built (a ``Linear`` row, a
total over the limit: a student does not forge a failure). Epochs and accuracies come from the training run of its
epoch log (``grading.epoch_log``), found by structure (``grading.structure``).

Flags are reported beside the verdict for a grader to look at; they do not change it. Each names the cell and the
lines it compared, and fires only on evidence that an honest notebook does not produce:

* the trained model's own torchsummary total disagrees with the rebuilt model (a summary of another model is not
  compared);
* an accuracy claimed in a markdown cell or the file name that no logged test epoch reached;
* the model's class run after the training cell (the model shown is not the one trained);
* epoch lines shown by a cell whose code prints nothing and calls nothing that could (pasted outputs);
* an epoch line whose percentage disagrees with its own count at the precision it was printed with, epoch
  numbers out of order;
* more than one training run (the last is graded) and a best run that is not the last;
* a model trained on from an earlier run: its construction commented out, nothing else builds it;
* code the static pass refused (``grading.tamper``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_challenge.common.errors import UserError
from mnist_challenge.grading.build import BUILD_TIMEOUT, NotebookModel, Refused, notebook_model, split_target
from mnist_challenge.grading.epoch_log import TEST_SET_MAX, EpochLog, read_epoch_log
from mnist_challenge.grading.ipynb import Notebook, read_notebook
from mnist_challenge.grading.model_source import ModelSource, parse_model_source
from mnist_challenge.grading.structure import CellCode, read_structure
from mnist_challenge.runs.checker import Limits, accuracy_rule, epochs_rule, linear_rule, params_rule, requirement_rules

PASS, FAIL, UNVERIFIABLE = "PASS", "FAIL", "UNVERIFIABLE"
TORCHSUMMARY_TOTAL = re.compile(r"Total params: ([\d,]{1,15})")
SUMMARY_LINEAR = re.compile(r"\b(?:(?:Lazy)?Linear|Bilinear)-\d{1,4}\b")
CLAIMED_ACCURACY = re.compile(r"(?<![\d.])(99[._]\d{1,3}|100(?:\.0+)?)\s{0,2}%")
# "99.4", "99_4", "99-4", "99,4", "99p4" in a file name.
FILENAME_ACCURACY = re.compile(r"(?<![\d.])99[._,p-](\d{1,3})(?![\d])")
KERAS_IMPORT = re.compile(r"(?m)^\s*(?:from|import)\s+(?:tensorflow|keras|tf_keras)\b")


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
    containment: str | None = None  # how the model's code ran (``grading.sandbox.containment``)
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
            "containment": self.containment,
            "error": self.error,
        }

    def format(self) -> str:
        lines = [f"== {self.path}"]
        if self.error:
            return "\n".join([*lines, f"error: {self.error}", "VERDICT: ERROR"])
        if self.model:
            lines.append(
                f"model: {self.model}" + (f" (built contained: {self.containment})" if self.containment else "")
            )
        if self.log_format:
            lines.append(f"epoch log: format {self.log_format!r}, {self.epochs} epoch(s) in the graded run")
        lines += [f"[{r['result']}] {r['rule']}: {r['figure']}" for r in self.rules]
        lines += [f"FLAG: {flag}" for flag in self.flags]
        lines.append(f"VERDICT: {self.verdict}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        return f"<pre>{escape(self.format())}</pre>"

    def __repr__(self) -> str:
        return self.format()


def _judged(rule: dict[str, Any]) -> dict[str, Any]:
    return {"rule": rule["rule"], "result": PASS if rule["passed"] else FAIL, "figure": rule["figure"]}


def _unverifiable(rule: str, why: str) -> dict[str, Any]:
    return {"rule": rule, "result": UNVERIFIABLE, "figure": why}


@dataclass
class _Summary:
    cell: int
    total: int
    linear_rows: list[str]
    relevant: bool  # of the graded model (its variable or class), as far as the code says


def _summaries(notebook: Notebook, structure: dict[int, CellCode], names: set[str]) -> list[_Summary]:
    found = []
    for cell in notebook.code_cells:
        totals = TORCHSUMMARY_TOTAL.findall(cell.output_text)
        if not totals:
            continue
        code = structure.get(cell.index)
        summarised = {n.split(".")[-1] for n in code.summaries} if code else set()
        relevant = bool(summarised & names) or (not summarised and len(totals) == 1)
        linear = sorted(set(SUMMARY_LINEAR.findall(cell.output_text)))
        found.append(_Summary(cell.index, int(totals[-1].replace(",", "")), linear, relevant))
    return found


def _model_rules(grade: Grade, built: NotebookModel | None, why: str, limits: Limits, summaries: list[_Summary]):
    if built is not None:
        grade.params, grade.has_linear = built.report["params"], built.report["has_linear"]
        grade.rules.append(_judged(params_rule(grade.params, limits)))
        unused = built.report.get("linear_unused") or []
        grade.rules.append(_judged(linear_rule(grade.has_linear, built.linear_sites, unused)))
        return
    own = [s for s in summaries if s.relevant]
    over = next((s for s in own if s.total >= limits.max_params), None)
    if over is not None:
        figure = f"{over.total:,} in the notebook's own torchsummary (cell {over.cell}); the model: {why}"
        grade.rules.append({"rule": params_rule(0, limits)["rule"], "result": FAIL, "figure": figure})
    else:
        grade.rules.append(_unverifiable(f"parameters < {limits.max_params:,}", why))
    linear = next((s for s in own if s.linear_rows), None)
    if linear is not None:
        figure = f"the notebook's own torchsummary (cell {linear.cell}) lists {', '.join(linear.linear_rows)}"
        grade.rules.append({"rule": "no fully connected layer", "result": FAIL, "figure": figure})
    else:
        grade.rules.append(_unverifiable("no fully connected layer", why))


def _log_rules(grade: Grade, notebook: Notebook, log: EpochLog, limits: Limits) -> None:
    epochs_name, acc_name = epochs_rule(0, limits)["rule"], accuracy_rule([], limits)["rule"]
    if not notebook.has_outputs:
        why = "the notebook has no outputs: the logs are not visible"
    elif log.runs:
        run = log.graded
        grade.log_format, grade.epochs = log.format.name, len(run)
        grade.test_acc = [e.test_acc for e in run]
        grade.rules.append(_judged(epochs_rule(len(run), limits)))
        grade.rules.append(_judged(accuracy_rule(grade.test_acc, limits)))
        return
    elif log.train_set and not log.evaluations:
        first = log.train_set[0]
        figure = (
            f"the only accuracy logged counts {first.total or 'training'} images (cell {first.cell}, output line "
            f"{first.output_line}: {first.line!r}): that is the training set (a test set has at most "
            f"{TEST_SET_MAX:,}), so no test or validation accuracy is shown"
        )
        grade.log_format = log.format.name if log.format else None
        grade.rules.append(_unverifiable(epochs_name, "no training run with a test or validation accuracy is logged"))
        grade.rules.append({"rule": acc_name, "result": FAIL, "figure": figure})
        return
    elif log.evaluations:
        cells = sorted({e.cell for e in log.evaluations})
        why = f"accuracy is printed only by evaluations outside a training loop (cells {cells}), not per epoch"
    else:
        why = "no epoch log the grader can read in the outputs"
    grade.rules.append(_unverifiable(epochs_name, why))
    grade.rules.append(_unverifiable(acc_name, why))


def _summary_flags(grade: Grade, summaries: list[_Summary]) -> None:
    own = [s for s in summaries if s.relevant]
    if own:
        grade.params_claimed = own[-1].total
    if grade.params is None or not own or any(s.total == grade.params for s in own):
        return
    shown = ", ".join(f"{s.total:,} (cell {s.cell})" for s in own)
    grade.flags.append(
        f"the trained model's torchsummary shows {shown} parameters; the model built from the notebook's code has "
        f"{grade.params:,}"
    )


def _claim_flags(grade: Grade, notebook: Notebook, log: EpochLog) -> None:
    claims = [(float(m.replace("_", ".")), f"markdown cell {c.index}") for c in notebook.cells
              if c.kind == "markdown" for m in CLAIMED_ACCURACY.findall(c.source)]  # fmt: skip
    claims += [(float(f"99.{m}"), "the file name") for m in FILENAME_ACCURACY.findall(Path(grade.path).stem)]
    logged = log.every_epoch + log.evaluations
    best = max(logged, key=lambda e: e.test_acc, default=None)
    for value, where in claims:
        if best is None:
            grade.flags.append(f"{where} claims {value:g}% but no test accuracy is logged")
        elif value > best.test_acc + 0.005:
            grade.flags.append(
                f"{where} claims {value:g}% but no logged test epoch reached it (best {best.test_acc:.2f}%, cell "
                f"{best.cell}: {best.line!r})"
            )


def _order_flags(grade: Grade, notebook: Notebook, log: EpochLog, built: NotebookModel | None, structure) -> None:
    if built is not None and log.runs:
        counts = {c.index: c.execution_count for c in notebook.cells}
        training_cell = log.graded[-1].cell
        trained_at = counts.get(training_cell)
        for name, (cell, _) in built.source.classes.items():
            defined_at = counts.get(cell)
            if name in built.source.expression and trained_at is not None and defined_at is not None:
                if defined_at > trained_at:
                    grade.flags.append(
                        f"class {name} (cell {cell}, [{defined_at}]) was run after the training cell (cell "
                        f"{training_cell}, [{trained_at}]): the model shown may not be the one trained"
                    )
    for cell in sorted({run[0].cell for run in log.runs}):
        code = structure.get(cell)
        if code is not None and code.parsed and not code.prints:
            source = next(c.source for c in notebook.code_cells if c.index == cell).strip().split("\n")
            shown = "no code" if code.empty else f"only {source[0][:80]!r}" + (" ..." if len(source) > 1 else "")
            grade.flags.append(
                f"cell {cell} shows epoch lines but its code ({shown}) prints nothing and calls nothing that could: "
                "the outputs were pasted or edited"
            )


def _resumed_flag(grade: Grade, log: EpochLog, structure: dict[int, CellCode], trained: str | None) -> None:
    """A model trained on from an earlier run: the training cell uses a variable that no live code before it
    builds, while a construction of it is commented out."""
    if not log.runs or not trained:
        return
    training_cell = log.graded[0].cell
    before = [c for i, c in sorted(structure.items()) if i <= training_cell]
    if any(variable == trained for c in before for variable, _ in c.constructions):
        return
    commented = [(c.index, line, callee) for c in before for line, variable, callee in c.commented_constructions
                 if variable == trained]  # fmt: skip
    if commented:
        cell, line, callee = commented[-1]
        first = log.graded[0]
        grade.flags.append(
            f"the model trained in cell {training_cell} ({trained}) is built by no code before it: its construction "
            f"is commented out (cell {cell}, line {line}: '# {trained} = {callee}(...)'), so training went on from "
            f"an earlier run (epoch {first.epoch or 1} already logs {first.test_acc:.2f}%)"
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
                f"an earlier run (cell {log.runs[best][0].cell}) did better in its last {k} epochs "
                f"({worst_of_last(log.runs[best]):.2f}% at worst) than the graded run (cell {log.graded[0].cell}, "
                f"{worst_of_last(log.graded):.2f}%): quoting it would quote the best of several runs"
            )


def _graded_names(source: ModelSource, built: bool) -> set[str]:
    """The variable and class of the graded model, to tell its torchsummary from another model's."""
    names = {source.trained} if source.trained else set()
    return names | (set(re.findall(r"[A-Za-z_]\w*", source.expression)) if built else set(source.module_classes))


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
    structure = read_structure(notebook)
    built, why = None, ""
    if any(KERAS_IMPORT.search(c.source) for c in notebook.code_cells):
        why = "a Keras model: the grader builds and inspects PyTorch models only (not verifiable)"
    else:
        try:
            built = notebook_model(target, timeout=timeout, notebook=notebook)
            grade.model, grade.containment = built.source.chosen, built.containment
        except Refused as exc:
            why = f"the model's code was not run: {', '.join(map(str, exc.findings[:3]))}"
            grade.flags += [f"code that could change what the grader measures, refused: {f}" for f in exc.findings]
        except UserError as exc:
            why = f"the model cannot be built from the notebook: {exc}"
    log = read_epoch_log(notebook, structure)
    source = built.source if built is not None else parse_model_source(notebook)
    summaries = _summaries(notebook, structure, _graded_names(source, built is not None))
    _model_rules(grade, built, why, limits, summaries)
    _log_rules(grade, notebook, log, limits)
    if requires:
        if built is None:
            grade.rules += [_unverifiable(r["rule"], why) for r in requirement_rules({}, requires)]
        else:
            grade.rules += [_judged(r) for r in requirement_rules(built.usage, requires)]
    _summary_flags(grade, summaries)
    _claim_flags(grade, notebook, log)
    _order_flags(grade, notebook, log, built, structure)
    _resumed_flag(grade, log, structure, source.trained)
    _log_flags(grade, log, limits)
    return grade


def check_notebook(path: str | Path, rules: str = "original", timeout: float = BUILD_TIMEOUT, **limits: Any) -> Grade:
    """Grade an executed notebook as ``mnist-challenge check-notebook`` does, from its own outputs: the rules of the
    set ``rules`` names (``original``: < 20,000 parameters, <= 19 epochs, >= 99.4 % in each of the last 3, no FC
    layer), with any of its limits replaced (``max_params=8000``, ``max_epochs=15``, ``min_acc=99.4``,
    ``last_k=3``). The grade's repr is the block the command prints (its rules, flags and verdict)::

        import mnist_challenge as mc
        mc.check_notebook("my_submission.ipynb")
    """
    import dataclasses

    from mnist_challenge.runs.budgets import rules_named

    chosen = rules_named(rules)
    known = {f.name for f in dataclasses.fields(chosen.limits)}
    unknown = sorted(set(limits) - known)
    if unknown:
        raise UserError(f"check_notebook: unknown limit(s) {', '.join(unknown)}; one of {', '.join(sorted(known))}")
    return grade_notebook(str(path), dataclasses.replace(chosen.limits, **limits), chosen.requires, timeout)
