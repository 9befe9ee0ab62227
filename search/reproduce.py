"""Which trial ``mnist-search reproduce`` retrains, and with what: the study's best (or a numbered trial),
its spec and recipe rebuilt from the study, on the study's full schedule, on all 60k training images."""

from __future__ import annotations

import dataclasses

import optuna

from mnist_challenge.architecture.spec import ArchSpec
from mnist_challenge.common.errors import UserError
from mnist_challenge.engine.train import TrainConfig

from .outputs import best_trial
from .runner import base_config_from_study
from .space import recipe_of_trial, spec_of_trial


def choose_trial(study: optuna.Study, name: str, number: int | None) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of the study, or its best by validation accuracy; one error line if there is none."""
    if number is not None:
        matches = [t for t in study.trials if t.number == number]
        if not matches:
            raise UserError(f"study {name!r} has no trial {number}")
        return matches[0]
    trial = best_trial(study)
    if trial is None:
        raise UserError(f"study {name!r} has no completed trial yet")
    return trial


def rebuilt(
    study: optuna.Study, name: str, trial: optuna.trial.FrozenTrial, epochs: int | None = None
) -> tuple[ArchSpec, TrainConfig]:
    """The trial's spec, and its recipe on the study's full schedule (a staged study's last rung; ``epochs``
    instead when given) with the study's split; one error line for a trial that cannot be rebuilt."""
    try:
        spec = spec_of_trial(trial, name)
        base = base_config_from_study(study)
        recipe = recipe_of_trial(trial, base)
    except (KeyError, ValueError, TypeError) as exc:  # a draw that never completed, or a study this kit did not make
        raise UserError(
            f"trial {trial.number} of {name!r} ({trial.state.name}) cannot be rebuilt: {exc!r} is "
            f"missing or malformed; pick a completed trial"
        ) from None
    # A staged study's full schedule: in its stages once confirmation ends; before that (still promoting) in the
    # budget it records when it starts (studies before that record have stages); base.epochs is the screening rung.
    finished = (study.user_attrs.get("stages") or {}).get("budget", {}).get("epochs")
    started = ((study.user_attrs.get("budget") or {}).get("ladder") or [None])[-1]
    epochs = epochs or finished or started or base.epochs
    return spec, dataclasses.replace(recipe, epochs=epochs)


def reproduction(
    study: optuna.Study, name: str, trial: optuna.trial.FrozenTrial, **changes: object
) -> tuple[ArchSpec, TrainConfig]:
    """``rebuilt``, trained on all 60k training images (no validation hold-out: selection is over, the test set
    is reported), with ``changes`` (seed, epochs when given, subset, threads) on top."""
    spec, recipe = rebuilt(study, name, trial, changes.pop("epochs", None))
    return spec, dataclasses.replace(recipe, val_size=0, **changes)
