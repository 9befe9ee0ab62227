"""The code that defines a notebook's model, found by parsing its cells, never by running them.

Kept, in cell order (a later definition replaces an earlier one, as when the notebook ran): imports (of any package:
one that is not installed is a reason the model cannot be built only if the model needs it; a ``.py`` file beside
the notebook is importable), function and class definitions, assignments of simple constants (``dropout_value =
0.1``, ``DEVICE = torch.device(...)``) and methods attached to a kept class later (``Net.forward = forward``: a class
split over two cells). Dropped: everything else (training loops, data downloads, ``!pip`` and ``%magic`` lines,
cells starting with ``%%``). Each kept statement runs on its own: one that fails (an import of a package the grader
lacks, a helper whose default argument needs a plotting library) is recorded, and named only if the model needs
what it defines.

The model is the ``nn.Module`` the notebook instantiates as its model: the object whose ``.parameters()`` an
optimizer is given (``optim.SGD(model.parameters(), ...)``), else the last ``model = ...`` / ``net = ...``, else the
only class that subclasses a Module; a name (``FILE.ipynb:NAME``) picks a class, a factory or a variable instead.
What is kept and the model's construction become one small program (``program``) that a subprocess runs.
"""

from __future__ import annotations

import ast
import builtins
import textwrap
from dataclasses import dataclass, field

from mnist_challenge.common.errors import UserError
from mnist_challenge.grading.ipynb import Notebook

# Calls allowed in a "simple constant" assignment: a device, a flag, arithmetic helpers.
CONSTANT_CALLS = {
    "torch.device", "torch.cuda.is_available", "torch.backends.mps.is_available", "int", "float", "round", "min",
    "max", "len", "tuple", "list", "dict", "range", "abs", "bool", "str",
}  # fmt: skip
# Methods students chain onto the constructor: they move or switch the model, never change its parameters.
MOVES = {"to", "cuda", "cpu", "float", "double", "train", "eval", "half", "requires_grad_"}
MODEL_VARIABLES = ("model", "net", "network", "my_model", "mymodel", "cnn")
FACTORY = "__kit_notebook_model__"
FAILED = "__kit_failed_definitions__"  # name -> why its statement failed, filled as the program runs


@dataclass
class Statement:
    cell: int  # the notebook's cell number (from 1)
    line: int  # line in that cell (from 1)
    source: str


@dataclass
class ModelSource:
    """What defines the model: kept statements, the class definitions, and how the model is built."""

    statements: list[Statement]
    classes: dict[str, tuple[int, int]]  # class name -> (cell, line) of its last definition
    module_classes: list[str]  # the kept classes that subclass a Module (directly or through a kept class)
    functions: set[str]
    constructions: list[tuple[str, str, int, int]] = field(default_factory=list)  # (variable, expr, cell, line)
    imported: dict[str, str] = field(default_factory=dict)  # name -> the module it is imported from
    unparsed: list[int] = field(default_factory=list)  # cells Python cannot parse (not even with magics blanked)
    trained: str | None = None  # the variable an optimizer is given the parameters of
    expression: str = ""  # the chosen model's construction
    chosen: str = ""  # what was chosen, in words

    def program(self) -> str:
        """The kept code and a factory that builds the chosen model, as one Python file: each statement in a
        ``try`` of its own, its failure recorded under the names it would have defined."""
        future = [s for s in self.statements if s.source.startswith("from __future__ ")]
        parts = [*(s.source for s in future), f"{FAILED} = {{}}"]  # __future__ imports must come first
        for s in self.statements:
            if s in future:
                continue
            names = sorted(bound_names(s.source))
            why = f"cell {s.cell}, line {s.line}"
            parts.append(
                f"# cell {s.cell}, line {s.line}\ntry:\n{textwrap.indent(s.source, '    ')}\n"
                f"except BaseException as __kit_exc:\n"
                f"    for __kit_name in {names!r}:\n"
                f"        {FAILED}[__kit_name] = ({why!r}, type(__kit_exc).__name__, str(__kit_exc)[:300])\n"
            )
        parts.append(f"def {FACTORY}():\n    return {self.expression}\n")
        return "\n\n".join(parts)

    def where(self, attribute: str) -> str | None:
        """The cell and line that assigns ``self.<attribute>`` in a kept class (for a linear layer's call site)."""
        leaf = attribute.split(".")[-1].split(" ")[0]
        for statement in reversed(self.statements):
            try:
                tree = ast.parse(statement.source)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                targets = node.targets if isinstance(node, ast.Assign) else []
                for target in targets:
                    if isinstance(target, ast.Attribute) and target.attr == leaf:
                        return f"cell {statement.cell}, line {statement.line + node.lineno - 1}"
        return None


def _clean(source: str) -> str | None:
    """The cell's source with IPython-only lines blanked (line numbers kept); None for a ``%%`` cell magic."""
    if source.lstrip().startswith("%%"):
        return None
    lines = source.split("\n")
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith(("!", "%")):
            lines[i] = line[: len(line) - len(stripped)] + "pass"
    return "\n".join(lines)


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _import_root(node: ast.Import | ast.ImportFrom) -> list[tuple[str, str]]:
    """(bound name, module root) for each name the import binds."""
    if isinstance(node, ast.ImportFrom):
        root = (node.module or "").split(".")[0] if node.level == 0 else "."
        return [(a.asname or a.name, root) for a in node.names]
    return [(a.asname or a.name.split(".")[0], a.name.split(".")[0]) for a in node.names]


def _constant(node: ast.AST, known: set[str]) -> bool:
    """A value made of literals, known names, arithmetic, and the calls in ``CONSTANT_CALLS``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            if dotted(sub.func) not in CONSTANT_CALLS:
                return False
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
            root = sub.id
            if root not in known and root not in CONSTANT_CALLS:
                return False
        elif isinstance(sub, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom, ast.Subscript)):
            if isinstance(sub, ast.Subscript) and _constant(sub.value, known):
                continue
            return False
    return True


def _strip_moves(node: ast.AST) -> ast.AST:
    """``Net().to(device).cuda()`` -> ``Net()``."""
    while (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MOVES
    ):  # fmt: skip
        node = node.func.value
    return node


def _constructor(node: ast.AST) -> str | None:
    """The class or factory a construction calls (``Net``, ``nn.Sequential``), after stripping moves."""
    node = _strip_moves(node)
    return dotted(node.func) if isinstance(node, ast.Call) else None


def _is_module_class(node: ast.ClassDef, module_classes: set[str]) -> bool:
    for base in node.bases:
        name = dotted(base) or ""
        if name.split(".")[-1] in ("Module", "Sequential", "ModuleList", "ModuleDict") or name in module_classes:
            return True
    return False


def _trained_variable(tree: ast.AST) -> str | None:
    """``X`` in ``optim.SGD(X.parameters(), ...)`` (any optimizer: a call whose first argument is
    ``X.parameters()``)."""
    found = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            arg = node.args[0]
            if (
                isinstance(arg, ast.Call)
                and isinstance(arg.func, ast.Attribute)
                and arg.func.attr == "parameters"
                and isinstance(arg.func.value, ast.Name)
            ):
                found = arg.func.value.id
    return found


def parse_model_source(notebook: Notebook) -> ModelSource:
    """The model-defining statements of ``notebook`` (see the module docstring); nothing runs."""
    source = ModelSource([], {}, [], set())
    known: set[str] = set()
    module_classes: set[str] = set()
    for cell in notebook.code_cells:
        text = _clean(cell.source)
        if text is None:
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            source.unparsed.append(cell.index)  # it cannot define the model either; named if none is found
            continue
        source.trained = _trained_variable(tree) or source.trained
        for node in tree.body:
            keep = False
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                keep = getattr(node, "level", 0) == 0  # a relative import has no package to be relative to
                for name, root in _import_root(node):
                    known.add(name)
                    source.imported[name] = root
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                keep = True
                known.add(node.name)
                source.functions.add(node.name)
            elif isinstance(node, ast.ClassDef):
                keep = True
                known.add(node.name)
                source.classes[node.name] = (cell.index, node.lineno)
                if _is_module_class(node, module_classes):
                    module_classes.add(node.name)
                source.imported.pop(node.name, None)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = node.value
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                if value is not None and len(names) == len(targets) == 1:
                    constructed = _constructor(value)
                    if constructed is not None and constructed not in CONSTANT_CALLS:
                        expr = ast.unparse(_strip_moves(value))
                        source.constructions.append((names[0], expr, cell.index, node.lineno))
                    if _constant(value, known):
                        keep = True
                        known.add(names[0])
                elif value is not None and len(targets) == 1 and isinstance(targets[0], ast.Attribute):
                    owner = dotted(targets[0].value)
                    keep = owner in source.classes and _constant(value, known)  # Net.forward = forward
            if keep:
                segment, first = ast.get_source_segment(text, node, padded=False) or ast.unparse(node), node.lineno
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.decorator_list:
                    first = node.decorator_list[0].lineno
                    segment = "\n".join(text.split("\n")[first - 1 : node.end_lineno])
                source.statements.append(Statement(cell.index, first, segment))
    source.module_classes = [name for name in source.classes if name in module_classes]
    return source


def _uses_only_kept(expr: str, source: ModelSource) -> str | None:
    """The first name in ``expr`` that the kept code does not define (None when it only uses kept names)."""
    defined = set(source.classes) | source.functions
    for statement in source.statements:
        defined |= bound_names(statement.source)
    for node in ast.walk(ast.parse(expr, mode="eval")):
        if isinstance(node, ast.Name) and node.id not in defined and not hasattr(builtins, node.id):
            return node.id
    return None


def choose_model(source: ModelSource, name: str | None, path: str) -> ModelSource:
    """Set ``source.expression`` (how to build the model) and ``source.chosen``; a ``UserError`` when the notebook
    has no model, or several without a way to choose."""
    constructions = source.constructions

    def built_by(variable: str) -> tuple[str, str, int, int] | None:
        return next((c for c in reversed(constructions) if c[0] == variable), None)

    def usable(construction: tuple[str, str, int, int]) -> bool:
        return _uses_only_kept(construction[1], source) is None

    if name:
        if name in source.classes or name in source.functions or name in source.imported:
            made = next((c for c in reversed(constructions) if _constructor_name(c[1]) == name and usable(c)), None)
            source.expression = made[1] if made else f"{name}()"
            source.chosen = f"{name} (as built in cell {made[2]})" if made else f"{name}()"
            return source
        made = built_by(name)
        if made:
            if not usable(made):
                raise _unusable(made, source, path)
            source.expression, source.chosen = made[1], f"{name} = {made[1]} (cell {made[2]})"
            return source
        raise UserError(f"{path}: no class, function or model variable named {name!r} in the notebook")
    for variable in (source.trained, *MODEL_VARIABLES):
        made = built_by(variable) if variable else None
        if made:
            if not usable(made):
                raise _unusable(made, source, path)
            how = "trained" if variable == source.trained else "built"
            source.expression, source.chosen = made[1], f"{variable} = {made[1]} ({how} in cell {made[2]})"
            return source
    if len(source.module_classes) == 1:
        only = source.module_classes[0]
        source.expression, source.chosen = f"{only}()", f"{only}() (the notebook's only nn.Module class)"
        return source
    if not source.module_classes:
        hint = f" (cells {source.unparsed} are not valid Python and were skipped)" if source.unparsed else ""
        raise UserError(f"{path}: no nn.Module class or model construction found in the notebook's code{hint}")
    raise UserError(
        f"{path}: several nn.Module classes ({', '.join(source.module_classes)}) and none built as the model; "
        f"name one: {path}:NAME"
    )


def _constructor_name(expr: str) -> str | None:
    return _constructor(ast.parse(expr, mode="eval").body)


def _unusable(made: tuple[str, str, int, int], source: ModelSource, path: str) -> UserError:
    missing = _uses_only_kept(made[1], source)
    return UserError(
        f"{path}: the model is built as {made[1]!r} (cell {made[2]}), which needs {missing!r}: not defined by a "
        "function, class, import or simple constant of the notebook; name a class instead: FILE.ipynb:NAME"
    )


def bound_names(statement: str) -> set[str]:
    """The names a top-level statement binds (an import's, a definition's, an assignment's targets)."""
    try:
        tree = ast.parse(statement)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(name for name, _ in _import_root(node))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names
