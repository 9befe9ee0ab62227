"""Which winner rule picks for *every seed*: a re-analysis of the committed staged studies (issue #41).

Each staged study confirms its top designs on several seeds; the rule that names the winner reads only their
validation accuracies. This module asks, for each candidate rule, which design it would have picked in each
study, and how that design's held-out **test** runs fared: the same confirmation runs' test accuracy, never used
to choose, judged by the budget's own rule (>= 99.4 % in each of the last 3 epochs). A rule is good for the
kit's claim when the design it picks passes on every seed.

    mnist-search winner-rules [--logs logs/search]   # prints the table; writes winner_rules.json beside the studies
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_challenge.runs.budgets import BUDGETS, RULES

from .storage import default_storage_url

NEAR_TIE = 0.05  # the kit's rule up to version 3: fewest parameters among designs within 0.05 of the best mean


@dataclass(frozen=True)
class Design:
    study: str
    trial: int
    params: int
    val: tuple[float, ...]  # validation accuracy of each confirmation seed (the rule's only input)
    test_passes: tuple[bool, ...]  # each seed's run judged by the budget's rule on its test log (never chosen on)
    test_worst: tuple[float, ...]  # each seed's worst test accuracy over the last k epochs

    @property
    def every_seed(self) -> bool:
        return all(self.test_passes)


def _mean(d: Design) -> float:
    return statistics.fmean(d.val)


def _std(d: Design) -> float:
    return statistics.stdev(d.val) if len(d.val) > 1 else 0.0


# Each rule scores a design from its validation seeds alone; the highest score wins (fewer parameters on a tie).
RULE_SCORES: dict[str, Callable[[Design], float]] = {
    "mean, near-tie band": _mean,  # fewest parameters within NEAR_TIE of the best mean: the rule up to version 3
    "mean": _mean,  # the rule since (stages.WINNER_RULE)
    "worst seed": lambda d: min(d.val),
    "mean - std": lambda d: _mean(d) - _std(d),
    "mean - 2 std / sqrt(n)": lambda d: _mean(d) - 2 * _std(d) / math.sqrt(len(d.val)),
    "median": lambda d: statistics.median(d.val),
}


def pick(designs: list[Design], rule: str) -> Design:
    """The rule's winner (fewer parameters on an exact tie); ``mean, near-tie band`` the former rule."""
    score = RULE_SCORES[rule]
    if rule == "mean, near-tie band":
        best = max(score(d) for d in designs)
        tied = [d for d in designs if round(best - score(d), 6) < NEAR_TIE]
        return min(tied, key=lambda d: (d.params, -score(d)))
    return max(designs, key=lambda d: (round(score(d), 6), -d.params))


def _test_log(run_dir: Path, min_acc: float, last_k: int) -> tuple[bool, float] | None:
    try:
        with open(run_dir / "epochs.csv", newline="") as f:
            accs = [float(row["test_acc"]) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return None
    if len(accs) < last_k:
        return None
    worst = min(accs[-last_k:])
    return worst >= min_acc, worst


def _rules_of(budget: str) -> str:
    return {"assignment": "original", "compact": "8k"}.get(budget, budget)


def designs_of(study_dir: Path) -> list[Design]:
    """The confirmed designs of one staged study, from its stored stages and its run folders."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = default_storage_url(study_dir)
    study = optuna.load_study(study_name=study_dir.name, storage=storage)
    stages = study.user_attrs.get("stages") or {}
    budget = (stages.get("budget") or {}).get("name", "")
    if budget not in BUDGETS:
        return []
    limits = RULES[_rules_of(budget)].limits
    designs = []
    for entry in stages.get("confirmed", []):
        first = Path(entry["run_dir"])
        first = first if first.is_dir() else study_dir / first.relative_to(first.parents[2])
        runs = [first] + sorted((study_dir / "confirm").glob(f"trial_{entry['trial']:04d}-seed*"))
        judged = [_test_log(r, limits.min_acc, limits.last_k) for r in runs]
        if len(runs) != len(entry["seeds"]) or any(j is None for j in judged):
            continue
        designs.append(
            Design(
                study_dir.name,
                entry["trial"],
                entry["params"],
                tuple(entry["seeds"]),
                tuple(j[0] for j in judged),
                tuple(round(j[1], 2) for j in judged),
            )
        )
    return designs


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    from .stages import spearman

    return spearman(xs, ys) if len(xs) > 2 and len(set(ys)) > 1 else None


def analyse(logs: Path) -> dict[str, Any]:
    """Per study, each rule's pick and how its test runs fared; over all confirmed designs, how well each rule's
    score ranks the number of seeds that pass."""
    studies = {}
    pooled: list[Design] = []
    for study_dir in sorted(p for p in logs.glob("budget-*") if (p / "study.db").is_file()):
        designs = designs_of(study_dir)
        if not designs:
            continue
        pooled += designs
        studies[study_dir.name] = {
            rule: {
                "trial": (d := pick(designs, rule)).trial,
                "params": d.params,
                "val": list(d.val),
                "test_worst_last_k": list(d.test_worst),
                "seeds_passing": f"{sum(d.test_passes)}/{len(d.test_passes)}",
                "every_seed": d.every_seed,
            }
            for rule in RULE_SCORES
        }
    ranking = {}
    for rule, score in RULE_SCORES.items():
        # Within each study (the rule only ever compares designs of one study): rank correlation of the score
        # with the seeds passing, averaged over studies where it is defined.
        rhos = []
        for name in studies:
            group = [d for d in pooled if d.study == name]
            rho = _spearman([score(d) for d in group], [float(sum(d.test_passes)) for d in group])
            if rho is not None:
                rhos.append(rho)
        passing = [int(s[rule]["seeds_passing"].split("/")[0]) for s in studies.values()]
        seeds = [int(s[rule]["seeds_passing"].split("/")[1]) for s in studies.values()]
        ranking[rule] = {
            "studies_whose_pick_passes_every_seed": sum(s[rule]["every_seed"] for s in studies.values()),
            "seeds_passing_of_picks": f"{sum(passing)}/{sum(seeds)}",
            "studies": len(studies),
            "mean_within_study_spearman": round(statistics.fmean(rhos), 3) if rhos else None,
        }
    return {"studies": studies, "rules": ranking, "designs": len(pooled)}


def format_analysis(result: dict[str, Any]) -> str:
    lines = [f"{result['designs']} confirmed designs in {len(result['studies'])} staged studies"]
    lines.append(f"{'rule':<24} {'picks passing every seed':>26} {'seeds passing':>14} {'rho':>8}")
    for rule, r in result["rules"].items():
        rho = "-" if r["mean_within_study_spearman"] is None else f"{r['mean_within_study_spearman']:+.3f}"
        every = f"{r['studies_whose_pick_passes_every_seed']} of {r['studies']}"
        lines.append(f"{rule:<24} {every:>26} {r['seeds_passing_of_picks']:>14} {rho:>8}")
    lines.append("(rho: within each study, the rank correlation of the rule's score with the seeds passing, averaged)")
    lines.append("")
    lines.append(f"{'study':<20} " + " ".join(f"{rule[:16]:>18}" for rule in RULE_SCORES))
    for name, picks in result["studies"].items():
        cells = [f"t{p['trial']} {p['seeds_passing']}{'*' if p['every_seed'] else ' '}" for p in picks.values()]
        lines.append(f"{name:<20} " + " ".join(f"{c:>18}" for c in cells))
    lines.append("(tN k/n: the trial each rule picks, and how many of its confirmation seeds pass on the test set; "
                 "* every seed)")  # fmt: skip
    return "\n".join(lines)


def write_analysis(result: dict[str, Any], path: Path) -> None:
    from mnist_challenge.common.files import write_text_atomic

    write_text_atomic(path, json.dumps(result, indent=2) + "\n")


def reapply(study_dir: Path) -> tuple[int | None, int | None]:
    """Name the winner of a finished staged study by the adopted rule (``stages.winner_of``) from its stored
    confirmations, and rewrite its outputs (``summary.json``, ``best_spec.json``, ``digest.json``): (old, new)
    winning trial. Nothing is trained."""
    import optuna

    from .digest import digest
    from .outputs import export
    from .stages import WINNER_RULE, Entry, winner_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_dir.name, storage=default_storage_url(study_dir))
    stages = dict(study.user_attrs.get("stages") or {})
    if not stages.get("confirmed"):
        return None, None
    confirmed = [
        Entry(e["trial"], e["params"], e["mean"], e["run_dir"], tuple(e["seeds"])) for e in stages["confirmed"]
    ]
    old = (stages.get("winner") or {}).get("trial")
    winner = winner_of(confirmed)
    stages["winner"], stages["winner_rule"] = winner.as_dict(), WINNER_RULE
    study.set_user_attr("stages", stages)
    export(study, study_dir, multi_objective=False)
    digest(study_dir, stages)  # rewrites digest.json
    return old, winner.trial
