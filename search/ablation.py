"""Does a recipe change help a study's design? The design's own recipe and the changed one, trained with the
same seeds on the study's split, compared on validation accuracy only (the test set is not read to choose).

Runs are ordered seed by seed, both arms of a seed together, so a stopped ablation holds complete pairs; the
same command resumes it (finished runs are kept, ``stages.run_jobs``)."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from mnist_challenge.architecture.spec import ArchSpec
from mnist_challenge.common.files import write_text_atomic
from mnist_challenge.engine.train import TrainConfig

from .stages import Job, score_of

BASE = "base"  # the arm that trains the trial's recipe unchanged


def ablation_jobs(
    trial: int, spec: ArchSpec, arms: dict[str, TrainConfig], seeds: list[int], folder: Path
) -> list[Job]:
    """One job per seed and arm, into ``folder/<arm>/seed<N>``."""
    return [
        Job(trial, spec.to_dict(), replace(recipe, seed=seed).to_dict(), str(folder / arm / f"seed{seed}"))
        for seed in seeds
        for arm, recipe in arms.items()
    ]


def _mean_std(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4)}


def summarise(jobs: list[Job], change: str) -> dict[str, Any]:
    """Each arm's final validation accuracy per seed, its mean ± std, and the changed arm minus the base, seed
    by seed (paired: the same seed draws the same initial weights in both arms). Unfinished runs are left out."""
    scores: dict[str, dict[int, float]] = {}
    for job in jobs:
        arm = Path(job.run_dir).parent.name
        score = score_of(job.run_dir)
        if score is not None:
            scores.setdefault(arm, {})[job.recipe["seed"]] = score
    summary: dict[str, Any] = {"change": change, "metric": "validation accuracy (%) at the last epoch", "arms": {}}
    for arm, by_seed in scores.items():
        summary["arms"][arm] = {"seeds": {str(s): round(v, 4) for s, v in sorted(by_seed.items())}}
        summary["arms"][arm].update(_mean_std(list(by_seed.values())))
    base, changed = scores.get(BASE, {}), {k: v for k, v in scores.items() if k != BASE}
    for arm, by_seed in changed.items():
        paired = [by_seed[s] - base[s] for s in sorted(by_seed) if s in base]
        if paired:
            summary["arms"][arm]["minus_base"] = {
                "seeds": [round(d, 4) for d in paired],
                **_mean_std(paired),
                "better_on": sum(d > 0 for d in paired),
            }
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"ablation of {summary['change']} ({summary['metric']})"]
    for arm, s in summary["arms"].items():
        seeds = ", ".join(f"{v:.2f}" for v in s["seeds"].values())
        line = f"  {arm:>8}: {s['mean']:.3f} ± {s['std']:.3f} %  (seeds {seeds})"
        if "minus_base" in s:
            d = s["minus_base"]
            line += (
                f"; minus base {d['mean']:+.3f} ± {d['std']:.3f}, better on {d['better_on']} of {len(d['seeds'])} seeds"
            )
        lines.append(line)
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], folder: Path) -> Path:
    path = folder / "ablation.json"
    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
    return path
