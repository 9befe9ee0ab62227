"""A budget's whole search: screen, promote, confirm (``python -m search --budget NAME``), and the fidelity
study that chooses the rungs (``python -m search fidelity``).

Why stages: a tiny net's validation accuracy after 3 of 15 OneCycle epochs, taken while the learning rate
is near its peak, says little about where it ends, so pruning the first epochs of a long schedule
discards good designs. Here every score comes from a *complete* schedule: many designs are screened on
a short one (the first rung), the best third of each rung is trained again, from scratch, on the next
longer one, up to the budget's full epochs (successive halving over complete schedules). The best
designs at full length are then retrained with more seeds, because one seed's test accuracy at 99.4 %
moves by about 0.08 points, as much as the designs differ; the winner is the best mean over seeds (``WINNER_RULE``).

Every rung and seed run is a run directory (``rungs/e<E>/trial_<N>-seed<S>/``, ``confirm/...``); a
rerun of the same command skips the finished ones and redoes a killed one, so a search resumes at any
point. Selection reads validation accuracy only; the test set is logged, never read here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from mnist_challenge import ArchSpec, UserError, build_model, count_params
from mnist_challenge.common.errors import TrainingDiverged
from mnist_challenge.common.files import try_lock, write_text_atomic
from mnist_challenge.common.validate import make_dir
from mnist_challenge.engine.train import RECIPE_KEYS, TrainConfig
from mnist_challenge.runs.budgets import Budget
from mnist_challenge.runs.checker import Limits
from mnist_challenge.runs.runlog import read_epochs

from .progress import EpochBar, Ticker, rows_in
from .workers import run_pool

LEARNED = 50.0  # validation accuracy (%) above which a design counts as having learned (chance is ~10 %)
# The winner rule, chosen by measurement (``mnist-search winner-rules``, docs: the results journal): over the six
# committed staged studies, the best mean over seeds picked a design that passes on every seed in 4 of 6 and 15
# of 18 seeds; the former near-tie band (fewest parameters within 0.05 of the best mean) 3 of 6 and 13 of 18, the
# worst seed, mean - std and a lower confidence bound 3 of 6 and 13 of 18, the median 4 of 6 and 14 of 18.
WINNER_RULE = "best mean validation accuracy over seeds (fewer parameters only on an exact tie)"


# --- jobs: one design trained on one complete schedule with one seed ----------------------------------
@dataclass(frozen=True)
class Job:
    trial: int  # the screening trial whose design this is (or the design's index, in a fidelity study)
    spec: dict[str, Any]
    recipe: dict[str, Any]  # a TrainConfig, epochs and seed set for this job
    run_dir: str


DIVERGED = "diverged.txt"  # written into a run whose loss went non-finite: finished, with a score of 0


def score_of(run_dir: str | Path) -> float | None:
    """Validation accuracy at the end of a finished run (its verdict is written last), 0 for a run that
    diverged; None if unfinished."""
    path = Path(run_dir)
    if (path / DIVERGED).is_file():
        return 0.0
    if not (path / "verdict.json").is_file():
        return None
    try:
        rows = read_epochs(path)
    except UserError:
        return None
    return rows[-1]["val_acc"] if rows else None


# What a finished run must have been trained with to count as a job's: its recipe and its data.
TRAINED_WITH = {*RECIPE_KEYS, "train_subset", "val_size", "split_seed"}


def trained_otherwise(job: Job) -> list[str]:
    """The settings a finished run's config.json records otherwise than ``job`` plans (a key the run predates
    is not compared): a rerun with another --epochs or --change into the same folder must not pass old runs
    off as new ones."""
    try:
        recorded = json.loads((Path(job.run_dir) / "config.json").read_text())
    except FileNotFoundError:  # nothing recorded to compare (a run marked diverged before it wrote one)
        return []
    except (OSError, ValueError):
        return ["config.json"]
    return sorted(k for k in TRAINED_WITH & job.recipe.keys() & recorded.keys() if recorded[k] != job.recipe[k])


_worker_data = None


def _init_worker(base: dict[str, Any], data_dir: str | None) -> None:
    """Each worker process loads MNIST once; one thread each (two 1-thread workers beat one 2-thread)."""
    global _worker_data
    import torch

    from mnist_challenge.runs.experiment import load_data

    cfg = TrainConfig.from_dict(base)
    torch.set_num_threads(cfg.threads or 1)
    _worker_data = load_data(cfg, data_dir)


def _run_job(job: Job) -> tuple[int, str, float | None]:
    from mnist_challenge.runs.experiment import run_experiment

    cfg = TrainConfig.from_dict(job.recipe)
    try:
        run_experiment(
            ArchSpec.from_dict(job.spec),
            cfg,
            job.run_dir,
            data=_worker_data,
            progress=False,
            echo=False,
            limits=Limits(max_params=10**9, max_epochs=cfg.epochs),
            extra_config={"trial": job.trial},
        )
    except TrainingDiverged as exc:  # a recipe that diverges is an outcome (the worst), not a crash
        (Path(job.run_dir) / DIVERGED).write_text(f"{exc}\n")
    return job.trial, job.run_dir, score_of(job.run_dir)


STAGE_LOCK = ".stages.lock"  # held by the one command training a study's (or a fidelity study's) stage jobs


def run_jobs(jobs: list[Job], base: TrainConfig, data_dir: str | None, workers: int, what: str, home: Path) -> None:
    """Train every job whose run directory is not finished; a killed one is started again from scratch.

    ``home`` (the study's folder) holds a lock for as long as this runs: a second command reaching the same
    stage is refused, instead of deleting the first one's unfinished run and training it again beside it."""
    todo: list[Job] = []
    done: list[Job] = []
    for job in jobs:
        (todo if score_of(job.run_dir) is None else done).append(job)
    for job in done:
        if changed := trained_otherwise(job):
            raise UserError(
                f"{job.run_dir} is a finished run of other settings ({', '.join(changed)} differ from this "
                f"command's): write to another folder, or remove that one"
            )
    if not todo:
        return
    make_dir(home, "the study folder")
    lock = try_lock(home / STAGE_LOCK)
    if lock is None:
        raise UserError(
            f"another command is training this study's stage runs now ({home}); let it finish (the same command "
            f"then reprints the result), or stop it and rerun"
        )
    try:
        for job in todo:
            shutil.rmtree(job.run_dir, ignore_errors=True)
        bar = EpochBar(what, sum(job.recipe["epochs"] for job in todo))
        finished: set[str] = set()

        def tick() -> None:  # a finished run planned what it ran (a diverged one stops early)
            rows = {job.run_dir: rows_in(job.run_dir) for job in todo}
            planned = sum(rows[j.run_dir] if j.run_dir in finished else j.recipe["epochs"] for j in todo)
            bar.show(sum(rows.values()), planned)

        def report(result: tuple[int, str, float | None]) -> None:
            trial, run_dir, score = result
            finished.add(run_dir)
            tick()
            tqdm.write(
                f"trial {trial}: val acc {score:.2f}% ({run_dir})"
                if score is not None
                else f"trial {trial}: unfinished"
            )

        try:
            if workers == 1:
                _init_worker(base.to_dict(), data_dir)
                ticker = Ticker(tick)
                try:
                    for job in todo:
                        report(_run_job(job))
                finally:
                    ticker.stop()
            else:
                initargs, log = (base.to_dict(), data_dir), home / "search.log"
                run_pool(_run_job, todo, workers, _init_worker, initargs, report, log, tick)
        finally:
            bar.close()
    finally:
        os.close(lock)


def job_for(trial: int, spec: ArchSpec, recipe: TrainConfig, epochs: int, seed: int, folder: Path) -> Job:
    return Job(
        trial,
        spec.to_dict(),
        replace(recipe, epochs=epochs, seed=seed).to_dict(),
        str(folder / f"trial_{trial:04d}-seed{seed}"),
    )


# --- promotion and confirmation ---------------------------------------------------------------------
@dataclass
class Entry:
    """One design's score on one rung (or its mean over seeds, once confirmed)."""

    trial: int
    params: int
    score: float
    run_dir: str
    seeds: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = {"trial": self.trial, "params": self.params, "val_acc": round(self.score, 4), "run_dir": self.run_dir}
        if self.seeds:
            d.update(
                seeds=[round(s, 4) for s in self.seeds], mean=round(self.score, 4), std=round(spread(self.seeds), 4)
            )
        return d


def spread(values: tuple[float, ...]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def promote(entries: list[Entry], keep: float) -> list[Entry]:
    """The best ``keep`` fraction (at least one) by score; fewer parameters first among equal scores."""
    ranked = sorted(entries, key=lambda e: (-e.score, e.params))
    return ranked[: max(1, math.ceil(len(ranked) * keep))] if ranked else []


def winner_of(confirmed: list[Entry]) -> Entry | None:
    """The confirmed design with the best mean validation accuracy over its seeds (``WINNER_RULE``); fewer
    parameters break an exact tie (means compared rounded to 1e-6, so float noise is no tie-breaker)."""
    if not confirmed:
        return None
    return min(confirmed, key=lambda e: (-round(e.score, 6), e.params))


def screened(study: optuna.Study) -> list[Entry]:
    """The first rung: the study's completed trials (each its own draw, trained on the short schedule)."""
    from .outputs import completed

    return [
        Entry(t.number, t.user_attrs.get("params", 0), t.values[0], t.user_attrs.get("run_dir", ""))
        for t in completed(study)
    ]


def run_stages(
    study: optuna.Study, budget: Budget, base: TrainConfig, study_dir: Path, data_dir: str | None, workers: int
) -> dict[str, Any]:
    """Promote the screened designs rung by rung, confirm the best with seeds; record it all in the study."""
    from .artifacts import sync_study
    from .space import recipe_of_trial, spec_of_trial

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}

    def job(entry: Entry, epochs: int, seed: int, folder: Path) -> Job:
        trial = trials[entry.trial]
        return job_for(
            entry.trial, spec_of_trial(trial, study.study_name), recipe_of_trial(trial, base), epochs, seed, folder
        )

    rungs = [{"epochs": budget.ladder[0], "entries": screened(study)}]
    for epochs in budget.ladder[1:]:
        chosen = promote(rungs[-1]["entries"], budget.keep)
        jobs = [job(e, epochs, base.seed, study_dir / "rungs" / f"e{epochs}") for e in chosen]
        run_jobs(jobs, base, data_dir, workers, f"promote ({epochs} epochs)", study_dir)
        sync_study(study, study_dir, None)  # the rung's curves on optuna-dashboard as soon as they exist
        scored = [(e, j, score_of(j.run_dir)) for e, j in zip(chosen, jobs)]
        rungs.append(
            {
                "epochs": epochs,
                "entries": [Entry(e.trial, e.params, s, j.run_dir) for e, j, s in scored if s is not None],
            }
        )
    top = sorted(rungs[-1]["entries"], key=lambda e: (-e.score, e.params))[: budget.confirm]
    seeds = [base.seed + k for k in range(1, budget.seeds)]
    jobs = [job(e, budget.epochs, seed, study_dir / "confirm") for e in top for seed in seeds]
    run_jobs(jobs, base, data_dir, workers, f"confirm ({budget.epochs} epochs)", study_dir)
    sync_study(study, study_dir, None)
    confirmed = []
    for e in top:
        scores = (e.score, *[score_of(j.run_dir) for j in jobs if j.trial == e.trial])
        if all(s is not None for s in scores):
            confirmed.append(Entry(e.trial, e.params, statistics.fmean(scores), e.run_dir, scores))
    winner = winner_of(confirmed)
    stages = {
        "budget": budget.__dict__ | {"ladder": list(budget.ladder)},
        "rungs": [{"epochs": r["epochs"], "entries": [e.as_dict() for e in r["entries"]]} for r in rungs],
        "confirmed": [e.as_dict() for e in sorted(confirmed, key=lambda e: -e.score)],
        "winner": winner.as_dict() if winner else None,
        "winner_rule": WINNER_RULE,
    }
    study.set_user_attr("stages", stages)
    return stages


def confirmed_table(stages: dict[str, Any]) -> str:
    lines = [f"{'trial':>5} {'params':>7} {'val acc mean ± std':>20}  seeds"]
    for e in stages.get("confirmed", []):
        seeds = ", ".join(f"{s:.2f}" for s in e["seeds"])
        lines.append(f"{e['trial']:>5} {e['params']:>7,} {e['mean']:>11.2f} ± {e['std']:.2f}%  {seeds}")
    return "\n".join(lines)


# --- the fidelity study ----------------------------------------------------------------------------
def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (ties get their average rank)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    if len(xs) < 2:
        return float("nan")
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / den if den else float("nan")


def _rounded(value: float) -> float | None:
    """For JSON: NaN (too few designs to rank) is written as null."""
    return None if math.isnan(value) else round(value, 4)


def run_fidelity(
    budget: Budget, designs: int, out: Path, base: TrainConfig, data_dir: str | None, workers: int, sampler_seed: int
) -> dict[str, Any]:
    """Train ``designs`` random draws of the fitted space on every rung of the budget's ladder, then the
    rank correlation of each rung's scores with the full schedule's: how far a short complete schedule
    can be trusted to rank designs. Replayable: the draws come from ``sampler_seed``."""
    from .space import fitted_recipe, fitted_spec

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sampler_seed))
    drawn = []
    for i in range(designs):
        trial = study.ask()
        spec = fitted_spec(trial, f"fidelity-{budget.name}", budget.max_params, 20)
        drawn.append((i, spec, fitted_recipe(trial, base), trial.params))
        study.tell(trial, 0.0)
    # Design by design (all schedules of one, then the next): a study stopped part-way has whole designs.
    jobs = [
        job_for(i, spec, recipe, epochs, base.seed, out / f"e{epochs}")
        for i, spec, recipe, _ in drawn
        for epochs in budget.ladder
    ]
    run_jobs(jobs, base, data_dir, workers, f"fidelity study, {designs} designs x {len(budget.ladder)} schedules", out)
    scores = {
        epochs: [score_of(out / f"e{epochs}" / f"trial_{i:04d}-seed{base.seed}") for i, *_ in drawn]
        for epochs in budget.ladder
    }
    full = scores[budget.epochs]
    # Designs that never left chance level rank last on every schedule and make any schedule look good:
    # the correlation among the designs that learned is the stricter figure.
    learned = [i for i, score in enumerate(full) if score is not None and score >= LEARNED]
    result = {
        "budget": budget.name,
        "max_params": budget.max_params,
        "ladder": list(budget.ladder),
        "designs": designs,
        "sampler_seed": sampler_seed,
        "spearman_vs_full": {str(e): _rounded(spearman(scores[e], full)) for e in budget.rungs},
        "learned_designs": len(learned),
        "spearman_vs_full_learned": {
            str(e): _rounded(spearman([scores[e][i] for i in learned], [full[i] for i in learned]))
            for e in budget.rungs
        },
        "entries": [
            {
                "design": i,
                "params": count_params(build_model(spec)),
                "hyperparameters": params,
                "spec": spec.to_dict(),
                "val_acc": {str(e): scores[e][i] for e in budget.ladder},
            }
            for i, spec, _, params in drawn
        ],
    }
    write_text_atomic(out / "fidelity.json", json.dumps(result, indent=2) + "\n")
    return result
