"""The process that builds a notebook's model and inspects it (``python -m mnist_challenge.grading.worker``).

    python -m mnist_challenge.grading.worker PROGRAM.py C,H,W [OUTPUT] [NOTEBOOK_FOLDER]

Runs contained (``grading.sandbox``). It splits in two before any of the notebook's code runs:

* the **untrusted half** (a forked child) drops to its own user where it can, runs the program ``model_source``
  wrote (the notebook's model-defining code, statement by statement, and a factory), builds the model, runs the
  inspector and the usage probe, and writes one JSON object into a pipe. Its stdout is its stderr: nothing it
  prints reaches the grader's channel, and it holds no handle to that channel at all.
* the **trusted half** never runs notebook code: it reads the pipe, checks that what came is a well-formed
  result (``check_outcome``; anything else is a reason, not a grade) and prints it on stdout, the only channel
  the grader reads.

The notebook's code could still lie about its own model from inside the untrusted half (patch torch, the
inspector, ``json``); the static pass (``grading.tamper``) refuses code that rebinds anything it did not define,
reaches into frames, globals or builtins, or touches file descriptors, before this process starts.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
import types
from pathlib import Path

# Set by the sandbox (``grading.sandbox._environment``).
DROP_TO = "MNIST_CHALLENGE_DROP_TO"
MAX_PROCESSES = "MNIST_CHALLENGE_MAX_PROCESSES"
RESULT_LIMIT = 8 << 20  # bytes: a report is a few kB; more is not a report


def notebook_line(program: str, lineno: int) -> str:
    """Where line ``lineno`` of the program came from, as ``cell N, line L`` (from the program's markers)."""
    lines = program.split("\n")
    for i in range(min(lineno, len(lines)) - 1, -1, -1):
        marker = re.fullmatch(r"# cell (\d+), line (\d+)", lines[i])
        if marker:
            return f"cell {marker[1]}, line {int(marker[2]) + lineno - i - 3}"  # marker, try:, statement
    return f"line {lineno}"


def _where(exc: BaseException, program_path: Path, program: str) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(program_path)]
    return f" ({notebook_line(program, frames[-1].lineno)})" if frames else ""


def _failed_definition(exc: BaseException, failed: dict | None) -> str | None:
    """When the model fails for a name whose own statement failed earlier, that earlier failure is the reason."""
    missing = getattr(exc, "name", None) if isinstance(exc, NameError) else None
    if not failed or missing not in failed:
        return None
    where, kind, message = failed[missing]
    if kind == "ModuleNotFoundError":
        return (
            f"the model needs {missing!r}, imported in {where} from a package that is not installed where the "
            f"grader runs and is not a .py file beside the notebook ({message})"
        )
    return f"the model needs {missing!r}, whose definition failed ({where}: {kind}: {message})"


def build(program_path: Path, input_size: tuple[int, ...], output_choice: str | None = None) -> dict:
    import torch
    from torch import nn

    from mnist_challenge.architecture.inspector import format_report, inspect_module
    from mnist_challenge.architecture.loading import first_line, run_forward, sample_input
    from mnist_challenge.architecture.usage import layers_used
    from mnist_challenge.common.errors import UserError
    from mnist_challenge.grading.model_source import FACTORY, FAILED

    program = program_path.read_text()
    module = types.ModuleType("__notebook__")
    sys.modules[module.__name__] = module  # dataclasses and the like look the module up by name
    try:
        exec(compile(program, str(program_path), "exec"), module.__dict__)
        model = getattr(module, FACTORY)()
    except BaseException as exc:  # anything the notebook's code raises, SystemExit included
        needed = _failed_definition(exc, module.__dict__.get(FAILED))
        return {"error": needed or f"the notebook's model code fails{_where(exc, program_path, program)}: "
                f"{first_line(exc)}"}  # fmt: skip
    if not isinstance(model, nn.Module):
        return {"error": f"the model is a {type(model).__name__}, not an nn.Module"}
    try:
        model.eval()
        with torch.no_grad():  # the first forward, unwrapped: a NameError here may name a failed definition
            model(sample_input(model, input_size))
    except Exception as exc:
        needed = _failed_definition(exc, module.__dict__.get(FAILED))
        if needed:
            return {"error": needed}
    try:
        run_forward(model, input_size)
        report = inspect_module(model, input_size, output_choice)
        usage = layers_used(model, input_size)
    except (UserError, ValueError) as exc:  # ValueError: a scripted module (the inspector says why)
        return {"error": str(exc)}
    except MemoryError:
        return {"error": "the model ran out of memory (the grader's limit)"}
    except Exception as exc:
        return {"error": f"the model cannot run on input size {input_size}: {first_line(exc)}"}
    return {"report": report.as_dict(), "text": format_report(report), "usage": usage, "type": type(model).__name__}


def check_outcome(data: bytes) -> dict:
    """The result the untrusted half sent, if it is one: a JSON object with an ``error`` string, or a report
    with integer parameter counts, a boolean FC verdict, a text and the layers used; else an error saying why."""
    try:
        outcome = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {"error": "the model's process sent no readable result"}
    if not isinstance(outcome, dict):
        return {"error": "the model's process sent no readable result"}
    if set(outcome) == {"error"} and isinstance(outcome["error"], str):
        return {"error": outcome["error"][:2000]}
    report, usage = outcome.get("report"), outcome.get("usage")
    well_formed = (
        set(outcome) == {"report", "text", "usage", "type"}
        and isinstance(report, dict)
        and all(isinstance(report.get(k), int) and report[k] >= 0 for k in ("params", "params_total", "macs"))
        and isinstance(report.get("has_linear"), bool)
        and isinstance(report.get("linear_layers"), list)
        and all(isinstance(x, str) for x in report["linear_layers"])
        and isinstance(outcome["text"], str)
        and isinstance(usage, dict)
        and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in usage.values())
    )
    if not well_formed:
        return {"error": "the model's process sent a result that is not a report (refused)"}
    return outcome


def _untrusted(write_fd: int, argv: list[str]) -> None:
    """The forked child: becomes its own user, runs the notebook's code, sends its result, exits."""
    import resource

    os.dup2(2, 1)  # its prints go to stderr: the grader's channel (stdout) is not this process's any more
    drop_to = os.environ.get(DROP_TO)
    if drop_to and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(int(drop_to))
        os.setuid(int(drop_to))
    limit = int(os.environ.get(MAX_PROCESSES) or 0)
    if limit:
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    program, size, *rest = argv
    choice = rest[0] if rest and rest[0] else None
    folder = rest[1] if len(rest) > 1 and rest[1] else None
    if folder:
        sys.path.insert(0, folder)  # ``from model import Net``: the author's file beside the notebook
    dumps = json.dumps  # taken before any notebook code runs
    try:
        outcome = build(Path(program), tuple(int(v) for v in size.split(",")), choice)
        payload = dumps(outcome).encode()
    except BaseException as exc:  # the notebook's code broke the worker itself (a MemoryError, an exit)
        payload = dumps({"error": f"the model's process failed: {type(exc).__name__}"}).encode()
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(payload)
    os._exit(0)


def _not_dumpable() -> None:
    """Keep the trusted half's file descriptors out of ``/proc/PID/fd`` for the untrusted one (same user
    when the grader is not root)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    _not_dumpable()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            _untrusted(write_fd, argv)
        finally:
            os._exit(70)
    os.close(write_fd)
    chunks, size = [], 0
    with os.fdopen(read_fd, "rb") as pipe:
        while size <= RESULT_LIMIT and (chunk := pipe.read(1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        why = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {status >> 8}"
        outcome = {"error": f"the model's process ended without a result ({why})"}
    else:
        outcome = check_outcome(b"".join(chunks)) if size <= RESULT_LIMIT else {"error": "the result is too large"}
    sys.stdout.write(json.dumps(outcome))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
