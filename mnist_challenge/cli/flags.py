"""Command-line flags made from the settings dataclasses (``common.settings``): one flag per declared field,
its type check, bounds, choices, default and help taken from the field.

    int / float        --name VALUE   (bounds checked by the flag's type: a bad value is one line, exit 2)
    str with choices   --name CHOICE
    bool, default on   --no-name      (default off: --name)
    auto / true / false  --name and --no-name (default auto)
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mnist_challenge.common.settings import base_type, declared
from mnist_challenge.common.validate import float_flag, int_flag


def add_setting_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    defaults: dict[str, Any] | None = None,
    only: tuple[str, ...] | None = None,
    helps: dict[str, str] | None = None,
    help_prefix: str = "",
) -> None:
    """A flag for each declared field of ``cls`` (or each of ``only``), with ``defaults`` replacing the
    field's default where a command has its own (``train`` trains 15 epochs; None: "not given", the caller
    decides, and the help shows the field's default)."""
    defaults, helps = defaults or {}, helps or {}
    for field in dataclasses.fields(cls):
        meta = declared(field)
        if meta is None or not meta.flag or (only is not None and field.name not in only):
            continue
        default = defaults.get(field.name, field.default)
        text = help_prefix + helps.get(field.name, meta.help)
        flag = "--" + field.name.replace("_", "-")
        kind = base_type(field)
        if meta.choices is not None and kind != "str":  # auto / true / false
            parser.add_argument(flag, dest=field.name, action="store_const", const=True, default=default, help=text)
            parser.add_argument(
                "--no-" + flag[2:], dest=field.name, action="store_const", const=False, help=f"not: {text}"
            )
        elif kind == "bool":
            if default:
                parser.add_argument("--no-" + flag[2:], dest=field.name, action="store_false", help=f"off: {text}")
            else:
                parser.add_argument(flag, dest=field.name, action="store_true", help=text)
        elif meta.choices is not None:
            parser.add_argument(flag, choices=meta.choices, default=default, help=f"{text} (default {default})")
        else:
            make = int_flag(meta.lo, meta.hi) if kind == "int" else float_flag(
                meta.lo, meta.hi, lo_open=meta.lo_open, hi_open=meta.hi_open
            )  # fmt: skip
            declared_default = field.default if default is None else default
            shown = "" if declared_default is None else f" (default {declared_default:g})"
            parser.add_argument(flag, type=make, default=default, metavar=meta.metavar, help=text + shown)


def settings_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """An instance of ``cls`` from the flags ``add_setting_flags`` made (fields without a flag keep their
    default), with ``fixed`` values on top."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **fixed})


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", default=None, help="directory of MNIST IDX files (default: $MNIST_DATA_DIR, else ./data/mnist)"
    )
    p.add_argument("--download", action="store_true", help="download MNIST with torchvision if the files are missing")


def add_train_config_flags(p: argparse.ArgumentParser, epochs_default: int = 15) -> None:
    """Flags for every TrainConfig setting (``train`` and the search's ``reproduce``), and the data flags."""
    from mnist_challenge.engine.train import TrainConfig

    add_setting_flags(p, TrainConfig, defaults={"epochs": epochs_default})
    p.add_argument(
        "--no-ema", dest="ema_decay", action="store_const", const=0.0, help="evaluate and save the last step's weights"
    )
    add_data_flags(p)


def add_limit_flags(p: argparse.ArgumentParser) -> None:
    """``--rules NAME`` (a rule set of ``runs.budgets.RULES``) and a flag per limit, each overriding the set's."""
    from mnist_challenge.runs.budgets import RULES
    from mnist_challenge.runs.checker import Limits

    listed = "; ".join(f"{name}: {rules.about}" for name, rules in RULES.items()).replace("%", "%%")  # argparse
    p.add_argument("--rules", default="original", metavar="NAME", help=f"the rule set (default original). {listed}")
    fields = [f.name for f in dataclasses.fields(Limits)]
    add_setting_flags(
        p, Limits, defaults=dict.fromkeys(fields), helps={"max_params": "parameters must be fewer than this"}
    )


def limits_from_args(args: argparse.Namespace):
    """The rule set ``--rules`` names, with the limits any flag gives replacing the set's: ``(Rules, Limits)``."""
    from mnist_challenge.runs.budgets import rules_named

    rules = rules_named(args.rules)
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(rules.limits) if getattr(args, f.name) is not None
    }
    return rules, dataclasses.replace(rules.limits, **given)
