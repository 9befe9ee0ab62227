"""Regression tests of the fourth reliability audit (issue #43), one per case: what ended in a traceback, a
wrong answer, a damaged file or a lost candidate now ends as the exit-code contract says. (The kill during
screening is tests/test_crash_consistency.py; the kernel cache's cases are in tests/test_fused.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_challenge import build_model, load_spec
from mnist_challenge.cli.main import main as kit
from mnist_challenge.common.errors import UserError
from search.commands.main import main as search

from .conftest import ROOT, assert_one_error_line, call, run_cli
from .test_checker import GOOD, make_run
from .test_contract import make_run as make_plain_run
from .test_reliability import _tmpfs

TINY_STUDY = ROOT / "logs" / "search" / "budget-tiny"  # a committed staged study


def copy_study(to: Path) -> Path:
    """The committed tiny study without its checkpoints, plots and artifacts (what digest and reproduce read)."""
    shutil.copytree(TINY_STUDY, to, ignore=shutil.ignore_patterns("model.pt", "artifacts", "*.png"))
    return to


# --- wrong answers ----------------------------------------------------------------------------------------------
def test_booleans_in_key_value_flags_mean_what_they_say():
    from mnist_challenge.engine.train import TrainConfig
    from search.plan import recipe_with

    base = TrainConfig()
    assert base.nesterov
    for text, value in [("false", False), ("0", False), ("False", False), ("no", False), ("yes", True), ("1", True)]:
        assert recipe_with(base, f"nesterov={text}", {"nesterov"}, "--change").nesterov is value
    with pytest.raises(UserError, match="nesterov must be true or false"):
        recipe_with(base, "nesterov=maybe", {"nesterov"}, "--change")


def test_a_root_given_twice_or_inside_another_counts_each_run_once(tmp_path, monkeypatch):
    from mnist_challenge.runs import report

    spec = load_spec("tiny")
    for seed in (1, 2):
        make_run(tmp_path / "tiny" / f"seed{seed}", build_model(spec), spec, GOOD)
    monkeypatch.chdir(tmp_path)
    once = report.report(["."])
    for roots in (["."] * 2, [".", "tiny"], ["tiny", "."]):
        found = report.report(roots)
        assert found.table.count("| tiny |") == once.table.count("| tiny |") == 3  # two runs, one design
        assert "| 2 of 2 |" in found.table


# --- damage and misplaced files ---------------------------------------------------------------------------------
def test_a_logs_folder_with_url_characters_keeps_its_study_inside_it(tmp_path):
    from search.plan import SearchRequest, resolve
    from search.storage import parse_storage_url

    for name in ("run?1", "x%41y", "a#b", "sp ace"):
        logs = tmp_path / name
        resolved = resolve(SearchRequest(logs=str(logs), single_stage=True))
        assert parse_storage_url(resolved.storage_url).database == str(logs / "single-stage" / "study.db")


def test_report_updates_the_file_a_symlink_points_to(tmp_path):
    make_plain_run(tmp_path / "runs" / "r", [99.5] * 3)
    docs = tmp_path / "docs"
    docs.mkdir()
    target = docs / "results.md"
    target.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    link = tmp_path / "README.md"
    link.symlink_to(target)
    code, _, err = call(kit, "report", str(tmp_path / "runs"), "--update", str(link))
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == target and "| assignment |" in target.read_text()


def test_export_onto_a_full_disk_names_the_file_and_leaves_nothing_half_written(tmp_path):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "64k"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * (64 * 1024 - 4 * 1024))
        out = disk / "x.ipynb"
        assert_one_error_line(
            call(kit, "export-notebook", str(ROOT / "logs/submission/tiny/seed1"), "-o", str(out)), "x.ipynb"
        )
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_run_path_that_is_not_utf8_is_reported_and_exported(tmp_path):
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/runs/r\xff"))
    make_plain_run(odd / "seed1", [99.5] * 3)
    code, out, err = call(kit, "report", os.fsdecode(bytes(tmp_path) + b"/runs"))
    assert code == 0 and "r\\xff" in out, err
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    assert call(kit, "report", os.fsdecode(bytes(tmp_path) + b"/runs"), "--update", str(readme))[0] == 0
    assert "r\\xff" in readme.read_text()
    run = ROOT / "logs" / "submission" / "tiny" / "seed1"
    copied = Path(os.fsdecode(bytes(tmp_path) + b"/t\xffiny"))
    shutil.copytree(run, copied)
    notebook = tmp_path / "x.ipynb"
    code, _, err = call(kit, "export-notebook", str(copied), "-o", str(notebook), "--max-params", "5000")
    assert code == 0, err
    intro = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert "t\\xffiny" in intro and not list(tmp_path.glob(".*tmp*"))


# --- exit codes and error lines ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--spec", "tiny", "--epochs", "9" * 5000],
        ["check", "x", "--max-params", "9" * 5000],
        ["inspect", "--spec", "tiny", "--input-size", "1", "9" * 5000, "28"],
    ],
    ids=["train", "check", "inspect"],
)
def test_a_number_of_thousands_of_digits_is_shown_shortened(argv):
    code, _, err = call(kit, *argv)
    assert code == 2 and len(err) < 300 and "characters)" in err, err


def test_search_numbers_and_bounds_are_shown_exactly_and_short():
    code, _, err = call(search, "--single-stage", "--n-trials", "9" * 5000)
    assert code == 2 and len(err) < 300, err
    assert_one_error_line(call(search, "--seed", "4294967296"), "[0, 4294967295]")
    code, _, err = call(search, "--space", "9" * 5000)
    assert code == 2 and len(err) < 300, err


def test_an_edited_study_is_one_error_line_and_the_digest_never_nan(tmp_path):
    import optuna

    from search.digest import digest

    study_dir = copy_study(tmp_path / "budget-tiny")
    stages = optuna.load_study(study_name="budget-tiny", storage=f"sqlite:///{study_dir / 'study.db'}").user_attrs[
        "stages"
    ]
    run = next((study_dir / "confirm").glob("trial_*"))
    rows = (run / "epochs.csv").read_text().splitlines()
    header = rows[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "seconds"]  # an epochs.csv without its seconds column
    (run / "epochs.csv").write_text("\n".join(",".join(r.split(",")[i] for i in keep) for r in rows) + "\n")
    result = digest(study_dir, stages)
    json.loads((study_dir / "digest.json").read_text())  # strict JSON: no NaN
    assert result["time"]["confirm"]["epochs_without_time"] == len(rows) - 1
    trials_csv = study_dir / "trials.csv"
    text = trials_csv.read_text()
    first_row = text.splitlines()[1]
    cells = first_row.split(",")
    value_at = text.splitlines()[0].split(",").index("val_acc")
    cells[value_at] = "n/a"
    trials_csv.write_text(text.replace(first_row, ",".join(cells), 1).replace(",drawn,", ",transferred from x,", 1))
    with pytest.raises(UserError, match="trials.csv is malformed"):
        digest(study_dir, stages)


def test_a_study_on_read_only_media_is_read(tmp_path):
    media = tmp_path / "media"
    if not _tmpfs(media, "64m"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        copy_study(media / "budget-tiny")
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        code, out, err = call(search, "digest", "--study", "budget-tiny", "--logs", str(media))
        assert code == 0, err
        assert "study budget-tiny" in out and "digest.json not saved" in out
    finally:
        subprocess.run(["umount", "-l", str(media)], capture_output=True)  # lazily: the study may still be open


def test_train_commands_started_together_without_a_name_do_not_collide(tmp_path, mnist_dir):
    argv = [sys.executable, "-m", "mnist_challenge", "train", "--spec", "tiny", "--epochs", "1", "--threads", "1"]
    argv += ["--train-subset", "300", "--val-size", "100", "--out", str(tmp_path), "--data-dir", str(mnist_dir)]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "abc"]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    assert len([p for p in tmp_path.iterdir() if (p / "verdict.json").is_file()]) == 3


def test_a_stop_during_export_execute_is_interrupted_and_a_clean_run_prints_no_kernel_warning(tmp_path, mnist_dir):
    run = str(ROOT / "logs" / "submission" / "tiny" / "seed1")
    env = {**os.environ, "MNIST_DATA_DIR": str(mnist_dir)}
    argv = [sys.executable, "-m", "mnist_challenge", "export-notebook", run, "-o", str(tmp_path / "x.ipynb")]
    argv += ["--max-params", "5000", "--execute", "--threads", "1"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "x.ipynb").exists() and time.time() < deadline:  # written before the kernel starts
        time.sleep(0.2)
    time.sleep(8)  # the kernel is up and training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err == "interrupted\n", err[-2000:]
    smoke = run_cli(*argv[2:], env={**env, "KIT_NOTEBOOK_SMOKE": "1"})
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    assert "TCP" not in smoke.stderr and "Traceback" not in smoke.stderr, smoke.stderr[-2000:]
