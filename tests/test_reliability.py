"""Regression tests for the reliability review (issue 21): each case a careless or unlucky user met.

Grouped as the issue lists them: the checker's verdicts, signals and concurrency, then bad input and a
hostile environment (a full disk, names too long, files that are not what they claim). Each bad input must
end in exit 2 with one ``error:`` line naming it and nothing written; each signal in exit 130, with no
traceback and no damaged file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from mnist_challenge import load_spec
from mnist_challenge.cli.main import main as kit
from mnist_challenge.common.errors import UserError
from search.commands.main import main as search

from .conftest import ROOT, assert_one_error_line, call, run_cli
from .test_contract import make_run

GOOD = [99.5] * 3


def csv_rows(run: Path) -> list[str]:
    return (run / "epochs.csv").read_text().splitlines()


# --- the checker judges only what it can verify ------------------------------------------------------------
@pytest.mark.parametrize(
    "last_row, fragment",
    [
        ("3,0.01,0.1,98.0,0.02,99.5,0.02,nan,1.0,0.1,1.0", "line 4 has test_acc nan"),
        ("3,0.01,0.1,98.0,0.02,99.5,0.02,,1.0,0.1,1.0", "line 4 has test_acc nan"),
        ("3,0.01,0.1,98.0,0.02,99.5,0.02,150,1.0,0.1,1.0", "line 4 has test_acc 150.0"),
        ("3,0.01,0.1,98.0,0.02,99.5,0.02,inf,1.0,0.1,1.0", "line 4 has test_acc inf"),
        ("3", "line 4 has fewer cells than the header"),
        ("3,0.01,0.1,98.0,0.02,99.5,0.02", "line 4 has fewer cells than the header"),
        ("2.5,0.01,0.1,98.0,0.02,99.5,0.02,99.5,1.0,0.1,1.0", "line 4 has epoch 2.5"),
    ],
)
def test_a_last_row_the_checker_cannot_read_is_exit_2_never_a_pass(tmp_path, last_row, fragment):
    run = make_run(tmp_path / "runs" / "r", GOOD)
    rows = csv_rows(run)
    (run / "epochs.csv").write_text("\n".join(rows[:-1] + [last_row]) + "\n")
    assert_one_error_line(call(kit, "check", str(run)), fragment)
    assert_one_error_line(call(kit, "report", str(tmp_path / "runs")), fragment)


def test_a_nan_in_a_middle_epoch_is_exit_2(tmp_path):
    run = make_run(tmp_path / "r", [99.5] * 4)
    rows = csv_rows(run)
    cells = rows[3].split(",")
    cells[7] = "nan"
    (run / "epochs.csv").write_text("\n".join(rows[:3] + [",".join(cells)] + rows[4:]) + "\n")
    assert_one_error_line(call(kit, "check", str(run), "--last-k", "3"), "line 4 has test_acc nan")


@pytest.mark.parametrize("name", ["spec.json", "config.json", "inspection.json", "epochs.csv", "model.pt"])
@pytest.mark.parametrize("damage", ["deleted", "a folder", "a dangling link"])
def test_a_required_file_missing_or_not_a_file_is_exit_2_naming_it(tmp_path, name, damage):
    run = make_run(tmp_path / "r", GOOD)
    (run / name).unlink()
    if damage == "a folder":
        (run / name).mkdir()
    elif damage == "a dangling link":
        (run / name).symlink_to(tmp_path / "nowhere")
    what = "missing" if damage == "deleted" else damage
    assert_one_error_line(call(kit, "check", str(run)), f"{name} is {what}")


def test_without_spec_json_an_edited_param_count_cannot_pass(tmp_path):
    run = make_run(tmp_path / "r", GOOD)
    inspection = json.loads((run / "inspection.json").read_text())
    inspection["params"] = 3_999
    (run / "inspection.json").write_text(json.dumps(inspection))
    code, out, _ = call(kit, "check", str(run), "--max-params", "4000")
    assert code == 1 and "[FAIL] logged model matches spec.json" in out
    (run / "spec.json").unlink()
    assert_one_error_line(call(kit, "check", str(run), "--max-params", "4000"), "spec.json is missing")


def test_a_checkpoint_of_another_network_fails_and_is_not_exported(tmp_path):
    from mnist_challenge.architecture.model import build_model

    run = make_run(tmp_path / "r", GOOD)
    other = load_spec("compact")
    torch.save({"state_dict": build_model(other).state_dict(), "spec": other.to_dict()}, run / "model.pt")
    code, out, _ = call(kit, "check", str(run))
    assert code == 1 and "[FAIL] model.pt holds the network of spec.json: it was saved for another spec" in out
    assert_one_error_line(
        call(kit, "export-notebook", str(run), "-o", str(tmp_path / "nb.ipynb")), "does not hold the network"
    )
    assert not (tmp_path / "nb.ipynb").exists()
    # The tiny spec's name and shapes, but tensors of another network: still not the run's model.
    tiny = load_spec("tiny")
    state = build_model(tiny).state_dict()
    key = next(iter(state))
    state[key] = torch.zeros(3, 3)
    torch.save({"state_dict": state, "spec": tiny.to_dict()}, run / "model.pt")
    code, out, _ = call(kit, "check", str(run))
    assert code == 1 and "[FAIL] model.pt holds the network of spec.json: tensor shapes differ" in out


# --- exclusive run directories and stage jobs ----------------------------------------------------------------
def test_one_run_directory_cannot_be_written_by_two_runs(tmp_path):
    from mnist_challenge.runs.runlog import RunDir

    first = RunDir(tmp_path / "r")
    with pytest.raises(UserError, match="being written by another command"):
        RunDir(tmp_path / "r")
    first.close()
    assert list((tmp_path / "r").iterdir()) == []  # the lock goes with the run that held it
    with pytest.raises(UserError, match="already exists and is not empty"):
        make_run(tmp_path / "done", GOOD)
        RunDir(tmp_path / "done")


def test_two_trains_with_one_name_never_interleave(tmp_path, mnist_dir):
    args = [sys.executable, "-m", *train_args(mnist_dir, tmp_path, "--epochs", "2")]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert refused.strip().startswith("error: run directory") and len(refused.strip().splitlines()) == 1
    assert [r.split(",")[0] for r in csv_rows(tmp_path / "r")] == ["epoch", "1", "2"]


def test_a_second_command_on_a_running_stage_is_refused(tmp_path):
    from mnist_challenge.common.files import try_lock
    from mnist_challenge.engine.train import TrainConfig
    from search import stages

    job = stages.job_for(0, load_spec("tiny"), TrainConfig(), 2, 0, tmp_path / "rungs" / "e2")
    held = try_lock(tmp_path / stages.STAGE_LOCK)
    try:
        with pytest.raises(UserError, match="another command is training this study's stage runs"):
            stages.run_jobs([job], TrainConfig(), None, 1, "rung", tmp_path)
    finally:
        os.close(held)
    assert not Path(job.run_dir).exists()  # nothing deleted, nothing started


# --- resume must match what changes results -----------------------------------------------------------------
def test_a_resume_with_another_seed_or_budget_stages_is_refused(tmp_path, mnist_dir, monkeypatch):
    from search import objective

    def no_training(spec, cfg, run_dir, **_):  # the study's settings are what is tested, not training
        raise optuna.TrialPruned()

    monkeypatch.setattr(objective, "run_experiment", no_training)
    base = ["--study", "s", "--logs", str(tmp_path), "--data-dir", str(mnist_dir), "--workers", "1"]
    base += ["--train-subset", "600", "--val-size", "100", "--single-stage", "--n-trials", "1", "--epochs", "1"]
    assert call(search, *base)[0] == 0
    db = tmp_path / "s" / "study.db"
    before = db.read_bytes()
    assert_one_error_line(call(search, *base, "--seed", "7"), "different settings (seed (the study's is 0))")
    assert db.read_bytes() == before


# --- signals ---------------------------------------------------------------------------------------------------
QUICK = ["--threads", "1", "--train-subset", "3000", "--val-size", "500"]  # seconds per epoch, and long enough


def start(*args: str) -> subprocess.Popen:
    """``python -m <args>`` in a process group of its own, as a shell runs a job; stderr kept."""
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def search_args(mnist_dir, logs, study: str, workers: str = "2", trials: str = "4") -> list[str]:
    """A search of 3-epoch trials, long enough to be stopped in the middle of one."""
    return [
        "search",
        "--logs",
        str(logs),
        "--data-dir",
        str(mnist_dir),
        *QUICK,
        "--pruner",
        "none",
        "--study",
        study,
        "--workers",
        workers,
        "--single-stage",
        "--n-trials",
        trials,
        "--epochs",
        "3",
    ]


def train_args(mnist_dir, out, *extra: str) -> list[str]:
    return [
        "mnist_challenge",
        "train",
        "--spec",
        "tiny",
        "--epochs",
        "15",
        *QUICK,
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(out),
        "--name",
        "r",
        *extra,
    ]


def _wait_for(predicate, proc, what, limit=300.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {limit:.0f} s")


def _epochs_logged(folder: Path) -> bool:
    return any(len(p.read_text().splitlines()) >= 2 for p in folder.rglob("epochs.csv"))


def _stop_group(proc, signals=(signal.SIGTERM,), gap=0.0, limit=120):
    """Send ``signals`` to the command's whole process group (as ``timeout`` or a terminal does); its exit
    code and stderr, failing if it outlives ``limit`` seconds (a hang)."""
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap)
        os.killpg(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"still running {limit} s after {len(signals)} signal(s): it hangs")
    return proc.returncode, err


def _assert_clean_interrupt(code, err):
    assert code == 130, (code, err[-3000:])
    assert err.strip().splitlines()[-1] == "interrupted", err[-3000:]
    for sign in ("Traceback", "Trial ", "leaked semaphore", "resource_tracker"):
        assert sign not in err, err[-3000:]


def _assert_no_damaged_json(folder: Path):
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())  # every JSON whole: none cut to 0 bytes by a signal in cleanup
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_to_a_search_process_group_is_exit_130_with_no_traceback(tmp_path, mnist_dir, workers):
    proc = start(*search_args(mnist_dir, tmp_path, "g", workers, trials="6"))
    _wait_for(lambda: _epochs_logged(tmp_path / "g"), proc, "a trained epoch")
    _assert_clean_interrupt(*_stop_group(proc))
    _assert_no_damaged_json(tmp_path / "g")
    assert "KeyboardInterrupt" in (tmp_path / "g" / "search.log").read_text()  # Optuna's record: in the log
    study = optuna.load_study(study_name="g", storage=f"sqlite:///{tmp_path / 'g' / 'study.db'}")
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert TrialState.RUNNING not in states and TrialState.WAITING in states  # stopped trials queued again


def test_two_sigterms_10_ms_apart_still_end_train_with_130(tmp_path, mnist_dir):
    proc = start(*train_args(mnist_dir, tmp_path))
    _wait_for(lambda: _epochs_logged(tmp_path / "r"), proc, "a trained epoch")
    _assert_clean_interrupt(*_stop_group(proc, (signal.SIGTERM, signal.SIGTERM), gap=0.01))
    _assert_no_damaged_json(tmp_path / "r")


def test_sigterm_to_a_two_worker_stage_pool_never_hangs(tmp_path, mnist_dir):
    out = tmp_path / "fid"
    args = ["search", "fidelity", "--budget", "tiny", "--designs", "4", "--rungs", "2", "--workers", "2"]
    args += ["--train-subset", "3000", "--val-size", "500", "--data-dir", str(mnist_dir), "--out", str(out)]
    proc = start(*args)
    _wait_for(lambda: out.is_dir() and _epochs_logged(out), proc, "a trained epoch")
    _assert_clean_interrupt(*_stop_group(proc))
    _assert_no_damaged_json(out)
    # The same with the parent alone signalled: it stops its workers itself.
    proc = start(*args)
    time.sleep(8)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_clean_interrupt(proc.returncode, err)


def test_a_second_signal_is_ignored_and_a_third_exits_at_once():
    code = (
        "import os, signal, time\n"
        "from mnist_challenge.common.errors import install_stop_handlers\n"
        "install_stop_handlers()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(1)\n"
        "except KeyboardInterrupt:\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2); print('cleanup finished', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5); print('not reached')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 130 and result.stdout == "cleanup finished\n", result


# --- a trial that failed for the environment is queued again -----------------------------------------------
def test_a_trial_stopped_by_a_full_disk_is_queued_again_and_exits_2(tmp_path, mnist_dir, monkeypatch):
    import errno

    from mnist_challenge.runs import runlog

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "epochs.csv"))

    monkeypatch.setattr(runlog.RunDir, "log_epoch", disk_full)
    args = ["--study", "d", "--logs", str(tmp_path), "--data-dir", str(mnist_dir), "--workers", "1", "--epochs", "1"]
    args += ["--train-subset", "600", "--val-size", "100", "--single-stage", "--n-trials", "2"]
    assert_one_error_line(call(search, *args), "No space left on device")
    trials = optuna.load_study(study_name="d", storage=f"sqlite:///{tmp_path / 'd' / 'study.db'}").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return mounted.returncode == 0


def test_a_real_full_disk_is_exit_2_and_leaves_no_half_files(tmp_path, mnist_dir):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "2m"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        with open(disk / "filler", "wb") as f:  # leave about 40 kB: the run directory starts, then fills it
            f.write(b"\0" * (2 * 1024 * 1024 - 40 * 1024))
        result = run_cli(
            "mnist_challenge",
            "train",
            "--spec",
            "tiny",
            "--epochs",
            "3",
            "--train-subset",
            "300",
            "--val-size",
            "100",
            "--threads",
            "1",
            "--data-dir",
            str(mnist_dir),
            "--out",
            str(disk),
            "--name",
            "r",
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "No space left on device" in lines[0], result.stderr
        run = disk / "r"
        assert not [p.name for p in run.iterdir() if ".tmp" in p.name or p.stat().st_size == 0 and p.suffix == ".json"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# --- bad input: exit 2, one line, nothing written ---------------------------------------------------------
def test_numbers_names_and_empty_flags_that_once_crashed(tmp_path, mnist_dir):
    spec = json.loads(load_spec("tiny").to_json())
    spec["stem_channels"] = "REPLACE"
    big = tmp_path / "big.json"
    big.write_text(json.dumps(spec).replace('"REPLACE"', "9" * 5000))
    assert_one_error_line(call(kit, "inspect", "--spec", str(big)), "is not valid JSON")
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps(spec).replace('"REPLACE"', "9" * 400))
    assert_one_error_line(call(kit, "inspect", "--spec", str(huge)), "characters)")
    assert_one_error_line(call(kit, "inspect", "--spec", ""), "--spec is empty")
    assert_one_error_line(call(kit, "inspect", "--module", ""), "--module is empty")
    emoji = "\N{GRINNING FACE}" * 70
    train = ["train", "--spec", "tiny", "--out", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "no-data")]
    assert_one_error_line(call(kit, *train, "--name", emoji), "bytes in UTF-8")
    assert_one_error_line(call(search, "--study", emoji, "--logs", str(tmp_path / "logs")), "bytes in UTF-8")
    assert_one_error_line(call(search, "--study", "s" * 94, "--logs", str(tmp_path / "logs")), "1 to 88 characters")
    assert_one_error_line(call(kit, *train, "--name", "m", "--momentum", "0"), "Nesterov momentum needs a momentum")
    assert_one_error_line(call(kit, "check", str(tmp_path), "--min-acc", "100.0001"), "got 100.0001")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "logs").exists()


def test_duplicate_and_unknown_keys_in_a_spec(tmp_path):
    spec = tmp_path / "dup.json"
    spec.write_text(load_spec("tiny").to_json().replace('"stem_channels"', '"stem_padding": 1, "stem_channels"', 1))
    assert_one_error_line(call(kit, "inspect", "--spec", str(spec)), "appears more than once")
    many = tmp_path / "many.json"
    many.write_text(json.dumps({**load_spec("tiny").to_dict(), **{f"k{i}": 0 for i in range(300_000)}}))
    code, _, err = call(kit, "inspect", "--spec", str(many))
    assert code == 2 and len(err) < 1000 and "more" in err, err[:300]


def test_unreadable_data_and_a_diverging_recipe(tmp_path, mnist_dir, monkeypatch):
    from mnist_challenge.engine import data, train

    original = Path.read_bytes

    def denied(self):
        if self.name.startswith("train-images"):
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(UserError, match="cannot read .*train-images.*Permission denied"):
        data.load_raw(mnist_dir)
    monkeypatch.setattr(Path, "read_bytes", original)

    def diverging(*args, **kwargs):
        raise train.TrainingDiverged("training diverged in epoch 1 (loss nan); lower the learning rate")

    import mnist_challenge.runs.experiment as experiment

    monkeypatch.setattr(experiment, "fit", diverging)
    args = ["train", "--spec", "tiny", "--epochs", "1", "--train-subset", "300", "--val-size", "100"]
    args += ["--data-dir", str(mnist_dir), "--out", str(tmp_path), "--name", "d"]
    assert_one_error_line(call(kit, *args), "training diverged in epoch 1")


def test_export_notebook_refuses_bad_outputs_and_unrunnable_specs(tmp_path):
    run = make_run(tmp_path / "r", GOOD)
    (tmp_path / "nb.ipynb").mkdir()
    assert_one_error_line(call(kit, "export-notebook", str(run), "-o", str(tmp_path / "nb.ipynb")), "is a folder")
    missing = tmp_path / "missing" / "nb.ipynb"
    assert_one_error_line(call(kit, "export-notebook", str(run), "-o", str(missing)), "does not exist")
    rgb = load_spec("tiny").to_dict() | {"in_channels": 3}
    (run / "spec.json").write_text(json.dumps(rgb))
    (run / "model.pt").unlink()
    assert_one_error_line(call(kit, "export-notebook", str(run), "-o", str(tmp_path / "x.ipynb")), "MNIST is 1x28x28")
    (run / "spec.json").write_text(load_spec("tiny").to_json())
    (run / "config.json").write_text(json.dumps({"epochs": 3, "lr": -1}))
    assert_one_error_line(call(kit, "export-notebook", str(run), "-o", str(tmp_path / "x.ipynb")), "config.json: lr")
    assert not (tmp_path / "x.ipynb").exists() and not missing.parent.exists()


def test_report_refuses_a_read_only_readme_and_escapes_pipes(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "a|b", GOOD)
    code, out, _ = call(kit, "report", str(runs))
    assert code == 0 and "a\\|b" in out
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    readme.chmod(0o444)
    assert_one_error_line(call(kit, "report", str(runs), "--update-readme", str(readme)), "read-only")
    assert stat.S_IMODE(readme.stat().st_mode) == 0o444
    readme.chmod(0o640)
    assert call(kit, "report", str(runs), "--update-readme", str(readme))[0] == 0
    assert stat.S_IMODE(readme.stat().st_mode) == 0o640


def test_report_over_a_seed_run_killed_before_its_first_epoch_names_it(tmp_path):
    run = make_run(tmp_path / "runs" / "design" / "seed1", GOOD)
    (run / "model.pt").unlink()
    (run / "epochs.csv").write_text(csv_rows(run)[0] + "\n")
    assert_one_error_line(call(kit, "report", str(tmp_path / "runs")), "seed1 is not a complete run directory")


def test_digest_on_malformed_files_is_exit_2(tmp_path, monkeypatch):
    from search import digest

    (tmp_path / "summary.json").write_text("[1, 2]")
    stages = {"rungs": [{"epochs": 4, "entries": []}], "winner": None}
    with pytest.raises(UserError, match="summary.json is malformed"):
        digest.digest(tmp_path, stages)
    (tmp_path / "summary.json").write_text('{"trials": 1}')
    (tmp_path / "param_importances.json").write_text('{"lr": "high"}')
    with pytest.raises(UserError, match="param_importances.json is malformed"):
        digest.digest(tmp_path, stages)
    (tmp_path / "param_importances.json").write_text('{"lr": 0.5}')
    (tmp_path / "rungs" / "eX-copy").mkdir(parents=True)  # a stray folder is not a rung
    (tmp_path / "rungs" / "e15").mkdir()
    assert set(digest.digest(tmp_path, stages)["time"]) == {"screen", "rung 15 epochs", "confirm"}


def test_storage_mistakes_leave_nothing_behind(tmp_path, mnist_dir):
    logs = tmp_path / "logs"
    base = ["--study", "s", "--logs", str(logs), "--data-dir", str(mnist_dir), "--single-stage", "--n-trials", "1"]
    (tmp_path / "afolder").mkdir()
    (tmp_path / "notadb").write_text("hello")
    for url, fragment in [
        ("mysql://u:secret@127.0.0.1/x", "driver is not installed"),
        (f"sqlite:///{tmp_path / 'afolder'}", "cannot open storage"),
        (f"sqlite:///{tmp_path / 'notadb'}", "cannot open storage"),
    ]:
        code, _, err = call(search, *base, "--storage", url)
        assert code == 2 and fragment in err and "secret" not in err, err
        assert not (logs / "s").exists(), url
    new = tmp_path / "new.db"
    for argv in (["--export-only"], ["digest"], ["reproduce"], ["ablate", "--change", "lr=0.1"]):
        lead, rest = (argv, []) if argv[0] != "--export-only" else ([], argv)
        assert_one_error_line(call(search, *lead, "--study", "s", "--storage", f"sqlite:///{new}", *rest), "no study")
        assert not new.exists()


def test_a_deleted_study_db_does_not_meet_its_old_trial_folders(tmp_path, mnist_dir):
    (tmp_path / "s" / "trials" / "trial_0000").mkdir(parents=True)
    args = ["--study", "s", "--logs", str(tmp_path), "--data-dir", str(mnist_dir), "--single-stage", "--n-trials", "1"]
    assert_one_error_line(call(search, *args), "holds the trial runs of an earlier study")
    assert not (tmp_path / "s" / "study.db").exists()


def test_fidelity_makes_no_folder_before_the_data_is_found(tmp_path):
    out = tmp_path / "fid"
    args = ["fidelity", "--budget", "tiny", "--out", str(out), "--data-dir", str(tmp_path / "no-data")]
    assert call(search, *args)[0] == 2 and not out.exists()


def test_enqueue_and_rungs_outside_what_the_search_can_mean(tmp_path, mnist_dir):
    base = ["--logs", str(tmp_path / "logs"), "--data-dir", str(mnist_dir)]
    assert_one_error_line(
        call(search, "--single-stage", "--study", "e", "--space", "1", *base, "--enqueue", "compact:lr=5,rotation=100"),
        "--enqueue 'compact:lr=5,rotation=100': the recipe is outside the search space: lr=5.0",
    )
    for rungs in (",", ""):
        assert_one_error_line(call(search, "--budget", "tiny", "--rungs", rungs, *base), "--rungs")
    assert not (tmp_path / "logs").exists()


def test_the_startup_line_masks_a_password():
    from search.storage import shown_url

    assert "hunter2" not in shown_url("postgresql://user:hunter2@db.example/studies")


def test_a_killed_search_worker_leaks_no_semaphore(tmp_path, mnist_dir):
    proc = start(*search_args(mnist_dir, tmp_path, "k"))
    _wait_for(lambda: _epochs_logged(tmp_path / "k"), proc, "a trained epoch")
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    workers = [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    os.kill(workers[0], signal.SIGKILL)
    code, err = _stop_group(proc)
    assert code in (2, 130) and "leaked semaphore" not in err and "Traceback" not in err, err[-3000:]
    shutil.rmtree(tmp_path / "k", ignore_errors=True)


# --- the job pool: a failing or vanishing worker ends the pool with its error, never a hang ----------------
def _no_setup() -> None:
    pass


def _job(n: int) -> int:
    if n == 3:
        raise UserError("job 3 is bad input")
    if n == 4:
        os._exit(0)  # a worker that vanishes without an error code
    return n * n


@pytest.mark.parametrize("bad, error", [(3, "exited with an error"), (4, "before returning its job's result")])
def test_the_job_pool_reports_a_lost_worker_instead_of_hanging(tmp_path, bad, error):
    from search.workers import run_pool

    results: list[int] = []
    with pytest.raises(Exception, match=error):
        run_pool(_job, [1, 2, bad, 5, 6], 2, _no_setup, (), results.append, tmp_path / "search.log")
    assert set(results) <= {1, 4, 25, 36}
    results.clear()
    run_pool(_job, [1, 2, 5], 2, _no_setup, (), results.append, tmp_path / "search.log")
    assert sorted(results) == [1, 4, 25]


# --- SQLite: an enqueued trial goes to exactly one worker ----------------------------------------------------
def _ask_many(url: str, times: int, start: float, out) -> None:
    from search.storage import make_storage

    study = optuna.load_study(study_name="q", storage=make_storage(url))
    time.sleep(max(0.0, start - time.time()))  # all processes ask at once
    out.put([study.ask().number for _ in range(times)])


def test_an_enqueued_trial_is_handed_to_one_process_only(tmp_path):
    import multiprocessing as mp

    from search.storage import make_storage

    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = optuna.create_study(study_name="q", storage=make_storage(url))
    for i in range(160):
        study.enqueue_trial({"x": i}, skip_if_exists=False)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 6
    procs = [ctx.Process(target=_ask_many, args=(url, 40, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    handed = [n for _ in procs for n in out.get(timeout=120)]
    for p in procs:
        p.join()
    assert len(handed) == len(set(handed)) == 160  # each enqueued trial popped once (Optuna relies on row locks)


def test_a_trial_whose_interrupt_a_library_turned_into_another_error_is_queued_again(tmp_path, mnist_dir):
    """CI under load: SIGTERM cut matplotlib's import half-way, and the next import failed with an
    AttributeError in place of the KeyboardInterrupt. After a stop signal, any failure of the trial is the
    stop's: exit 130, and the trial queued again like any stopped one."""
    script = tmp_path / "search_with_a_swallowed_stop.py"
    script.write_text(
        "import os, signal, sys\n"
        "import search.objective\n"
        "def training(*args, **kwargs):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    except KeyboardInterrupt:\n"
        "        pass  # swallowed half-way, as an interrupted import is\n"
        "    raise AttributeError(\"module 'matplotlib' has no attribute '_docstring'\")\n"
        "search.objective.run_experiment = training\n"
        "from mnist_challenge.common.contract import run_main\n"
        "run_main('search.commands.main', sys.argv[1:])\n"
    )
    args = search_args(mnist_dir, tmp_path, "s", workers="1", trials="2")[1:]
    result = subprocess.run(
        [sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    _assert_clean_interrupt(result.returncode, result.stderr)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.FAIL, TrialState.WAITING]
