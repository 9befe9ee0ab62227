"""Build a notebook's model contained, with a time limit, and bring back its inspection.

``notebook_model("FILE.ipynb[:NAME]")`` parses the notebook (``model_source``), refuses code that could change
what the grader measures (``tamper``), writes the model-defining code as one program and runs ``grading.worker``
on it in the sandbox (``sandbox``): the notebook's code never runs in the grader's own process, with the grader's
user, files, environment or network, and a model that hangs, loops or grows is stopped.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_challenge.common.errors import UserError
from mnist_challenge.grading.ipynb import Notebook, read_notebook
from mnist_challenge.grading.model_source import ModelSource, choose_model, parse_model_source
from mnist_challenge.grading.sandbox import Outcome, containment, notebook_sources, run_contained
from mnist_challenge.grading.tamper import Finding, find_tampering
from mnist_challenge.grading.worker import check_outcome

BUILD_TIMEOUT = 120.0  # seconds for the sandbox: the imports of torch, the model, two forward passes
LOCAL_SOURCE_LIMIT = 2 << 20  # bytes of .py files beside a notebook that the static pass reads


class Refused(UserError):
    """The static pass found code that could change what the grader measures: not run."""

    def __init__(self, path: Path, findings: list[Finding]):
        self.findings = findings
        shown = "; ".join(map(str, findings[:3])) + (f"; and {len(findings) - 3} more" if len(findings) > 3 else "")
        super().__init__(
            f"{path}: not run: the model's code could change what the grader measures ({shown}); the grader "
            "does not run code that rebinds what it did not define or reaches into the interpreter"
        )


@dataclass
class NotebookModel:
    notebook: Notebook
    source: ModelSource
    report: dict[str, Any]  # the inspector's report (``Report.as_dict``)
    text: str  # the report as ``inspect`` prints it
    usage: dict[str, list[str]]  # where the forward uses BatchNorm, Dropout, global average pooling
    containment: str = ""  # how the code ran (``sandbox.containment``)

    @property
    def linear_sites(self) -> list[str]:
        """Each fully connected layer the inspector found, with the cell and line that defines it when known."""
        sites = []
        for layer in self.report.get("linear_layers") or []:
            where = self.source.where(layer)
            sites.append(f"{layer} ({where})" if where else layer)
        return sites


def run_worker(arguments: list[str], readable: list[Path], job: Path, timeout: float) -> Outcome:
    """``python -m mnist_challenge.grading.worker ARGUMENTS``, contained (a seam the tests use to run it inline)."""
    command = [sys.executable, "-m", "mnist_challenge.grading.worker", *arguments]
    return run_contained(command, readable, job, timeout)


def split_target(target: str) -> tuple[Path, str | None]:
    """``FILE.ipynb`` or ``FILE.ipynb:NAME``."""
    path, sep, name = target.rpartition(":")
    if sep and path.endswith(".ipynb") and name.isidentifier():
        return Path(path), name
    return Path(target), None


def _local_sources(folder: Path) -> list[tuple[str, int, str]]:
    """The ``.py`` files beside the notebook (and in its packages), for the static pass."""
    files: list[Path] = []
    for entry in notebook_sources(folder):
        files += sorted(entry.rglob("*.py"))[:200] if entry.is_dir() else [entry]
    sources, size = [], 0
    for file in files:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        size += len(text)
        if size > LOCAL_SOURCE_LIMIT:
            break
        sources.append((file.relative_to(folder).as_posix(), 1, text))
    return sources


def tampering(source: ModelSource, folder: Path) -> list[Finding]:
    """What the static pass finds in the kept code and the author's files beside the notebook."""
    cells = [(f"cell {s.cell}", s.line, s.source) for s in source.statements]
    return find_tampering(cells + _local_sources(folder), set(source.imported))


def notebook_model(
    target: str | Path,
    input_size: tuple[int, ...] = (1, 28, 28),
    timeout: float = BUILD_TIMEOUT,
    output_choice: str | None = None,
    notebook: Notebook | None = None,
) -> NotebookModel:
    """The model a notebook defines, built and inspected contained (``output_choice``: which of several outputs
    the RF is reported for, as ``inspect --output``); any failure is a ``UserError`` (``Refused`` for code the
    static pass refuses)."""
    path, name = split_target(str(target))
    notebook = notebook if notebook is not None else read_notebook(path)  # a grader has read it already
    source = choose_model(parse_model_source(notebook), name, str(path))
    folder = path.resolve().parent
    findings = tampering(source, folder)
    if findings:
        raise Refused(path, findings)
    with tempfile.TemporaryDirectory(prefix="kit-notebook-") as job:
        program = Path(job) / "notebook_model.py"
        program.write_text(source.program(), encoding="utf-8")
        Path(job).chmod(0o755)  # the sandboxed code reads it as another user
        program.chmod(0o644)
        size = ",".join(map(str, input_size))
        arguments = ["{job}/notebook_model.py", size, output_choice or "", str(folder)]
        done = run_worker(arguments, notebook_sources(folder), Path(job), timeout)
    if done.returncode is None:
        raise UserError(f"{path}: building and inspecting its model took over {timeout:g} s; stopped")
    outcome = check_outcome(done.stdout.encode()) if done.stdout else None
    if outcome is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise UserError(f"{path}: the model's process ended without a result (exit {done.returncode}): {tail}")
    if "error" in outcome:
        raise UserError(f"{path}: {outcome['error']}")
    return NotebookModel(notebook, source, outcome["report"], outcome["text"], outcome["usage"], done.containment)


__all__ = ["BUILD_TIMEOUT", "NotebookModel", "Refused", "containment", "notebook_model", "split_target"]
