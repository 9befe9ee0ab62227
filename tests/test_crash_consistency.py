"""Crash consistency of a staged search, as a property: ``kill -9`` of the command's whole process group at a
random moment in each stage (screening, promotion, confirmation), the same command again after each kill, and
the finished study must hold every drawn candidate screened, no trial RUNNING or WAITING, every stage run
complete and written once, and the stages' record must be what the screened scores imply.

CI runs it with a fixed seed and one kill per stage; ``KILL_RESUME_SEED=N KILL_RESUME_ROUNDS=K pytest
tests/test_crash_consistency.py`` runs K rounds of kills (each a kill in every stage) with another seed.

A resumed command draws with a sampler seed of its own (every command does: two machines on one study never
replay each other's draws), so which designs are drawn after a kill differs from an uninterrupted run; what must
not differ is that nothing drawn is lost or trained twice, and that the stages follow from the scores."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.stages import Entry, promote, winner_of
from search.stages import screened as screened_entries

from .conftest import ROOT

SEED = int(os.environ.get("KILL_RESUME_SEED", "0"))
ROUNDS = int(os.environ.get("KILL_RESUME_ROUNDS", "1"))
SCREEN, CONFIRM, SEEDS, FULL = 4, 2, 2, 2
# The tiny budget with a 2-epoch full schedule (the command runs in a fresh interpreter, so the test patches the
# budget table there, before the command reads it).
LAUNCH = (
    "import sys; import mnist_challenge.runs.budgets as b; "
    f"b.BUDGETS['tiny'] = b.Budget('tiny', 5_000, {FULL}); "
    "from search.commands.main import main; sys.exit(main(sys.argv[1:]))"
)


def command(logs: Path, mnist_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        LAUNCH,
        "--budget",
        "tiny",
        "--rungs",
        "1",
        "--screen",
        str(SCREEN),
        "--confirm",
        str(CONFIRM),
        "--seeds",
        str(SEEDS),
        "--train-subset",
        "600",
        "--val-size",
        "200",
        "--workers",
        "2",
        "--threads",
        "1",
        "--heartbeat",
        "1",
        "--grace",
        "2",
        "--logs",
        str(logs),
        "--data-dir",
        str(mnist_dir),
    ]


def started(study_dir: Path, stage: str) -> bool:
    """Whether the stage has a run that has begun training (its folder holds an epochs.csv)."""
    folder = {"screen": "trials", "promote": "rungs", "confirm": "confirm"}[stage]
    return any((study_dir / folder).rglob("epochs.csv"))


def kill_during(argv: list[str], study_dir: Path, stage: str, rng: random.Random) -> bool:
    """Start the command, wait until ``stage`` trains, kill -9 its process group a random moment later; whether
    the kill landed (False: the command finished first)."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not started(study_dir, stage) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(rng.uniform(0, 2.5))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        return True
    finally:
        with contextlib_suppress():
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class contextlib_suppress:  # ProcessLookupError: the group is gone already
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError


def epochs_of(run: Path) -> int:
    with open(run / "epochs.csv", newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def test_kill_9_in_every_stage_then_resume_loses_no_candidate(tmp_path, mnist_dir):
    rng = random.Random(SEED)
    argv = command(tmp_path, mnist_dir)
    study_dir = tmp_path / "budget-tiny"
    landed = []
    for _ in range(ROUNDS):
        for stage in ("screen", "promote", "confirm"):
            if kill_during(argv, study_dir, stage, rng):
                landed.append(stage)
    assert "screen" in landed  # the case that lost a candidate: a kill while screening
    finished = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]

    study = optuna.load_study(study_name="budget-tiny", storage=f"sqlite:///{study_dir / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    screened = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(screened) >= SCREEN
    # Every design that was drawn (its spec recorded), a killed one included, was screened: a killed trial is
    # failed once its heartbeat is stale and its parameters are queued again.
    drawn = {json.dumps(t.params, sort_keys=True) for t in trials if "spec" in t.user_attrs}
    assert drawn == {json.dumps(t.params, sort_keys=True) for t in screened}
    whole = [Path(t.user_attrs["run_dir"]) for t in screened if t.user_attrs.get("run_dir")]
    for run in whole:  # every screened run is whole: one epoch (or stopped at chance level after it)
        assert epochs_of(run) == 1 and (run / "verdict.json").is_file(), run

    record = study.user_attrs["stages"]
    first = screened_entries(study)
    assert sorted(e["trial"] for e in record["rungs"][0]["entries"]) == sorted(e.trial for e in first)
    promoted = {e.trial for e in promote(first, 1 / 3)}
    assert {e["trial"] for e in record["rungs"][1]["entries"]} == promoted  # the stages follow from the scores
    confirmed = record["confirmed"]
    assert len(confirmed) == min(CONFIRM, len(promoted))
    entries = [Entry(e["trial"], e["params"], e["mean"], e["run_dir"], tuple(e["seeds"])) for e in confirmed]
    assert record["winner"]["trial"] == winner_of(entries).trial

    runs = [p.parent for folder in ("rungs", "confirm") for p in (study_dir / folder).rglob("epochs.csv")]
    assert len([r for r in runs if r.parent.name == "confirm"]) == len(confirmed) * (SEEDS - 1)  # each seed once
    for run in runs + whole:  # every stage run complete: all its epochs, its verdict, no half-written file
        assert run in whole or (epochs_of(run) == FULL and (run / "verdict.json").is_file()), run
        assert not [p.name for p in run.iterdir() if ".tmp" in p.name], run
