"""Writing files so that a reader never meets half of one: a full disk, a signal or a crash mid-write leaves
the old file (or none), never a 0-byte or cut one, and no ``.tmp`` litter; a refusal by the machine is one
``EnvironmentFault`` (exit 2) naming the file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from mnist_challenge.common.errors import environment_fault


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``, which then replaces ``path`` in one step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt too: the old file stays whole and the temporary goes
        with contextlib.suppress(OSError):  # on a read-only file system there is none to remove
            tmp.unlink(missing_ok=True)
        fault = environment_fault(exc, path)
        if fault is not None:
            raise fault from None
        raise


def display_path(path: str | Path) -> str:
    """A path as text that can be written anywhere (UTF-8 files, terminals): a byte that is not UTF-8 in a file
    name (Linux allows any) is shown as ``\\xff`` instead of failing the write that quotes it."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_text(path: str | Path, text: str) -> None:
    """Append to a log (epochs.csv, train.log); a refusal is an ``EnvironmentFault`` naming the file."""
    try:
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as exc:
        fault = environment_fault(exc, path)
        if fault is not None:
            raise fault from None
        raise


def try_lock(path: str | Path) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if absent), as an open descriptor; None if another process
    holds it. The lock lives as long as the descriptor: a killed process leaves no stale lock behind."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise environment_fault(exc, path) or exc from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
