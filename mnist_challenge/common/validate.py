"""Checks shared by specs, configs and CLI flags: numbers in range (never NaN or inf), names that are safe
as one path component, output folders that can be written. Each failure is a ``UserError`` whose message
names the input; the ``*_flag`` variants are argparse types, so a bad flag is one line and exit 2.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnist_challenge.common.errors import UserError

SEED_MAX = 2**32 - 1  # numpy's (and so Optuna's samplers') seed range; torch accepts it too
NAME_MAX = 100  # characters in a name that becomes a file or folder name
NAME_BYTES = 255  # bytes (UTF-8) in one file or folder name: the limit of every common Linux file system


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    return f"{left}{'-inf' if lo is None else shown(lo)}, {'inf' if hi is None else shown(hi)}{right}"


def _in_range(value: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    above = lo is None or (value > lo if lo_open else value >= lo)
    below = hi is None or (value < hi if hi_open else value <= hi)
    return above and below


def shown(value: Any) -> str:
    """A value for an error line: exact (100.0001 stays 100.0001, 2**32 - 1 stays 4294967295), but never thousands
    of digits long."""
    try:
        text = (
            repr(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 1e16 else repr(value)
        )
    except ValueError:  # an int past Python's digit limit for printing
        return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text):,} characters)"


def check_int(value: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool, not a float such as 1.0) in [lo, hi]."""
    require(isinstance(value, int) and not isinstance(value, bool), f"{what} must be an integer, got {shown(value)}")
    require(
        _in_range(value, lo, hi, False, False),
        f"{what} must be an integer in {_interval(lo, hi, False, False)}, got {shown(value)}",
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
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool), f"{what} must be a number, got {shown(value)}"
    )
    require(abs(value) < 1e308 and math.isfinite(value), f"{what} must be a finite number, got {shown(value)}")
    require(
        _in_range(value, lo, hi, lo_open, hi_open),
        f"{what} must be in {_interval(lo, hi, lo_open, hi_open)}, got {shown(value)}",
    )
    return float(value)


BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_bool(text: str) -> bool:
    """``true/false/yes/no/1/0`` in any case, and nothing else (``bool("false")`` is True: never that)."""
    value = BOOLEANS.get(text.strip().lower())
    if value is None:
        raise ValueError(f"expected one of true, false, yes, no, 1, 0, got {shown(text)}")
    return value


def check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    require(isinstance(value, str) and value in choices, f"{what} must be one of {choices}, got {value!r}")
    return value


def check_name(value: Any, what: str, limit: int = NAME_MAX) -> str:
    """A name that becomes one folder or file name: it cannot climb out of (or hide in) its parent, and it
    fits the file system (``limit`` characters and ``NAME_BYTES`` bytes, checked before any work starts)."""
    require(isinstance(value, str), f"{what} must be a string, got {shown(value)}")
    require(0 < len(value) <= limit, f"{what} must be 1 to {limit} characters, got {len(value):,}")
    size = len(value.encode("utf-8", "surrogatepass"))
    require(size <= NAME_BYTES, f"{what} is {size} bytes in UTF-8; a file name holds at most {NAME_BYTES}")
    bad = sorted({c for c in value if c in "/\\" or not c.isprintable()})
    require(
        not bad, f"{what} {value!r} may not contain {bad!r}: it names one folder (use letters, digits, '-', '_', '.')"
    )
    require(
        value not in (".", "..") and not value.startswith("-") and value == value.strip(),
        f"{what} {value!r} is not usable as a folder name",
    )
    return value


def one_line(text: object, limit: int = 200) -> str:
    """``text`` (an exception, say) as one line of at most ``limit`` characters, for an ``error:`` line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit].rsplit(" ", 1)[0] + " ..."


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    repeated = sorted(k for k, n in collections.Counter(k for k, _ in pairs).items() if n > 1)
    if repeated:  # json keeps the last silently: which one did the author mean?
        raise UserError(f"key {one_line(repeated[:5])} appears more than once in one object")
    return dict(pairs)


def parse_json(text: str, what: str) -> Any:
    """JSON from a user's file, strictly: a duplicate key, an integer too long to read, nesting that would
    exhaust the stack, or any syntax error is one ``UserError`` naming ``what``."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except UserError as exc:
        raise UserError(f"{what} is ambiguous: {exc}") from None
    except RecursionError:
        raise UserError(f"{what} is not usable: its JSON is nested far too deep") from None
    except ValueError as exc:  # JSONDecodeError, and the int-digits limit ("Exceeds the limit ...")
        raise UserError(f"{what} is not valid JSON: {one_line(exc)}") from None


def read_json_file(path: str | Path) -> Any:
    """``parse_json`` of a file's text; unreadable or non-UTF-8 files are a ``UserError`` naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not valid JSON: not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_json(text, str(path))


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
            raise argparse.ArgumentTypeError(f"expected {kind}, got {shown(text)}") from None
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


def short_name_flag(limit: int) -> Callable[[str], str]:
    """``name_flag`` for a name that other names are made from (a study's: ``<study>-trial<N>``)."""
    return _flag(str, lambda v: check_name(v, "the name", limit), "a name")


positive_int = int_flag(1)
seed_flag = int_flag(0, SEED_MAX)
