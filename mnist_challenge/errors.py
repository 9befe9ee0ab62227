"""The exit-code contract of every CLI in the kit, and the one exception type for user mistakes.

    0    success, or PASS for ``check``
    1    FAIL: a verdict of the checker (``check``, ``search reproduce``), never anything else
    2    bad input or environment: one ``error: ...`` line naming the input and what to do
    3    an internal error (a bug): one ``internal error: ...`` line; the traceback goes to a log file
    130  interrupted (Ctrl-C, SIGTERM)

A ``UserError`` is turned into exit 2 by ``cli.run_cli``; any other exception is a bug and becomes exit
3, its traceback appended to the log file the command registered with ``set_crash_log`` (the run's
``train.log``, the study's ``search.log``), else to a file under the system's temporary directory.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import traceback
from pathlib import Path

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input: a malformed spec, an impossible architecture, missing data, a bad flag."""


class InternalError(Exception):
    """A bug already recorded elsewhere (a worker process wrote its traceback): exit 3 with this line."""


_crash_log: Path | None = None


_sigterm_received = False


def _raise_interrupt(signum: int, frame: object) -> None:
    global _sigterm_received
    _sigterm_received = True
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> object:
    """SIGTERM (``kill``, a scheduler's stop) ends a command the way Ctrl-C does: exit 130, finished work
    kept. Returns the handler it replaced (None outside the main thread, where signals cannot be set)."""
    global _sigterm_received
    if threading.current_thread() is not threading.main_thread():
        return None
    _sigterm_received = False
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def check_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGTERM came: called at safe points (every training step, between
    trials), because an exception raised by the handler is lost when the signal lands while Python runs
    a weakref callback or a ``__del__`` (seen in SQLAlchemy's registry), and the command would go on."""
    if _sigterm_received:
        raise KeyboardInterrupt


def set_crash_log(path: str | Path | None) -> None:
    """Where the traceback of an internal error of this process goes (the run's or the study's log)."""
    global _crash_log
    _crash_log = Path(path) if path is not None else None


def record_internal_error(exc: BaseException) -> str:
    """Append ``exc``'s traceback to the registered log (or a temporary file); the one line to print."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    targets = [_crash_log] if _crash_log is not None else []
    targets.append(
        Path(tempfile.gettempdir()) / f"mnist_challenge-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    )
    where = "nowhere (no log file could be written)"
    for target in targets:
        try:
            with open(target, "a", encoding="utf-8") as f:
                f.write(f"\n[{stamp}] internal error (pid {os.getpid()}):\n{text}")
        except OSError:
            continue
        where = str(target)
        break
    summary = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(summary) > 200:
        summary = summary[:200].rsplit(" ", 1)[0] + " ..."
    return f"internal error: {summary} (a bug in the kit; traceback in {where})"
