"""The parameter budgets the kit searches and reports: one declaration, read by the search (its stages and
flags), the results table (which limits a run under ``<budget>/`` is judged by) and the benchmarks.

A budget is a cap (strictly fewer parameters), the epochs of its full schedule, and how its staged search
runs: shorter complete schedules first (the rungs), the designs screened, the fraction promoted, and the
designs confirmed with several seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mnist_challenge.common.errors import UserError
from mnist_challenge.common.settings import check_settings, setting
from mnist_challenge.runs.checker import Limits


@dataclass(frozen=True)
class Budget:
    """A named parameter budget and how its search is staged."""

    name: str
    max_params: int  # strictly fewer parameters
    epochs: int  # full fidelity: the schedule the winner is trained with
    # Shorter complete schedules before the full one. The fidelity study (logs/search/fidelity/tiny) ranked 20
    # designs at 4 epochs with Spearman 0.96 against 15 (0.95 at 8, 0.89 at 2): one 4-epoch rung suffices.
    rungs: tuple[int, ...] = (4,)
    screen: int = setting(60, "designs drawn and trained at the first rung", lo=1, hi=100_000)
    keep: float = setting(1 / 3, "fraction of each rung promoted to the next", lo=0, hi=1, lo_open=True, flag=False)
    confirm: int = setting(5, "designs retrained with more seeds at full fidelity", lo=1, hi=1000)
    seeds: int = setting(3, "seeds per confirmed design, the full-fidelity run included", lo=1, hi=100)

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def limits(self) -> Limits:
        """The checker's rules for this budget: fewer parameters than the cap, at most its epochs."""
        return Limits(max_params=self.max_params, max_epochs=self.epochs)

    @property
    def ladder(self) -> tuple[int, ...]:
        return (*self.rungs, self.epochs)

    def record(self) -> dict[str, Any]:
        """What a study stores of its budget (JSON), and what a resumed command must match."""
        return {
            "name": self.name,
            "max_params": self.max_params,
            "ladder": list(self.ladder),
            "screen": self.screen,
            "keep": self.keep,
            "confirm": self.confirm,
            "seeds": self.seeds,
        }


BUDGETS = {
    "assignment": Budget("assignment", 20_000, 19),  # < 20,000 params, < 20 epochs
    "compact": Budget("compact", 8_000, 15),
    "tiny": Budget("tiny", 5_000, 15),
    "micro": Budget("micro", 4_000, 15),
    "nano": Budget("nano", 3_000, 15),  # under the smallest public nets (3,762 and 4,968 parameters, one seed each)
}


def resolve_budget(name: str, rungs: str | None, screen: int | None, confirm: int | None, seeds: int | None) -> Budget:
    """The named budget with any stage setting the command overrides."""
    if name not in BUDGETS:
        raise UserError(f"--budget {name!r}: one of {sorted(BUDGETS)}")
    budget = BUDGETS[name]
    if rungs is not None:
        try:
            parsed = tuple(int(r) for r in rungs.split(",") if r.strip())
        except ValueError:
            parsed = ()
        if not parsed:  # ',' or '' is a typo, not "no short rung"
            raise UserError(f"--rungs {rungs!r}: expected epochs separated by commas, e.g. 4,8") from None
        if any(b <= a for a, b in zip(parsed, parsed[1:])) or any(not 1 <= r < budget.epochs for r in parsed):
            raise UserError(f"--rungs {rungs!r}: increasing epochs, each under the budget's {budget.epochs}")
        budget = replace(budget, rungs=parsed)
    changes = {k: v for k, v in (("screen", screen), ("confirm", confirm), ("seeds", seeds)) if v is not None}
    return replace(budget, **changes)
