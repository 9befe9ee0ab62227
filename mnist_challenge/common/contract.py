"""The command-line contract every command of the kit and the search keeps (codes in ``errors``):

    0 success / PASS   1 FAIL verdict   2 bad input (one ``error: ...`` line)   3 bug   130 interrupted

``run_main`` is a process's entry (stop handlers first, then the imports that take seconds), ``run_cli`` parses
and runs one command under the contract, and ``Parser`` reports a bad flag in one line. No traceback reaches
the user: an exception that is not a ``UserError`` is a bug, its traceback kept in a log file.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from mnist_challenge.common.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    InternalError,
    UserError,
    environment_fault,
    exit_with,
    install_stop_handlers,
    record_internal_error,
    restore_stop_handlers,
    set_crash_log,
    stopping,
)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (it normally prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes what it could not read ("invalid int value: '999...'"): never thousands of characters
        message = re.sub(r"\S{60,}", lambda m: f"{m[0][:20]}... ({len(m[0]):,} characters)", message)
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see --help)\n")


def run_main(module: str, argv: Sequence[str] | None = None) -> NoReturn:
    """The whole process of a command whose ``main`` lives in ``module``: the stop handlers are installed
    before that module is imported (torch and optuna take seconds), so a Ctrl-C or SIGTERM during start-up
    is exit 130 too; then ``main``'s code is the process's exit code."""
    install_stop_handlers()
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        exit_with(EXIT_INTERRUPTED)
    except Exception as exc:
        exit_with(_failure_code(exc))
    exit_with(main(argv))


def run_cli(build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    """Parse, dispatch to ``args.handler`` and apply the exit-code contract."""
    set_crash_log(None)  # the handler names its run's log once it has one
    previous = install_stop_handlers()
    try:
        args = build().parse_args(argv)
        return args.handler(args) or 0
    except Exception as exc:
        return _failure_code(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        restore_stop_handlers(previous)


def _failure_code(exc: Exception) -> int:
    """The exit code of a command (or of its start-up imports) that ``exc`` ended."""
    if not stopping():
        return _report_failure(exc)
    # After a stop signal, whatever fails is the stop's doing: a library may have swallowed the
    # KeyboardInterrupt half-way through an import and left a half-made module behind (numpy then fails
    # the next import of it with "cannot load module more than once per process").
    record_internal_error(exc)  # kept in the log for whoever wonders, not reported as a bug
    print("interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _report_failure(exc: Exception) -> int:
    """The exit-code contract for an exception that ended a command: its one line, and its exit code."""
    if isinstance(exc, UserError):
        message, code = f"error: {exc}", EXIT_BAD_INPUT
    elif isinstance(exc, InternalError):
        message, code = f"internal error: {exc}", EXIT_INTERNAL
    elif isinstance(exc, RecursionError):  # only input can nest this deep (a JSON file, a model's forward)
        message, code = "error: the input is nested too deeply to process", EXIT_BAD_INPUT
    elif isinstance(exc, MemoryError):
        message, code = "error: out of memory; use a smaller model, input or batch", EXIT_BAD_INPUT
    elif (fault := environment_fault(exc, getattr(exc, "filename", None) or "a file")) is not None:
        message, code = f"error: {fault}", EXIT_BAD_INPUT  # the machine, not the kit: a full disk, a permission
    else:
        message, code = record_internal_error(exc), EXIT_INTERNAL  # a bug: one line, the traceback in the log
    print(message, file=sys.stderr)
    return code
