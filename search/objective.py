"""One trial: draw a spec and recipe, reject it before training if it breaks a rule, else train it.

Selection uses validation accuracy only (the mean over the last ``select_last`` epochs, so a lucky
single epoch does not win). The test set is evaluated and logged in every trial's run directory like
any run, but no search decision reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_challenge import UserError
from mnist_challenge.architecture.inspector import inspect_spec
from mnist_challenge.common.errors import TrainingDiverged
from mnist_challenge.engine.data import MnistData
from mnist_challenge.engine.train import TrainConfig
from mnist_challenge.runs.checker import Limits
from mnist_challenge.runs.experiment import run_experiment

from .artifacts import store_of, upload_run
from .space import RECIPE_FIELDS, SPACE_VERSION, draw_recipe, draw_spec

CHANCE_LEVEL = 20.0  # % validation accuracy; 10 classes give 10 % by guessing


@dataclass(frozen=True)
class SearchSettings:
    study_name: str
    study_dir: Path  # logs/search/<study>/ : trial run dirs and outputs
    base: TrainConfig  # recipe fields the space does not draw (epochs, seed, threads, subset ...)
    max_params: int = 20_000  # strictly fewer
    min_rf: int = 20  # receptive field at the head's input, pixels
    multi_objective: bool = False  # (val acc, params) Pareto front instead of val acc alone
    select_last: int = 3  # objective = mean val acc of the last k epochs
    space_version: int | None = None  # architecture space (space.py); None: the study's own, SPACE_VERSION if new


def check_constraints(spec, settings: SearchSettings) -> tuple[dict[str, Any], str | None]:
    """Inspect the built model; return its figures and the first broken rule, if any."""
    report = inspect_spec(spec)  # the run's log and verdict read the same report
    figures = {
        "params": report.params,
        "rf_head": report.receptive_field_head,
        "macs": report.macs,
        "has_linear": report.has_linear,
    }
    if report.has_linear:
        return figures, "has a fully connected layer"
    if report.params >= settings.max_params:
        return figures, f"{report.params:,} params >= cap {settings.max_params:,}"
    if report.receptive_field_head < settings.min_rf:
        return figures, f"RF at the head {report.receptive_field_head} < {settings.min_rf} px"
    return figures, None


def find_twin(study: optuna.Study, trial: optuna.Trial, training: bool) -> FrozenTrial | None:
    """A trial of the study with exactly ``trial``'s params that was trained, or is being trained, and so
    owns that draw: finished (COMPLETE, or PRUNED after training), or RUNNING and either older or (before
    we train) already training. Of two workers that draw the same params at once, the older trial trains;
    a younger one that started first is stopped at its next epoch (``training=True``)."""
    twins = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
        if t.number == trial.number or t.params != trial.params or "duplicate_of" in t.user_attrs:
            continue
        trained, older = "run_dir" in t.user_attrs, t.number < trial.number
        if t.state == TrialState.PRUNED and not trained:
            continue  # rejected before training: this trial is rejected the same way, before it gets here
        if training and not (older and trained):
            continue  # a younger twin, or an older one not training yet (it will see us training and yield)
        if t.state == TrialState.RUNNING and not (older or trained):
            continue  # a younger twin still drawing: it will see us and yield
        twins.append(t)
    return min(twins, key=lambda t: t.number) if twins else None


def reuse_twin(trial: optuna.Trial, twin: FrozenTrial, multi_objective: bool) -> float | tuple[float, float]:
    """Do not train a draw the study already has: reuse its result, or end as pruned if it has none."""
    trial.set_user_attr("duplicate_of", twin.number)
    trial.set_user_attr("epochs_run", 0)
    if twin.state == TrialState.COMPLETE:
        trial.set_user_attr("reason", f"same draw as trial {twin.number}: its result reused, not trained again")
        for key in ("val_acc", "test_acc_last"):
            if key in twin.user_attrs:
                trial.set_user_attr(key, twin.user_attrs[key])
        return tuple(twin.values) if multi_objective else twin.values[0]
    what = "is training it now" if twin.state == TrialState.RUNNING else f"ended {twin.state.name}"
    trial.set_user_attr("reason", f"same draw as trial {twin.number}, which {what}: not trained again")
    raise optuna.TrialPruned()


class Objective:
    """Called by ``study.optimize``; holds the data in memory across trials of one worker."""

    def __init__(
        self,
        settings: SearchSettings,
        data: MnistData,
        progress: bool = False,
        on_epoch: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.data = data
        self.progress = progress  # a bar of batches inside each epoch
        self.on_epoch = on_epoch  # called after every epoch trained (the search's epoch bar, in one process)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        s = self.settings
        started = time.time()
        trial.set_user_attr("planned_epochs", s.base.epochs)
        try:
            spec = draw_spec(trial, s.study_name, s.max_params, s.min_rf, s.space_version or SPACE_VERSION)
        except UserError as exc:  # the draw's feature map vanished: not a network
            return self.reject(trial, f"invalid architecture: {exc}", {})
        recipe = draw_recipe(trial, s.base, s.space_version or SPACE_VERSION)
        trial.set_user_attr("recipe", {k: getattr(recipe, k) for k in RECIPE_FIELDS})
        trial.set_user_attr("spec", spec.to_dict())
        trial.study.set_user_attr(f"spec_trial_{trial.number}", spec.to_json(indent=None))
        figures, broken = check_constraints(spec, s)
        for key, value in figures.items():
            trial.set_user_attr(key, value)
        if broken:
            return self.reject(trial, broken, figures)
        twin = find_twin(trial.study, trial, training=False)
        if twin is not None:
            return reuse_twin(trial, twin, s.multi_objective)

        run_dir = s.study_dir / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))

        def report(epoch: int, row: dict[str, Any]) -> None:
            trial.set_user_attr("epochs_run", epoch)
            if self.on_epoch is not None:
                self.on_epoch()
            twin = find_twin(trial.study, trial, training=True)  # an older trial took the same draw meanwhile
            if twin is not None:
                trial.set_user_attr("duplicate_of", twin.number)
                reason = f"same draw as the older trial {twin.number}: stopped after epoch {epoch}"
                trial.set_user_attr("reason", reason)
                raise optuna.TrialPruned()
            # A net still at chance level after two epochs has collapsed (too high a learning rate, say).
            # No pruner can tell in a young study, where the first trials of each bracket always go on.
            if epoch >= 2 and row["val_acc"] < CHANCE_LEVEL:
                trial.set_user_attr(
                    "reason", f"stuck at chance level after epoch {epoch} (val acc {row['val_acc']:.2f}%)"
                )
                raise optuna.TrialPruned()
            if not s.multi_objective:  # Optuna cannot prune multi-objective trials
                trial.report(row["val_acc"], epoch)
                if trial.should_prune():
                    trial.set_user_attr("reason", f"pruned after epoch {epoch} (val acc {row['val_acc']:.2f}%)")
                    raise optuna.TrialPruned()

        limits = Limits(max_params=s.max_params)  # and the assignment's epochs
        try:
            result = run_experiment(
                spec,
                recipe,
                run_dir,
                data=self.data,
                on_epoch=report,
                limits=limits,
                progress=self.progress,
                echo=False,
                extra_config={"study": s.study_name, "trial": trial.number},
            )
        except TrainingDiverged as exc:  # diverged: a real outcome of this recipe, not a crash
            trial.set_user_attr("reason", str(exc))
            raise optuna.TrialPruned() from None
        finally:
            trial.set_user_attr("seconds", time.time() - started)
            upload_run(store_of(s.study_dir), trial, run_dir)  # for optuna-dashboard, pruned runs included
        tail = result.epochs[-s.select_last :]
        val_acc = sum(r["val_acc"] for r in tail) / len(tail)
        trial.set_user_attr("val_acc", val_acc)
        trial.set_user_attr("epochs_run", len(result.epochs))
        trial.set_user_attr("test_acc_last", result.epochs[-1]["test_acc"])  # logged for reading, never selected on
        return (val_acc, float(figures["params"])) if s.multi_objective else val_acc

    @staticmethod
    def reject(trial: optuna.Trial, reason: str, figures: dict[str, Any]) -> Any:
        """No training: record why and end the trial as pruned (it never reached epoch 1)."""
        trial.set_user_attr("reason", f"rejected before training: {reason}")
        trial.set_user_attr("epochs_run", 0)
        raise optuna.TrialPruned()
