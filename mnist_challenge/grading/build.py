"""Build a notebook's model in a subprocess, with a time limit, and bring back its inspection.

``notebook_model("FILE.ipynb[:NAME]")`` parses the notebook (``model_source``), writes the model-defining code as
one program and runs ``grading.worker`` on it: the notebook's code never runs in the grader's own process, and a
model that hangs or loops is stopped after ``timeout`` seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_challenge.common.errors import UserError
from mnist_challenge.grading.ipynb import Notebook, read_notebook
from mnist_challenge.grading.model_source import ModelSource, choose_model, parse_model_source

BUILD_TIMEOUT = 120.0  # seconds for the subprocess: the imports of torch, the model, two forward passes


@dataclass
class NotebookModel:
    notebook: Notebook
    source: ModelSource
    report: dict[str, Any]  # the inspector's report (``Report.as_dict``)
    text: str  # the report as ``inspect`` prints it
    usage: dict[str, list[str]]  # where the forward uses BatchNorm, Dropout, global average pooling

    @property
    def linear_sites(self) -> list[str]:
        """Each fully connected layer the inspector found, with the cell and line that defines it when known."""
        sites = []
        for layer in self.report.get("linear_layers") or []:
            where = self.source.where(layer)
            sites.append(f"{layer} ({where})" if where else layer)
        return sites


def run_worker(arguments: list[str], cwd: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -m mnist_challenge.grading.worker ARGUMENTS`` in ``cwd`` (a seam the tests use to run it inline)."""
    command = [sys.executable, "-m", "mnist_challenge.grading.worker", *arguments]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def split_target(target: str) -> tuple[Path, str | None]:
    """``FILE.ipynb`` or ``FILE.ipynb:NAME``."""
    path, sep, name = target.rpartition(":")
    if sep and path.endswith(".ipynb") and name.isidentifier():
        return Path(path), name
    return Path(target), None


def notebook_model(
    target: str | Path,
    input_size: tuple[int, ...] = (1, 28, 28),
    timeout: float = BUILD_TIMEOUT,
    output_choice: str | None = None,
    notebook: Notebook | None = None,
) -> NotebookModel:
    """The model a notebook defines, built and inspected in a subprocess (``output_choice``: which of several
    outputs the RF is reported for, as ``inspect --output``); any failure is a ``UserError``."""
    path, name = split_target(str(target))
    notebook = notebook if notebook is not None else read_notebook(path)  # a grader has read it already
    source = choose_model(parse_model_source(notebook), name, str(path))
    with tempfile.TemporaryDirectory(prefix="kit-notebook-") as tmp:
        program, result = Path(tmp) / "notebook_model.py", Path(tmp) / "result.json"
        program.write_text(source.program())
        arguments = [
            str(program),
            str(result),
            ",".join(map(str, input_size)),
            *([output_choice] if output_choice else []),
        ]
        try:
            done = run_worker(arguments, tmp, timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"{path}: building and inspecting its model took over {timeout:g} s; stopped") from None
        if not result.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"{path}: the model's subprocess ended without a result (exit {done.returncode}): {tail}")
        outcome = json.loads(result.read_text())
    if "error" in outcome:
        raise UserError(f"{path}: {outcome['error']}")
    return NotebookModel(notebook, source, outcome["report"], outcome["text"], outcome["usage"])
