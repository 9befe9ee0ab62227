"""Run a study: open (or resume) it, start the workers, show progress, export the outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from mnist_challenge import UserError
from mnist_challenge.common.errors import (
    EnvironmentFault,
    check_interrupted,
    environment_fault,
    set_crash_log,
    stopping,
)
from mnist_challenge.common.validate import SEED_MAX, make_dir
from mnist_challenge.engine.train import TrainConfig
from mnist_challenge.runs.experiment import load_data

from .artifacts import ARTIFACT_DIR, sync_study
from .objective import Objective, SearchSettings
from .outputs import export, plot, summary_table
from .progress import EpochBar, trial_epochs
from .space import SPACE_VERSION
from .storage import make_storage, retry_interrupted, taken_over
from .workers import Workers, watch

PRUNERS = ("hyperband", "median", "sha", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# What a budget's screening counts towards --screen: a FAIL is a run that was killed (it is retried as a new
# trial, which counts when it finishes) or that crashed; either way it screened no design.
SCREENED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class RunPlan:
    settings: SearchSettings
    storage_url: str
    n_trials: int  # trials to add in this invocation, over all workers
    workers: int
    pruner: str
    seed: int
    data_dir: str | None
    timeout: float | None
    heartbeat_interval: int = 60
    grace_period: int = 180
    enqueue: tuple[dict, ...] = ()  # trial params to run first (known designs as a warm start)
    transfer: tuple[tuple[dict, str], ...] = ()  # another study's designs (params, "study trial N") to run first
    sampler_seed: int = 0  # worker i seeds its sampler with sampler_seed + i (see process_sampler_seed)
    fill_to: int | None = None  # instead of adding n_trials: add what the study lacks of this many finished trials
    budget: dict | None = None  # a staged search's Budget.record(): part of what a resumed study must match


def process_sampler_seed(seed: int, study_name: str) -> int:
    """A sampler seed for this command: from the study's ``--seed`` and name, and from what is unique to
    this process (host, pid, time, a random UUID), so that two commands on one study, a resumed study
    and the same command on many machines all draw differently. Recorded on every trial it draws
    (``sampler_seed``); ``--sampler-seed`` replays it."""
    unique = f"{study_name}|{seed}|{socket.gethostname()}|{os.getpid()}|{time.time_ns()}|{uuid.uuid4()}"
    return int.from_bytes(hashlib.sha256(unique.encode()).digest()[:4], "big")


def worker_sampler_seed(plan: RunPlan, worker: int) -> int:
    return (plan.sampler_seed + worker) % (SEED_MAX + 1)


def worker_label(worker: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}/w{worker}"


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def study_attrs(plan: RunPlan) -> dict:
    s = plan.settings
    attrs = {
        "base_config": s.base.to_dict(),
        "max_params": s.max_params,
        "min_rf": s.min_rf,
        "multi_objective": s.multi_objective,
        "space_version": s.space_version or SPACE_VERSION,
        "pruner": plan.pruner,  # how its trials were stopped: a resume with another would mix two searches
    }
    return attrs | ({"budget": plan.budget} if plan.budget is not None else {})


# What a resumed study must share with the command, because each changes the results: the training fields
# of its base recipe (the seed included: a new seed on resume would mix two searches in one study) ...
RESUME_BASE_KEYS = ("epochs", "seed", "train_subset", "val_size", "split_seed")
# ... and the study's own settings.
RESUME_KEYS = ("max_params", "min_rf", "multi_objective")


def space_version_of(study: optuna.Study) -> int:
    """The architecture space a study draws from: studies made before versions were recorded are 1."""
    return study.user_attrs.get("space_version", 1)


SETTINGS_WAIT = 30.0  # seconds to wait for another command that has just created the study to record its settings


def open_study(plan: RunPlan, worker: int = 0) -> optuna.Study:
    storage = make_storage(plan.storage_url, plan.heartbeat_interval, plan.grace_period)
    s = plan.settings
    directions = ["maximize", "minimize"] if s.multi_objective else ["maximize"]
    sampler = optuna.samplers.TPESampler(seed=worker_sampler_seed(plan, worker))
    pruner = make_pruner(plan.pruner, s.base.epochs)
    if s.study_name not in optuna.get_all_study_names(storage):
        refuse_earlier_runs(s.study_dir)
    try:
        study = optuna.create_study(
            study_name=s.study_name, storage=storage, directions=directions, sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:  # it exists (resume, or another command was first)
        study = optuna.load_study(study_name=s.study_name, storage=storage, sampler=sampler, pruner=pruner)
        deadline = time.time() + SETTINGS_WAIT
        while "base_config" not in study.user_attrs and time.time() < deadline:  # its creator is writing them now
            time.sleep(0.5)
        stored, wanted = study.user_attrs, study_attrs(plan)
        if "base_config" in stored:  # absent only if its creator died before writing them
            differing = [k for k in RESUME_KEYS if stored.get(k) != wanted[k]]
            base = stored["base_config"] if isinstance(stored["base_config"], dict) else {}
            differing += [
                f"seed (the study's is {base.get(k)})" if k == "seed" else k
                for k in RESUME_BASE_KEYS
                if base.get(k) != wanted["base_config"][k]
            ]
            if plan.budget is not None and stored.get("budget", plan.budget) != plan.budget:
                differing.append("the budget's stages (--rungs, --screen, --confirm, --seeds)")
            if [d.name.lower() for d in study.directions] != directions:
                differing.append("mode")
            if stored.get("pruner", plan.pruner) != plan.pruner:  # studies made before it was recorded take any
                differing.append(f"pruner (the study's is {stored['pruner']})")
            if s.space_version is not None and s.space_version != space_version_of(study):
                differing.append(f"space (the study's is {space_version_of(study)})")
            if differing:
                raise UserError(
                    f"study {s.study_name!r} exists with different settings ({', '.join(differing)}); "
                    f"rerun with its settings or pick another --study"
                ) from None
            if plan.budget is not None and "budget" not in stored:  # a study staged before budgets were recorded
                study.set_user_attr("budget", plan.budget)
            if "pruner" not in stored:
                study.set_user_attr("pruner", plan.pruner)
            return study
    for key, value in study_attrs(plan).items():
        study.set_user_attr(key, value)
    return study


def refuse_earlier_runs(study_dir: Path) -> None:
    """A new study cannot start in a folder that holds an earlier study's trial runs: its trial numbers
    would meet their run directories (the study.db was deleted, or a storage URL points elsewhere)."""
    trials = study_dir / "trials"
    if trials.is_dir() and any(trials.iterdir()):
        raise UserError(
            f"{study_dir} holds the trial runs of an earlier study ({trials}) but its storage has no such study: "
            f"restore that study's storage (or pass its --storage), or move the folder away or pick another --study"
        )


def worker_main(plan: RunPlan, worker: int, n_trials: int, progress: bool) -> None:
    """One worker process (or the main process when there is one worker, which then shows the epoch bar)."""
    import torch

    if plan.settings.base.threads:
        torch.set_num_threads(plan.settings.base.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(plan, worker)
    data = load_data(plan.settings.base, plan.data_dir)
    epochs = plan.settings.base.epochs
    bar = EpochBar(stage_name(plan), n_trials * epochs) if progress else None
    counted = {"done": 0, "less": 0}  # epochs trained, and planned epochs the finished trials did not need

    def epoch_done() -> None:
        counted["done"] += 1
        if bar is not None:
            bar.show(counted["done"])

    objective = Objective(
        dataclasses.replace(plan.settings, space_version=space_version_of(study)), data, on_epoch=epoch_done
    )

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        counted["less"] += max(0, epochs - int(trial.user_attrs.get("epochs_run", 0) or 0))
        if bar is not None:
            bar.show(counted["done"], n_trials * epochs - counted["less"])
        value = f"{trial.values[0]:.2f}%" if trial.values else trial.user_attrs.get("reason", trial.state.name)
        tqdm.write(f"trial {trial.number} {trial.state.name}: {value}")
        export(study, plan.settings.study_dir, plan.settings.multi_objective)

    started: list[optuna.Trial] = []
    seed, label = worker_sampler_seed(plan, worker), worker_label(worker)

    def tracked(trial: optuna.Trial) -> float:
        started.append(trial)
        trial.set_user_attr("sampler_seed", seed)  # with the study's history, what replays this draw
        trial.set_user_attr("worker", label)
        return objective(trial)

    deadline = None if plan.timeout is None else time.time() + plan.timeout
    try:
        with optuna_log_into(search_log(plan.settings)):
            for _ in range(n_trials):  # one trial per call, so that one lost trial does not end the worker
                check_interrupted()
                if deadline is not None and time.time() >= deadline:
                    break
                try:
                    study.optimize(tracked, n_trials=1, callbacks=[after_trial], catch=(RuntimeError,))
                except Exception as exc:
                    if not taken_over(exc):
                        raise
                    # This worker was silent past --grace (suspended, say): another one failed the trial and
                    # queued it again. Nothing is lost; go on with the next trial.
                    tqdm.write(
                        f"trial {started[-1].number if started else '?'} was taken over by another worker (its "
                        f"heartbeat went stale); it is queued again"
                    )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one: optuna has marked the trial FAIL
        if started:
            retry_interrupted(study, started[-1].number)
        raise
    except Exception as exc:
        if stopping():  # after a stop signal, whatever fails is the stop's doing (an import it cut half-way, say)
            if started:
                retry_interrupted(study, started[-1].number)
            raise
        fault = exc if isinstance(exc, EnvironmentFault) else environment_fault(exc, plan.settings.study_dir)
        if fault is None:
            raise
        # A full disk or a permission is not the design's fault: queue the trial again, like a killed one.
        if started:
            retry_interrupted(study, started[-1].number)
        raise fault from None
    finally:
        if bar is not None:
            bar.close()


def stage_name(plan: RunPlan) -> str:
    """The bar's label: a staged search's screening stage, or the plain search's trials."""
    epochs = plan.settings.base.epochs
    return f"screen ({epochs} epochs)" if plan.budget is not None else f"trials ({epochs} epochs)"


@contextlib.contextmanager
def optuna_log_into(path: Path) -> Iterator[None]:
    """Optuna's own log (a failed trial's traceback, its warnings) goes into the study's ``search.log``, not
    the terminal: a stopped trial is recorded there in full, and the terminal says ``interrupted``."""
    import logging

    handler = logging.FileHandler(path, delay=True, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] optuna %(levelname)s: %(message)s"))
    optuna.logging.disable_default_handler()
    logging.getLogger("optuna").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("optuna").removeHandler(handler)
        handler.close()
        optuna.logging.enable_default_handler()


def search_log(s: SearchSettings) -> Path:
    """The study's log of internal errors (tracebacks), beside its outputs."""
    return s.study_dir / "search.log"


def left_to_screen(trials: list[optuna.trial.FrozenTrial], screen: int) -> int:
    """Trials a budget's screening still has to add to have scored ``screen`` designs."""
    return max(0, screen - sum(t.state in SCREENED for t in trials))


def run_search(plan: RunPlan) -> optuna.Study:
    s = plan.settings
    set_crash_log(search_log(s))
    study = open_study(plan)  # creates it, or checks that the existing one matches, before any worker starts
    make_dir(s.study_dir, "--logs")  # only now: a storage that cannot be opened leaves no folder behind
    for params, origin in plan.transfer:  # first; marked, so the results say a winner was transferred
        study.enqueue_trial(params, user_attrs={"transferred_from": origin}, skip_if_exists=True)
    for params in plan.enqueue:  # skipped when a trial with these params exists (a resumed study)
        study.enqueue_trial(params, skip_if_exists=True)
    started = time.time()
    if plan.fill_to is None:
        run_workers(plan, study)
    elif not fill_screening(plan, study):
        return study  # screened already: nothing ran
    print(f"\n({time.time() - started:.0f} s this run)")
    finish(study, s)
    return study


STALE_POLL = 5.0  # seconds between looks at a RUNNING trial that screening waits for


def fill_screening(plan: RunPlan, study: optuna.Study) -> bool:
    """Train until ``plan.fill_to`` designs are screened and no trial is left RUNNING; whether anything ran.
    A killed command's trial (``kill -9``, a lost machine) stays RUNNING: once its heartbeat is older than the
    grace period it is failed, queued again and trained here (a live command's is waited for). Without this a
    resumed screening could end with it still RUNNING, never scored: the stages read only finished trials."""
    ran, waiting_since = False, None
    while True:
        trials = study.get_trials(deepcopy=False)
        left = left_to_screen(trials, plan.fill_to)
        if left:
            run_workers(dataclasses.replace(plan, n_trials=left), study)
            if left_to_screen(study.get_trials(deepcopy=False), plan.fill_to) >= left:
                return True  # a pass that screened nothing (every trial failed): never spin on it
            ran, waiting_since = True, None
            continue
        running = sorted(t.number for t in trials if t.state == TrialState.RUNNING)
        if not running:
            return ran
        if waiting_since is None:
            waiting_since = time.time()
            print(
                f"waiting for trial(s) {', '.join(map(str, running))}, RUNNING: another command's, or a killed "
                f"one's, queued again once its heartbeat is {plan.grace_period} s old",
                flush=True,
            )
        time.sleep(STALE_POLL)
        optuna.storages.fail_stale_trials(study)  # a stale one becomes FAIL, and a WAITING copy that counts anew
        ran = True


def run_workers(plan: RunPlan, study: optuna.Study) -> None:
    """``plan.n_trials`` trials over the plan's workers (in this process when there is one)."""
    s = plan.settings
    if plan.workers == 1:
        worker_main(plan, 0, plan.n_trials, progress=True)
        return
    shares = [
        plan.n_trials // plan.workers + (1 if i < plan.n_trials % plan.workers else 0) for i in range(plan.workers)
    ]
    workers = Workers([(worker_main, (plan, i, n, False)) for i, n in enumerate(shares) if n > 0], search_log(s))
    epochs = s.base.epochs
    bar = EpochBar(f"{stage_name(plan)}, {len(workers.procs)} workers", plan.n_trials * epochs)
    known = {t.number for t in study.get_trials(deepcopy=False) if t.state in FINISHED}

    def tick() -> None:
        done, less = trial_epochs(study.get_trials(deepcopy=False), known, epochs)
        bar.show(done, plan.n_trials * epochs - less)

    try:
        watch(workers, tick)
    finally:
        bar.close()


def finish(study: optuna.Study, s: SearchSettings) -> None:
    """Write every output and print the closing summary."""
    summary = export(study, s.study_dir, s.multi_objective)
    plots = plot(study, s.study_dir, s.multi_objective)
    sync_study(study, s.study_dir, summary.get("best", {}).get("trial"))
    print(f"{summary['trials']} trials in study {s.study_name!r}. Top trials by validation accuracy:")
    print(summary_table(study))
    print(
        f"pruning: {summary['epochs_run']} epochs trained of {summary['epochs_without_pruning']} without pruning "
        f"({100 * summary['epochs_saved_fraction']:.0f}% saved); "
        f"{summary['rejected_before_training']} candidates rejected before training"
    )
    if "best" in summary:
        print(
            f"best: trial {summary['best']['trial']}, val acc {summary['best']['val_acc']:.2f}%, "
            f"{summary['best']['params']:,} params -> {s.study_dir / 'best_spec.json'}"
        )
    print(f"outputs: {s.study_dir} (trials.csv, summary.json, {', '.join(plots) or 'no plots yet'}, {ARTIFACT_DIR}/)")


def export_study(plan: RunPlan) -> None:
    """Outputs only, for a study whose run was interrupted (or another machine's trials)."""
    from .storage import open_existing_study

    finish(open_existing_study(plan.storage_url, plan.settings.study_name), plan.settings)


def base_config_from_study(study: optuna.Study) -> TrainConfig:
    if "base_config" not in study.user_attrs:
        raise UserError(f"study {study.study_name!r} has no recorded settings: it was not made by this kit's search")
    return TrainConfig.from_dict(study.user_attrs["base_config"])
