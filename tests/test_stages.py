"""The staged search: promotion and winner rules, rank correlation, and a whole budget on a tiny subset
(screen, promote, confirm with seeds, resume) plus the fidelity study, run in this process."""

import csv
import json
import math
import statistics

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

import mnist_challenge.runs.budgets as budgets
import search.stages as stages
from mnist_challenge import UserError
from mnist_challenge.runs.budgets import Budget, resolve_budget
from search.commands.main import main as search
from search.stages import Entry, promote, spearman, winner_of

from .conftest import assert_one_error_line, call

TINY = ["--train-subset", "300", "--val-size", "300", "--workers", "1", "--threads", "1"]


def test_promotion_keeps_the_best_third_and_fewer_params_break_ties():
    entries = [
        Entry(n, params, score, "")
        for n, params, score in [(0, 4000, 98.0), (1, 3000, 99.0), (2, 4900, 99.0), (3, 100, 10.0)]
    ]
    assert [e.trial for e in promote(entries, 1 / 3)] == [1, 2]  # ceil(4 / 3) = 2; 99.0 twice, fewer params first
    assert [e.trial for e in promote(entries[:1], 1 / 3)] == [0]  # never none


def test_the_winner_is_the_best_mean_and_only_an_exact_tie_goes_to_fewer_params():
    a = Entry(0, 4900, 99.30, "", (99.3, 99.3, 99.3))
    b = Entry(1, 4100, 99.27, "", (99.2, 99.3, 99.31))
    c = Entry(2, 3000, 99.10, "", (99.1, 99.1, 99.1))
    assert winner_of([a, b, c]).trial == 0  # 0.03 better is better (no near-tie band since the version 4 winner rule)
    assert winner_of([c]).trial == 2 and winner_of([]) is None
    seeds = (99.43, 99.41, 99.46)
    same = Entry(3, 4000, statistics.fmean((99.46, 99.43, 99.41)), "", (99.46, 99.43, 99.41))
    assert winner_of([Entry(4, 4500, statistics.fmean(seeds), "", seeds), same]).trial == 3  # an exact tie


def test_the_winner_rule_is_the_one_the_committed_studies_measured_best():
    """The re-analysis behind WINNER_RULE (mnist-search winner-rules) on the committed staged studies."""
    from search.winner_rule import analyse

    from .conftest import ROOT

    result = analyse(ROOT / "logs" / "search")
    passing = {rule: r["studies_whose_pick_passes_every_seed"] for rule, r in result["rules"].items()}
    assert passing["mean"] == max(passing.values()) and passing["mean"] > passing["mean, near-tie band"]
    assert result["studies"]["budget-compact"]["mean"]["every_seed"]


def test_spearman_against_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # tied ranks averaged
    assert (
        math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([], [])) and math.isnan(spearman([1], [2]))
    )


def test_the_digest_compares_transferred_designs_with_drawn_ones(tmp_path):
    from search.digest import transfer_effect

    rows = [  # number, state, screening score, origin, rungs, confirmed
        (0, "COMPLETE", 99.0, "transferred from budget-tiny trial 52", '{"4": 99.0, "15": 99.3}', ""),
        (1, "COMPLETE", 98.5, "transferred from budget-tiny trial 55", '{"4": 98.5}', ""),
        (2, "PRUNED", "", "drawn", "", ""),
        (3, "COMPLETE", 99.2, "drawn", '{"4": 99.2, "15": 99.4}', "99.35 ± 0.03 (3 seeds)"),
        (4, "COMPLETE", 98.9, "drawn", '{"4": 98.9}', ""),
        (5, "COMPLETE", 98.7, "drawn", '{"4": 98.7}', ""),
    ]
    with (tmp_path / "trials.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("number", "state", "val_acc", "origin", "rung_val_acc", "confirmed"), *rows])
    assert transfer_effect(tmp_path) == {
        "screened": 5,
        "transferred": 2,
        "best_transferred": 99.0,
        "median_transferred": 98.75,
        "best_drawn": 99.2,
        "median_drawn": 98.9,
        "transferred_ranks": [2, 5],
        "transferred_promoted": 1,
        "transferred_confirmed": 0,
    }
    (tmp_path / "trials.csv").write_text("number,state,val_acc,origin\n0,COMPLETE,99.0,drawn\n")
    assert transfer_effect(tmp_path) is None


def test_a_killed_screening_run_does_not_count_as_a_screened_design():
    """A killed trial is FAIL and retried as a new trial: counting it would screen fewer designs than --screen
    (budget-micro-v3 counted six, and screened 116 of 120)."""
    from optuna.trial import TrialState, create_trial

    from search.runner import left_to_screen

    def trials(*states):
        return [create_trial(state=s, value=99.0 if s == TrialState.COMPLETE else None) for s in states]

    done = trials(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL)
    assert left_to_screen(done, 4) == 2
    assert left_to_screen(done + trials(TrialState.WAITING), 4) == 2  # the retry counts once it has run
    assert left_to_screen(done + trials(TrialState.COMPLETE, TrialState.COMPLETE), 4) == 0


def test_budget_settings_are_checked():
    assert resolve_budget("tiny", "3,6", 10, 2, 4).ladder == (3, 6, 15)
    for rungs in ("6,3", "0", "15", "a,b"):
        with pytest.raises(UserError, match="--rungs"):
            resolve_budget("tiny", rungs, None, None, None)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--budget", "tiny", "--epochs", "5"], "drop --epochs"),
        (["--budget", "tiny", "--max-params", "3000"], "drop --max-params"),
        (["--single-stage", "--screen", "5"], "--screen belong to a staged one"),
        (["--single-stage", "--budget", "tiny"], "--budget tiny belong to a staged one"),
        (["--epochs", "5"], "--epochs: a plain search needs --single-stage"),
        (["--budget", "huge"], "argument --budget"),
    ],
)
def test_budget_flags_that_clash_are_refused_before_anything_is_written(tmp_path, flags, fragment):
    assert_one_error_line(call(search, "--logs", str(tmp_path / "logs"), *flags), fragment)
    assert not (tmp_path / "logs").exists()


@pytest.fixture
def short_budget(monkeypatch):
    """The tiny and micro budgets with a 2-epoch full schedule, so a whole staged search runs in seconds."""
    monkeypatch.setitem(budgets.BUDGETS, "tiny", Budget("tiny", 5_000, 2))
    monkeypatch.setitem(budgets.BUDGETS, "micro", Budget("micro", 4_000, 2))


def test_a_budget_screens_promotes_confirms_and_resumes(tmp_path, mnist_dir, short_budget):
    args = [
        "--budget",
        "tiny",
        "--rungs",
        "1",
        "--screen",
        "3",
        "--confirm",
        "1",
        "--seeds",
        "2",
        "--logs",
        str(tmp_path),
        "--data-dir",
        str(mnist_dir),
        *TINY,
    ]
    code, out, err = call(search, *args)
    assert code == 0, err[-3000:]
    study_dir = tmp_path / "budget-tiny"
    summary = json.loads((study_dir / "summary.json").read_text())
    record = summary["stages"]
    assert [r["epochs"] for r in record["rungs"]] == [1, 2] and [r["designs"] for r in record["rungs"]] == [3, 1]
    (confirmed,) = record["confirmed"]
    assert len(confirmed["seeds"]) == 2 and confirmed["mean"] == pytest.approx(sum(confirmed["seeds"]) / 2, abs=1e-3)
    assert record["winner"]["trial"] == confirmed["trial"] == summary["best"]["trial"]
    assert (study_dir / "rungs" / "e2" / f"trial_{confirmed['trial']:04d}-seed0" / "verdict.json").is_file()
    assert (study_dir / "confirm" / f"trial_{confirmed['trial']:04d}-seed1" / "verdict.json").is_file()
    assert "±" in (study_dir / "trials.csv").read_text() and "winner: trial" in out
    # The same command again: every stage is done, nothing is trained or added.
    runs = sorted(p for p in study_dir.rglob("verdict.json"))
    stamps = [p.stat().st_mtime_ns for p in runs]
    code, _, err = call(search, *args)
    assert code == 0, err[-3000:]
    assert sorted(study_dir.rglob("verdict.json")) == runs and [p.stat().st_mtime_ns for p in runs] == stamps
    study = optuna.load_study(study_name="budget-tiny", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert len(study.trials) == 3
    # optuna-dashboard's view: each trained trial carries its run's files; the later runs of the winner's
    # design and its spec are on the study; the second command uploaded nothing twice.
    winner, winner_params = confirmed["trial"], confirmed["params"]
    for trial in study.trials:
        names = [m.filename for m in get_all_artifact_meta(trial, storage=study._storage)]
        if trial.user_attrs.get("run_dir"):
            assert sorted(names) == ["curves.png", "epochs.csv", "summary.txt"]
    names = [m.filename for m in get_all_artifact_meta(study)]
    tag = f"trial_{winner:04d}"
    assert f"{tag}-e2-seed0-curves.png" in names and f"{tag}-confirm-seed1-epochs.csv" in names
    assert f"best_spec-trial_{winner}.json" in names and len(names) == len(set(names))
    store = FileSystemArtifactStore(study_dir / "artifacts")
    meta = next(m for m in get_all_artifact_meta(study) if m.filename.startswith("best_spec"))
    with store.open_reader(meta.artifact_id) as f:
        assert json.loads(f.read()) == json.loads((study_dir / "best_spec.json").read_text())
    # The digest of the study: every stage's runs and time, the winner's parameters by stage.
    code, out, err = call(search, "digest", "--study", "budget-tiny", "--logs", str(tmp_path))
    assert code == 0, err[-2000:]
    digest = json.loads((study_dir / "digest.json").read_text())
    assert [(k, v["runs"]) for k, v in digest["time"].items()] == [("screen", 3), ("rung 2 epochs", 1), ("confirm", 1)]
    assert digest["time"]["rung 2 epochs"]["epochs"] == 2 and digest["winner"]["trial"] == winner
    assert sum(digest["winner"]["params_by_stage"].values()) == winner_params and "winner: trial" in out

    # Transfer: the micro budget starts from the tiny study's confirmed design, re-fitted under its own cap.
    stages = ["--rungs", "1", "--screen", "2", "--confirm", "1", "--seeds", "2"]
    common = ["--logs", str(tmp_path), "--data-dir", str(mnist_dir), *TINY]
    plain = call(search, "--single-stage", "--transfer-from", "budget-tiny", *common)
    assert_one_error_line(plain, "--transfer-from belong to a staged one")
    assert_one_error_line(
        call(search, "--budget", "micro", "--transfer-from", "nosuch", *stages, *common), "no study storage"
    )
    code, _, err = call(search, "--budget", "micro", "--transfer-from", "budget-tiny", *stages, *common)
    assert code == 0, err[-3000:]
    micro = optuna.load_study(study_name="budget-micro", storage=f"sqlite:///{tmp_path / 'budget-micro' / 'study.db'}")
    first = micro.trials[0]
    assert first.user_attrs["transferred_from"] == f"budget-tiny trial {winner}"
    assert first.params == study.trials[winner].params  # the same topology, relative widths and recipe ...
    assert first.user_attrs["params"] < 4_000  # ... fitted to this cap
    rows = (tmp_path / "budget-micro" / "trials.csv").read_text()
    assert f"transferred from budget-tiny trial {winner}" in rows and ",drawn," in rows
    best = json.loads((tmp_path / "budget-micro" / "summary.json").read_text())["best"]
    assert best["origin"] in ("drawn", f"transferred from budget-tiny trial {winner}")


def test_the_fidelity_study_scores_every_design_on_every_schedule(tmp_path, mnist_dir, short_budget):
    code, out, err = call(
        search,
        "fidelity",
        "--budget",
        "tiny",
        "--rungs",
        "1",
        "--designs",
        "3",
        "--out",
        str(tmp_path / "f"),
        "--data-dir",
        str(mnist_dir),
        *TINY[:4],
        "--workers",
        "1",
    )
    assert code == 0, err[-3000:]
    result = json.loads((tmp_path / "f" / "fidelity.json").read_text())
    assert result["ladder"] == [1, 2] and len(result["entries"]) == 3 and set(result["spearman_vs_full"]) == {"1"}
    assert set(result["spearman_vs_full_learned"]) == {"1"} and 0 <= result["learned_designs"] <= 3
    assert all(set(e["val_acc"]) == {"1", "2"} and e["params"] for e in result["entries"])
    assert "Spearman" in out


def test_a_run_that_diverges_scores_zero_and_is_not_retried(tmp_path, monkeypatch):
    import mnist_challenge.runs.experiment as experiment
    from mnist_challenge import load_spec
    from mnist_challenge.common.errors import TrainingDiverged
    from mnist_challenge.engine.train import TrainConfig

    calls = []

    def diverging(spec, cfg, run_dir, **_):
        calls.append(run_dir)
        (tmp_path / "runs" / "trial_0000-seed0").mkdir(parents=True, exist_ok=True)
        raise TrainingDiverged("training diverged in epoch 1")

    monkeypatch.setattr(experiment, "run_experiment", diverging)
    monkeypatch.setattr(stages, "_init_worker", lambda *a: None)
    job = stages.job_for(0, load_spec("tiny"), TrainConfig(), 2, 0, tmp_path / "runs")
    for _ in range(2):
        stages.run_jobs([job], TrainConfig(), None, 1, "test", tmp_path)
    assert len(calls) == 1 and stages.score_of(job.run_dir) == 0.0
