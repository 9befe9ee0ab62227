"""The assignment's rules, judged from a run directory's own files.

* parameters < ``max_params``              (from inspection.json: parameters used in forward)
* no fully connected layer                   (from inspection.json: any nn.Linear / F.linear)
* epochs <= ``max_epochs``                   (rows in epochs.csv; "< 20 epochs" is max 19)
* test accuracy >= ``min_acc`` in each of the last ``last_k`` epochs ("consistently, not once")

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


@dataclass(frozen=True)
class Limits:
    max_params: int = 20_000  # strictly fewer parameters than this
    max_epochs: int = 19  # at most this many epochs
    min_acc: float = 99.4  # test accuracy in %, in each of the last_k epochs
    last_k: int = 3


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


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path.parent} is not a complete run directory: {path.name} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None


def check_run(run_dir: str | Path, limits: Limits = Limits()) -> Verdict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if limits.last_k < 1:
        raise UserError(f"--last-k must be >= 1, got {limits.last_k}")
    inspection = _read_json(run_dir / "inspection.json")
    rows = read_epochs(run_dir)
    if not {"params", "has_linear"} <= inspection.keys():
        raise UserError(f"{run_dir / 'inspection.json'} lacks 'params' / 'has_linear'")
    rules = []
    if (run_dir / "spec.json").is_file():
        from .inspector import inspect_module
        from .model import build_model
        from .spec import ArchSpec

        spec = ArchSpec.load(run_dir / "spec.json")
        fresh = inspect_module(build_model(spec), (spec.in_channels, spec.input_size, spec.input_size))
        consistent = fresh.params == inspection["params"] and fresh.has_linear == inspection["has_linear"]
        rules.append({"rule": "logged model matches spec.json", "passed": consistent, "figure": f"spec rebuilds to {fresh.params:,} params, log says {inspection['params']:,}"})
    params = int(inspection["params"])
    rules.append({"rule": f"parameters < {limits.max_params:,}", "passed": params < limits.max_params, "figure": f"{params:,}"})
    linear = inspection.get("linear_layers") or []
    rules.append({"rule": "no fully connected layer", "passed": not inspection["has_linear"], "figure": f"nn.Linear found: {', '.join(linear) or 'F.linear'}" if inspection["has_linear"] else "none"})
    rules.append({"rule": f"epochs <= {limits.max_epochs}", "passed": 1 <= len(rows) <= limits.max_epochs, "figure": f"{len(rows)}"})
    tail = [r["test_acc"] for r in rows[-limits.last_k :]]
    enough = len(tail) == limits.last_k
    figure = ", ".join(f"{a:.2f}%" for a in tail) if tail else "no epochs"
    if not enough:
        figure += f" (only {len(tail)} epoch(s), need {limits.last_k})"
    rules.append({"rule": f"test accuracy >= {limits.min_acc}% in each of the last {limits.last_k} epochs", "passed": enough and min(tail) >= limits.min_acc, "figure": figure})
    return Verdict(all(r["passed"] for r in rules), rules)
