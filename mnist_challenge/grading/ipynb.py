"""An ``.ipynb`` file read as the grader needs it: its cells, their sources, execution counts and output text.

Read as JSON (nbformat 4, the format Jupyter and Colab save), so grading needs no notebook packages. A file that is
not such a notebook is one ``UserError`` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_challenge.common.errors import UserError


@dataclass
class Cell:
    index: int  # position in the notebook, from 1 as Jupyter's "cell N" counts
    kind: str  # "code", "markdown" or "raw"
    source: str
    execution_count: int | None = None
    outputs: list[str] = field(default_factory=list)  # the text of each output: streams, results, errors

    @property
    def output_text(self) -> str:
        return "".join(self.outputs)


@dataclass
class Notebook:
    path: Path
    cells: list[Cell]

    @property
    def code_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.kind == "code"]

    @property
    def has_outputs(self) -> bool:
        return any(c.outputs for c in self.code_cells)


def _text(value: Any) -> str:
    """Jupyter stores text as a string or a list of lines; a lone surrogate (which no file or terminal can take)
    becomes U+FFFD."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = "".join(value)
    if not isinstance(value, str):
        return ""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _output_text(output: dict[str, Any]) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return _text(output.get("text"))
    if kind in ("execute_result", "display_data"):
        data = output.get("data")
        return _text(data.get("text/plain")) if isinstance(data, dict) else ""
    if kind == "error":
        return f"{_text(output.get('ename')) or 'Error'}: {_text(output.get('evalue'))}\n"
    return ""


def read_notebook(path: str | Path) -> Notebook:
    """The notebook at ``path``; a missing file, bad JSON or a file without a cell list is a ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"notebook not found: {path}" if not path.is_dir() else f"{path} is a folder, not a notebook")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable .ipynb notebook ({type(exc).__name__}: {exc})") from None
    except RecursionError:
        raise UserError(f"{path}: not a readable .ipynb notebook (its JSON is nested too deeply)") from None
    raw_cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(raw_cells, list):
        raise UserError(f"{path}: not a Jupyter notebook (nbformat 4): no list of cells")
    cells = []
    for i, raw in enumerate(raw_cells, start=1):
        if not isinstance(raw, dict):
            raise UserError(f"{path}: cell {i} is malformed")
        count = raw.get("execution_count")
        outputs = raw.get("outputs") if isinstance(raw.get("outputs"), list) else []
        kind = raw.get("cell_type", "code")
        cells.append(
            Cell(
                index=i,
                kind=kind if isinstance(kind, str) else "unknown",
                source=_text(raw.get("source")),
                execution_count=count if isinstance(count, int) and not isinstance(count, bool) else None,
                outputs=[_output_text(o) for o in outputs if isinstance(o, dict)],
            )
        )
    return Notebook(path, cells)
