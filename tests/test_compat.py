"""Nothing committed breaks: every spec, config, run directory and study under ``logs/`` still loads, checks
and rebuilds with today's code (the records of earlier versions of the kit included)."""

from __future__ import annotations

import json

import optuna
import pytest

from mnist_challenge.architecture.spec import ArchSpec
from mnist_challenge.engine.train import TrainConfig
from mnist_challenge.runs.checker import Limits, check_run

from .conftest import ROOT

LOGS = ROOT / "logs"
RUNS = sorted(p.parent for p in LOGS.rglob("verdict.json"))
STUDIES = sorted(LOGS.rglob("study.db"))


def test_every_committed_spec_and_config_loads():
    specs = sorted(LOGS.rglob("spec.json"))
    configs = sorted(LOGS.rglob("config.json"))
    assert len(specs) > 100 and len(configs) > 100  # the search's trials are committed
    for path in specs:
        ArchSpec.load(path)
    for path in configs:
        TrainConfig.from_dict(json.loads(path.read_text()))


def test_every_finished_run_gets_its_recorded_verdict_again():
    """Each run judged by the limits its verdict.json was written with (read back from its rules) agrees."""
    assert len(RUNS) > 100
    for run in RUNS:
        recorded = json.loads((run / "verdict.json").read_text())
        limits = limits_of(recorded)
        assert check_run(run, limits).passed == recorded["passed"], run


def limits_of(verdict: dict) -> Limits:
    """The limits a recorded verdict applied, from its rules' own wording."""
    values = {}
    for rule in verdict["rules"]:
        text = rule["rule"]
        if text.startswith("parameters < "):
            values["max_params"] = int(text.removeprefix("parameters < ").replace(",", ""))
        elif text.startswith("epochs <= "):
            values["max_epochs"] = int(text.removeprefix("epochs <= ").split()[0])
        elif text.startswith("test accuracy >= "):
            acc, _, rest = text.removeprefix("test accuracy >= ").partition("%")
            values["min_acc"] = float(acc)
            values["last_k"] = int(rest.split("last ")[1].split()[0])
    return Limits(**values)


@pytest.mark.parametrize("db", STUDIES, ids=lambda p: p.parent.name)
def test_every_committed_study_opens_and_rebuilds_its_trials(db):
    from search.runner import base_config_from_study
    from search.space import recipe_of_trial, spec_of_trial
    from search.storage import default_storage_url

    name = db.parent.name
    study = optuna.load_study(study_name=name, storage=default_storage_url(db.parent))
    base = base_config_from_study(study)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert completed
    for trial in completed:
        spec_of_trial(trial, name)
        recipe_of_trial(trial, base)
