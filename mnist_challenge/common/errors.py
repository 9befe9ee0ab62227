"""The exit-code contract of every CLI in the kit, and the one exception type for user mistakes.

    0    success, or PASS for ``check``
    1    FAIL: a verdict of the checker (``check``, ``search reproduce``), never anything else
    2    bad input or environment: one ``error: ...`` line naming the input and what to do
    3    an internal error (a bug): one ``internal error: ...`` line; the traceback goes to a log file
    130  interrupted (Ctrl-C, SIGTERM, SIGHUP)

A ``UserError`` is turned into exit 2 by ``contract.run_cli``; any other exception is a bug and becomes exit
3, its traceback appended to the log file the command registered with ``set_crash_log`` (the run's
``train.log``, the study's ``search.log``), else to a file under the system's temporary directory.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input: a malformed spec, an impossible architecture, missing data, a bad flag."""


class EnvironmentFault(UserError):
    """The machine refused a write (a full disk, no permission, a read-only folder, a name too long): exit 2,
    and a search queues the trial again, since the design itself did not fail."""


# errno values that say "this machine, here, now" rather than "this input" or "this code".
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EPERM", "EROFS", "ENAMETOOLONG", "EIO", "EMFILE")
    if hasattr(errno, name)
)


def environment_fault(exc: BaseException, what: str | Path) -> EnvironmentFault | None:
    """``exc`` as an ``EnvironmentFault`` naming ``what``, if it is the machine refusing; else None.

    torch.save reports a full disk as a RuntimeError from its zip writer, not as an OSError."""
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return EnvironmentFault(f"cannot write {what}: {exc.strerror or exc}")
    if isinstance(exc, RuntimeError) and "write" in str(exc).lower() and "failed" in str(exc).lower():
        return EnvironmentFault(f"cannot write {what}: the write failed (is the disk full?)")
    return None


class TrainingDiverged(UserError, FloatingPointError):
    """The loss went non-finite: the recipe (learning rate, say) is the input at fault, so ``train`` exits 2;
    a search records it as that design's (worst) outcome."""


class InternalError(Exception):
    """A bug already recorded elsewhere (a worker process wrote its traceback): exit 3 with this line."""


_crash_log: Path | None = None


# SIGHUP: a closed terminal or ssh session ends a command as Ctrl-C does (exit 130, finished work kept).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_stop_signals_seen = 0
_on_first_stop: Callable[[], None] | None = None


def _on_stop_signal(signum: int, frame: object) -> None:
    """The one handler of SIGINT, SIGTERM and SIGHUP, in the command and in every worker process.

    The first signal raises ``KeyboardInterrupt`` (the command then queues or records what it was doing and
    exits 130). Later ones are ignored: a worker often gets two (its process group's, from ``timeout`` or a
    terminal's Ctrl-C, and its parent's), and a second exception raised inside the first one's cleanup would
    cut a file write short or turn exit 130 into 143. A third signal is an impatient user: exit 130 at once.
    """
    global _stop_signals_seen
    _stop_signals_seen += 1
    if _stop_signals_seen == 1:
        if _on_first_stop is not None:
            _on_first_stop()
        raise KeyboardInterrupt
    if _stop_signals_seen >= 3:
        os._exit(EXIT_INTERRUPTED)


def install_stop_handlers(on_first_stop: Callable[[], None] | None = None) -> dict[int, Any] | None:
    """SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``, a scheduler's stop) and SIGHUP (a closed terminal) end a
    command the same way: exit 130, finished work kept. ``on_first_stop`` runs when the first one lands (a
    worker marks itself as stopping, so that its parent does not signal it again). Returns the handlers
    replaced (None outside the main thread, where signals cannot be set)."""
    global _stop_signals_seen, _on_first_stop
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not _on_stop_signal:  # already ours (``__main__``): keep its count
        _stop_signals_seen = 0
    _on_first_stop = on_first_stop
    return {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}


def restore_stop_handlers(previous: dict[int, Any] | None) -> None:
    """Put back the handlers ``install_stop_handlers`` replaced, unless a stop signal came: then ours stay,
    so that a second signal during the exit is still ignored rather than killing the process (exit 143)."""
    if previous is None or stopping():
        return
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def stopping() -> bool:
    """Whether a stop signal has landed in this process."""
    return _stop_signals_seen > 0


def exit_with(code: int) -> NoReturn:
    """End a command's process with ``code``. After a stop signal, at once (``os._exit``, output flushed):
    CPython ends a process by SIGINT, whatever code it exits with, once a KeyboardInterrupt has crossed a
    C extension's call into Python code (torch's lazy imports do that) even if it was caught and handled,
    and the caller would see a death by signal instead of the 130 the contract promises."""
    if stopping():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


def check_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a stop signal came: called at safe points (every training step, between
    trials), because an exception raised by the handler is lost when the signal lands while Python runs
    a weakref callback or a ``__del__`` (seen in SQLAlchemy's registry), and the command would go on."""
    if stopping():
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
