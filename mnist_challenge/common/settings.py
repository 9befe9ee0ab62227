"""Settings declared once: a dataclass field made with ``setting`` carries its default, its help, its bounds
or choices, and whether it is part of a training recipe. ``check_settings`` validates an instance from that
(called in ``__post_init__``), and ``mnist_challenge.cli.flags`` makes the command-line flags from the same
fields, so a bound, a choice or a help text is never written twice.

Types come from the field's annotation: ``int``, ``float``, ``str`` (with ``choices``), ``bool``, and any of
them ``| None`` (None: the setting is off or left to a default chosen later).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mnist_challenge.common.validate import check_choice, check_float, check_int, require

SETTING = "setting"  # the key of a field's metadata this module owns


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a field declares beyond its default (stored in the field's metadata)."""

    help: str  # one line for --help; the comment a field would otherwise carry
    lo: float | None = None  # lower bound (inclusive unless lo_open)
    hi: float | None = None  # upper bound (inclusive unless hi_open)
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[Any, ...] | None = None  # the allowed values of a str (or mixed) setting
    what: str | None = None  # how an error names the value (default: the field's name)
    recipe: bool = False  # part of a training recipe (what a result depends on), not an engine setting
    flag: bool = True  # has a command-line flag
    metavar: str | None = None


def setting(default: Any, help: str, **declared: Any) -> Any:
    """A dataclass field with ``default`` and what ``Setting`` declares."""
    return dataclasses.field(default=default, metadata={SETTING: Setting(help, **declared)})


def declared(field: dataclasses.Field) -> Setting | None:
    return field.metadata.get(SETTING)


def base_type(field: dataclasses.Field) -> str:
    """``int`` for ``int | None``; the annotation as written (``from __future__ import annotations``)."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return annotation.replace(" | None", "").strip()


def optional(field: dataclasses.Field) -> bool:
    annotation = field.type if isinstance(field.type, str) else str(field.type)
    return "None" in annotation


def check_value(field: dataclasses.Field, value: Any) -> None:
    """One setting's value against its declaration: a ``UserError`` naming it if wrong."""
    meta = declared(field)
    if meta is None or (value is None and optional(field)):
        return
    what = meta.what or field.name
    kind = base_type(field)
    if meta.choices is not None:
        if kind == "str":
            check_choice(value, what, meta.choices)
        else:
            require(value in meta.choices, f"{what} must be one of {meta.choices}, got {value!r}")
            require(type(value) in (bool, str), f"{what} must be one of {meta.choices}, got {value!r}")
    elif kind == "int":
        check_int(value, what, meta.lo, meta.hi)
    elif kind == "float":
        check_float(value, what, meta.lo, meta.hi, lo_open=meta.lo_open, hi_open=meta.hi_open)
    elif kind == "bool":
        require(isinstance(value, bool), f"{what} must be true or false, got {value!r}")
    elif kind == "str":
        require(isinstance(value, str), f"{what} must be a string, got {value!r}")
    else:  # a declaration this module cannot check is a bug in the kit, caught by the tests
        raise TypeError(f"setting {field.name}: unsupported type {field.type!r}")


def check_settings(instance: Any) -> None:
    """Every declared field of a dataclass instance typed and in range (NaN, inf, bools-for-numbers refused)."""
    for field in dataclasses.fields(instance):
        check_value(field, getattr(instance, field.name))


def recipe_fields(cls: type) -> tuple[str, ...]:
    """The names of a settings class's recipe fields, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if (meta := declared(f)) is not None and meta.recipe)
