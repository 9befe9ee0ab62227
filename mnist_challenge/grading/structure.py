"""What a notebook's cells do, read from their code: which cells train, which can print, what they summarise.

The grader finds the training run by structure, not by counting printed lines: a cell *trains* when its code
calls ``.backward()``, an optimizer's ``.step()`` or Keras' ``.fit()``, directly or through the notebook's own
functions (a ``train()`` defined in one cell and called in a loop in another), or calls a function imported from
elsewhere whose name says it trains (``from utils import train``). A cell *can print* when its code, or a
function it reaches, prints, logs, writes, shows a progress bar, trains through Keras or calls code the notebook
imports from elsewhere (an epoch line printed by an imported ``test()`` is printed by code, only not here).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from mnist_challenge.grading.ipynb import Notebook

TRAINING_CALLS = {"backward", "fit", "fit_generator", "train_on_batch"}
PRINTING_CALLS = {"print", "write", "display", "tqdm", "trange", "info", "log", "pprint", "set_description",
                  "set_postfix", "fit", "fit_generator", "evaluate", "summary", "plot", "show"}  # fmt: skip
# Libraries whose calls never print an epoch line themselves.
QUIET_LIBRARIES = {"torch", "nn", "F", "optim", "np", "numpy", "math", "torchvision", "transforms", "datasets"}
TRAINING_NAME = re.compile(r"(?i)train|fit")
SUMMARY_CALL = re.compile(r"\bsummary\s*\(\s*([A-Za-z_][\w.]*)")
COMMENTED_CONSTRUCTION = re.compile(r"^\s*#\s*([A-Za-z_]\w*)\s*=\s*([A-Za-z_][\w.]*)\s*\(")


def _clean(source: str) -> str:
    """IPython lines (``!pip``, ``%time``) blanked, so the rest parses; a ``%%`` cell magic's body kept."""
    lines = source.split("\n")
    if lines and lines[0].lstrip().startswith("%%"):
        lines[0] = ""
    return "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in lines)


def _call_name(node: ast.Call) -> tuple[str | None, str | None]:
    """(the called name's last part, the root name) of a call: ``optimizer.step()`` -> (``step``, ``optimizer``)."""
    func = node.func
    if isinstance(func, ast.Name):
        return func.id, func.id
    if isinstance(func, ast.Attribute):
        root = func.value
        while isinstance(root, (ast.Attribute, ast.Call, ast.Subscript)):
            root = root.func if isinstance(root, ast.Call) else root.value
        return func.attr, root.id if isinstance(root, ast.Name) else None
    return None, None


@dataclass
class _Code:
    """What one body of code does by itself, and which of the notebook's names it calls."""

    trains: bool = False
    prints: bool = False
    calls: set[str] = field(default_factory=set)


def _scan(nodes: list[ast.stmt], imported: set[str]) -> _Code:
    code = _Code()
    for node in (n for top in nodes for n in ast.walk(top)):
        if not isinstance(node, ast.Call):
            continue
        name, root = _call_name(node)
        if name is None:
            continue
        if name in TRAINING_CALLS or (name == "step" and root and "optim" in root.lower()):
            code.trains = True
        if name in PRINTING_CALLS:
            code.prints = True
        if isinstance(node.func, ast.Name):
            code.calls.add(name)
            if name in imported:
                code.prints = True  # imported code may print: not evidence of a pasted log
                code.trains |= bool(TRAINING_NAME.search(name))
        elif root in imported and root not in QUIET_LIBRARIES:
            code.prints = True
            code.trains |= bool(TRAINING_NAME.search(name))
        elif root is not None:
            code.calls.add(root)  # ``trainer.run()`` on a notebook object, ``Net()`` then its methods
    return code


@dataclass
class CellCode:
    index: int
    parsed: bool
    trains: bool
    prints: bool
    empty: bool  # no statement at all (only comments or blank lines)
    summaries: list[str] = field(default_factory=list)  # what each ``summary(X, ...)`` call summarises
    commented_constructions: list[tuple[int, str, str]] = field(default_factory=list)  # (line, variable, callee)
    constructions: list[tuple[str, str]] = field(default_factory=list)  # (variable, callee), live code


def read_structure(notebook: Notebook) -> dict[int, CellCode]:
    """Each code cell's ``CellCode``, keyed by its index."""
    trees: dict[int, ast.Module | None] = {}
    imported: set[str] = set()
    for cell in notebook.code_cells:
        try:
            trees[cell.index] = tree = ast.parse(_clean(cell.source))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            trees[cell.index] = None
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.asname or a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.update(a.asname or a.name for a in node.names)
    # The notebook's own functions and classes, and what each does (a class: all its methods together).
    bodies: dict[str, _Code] = {}
    for tree in trees.values():
        for node in tree.body if tree else []:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bodies[node.name] = _scan(node.body, imported)
    _close_over_calls(bodies)
    cells = {}
    for cell in notebook.code_cells:
        tree = trees[cell.index]
        if tree is None:  # not Python: judge by its text
            text = cell.source
            cells[cell.index] = CellCode(cell.index, False, ".backward(" in text or ".fit(" in text, True, False)
            continue
        top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        code = _scan(top, imported)
        reached = [bodies[name] for name in code.calls if name in bodies]
        info = CellCode(
            cell.index,
            True,
            code.trains or any(b.trains for b in reached),
            code.prints or any(b.prints for b in reached) or bool(top and isinstance(top[-1], ast.Expr)),
            not tree.body,
            SUMMARY_CALL.findall(cell.source),
        )
        for number, line in enumerate(cell.source.split("\n"), start=1):
            match = COMMENTED_CONSTRUCTION.match(line)
            if match:
                info.commented_constructions.append((number, match[1], match[2]))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                callee, _ = _call_name(node.value)
                for target in node.targets:
                    if isinstance(target, ast.Name) and callee:
                        info.constructions.append((target.id, callee))
        cells[cell.index] = info
    return cells


def _close_over_calls(bodies: dict[str, _Code]) -> None:
    """A function trains (prints) if a notebook function it calls does, however deep."""
    changed = True
    while changed:
        changed = False
        for code in bodies.values():
            for callee in code.calls:
                other = bodies.get(callee)
                if other is None:
                    continue
                if other.trains and not code.trains:
                    code.trains = changed = True
                if other.prints and not code.prints:
                    code.prints = changed = True
