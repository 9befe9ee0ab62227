"""The static pass: code that could change what the grader measures is refused before it runs.

The model's code runs in the same process as the inspector that measures it (it must: the model is a live
object). Contained by the sandbox it cannot reach the grader, its files or its channel, but it could still lie
from inside, so whatever would let it change how the model is seen is refused by reading the code, never by
running it (``find_tampering``), and the grade says where:

* rebinding or deleting anything it did not define: an attribute or item of an imported module or object or of
  a builtin (``json.dumps = ...``, ``nn.Module.parameters = ...``, ``setattr(torch, ...)``); a few settings are
  allowed (``torch.backends.cudnn.benchmark = True``, ``plt.rcParams[...]``, ``os.environ[...]``);
* reaching the interpreter's own machinery: ``exec``, ``eval``, ``compile``, ``globals``, ``vars``,
  ``__import__``, ``__builtins__``, ``sys.modules``, frames (``sys._getframe``, ``f_globals``, ``tb_frame``),
  function internals (``__globals__``, ``__code__``, ``__closure__``), ``__subclasses__``, ``__dict__``;
  importing ``builtins``, ``importlib``, ``ctypes``, ``gc``, ``inspect`` or the kit;
* a model that redefines how torch sees it: a class that defines ``parameters``, ``named_modules``,
  ``__getattr__``, ``__torch_function__`` and the like, or registers global module hooks.

Honest model code does none of this (``setattr(self, ...)``, ``Net.forward = forward``, ``getattr(nn, "ReLU")``
are fine). What is not caught here (a lie built from allowed parts) still runs contained, and the verdict's
figures are cross-checked where the notebook shows its own (torchsummary).
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass

FORBIDDEN_IMPORTS = {"builtins", "importlib", "ctypes", "_ctypes", "cffi", "gc", "inspect", "mnist_challenge"}
FORBIDDEN_NAMES = {"exec", "eval", "compile", "globals", "vars", "__import__", "__builtins__", "breakpoint",
                   "__loader__", "__spec__"}  # fmt: skip
FORBIDDEN_ATTRIBUTES = {
    "__globals__", "__builtins__", "__code__", "__closure__", "__subclasses__", "__dict__", "__bases__", "__mro__",
    "__getattribute__", "__defaults__", "__kwdefaults__", "__import__", "__loader__", "__spec__",
    "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "tb_frame", "gi_frame", "cr_frame", "ag_frame",
    "_getframe", "settrace", "setprofile", "addaudithook", "meta_path", "path_hooks", "modules",
    "register_module_forward_hook", "register_module_forward_pre_hook", "register_module_full_backward_hook",
    "register_module_buffer_registration_hook", "register_module_parameter_registration_hook",
}  # fmt: skip
# ``x.modules`` is also nn.Module.modules(), read by honest code: only ``sys.modules`` is refused for it.
ONLY_ON_SYS = {"modules", "meta_path", "path_hooks", "_getframe", "settrace", "setprofile", "addaudithook"}
# Methods through which torch and the inspector see a model: a class that defines them decides what is seen.
INTROSPECTION_METHODS = {
    "parameters", "named_parameters", "buffers", "named_buffers", "children", "named_children", "modules",
    "named_modules", "state_dict", "__getattr__", "__setattr__", "__delattr__", "__getattribute__", "__dir__",
    "_apply", "register_forward_hook", "register_forward_pre_hook", "_call_impl", "_wrapped_call_impl",
    "__torch_function__", "__torch_dispatch__", "__class__", "__instancecheck__", "__subclasscheck__",
}  # fmt: skip
# Settings honest notebooks write on imported modules.
ALLOWED_TARGETS = ("torch.backends.", "plt.rcParams", "matplotlib.rcParams", "mpl.rcParams", "os.environ",
                   "torch.manual_seed", "np.random.seed", "warnings.")  # fmt: skip


@dataclass(frozen=True)
class Finding:
    where: str  # "cell 3, line 4" or "model.py, line 12"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Subscript):
        return f"{_dotted(node.value)}[...]"
    if isinstance(node, ast.Call):
        return f"{_dotted(node.func)}(...)"
    return "<expression>"


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


class _Pass(ast.NodeVisitor):
    def __init__(self, imported: set[str]):
        self.imported = imported
        self.found: list[tuple[int, str]] = []

    def note(self, node: ast.AST, what: str) -> None:
        self.found.append((getattr(node, "lineno", 1), what))

    def foreign(self, target: ast.AST) -> bool:
        """A target rooted in something the code did not define: an imported name or a builtin."""
        root = _root(target)
        if root is None:
            return True  # ``f().x = ...``, ``(a or b).x = ...``: cannot tell, refused
        if root in ("self", "cls"):
            return False
        return root in self.imported or (hasattr(builtins, root) and root not in ("None",)) or root == "__builtins__"

    def check_target(self, target: ast.AST, verb: str) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.check_target(element, verb)
        elif isinstance(target, ast.Starred):
            self.check_target(target.value, verb)
        elif isinstance(target, (ast.Attribute, ast.Subscript)):
            name = _dotted(target)
            if self.foreign(target) and not name.startswith(ALLOWED_TARGETS):
                self.note(target, f"{verb} {name}, which the notebook did not define")
            elif isinstance(target, ast.Attribute) and target.attr in INTROSPECTION_METHODS:
                self.note(target, f"{verb} {name}, through which torch sees a model")

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self.check_target(target, "assigns")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.check_target(node.target, "changes")
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.check_target(node.target, "assigns")
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self.check_target(target, "deletes")
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in FORBIDDEN_IMPORTS:
                self.note(node, f"imports {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if (node.module or "").split(".")[0] in FORBIDDEN_IMPORTS:
            self.note(node, f"imports from {node.module}")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in FORBIDDEN_NAMES:
            self.note(node, f"uses {node.id}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in FORBIDDEN_ATTRIBUTES and (node.attr not in ONLY_ON_SYS or _root(node) == "sys"):
            self.note(node, f"reaches {_dotted(node)}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        if name in ("setattr", "delattr") and node.args and _root(node.args[0]) not in ("self", "cls"):
            self.note(node, f"calls {name} on {_dotted(node.args[0])}")
        elif name.endswith((".__setattr__", ".__delattr__")):
            self.note(node, f"calls {name}")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for statement in node.body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                statement.name in INTROSPECTION_METHODS
            ):
                self.note(statement, f"class {node.name} defines {statement.name}, through which torch sees a model")
            elif isinstance(statement, ast.Assign):
                for target in statement.targets:
                    if isinstance(target, ast.Name) and target.id in INTROSPECTION_METHODS:
                        self.note(statement, f"class {node.name} sets {target.id}, through which torch sees a model")
        self.generic_visit(node)


def find_tampering(sources: list[tuple[str, int, str]], imported: set[str] | None = None) -> list[Finding]:
    """The findings in ``sources``: (place, first line, code) each, the place a cell ("cell 3") or a file; the
    names ``imported`` elsewhere (other cells) count as foreign too."""
    trees = []
    for place, first, code in sources:
        try:
            trees.append((place, first, ast.parse(code)))
        except SyntaxError:
            continue
    known = set(imported or ())
    for _, _, tree in trees:
        known |= _imported_names(tree)
    findings = []
    for place, first, tree in trees:
        visitor = _Pass(known)
        visitor.visit(tree)
        findings += [Finding(f"{place}, line {first + line - 1}", what) for line, what in visitor.found]
    return list(dict.fromkeys(findings))
