"""The subprocess that builds a notebook's model and inspects it (``python -m mnist_challenge.grading.worker``).

    python -m mnist_challenge.grading.worker PROGRAM.py RESULT.json C,H,W [OUTPUT]

Runs the program ``model_source`` wrote (the notebook's model-defining code and a factory), builds the model, runs
the inspector and the usage probe, and writes one JSON object to RESULT.json: the report, its text as
``inspect --module`` prints it, the layers used, or ``{"error": ...}`` with the notebook cell and line where the
model's code failed. Whatever the model prints goes to stderr, so it never mixes with a result.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import traceback
import types
from pathlib import Path


def notebook_line(program: str, lineno: int) -> str:
    """Where line ``lineno`` of the program came from, as ``cell N, line L`` (from the program's markers)."""
    lines = program.split("\n")
    for i in range(min(lineno, len(lines)) - 1, -1, -1):
        marker = re.fullmatch(r"# cell (\d+), line (\d+)", lines[i])
        if marker:
            return f"cell {marker[1]}, line {int(marker[2]) + lineno - i - 2}"
    return f"line {lineno}"


def build(program_path: Path, input_size: tuple[int, ...], output_choice: str | None = None) -> dict:
    from torch import nn

    from mnist_challenge.architecture.inspector import format_report, inspect_module
    from mnist_challenge.architecture.loading import first_line, run_forward
    from mnist_challenge.architecture.usage import layers_used
    from mnist_challenge.common.errors import UserError
    from mnist_challenge.grading.model_source import FACTORY

    program = program_path.read_text()
    module = types.ModuleType("__notebook__")
    sys.modules[module.__name__] = module  # dataclasses and the like look the module up by name
    try:
        exec(compile(program, str(program_path), "exec"), module.__dict__)
        model = getattr(module, FACTORY)()
    except BaseException as exc:  # anything the notebook's code raises, SystemExit included
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(program_path)]
        where = f" ({notebook_line(program, frames[-1].lineno)})" if frames else ""
        return {"error": f"the notebook's model code fails{where}: {first_line(exc)}"}
    if not isinstance(model, nn.Module):
        return {"error": f"the model is a {type(model).__name__}, not an nn.Module"}
    try:
        run_forward(model, input_size)
        report = inspect_module(model, input_size, output_choice)
        usage = layers_used(model, input_size)
    except (UserError, ValueError) as exc:  # ValueError: a scripted module (the inspector says why)
        return {"error": str(exc)}
    except Exception as exc:
        return {"error": f"the model cannot run on input size {input_size}: {first_line(exc)}"}
    return {"report": report.as_dict(), "text": format_report(report), "usage": usage, "type": type(model).__name__}


def main(argv: list[str]) -> int:
    program, result, size, *choice = argv
    with contextlib.redirect_stdout(sys.stderr):
        outcome = build(Path(program), tuple(int(v) for v in size.split(",")), choice[0] if choice else None)
    Path(result).write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
