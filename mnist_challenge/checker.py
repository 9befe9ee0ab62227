"""The assignment's rules, judged from a run directory's own files.

* parameters < ``max_params``              (from inspection.json: parameters used in forward)
* no fully connected layer                   (from inspection.json: any nn.Linear / F.linear)
* epochs <= ``max_epochs``                   (rows in epochs.csv and the plan in config.json; "< 20 epochs" is max 19)
* the run is complete                        (epochs.csv holds epochs 1..N of the N that config.json planned)
* test accuracy >= ``min_acc`` in each of the last ``last_k`` epochs ("consistently, not once")

A run killed part-way fails the completeness rule: its last epochs are not the ones the rules mean.

Where the run kept its ``spec.json``, the model is rebuilt and re-inspected, and a run whose logged
inspection disagrees with its own spec fails: logs cannot claim a smaller network than they trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .runlog import read_epochs
from .validate import check_float, check_int, require


@dataclass(frozen=True)
class Limits:
    max_params: int = 20_000  # strictly fewer parameters than this
    max_epochs: int = 19  # at most this many epochs
    min_acc: float = 99.4  # test accuracy in %, in each of the last_k epochs
    last_k: int = 3

    def __post_init__(self) -> None:
        check_int(self.max_params, "--max-params", 1)
        check_int(self.max_epochs, "--max-epochs", 1)
        check_float(self.min_acc, "--min-acc", 0.0, 100.0)
        check_int(self.last_k, "--last-k", 1)


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
    if not path.is_file():
        raise UserError(f"{path.parent} is not a complete run directory: {path.name} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path} is not valid JSON: {' '.join(str(exc).split())[:200]}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    require(isinstance(data, dict), f"{path} is malformed: expected a JSON object, got {type(data).__name__}")
    return data


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


def check_run(run_dir: str | Path, limits: Limits = Limits()) -> Verdict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    inspection = read_inspection(run_dir)
    planned = planned_epochs(run_dir)
    rows = read_epochs(run_dir)
    rules = []
    if (run_dir / "spec.json").is_file():
        from .inspector import inspect_module
        from .model import build_model
        from .spec import ArchSpec

        spec = ArchSpec.load(run_dir / "spec.json")
        fresh = inspect_module(build_model(spec), (spec.in_channels, spec.input_size, spec.input_size))
        consistent = fresh.params == inspection["params"] and fresh.has_linear == inspection["has_linear"]
        rules.append(
            {
                "rule": "logged model matches spec.json",
                "passed": consistent,
                "figure": f"spec rebuilds to {fresh.params:,} params, log says {inspection['params']:,}",
            }
        )
    params = int(inspection["params"])
    rules.append(
        {"rule": f"parameters < {limits.max_params:,}", "passed": params < limits.max_params, "figure": f"{params:,}"}
    )
    linear = inspection.get("linear_layers") or []
    rules.append(
        {
            "rule": "no fully connected layer",
            "passed": not inspection["has_linear"],
            "figure": f"fully connected layer at {', '.join(linear) or 'a functional call'}"
            if inspection["has_linear"]
            else "none",
        }
    )
    within = 1 <= len(rows) <= limits.max_epochs and planned <= limits.max_epochs
    figure = f"{len(rows)}" + (f" (planned {planned})" if planned != len(rows) else "")
    rules.append({"rule": f"epochs <= {limits.max_epochs}", "passed": within, "figure": figure})
    numbers = [r["epoch"] for r in rows]
    complete = numbers == list(range(1, planned + 1))
    figure = f"{len(rows)} of {planned} planned epochs logged"
    if not complete and len(rows) == planned:
        figure += " (the epoch column is not 1..N in order)"
    rules.append({"rule": "run complete (every planned epoch logged)", "passed": complete, "figure": figure})
    tail = [r["test_acc"] for r in rows[-limits.last_k :]]
    enough = len(tail) == limits.last_k
    figure = ", ".join(f"{a:.2f}%" for a in tail) if tail else "no epochs"
    if not enough:
        figure += f" (only {len(tail)} epoch(s), need {limits.last_k})"
    rules.append(
        {
            "rule": f"test accuracy >= {limits.min_acc}% in each of the last {limits.last_k} epochs",
            "passed": enough and min(tail) >= limits.min_acc,
            "figure": figure,
        }
    )
    return Verdict(all(r["passed"] for r in rules), rules)
