"""The assignment's rules, judged from a run directory's own files.

* parameters < ``max_params``              (from inspection.json: parameters used in forward)
* no fully connected layer                   (from inspection.json: any nn.Linear / F.linear)
* epochs <= ``max_epochs``                   (rows in epochs.csv and the plan in config.json; "< 20 epochs" is max 19)
* the run is complete                        (epochs.csv holds epochs 1..N of the N that config.json planned)
* test accuracy >= ``min_acc`` in each of the last ``last_k`` epochs ("consistently, not once")

A run killed part-way fails the completeness rule: its last epochs are not the ones the rules mean.

The model is rebuilt from the run's ``spec.json`` and re-inspected, and a run whose logged inspection
disagrees with its own spec fails: logs cannot claim a smaller network than they trained; nor can
``model.pt`` hold another network than the spec. A verdict rests only on what the checker can read: a
required file that is missing, unreadable or malformed, a half-written row, an accuracy that is not a
finite percentage, is exit 2 naming it, never a PASS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_challenge.common.errors import UserError
from mnist_challenge.common.settings import check_settings, setting
from mnist_challenge.common.validate import read_json_file, require
from mnist_challenge.runs.runlog import read_epochs

if TYPE_CHECKING:  # the checker imports torch only when it rebuilds a model
    from torch import nn

    from mnist_challenge.architecture.spec import ArchSpec


@dataclass(frozen=True)
class Limits:
    """The rules a run is judged by (the assignment's by default); the flags of ``check`` come from here."""

    max_params: int = setting(20_000, "parameters must be fewer than this", lo=1, what="--max-params")
    max_epochs: int = setting(19, "at most this many epochs", lo=1, what="--max-epochs")
    min_acc: float = setting(
        99.4, "test accuracy (%%) needed in each of the last k epochs", lo=0.0, hi=100.0, what="--min-acc"
    )
    last_k: int = setting(3, "the epochs at the end that must all reach --min-acc", lo=1, what="--last-k")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class Verdict:
    passed: bool
    rules: list[dict[str, Any]] = field(default_factory=list)  # each: rule, passed, figure

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "rules": self.rules}

    def format(self) -> str:
        lines = [f"[{'PASS' if r['passed'] else 'FAIL'}] {r['rule']}: {r['figure']}" for r in self.rules]
        lines.append("VERDICT: " + ("PASS" if self.passed else "FAIL"))
        return "\n".join(lines)


def read_json_object(path: Path) -> dict[str, Any]:
    """A run directory's JSON file, which must hold one object; anything else is a ``UserError``."""
    require_file(path)
    data = read_json_file(path)
    require(isinstance(data, dict), f"{path} is malformed: expected a JSON object, got {type(data).__name__}")
    return data


REQUIRED = ("spec.json", "config.json", "inspection.json", "epochs.csv", "model.pt")  # what a verdict rests on


def require_file(path: Path) -> None:
    """``path`` is a readable file (a folder, a dangling link or a missing file is named as such)."""
    if path.is_file():
        return
    what = "a folder" if path.is_dir() else "a dangling link" if path.is_symlink() else "missing"
    raise UserError(f"{path.parent} is not a complete run directory: {path.name} is {what}")


def read_inspection(run_dir: Path) -> dict[str, Any]:
    """inspection.json with the fields the rules read, type-checked."""
    path = run_dir / "inspection.json"
    inspection = read_json_object(path)
    for key in ("params", "macs", "receptive_field_head"):  # macs and RF are optional, shown in the report's table
        value = inspection.get(key, None if key == "params" else 0)
        untracked = key == "receptive_field_head" and value is None  # the inspector could not follow the model's ops
        require(_is_count(value) or untracked, f"{path} is malformed: '{key}' must be a count, got {value!r}")
    has_linear, linear = inspection.get("has_linear"), inspection.get("linear_layers", [])
    require(
        isinstance(has_linear, bool), f"{path} is malformed: 'has_linear' must be true or false, got {has_linear!r}"
    )
    require(
        isinstance(linear, list) and all(isinstance(n, str) for n in linear),
        f"{path} is malformed: 'linear_layers' must be a list of names",
    )
    return inspection


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def planned_epochs(run_dir: Path) -> int:
    path = run_dir / "config.json"
    epochs = read_json_object(path).get("epochs")
    require(
        _is_count(epochs) and epochs >= 1, f"{path} is malformed: 'epochs' must be a positive integer, got {epochs!r}"
    )
    return epochs


def checkpoint_mismatch(path: Path, spec: ArchSpec, model: nn.Module) -> str | None:
    """How the checkpoint at ``path`` differs from ``spec`` and its built ``model``; None if it holds exactly
    that network. An unreadable checkpoint is a ``UserError`` naming it."""
    from mnist_challenge.runs.runlog import read_checkpoint, weights_mismatch

    state, saved_spec = read_checkpoint(path)
    return "it was saved for another spec" if saved_spec != spec else weights_mismatch(state, model)


def checked_rows(run_dir: Path) -> list[dict[str, float]]:
    """epochs.csv, with each row's epoch a positive whole number and its test accuracy a finite percentage:
    the rules never judge a value they cannot read (a NaN compares false with everything)."""
    rows = read_epochs(run_dir)
    path = run_dir / "epochs.csv"
    for line, row in enumerate(rows, start=2):
        epoch, acc = row["epoch"], row["test_acc"]
        require(
            math.isfinite(epoch) and epoch >= 1 and epoch == int(epoch),
            f"{path} is malformed: line {line} has epoch {epoch!r}, not a positive whole number",
        )
        require(
            math.isfinite(acc) and 0.0 <= acc <= 100.0,
            f"{path} is malformed: line {line} has test_acc {acc!r}, not an accuracy in [0, 100] %",
        )
    return rows


def params_rule(params: int, limits: Limits) -> dict[str, Any]:
    return {
        "rule": f"parameters < {limits.max_params:,}",
        "passed": params < limits.max_params,
        "figure": f"{params:,}",
    }


def linear_rule(has_linear: bool, sites: list[str], unused: list[str] = ()) -> dict[str, Any]:
    """Judged on the layers the forward uses; a Linear defined but never called is named as unused."""
    figure = f"fully connected layer at {', '.join(sites) or 'a functional call'}" if has_linear else "none"
    if not has_linear and unused:
        figure += f" used (defined but never called, so not judged: {', '.join(unused)})"
    return {"rule": "no fully connected layer", "passed": not has_linear, "figure": figure}


def epochs_rule(epochs: int, limits: Limits, planned: int | None = None) -> dict[str, Any]:
    """At most ``max_epochs`` epochs run (and planned, where the plan is known)."""
    within = 1 <= epochs <= limits.max_epochs and (planned is None or planned <= limits.max_epochs)
    figure = f"{epochs}" + (f" (planned {planned})" if planned is not None and planned != epochs else "")
    return {"rule": f"epochs <= {limits.max_epochs}", "passed": within, "figure": figure}


def accuracy_rule(test_accs: list[float], limits: Limits) -> dict[str, Any]:
    """Each of the last ``last_k`` epochs reaches ``min_acc`` ("consistently, not once")."""
    tail = test_accs[-limits.last_k :]
    enough = len(tail) == limits.last_k
    figure = ", ".join(f"{a:.2f}%" for a in tail) if tail else "no epochs"
    if not enough:
        figure += f" (only {len(tail)} epoch(s), need {limits.last_k})"
    return {
        "rule": f"test accuracy >= {limits.min_acc}% in each of the last {limits.last_k} epochs",
        "passed": enough and all(a >= limits.min_acc for a in tail),
        "figure": figure,
    }


REQUIREMENT_NAMES = {"batchnorm": "BatchNorm", "dropout": "Dropout", "gap": "global average pooling"}


def requirement_rules(usage: dict[str, list[str]], requires: tuple[str, ...]) -> list[dict[str, Any]]:
    """One rule per required layer kind: the forward uses it (``architecture.usage.layers_used``)."""
    return [
        {
            "rule": f"uses {REQUIREMENT_NAMES[kind]}",
            "passed": bool(usage.get(kind)),
            "figure": ", ".join(usage[kind][:3]) + (" ..." if len(usage[kind]) > 3 else "")
            if usage.get(kind)
            else "never called in forward",
        }
        for kind in requires
    ]


def check_run(run_dir: str | Path, limits: Limits = Limits(), requires: tuple[str, ...] = ()) -> Verdict:
    """The verdict on one run directory (``requires``: layer kinds the model must use, from a rule set); a file the
    rules need that is missing, unreadable or malformed is a ``UserError`` naming it (exit 2), never a verdict."""
    from mnist_challenge.architecture.inspector import inspect_spec
    from mnist_challenge.architecture.model import build_model
    from mnist_challenge.architecture.spec import ArchSpec

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    for name in REQUIRED:
        require_file(run_dir / name)
    inspection = read_inspection(run_dir)
    planned = planned_epochs(run_dir)
    rows = checked_rows(run_dir)
    spec = ArchSpec.load(run_dir / "spec.json")
    model = build_model(spec)
    rules = []
    fresh = inspect_spec(spec)
    consistent = fresh.params == inspection["params"] and fresh.has_linear == inspection["has_linear"]
    rules.append(
        {
            "rule": "logged model matches spec.json",
            "passed": consistent,
            "figure": f"spec rebuilds to {fresh.params:,} params, log says {inspection['params']:,}",
        }
    )
    mismatch = checkpoint_mismatch(run_dir / "model.pt", spec, model)
    rules.append(
        {
            "rule": "model.pt holds the network of spec.json",
            "passed": mismatch is None,
            "figure": mismatch or "the spec's network, tensor for tensor",
        }
    )
    rules.append(params_rule(int(inspection["params"]), limits))
    rules.append(linear_rule(inspection["has_linear"], inspection.get("linear_layers") or [], fresh.linear_unused))
    rules.append(epochs_rule(len(rows), limits, planned))
    numbers = [int(r["epoch"]) for r in rows]
    complete = numbers == list(range(1, planned + 1))
    figure = f"{len(rows)} of {planned} planned epochs logged"
    if not complete and len(rows) == planned:
        figure += " (the epoch column is not 1..N in order)"
    rules.append({"rule": "run complete (every planned epoch logged)", "passed": complete, "figure": figure})
    rules.append(accuracy_rule([r["test_acc"] for r in rows], limits))
    if requires:
        from mnist_challenge.architecture.usage import layers_used

        rules.extend(
            requirement_rules(layers_used(model, (spec.in_channels, spec.input_size, spec.input_size)), requires)
        )
    return Verdict(all(r["passed"] for r in rules), rules)
