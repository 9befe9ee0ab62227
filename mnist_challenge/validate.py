"""Checks shared by specs, configs and CLI flags: numbers in range (never NaN or inf), names that are safe
as one path component, output folders that can be written. Each failure is a ``UserError`` whose message
names the input; the ``*_flag`` variants are argparse types, so a bad flag is one line and exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError

SEED_MAX = 2**32 - 1  # numpy's (and so Optuna's samplers') seed range; torch accepts it too
NAME_MAX = 100  # characters in a name that becomes a file or folder name


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    return f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"


def _in_range(value: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    above = lo is None or (value > lo if lo_open else value >= lo)
    below = hi is None or (value < hi if hi_open else value <= hi)
    return above and below


def check_int(value: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool, not a float such as 1.0) in [lo, hi]."""
    require(isinstance(value, int) and not isinstance(value, bool), f"{what} must be an integer, got {value!r}")
    require(
        _in_range(value, lo, hi, False, False),
        f"{what} must be an integer in {_interval(lo, hi, False, False)}, got {value}",
    )
    return value


def check_float(
    value: Any,
    what: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number (ints allowed, bools and NaN/inf not) in the interval."""
    require(isinstance(value, (int, float)) and not isinstance(value, bool), f"{what} must be a number, got {value!r}")
    require(math.isfinite(value), f"{what} must be a finite number, got {value}")
    require(
        _in_range(value, lo, hi, lo_open, hi_open),
        f"{what} must be in {_interval(lo, hi, lo_open, hi_open)}, got {value:g}",
    )
    return float(value)


def check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    require(isinstance(value, str) and value in choices, f"{what} must be one of {choices}, got {value!r}")
    return value


def check_name(value: Any, what: str) -> str:
    """A name that becomes one folder or file name: it cannot climb out of (or hide in) its parent."""
    require(isinstance(value, str), f"{what} must be a string, got {value!r}")
    require(0 < len(value) <= NAME_MAX, f"{what} must be 1 to {NAME_MAX} characters, got {len(value)}")
    bad = sorted({c for c in value if c in "/\\" or not c.isprintable()})
    require(
        not bad, f"{what} {value!r} may not contain {bad!r}: it names one folder (use letters, digits, '-', '_', '.')"
    )
    require(
        value not in (".", "..") and not value.startswith("-") and value == value.strip(),
        f"{what} {value!r} is not usable as a folder name",
    )
    return value


def check_writable_dir(path: str | Path, what: str) -> Path:
    """``path`` is a folder, or can be created as one, and can be written; nothing is created here."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    require(probe.is_dir(), f"{what} {path}: {probe} is {'a file' if probe.exists() else 'missing'}, not a folder")
    require(os.access(probe, os.W_OK | os.X_OK), f"{what} {path}: {probe} is not writable; pick another folder")
    return path


def make_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` (and parents); an OS refusal is a ``UserError`` naming the flag."""
    path = check_writable_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{what} {path}: cannot create the folder ({exc.strerror or exc}); pick another folder"
        ) from None
    return path


# --- argparse types: the same checks, reported by argparse as "argument --flag: ..." -------------------
def _flag(parse: Callable[[str], Any], check: Callable[[Any], Any], kind: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check(value)
        except UserError as exc:  # argparse names the flag: "argument --lr: must be ..."
            raise argparse.ArgumentTypeError(str(exc).removeprefix("the value ")) from None

    return convert


def int_flag(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    return _flag(int, lambda v: check_int(v, "the value", lo, hi), f"an integer in {_interval(lo, hi, False, False)}")


def float_flag(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
) -> Callable[[str], float]:
    return _flag(
        float,
        lambda v: check_float(v, "the value", lo, hi, lo_open=lo_open, hi_open=hi_open),
        f"a number in {_interval(lo, hi, lo_open, hi_open)}",
    )


def name_flag(text: str) -> str:
    return _flag(str, lambda v: check_name(v, "the name"), "a name")(text)


positive_int = int_flag(1)
seed_flag = int_flag(0, SEED_MAX)
