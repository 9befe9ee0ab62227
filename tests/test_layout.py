"""The package's layers, checked from the source: each layer imports only the layers above it, nothing in
the library imports the search or a command module, and no module grows past ~400 lines unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

# The layers of mnist_challenge, in order: a module may import its own layer and those before it.
LAYERS = ("common", "architecture", "engine", "runs", "export", "grading", "bench", "cli")
LIBRARY = ROOT / "mnist_challenge"
MAX_LINES = 400


def modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "templates" not in p.parts)


def imported(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mnist_challenge" and parts[1] in LAYERS else None


@pytest.mark.parametrize("path", modules(LIBRARY), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_library_module_imports_only_the_layers_above_it(path):
    relative = path.relative_to(LIBRARY)
    own = relative.parts[0] if len(relative.parts) > 1 else None
    names = imported(path)
    entry = path.name == "__main__.py"  # a process entry names its command module by a string, not an import
    if own != "cli" and not entry:
        assert not any(n == "search" or n.startswith("search.") for n in names), "the library imports the search"
        assert not [n for n in names if layer_of(n) == "cli"], "the library imports a command module"
    if own in LAYERS:
        above = LAYERS[: LAYERS.index(own) + 1]
        wrong = sorted(n for n in names if layer_of(n) not in (None, *above))
        assert not wrong, f"{relative} ({own}) imports a later layer: {wrong}"


@pytest.mark.parametrize("path", modules(LIBRARY) + modules(ROOT / "search"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_long_without_saying_why(path):
    lines = len(path.read_text().splitlines())
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert lines <= MAX_LINES or "long because" in doc, f"{lines} lines: split it, or say why in its docstring"


SEARCH_COMMANDS = ("commands", "bench.py", "__main__.py")  # the search's command layer


@pytest.mark.parametrize("path", modules(ROOT / "search"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_search_library_imports_no_command_module(path):
    if path.relative_to(ROOT / "search").parts[0] in SEARCH_COMMANDS:
        return
    names = imported(path)
    assert not [n for n in names if layer_of(n) == "cli" or n.startswith("search.commands")]
