"""The exit-code contract (README, ``errors.py``): 0 success / PASS, 1 FAIL verdict only, 2 bad input with one
``error:`` line, 3 internal error with its traceback in a log file, 130 interrupted. Every case of the
reliability review (issue 11) is kept here as a regression test; nothing a refused command names is written.
"""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from mnist_challenge import UserError, build_model, load_spec
from mnist_challenge.cli.main import main as kit
from mnist_challenge.common.contract import Parser, run_cli
from mnist_challenge.common.errors import EXIT_INTERNAL, set_crash_log
from mnist_challenge.engine.data import download
from mnist_challenge.runs.runlog import load_checkpoint
from search.commands.main import main as search

from .conftest import assert_one_error_line, call
from .test_checker import make_run as make_checked_run

GOOD_SPEC = load_spec("tiny").to_dict()


def spec_file(tmp_path, name="spec.json", **changes):
    path = tmp_path / name
    path.write_text(json.dumps({**GOOD_SPEC, **changes}))
    return str(path)


# --- specs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, fragment",
    [
        (b'\xff\xfe{"blocks": []}', "not UTF-8"),
        ("[" * 200_000 + "]" * 200_000, "nested far too deep"),
        (json.dumps({**GOOD_SPEC, "stem_padding": 1.0}), "stem_padding must be 0 or 1"),
        (json.dumps({**GOOD_SPEC, "blocks": [{"channels": [8], "padding": 1.0}]}), "padding must be 0 or 1"),
        (json.dumps({**GOOD_SPEC, "blocks": [{"channels": [True]}]}), "must be an integer"),
        (json.dumps({**GOOD_SPEC, "input_size": 4000}), "input_size must be an integer in [3, 128]"),
        (json.dumps({**GOOD_SPEC, "stem_channels": 80000}), "stem_channels must be an integer in [1, 512]"),
        (json.dumps({**GOOD_SPEC, "blocks": [{"channels": [512] * 16, "padding": 1}]}), "narrow the channels"),
        (json.dumps({**GOOD_SPEC, "dropout": float("nan")}), "dropout must be a finite number"),
        (json.dumps({**GOOD_SPEC, "name": "../evil"}), "may not contain"),
    ],
)
def test_a_bad_spec_file_is_one_error_line(tmp_path, content, fragment):
    path = tmp_path / "spec.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_error_line(call(kit, "inspect", "--spec", str(path)), fragment)


# --- train: everything refused before data is read or a file written -----------------------------------
@pytest.mark.parametrize(
    "spec_changes, flags, fragment",
    [
        ({"in_channels": 3}, [], "MNIST is 1x28x28"),
        ({"input_size": 64}, [], "MNIST is 1x28x28"),
        ({"num_classes": 12}, [], "num_classes 10"),
        ({}, ["--translate", "nan"], "argument --translate: must be a finite number"),
        ({}, ["--momentum", "nan"], "argument --momentum"),
        ({}, ["--lr", "inf"], "argument --lr"),
        ({}, ["--rotation", "-1"], "argument --rotation"),
        ({}, ["--seed", "1e23"], "argument --seed"),
        ({}, ["--seed", "99999999999999999999999"], "argument --seed"),
        ({}, ["--name", "../outside"], "argument --name"),
        ({}, ["--train-subset", "1"], "argument --train-subset"),
        ({}, ["--val-size", "60000"], "argument --val-size"),
        ({}, ["--train-subset", "55000"], "--train-subset 55000: must be in 2..50000"),
    ],
)
def test_train_refuses_bad_settings_before_writing(tmp_path, mnist_dir, spec_changes, flags, fragment):
    out = tmp_path / "runs"
    result = call(
        kit,
        "train",
        "--spec",
        spec_file(tmp_path, **spec_changes),
        "--out",
        str(out),
        "--data-dir",
        str(mnist_dir),
        *flags,
    )
    assert_one_error_line(result, fragment)
    assert not out.exists() and not (tmp_path / "outside").exists()


def test_train_refuses_an_unwritable_out_and_a_missing_gpu(tmp_path, mnist_dir):
    (tmp_path / "a_file").write_text("")
    assert_one_error_line(
        call(kit, "train", "--spec", "tiny", "--out", str(tmp_path / "a_file" / "runs"), "--data-dir", str(mnist_dir)),
        "is a file, not a folder",
    )
    if not torch.cuda.is_available():
        assert_one_error_line(
            call(kit, "train", "--spec", "tiny", "--device", "cuda", "--out", str(tmp_path / "r")), "no CUDA GPU"
        )
        assert not (tmp_path / "r").exists()


# --- inspect ---------------------------------------------------------------------------------------------
def test_a_forward_that_raises_is_the_users_error(tmp_path):
    factory = tmp_path / "broken.py"
    factory.write_text(
        "import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        raise ValueError('boom')\n"
    )
    assert_one_error_line(
        call(kit, "inspect", "--module", f"{factory}:Net"), "forward fails on input size (1, 28, 28): ValueError: boom"
    )
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(3)\n")
    assert_one_error_line(call(kit, "inspect", "--module", f"{exits}:Net"), "SystemExit: 3")
    # torchvision's ViT asserts its input size (an AssertionError, not a RuntimeError)
    assert_one_error_line(
        call(kit, "inspect", "--torchvision", "vit_b_16", "--input-size", "3", "28", "28"),
        "forward fails on input size",
    )


def test_bench_checks_its_json_path_first():
    from mnist_challenge.cli.bench import main as bench

    assert_one_error_line(call(bench, "--json", "/proc/no/such/figures.json", "--steps", "1"), "--json /proc/no")


# --- check and report ------------------------------------------------------------------------------------
def make_run(path, test_accs, planned=None):
    spec = load_spec("tiny")
    return make_checked_run(path, build_model(spec), spec, test_accs, planned)


def test_a_run_killed_before_its_planned_epochs_fails(tmp_path):
    run = make_run(tmp_path / "killed", [99.5] * 6, planned=20)
    code, out, _ = call(kit, "check", str(run))
    assert code == 1 and "[FAIL] run complete (every planned epoch logged): 6 of 20 planned epochs logged" in out
    assert "[FAIL] epochs <= 19: 6 (planned 20)" in out


def test_check_min_acc_nan_is_bad_input(tmp_path):
    run = make_run(tmp_path / "good", [99.5] * 3)
    assert call(kit, "check", str(run))[0] == 0
    assert_one_error_line(call(kit, "check", str(run), "--min-acc", "nan"), "argument --min-acc")
    assert_one_error_line(call(kit, "check", str(run), "--min-acc", "101"), "argument --min-acc")


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("inspection.json", "[1, 2]", "expected a JSON object"),
        ("inspection.json", "{not json", "is not valid JSON"),
        ("inspection.json", '{"params": "many", "has_linear": false}', "'params' must be a count"),
        ("inspection.json", '{"params": 100}', "'has_linear' must be true or false"),
        ("config.json", '{"epochs": "all"}', "'epochs' must be a positive integer"),
        ("epochs.csv", "a,b\n1,2\n", "no column epoch, test_acc"),
        ("epochs.csv", "epoch,test_acc\n1,99.5,7\n", "more cells than the header"),
        ("epochs.csv", "epoch,test_acc\n1,high\n", "is malformed"),
        ("epochs.csv", b"epoch,test_acc\n1,\xff\n", "is malformed"),
        ("spec.json", '{"blocks": "x"}', "must be a list of block objects"),
    ],
)
def test_check_and_report_on_a_malformed_run_are_one_error_line(tmp_path, name, content, fragment):
    run = make_run(tmp_path / "runs" / "r", [99.5] * 3)
    (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_error_line(call(kit, "check", str(run)), fragment)
    assert_one_error_line(call(kit, "report", str(tmp_path / "runs")), fragment)


def test_report_update_readme_refuses_a_missing_or_unmarked_file(tmp_path):
    make_run(tmp_path / "runs" / "r", [99.5] * 3)
    missing = tmp_path / "README.md"
    assert_one_error_line(call(kit, "report", str(tmp_path / "runs"), "--update-readme", str(missing)), "no such file")
    assert not missing.exists()
    missing.write_text("no markers here\n")
    assert_one_error_line(call(kit, "report", str(tmp_path / "runs"), "--update-readme", str(missing)), "markers")
    assert missing.read_text() == "no markers here\n"


def test_a_garbage_checkpoint_is_a_user_error(tmp_path):
    run = make_run(tmp_path / "r", [99.5] * 3)
    load_checkpoint(run / "model.pt")  # the real one loads
    for blob in (b"not a checkpoint", b"PK\x03\x04" + bytes(100)):
        (tmp_path / "bad.pt").write_bytes(blob)
        with pytest.raises(UserError, match="cannot read checkpoint"):
            load_checkpoint(tmp_path / "bad.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "spec": load_spec("tiny").to_dict()}, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="do not fit its spec"):
        load_checkpoint(tmp_path / "wrong.pt")
    torch.save({"state_dict": {}, "spec": {"blocks": 3}}, tmp_path / "badspec.pt")
    with pytest.raises(UserError, match="its spec is invalid"):
        load_checkpoint(tmp_path / "badspec.pt")


# --- internal errors -------------------------------------------------------------------------------------
def _crashing_parser(log):
    def handler(args: argparse.Namespace) -> int:
        if log is not None:
            set_crash_log(log)
        raise ValueError("a bug")

    p = Parser(prog="crash")
    p.set_defaults(handler=handler)
    return p


@pytest.mark.parametrize("with_log", [True, False])
def test_an_internal_error_is_one_line_exit_3_with_the_traceback_in_a_log(tmp_path, with_log):
    log = tmp_path / "train.log" if with_log else None
    code, _, err = call(lambda argv: run_cli(lambda: _crashing_parser(log), argv))
    lines = err.strip().splitlines()
    assert code == EXIT_INTERNAL and len(lines) == 1 and lines[0].startswith("internal error: ValueError: a bug")
    written = lines[0].rsplit("traceback in ", 1)[1].rstrip(")")
    assert (str(log) == written) if with_log else written.endswith(".log")
    text = open(written).read()
    assert "Traceback (most recent call last)" in text and "ValueError: a bug" in text


def test_a_worker_internal_error_exits_3(tmp_path):
    import os
    import signal

    import search.workers as workers

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    flags = bytearray(1)
    try:
        with pytest.raises(SystemExit) as info:
            workers._entry(_broken_worker, (), flags, 0, os.getppid(), tmp_path / "search.log")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert info.value.code == EXIT_INTERNAL
    assert "ZeroDivisionError: worker bug" in (tmp_path / "search.log").read_text()


def _broken_worker() -> None:
    raise ZeroDivisionError("worker bug")


# --- data ------------------------------------------------------------------------------------------------
def test_a_failed_download_says_why_in_whole_words_and_leaves_no_empty_folders(tmp_path, monkeypatch):
    import torchvision

    reason = (
        "Error downloading train-images-idx3-ubyte.gz:\nTried https://example.invalid/mnist/, got:\n"
        + "<urlopen error [Errno -3] " * 20
    )

    def offline(root, *_args, **_kwargs):  # torchvision makes its folders, then fails to fetch
        (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        raise RuntimeError(reason)

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    target = tmp_path / "data" / "mnist"
    with pytest.raises(UserError) as info:
        download(target)
    message = str(info.value)
    assert "Error downloading train-images-idx3-ubyte.gz: Tried https://example.invalid/mnist/, got:" in message
    assert " ...)" in message and "\n" not in message and "copy the four IDX files there" in message
    assert not (tmp_path / "data").exists()


# --- search: every setting checked before a study is created ---------------------------------------------
@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--grace", "30", "--heartbeat", "60"], "--grace 30 must be at least 2x --heartbeat 60"),
        (["--heartbeat", "10", "--grace", "10"], "must be at least 2x"),
        (["--val-size", "60000"], "argument --val-size"),
        (["--val-size", "59000", "--train-subset", "5000"], "--train-subset 5000: must be in 2..1000"),
        (["--train-subset", "1"], "argument --train-subset"),
        (["--study", "../escape"], "argument --study"),
        (["--study", "a/b"], "argument --study"),
        (["--seed", "1e23"], "argument --seed"),
        (["--timeout", "nan"], "argument --timeout"),
        (
            ["--space", "1", "--enqueue", "compact:translate=nan"],
            "translate (fraction of the side) must be a finite number",
        ),
        (["--space", "1", "--enqueue", "compact:lr=-1"], "lr must be in (0, 10]"),
        (["--enqueue", "compact"], "--enqueue needs --space 1"),
        (["--n-trials", "0"], "argument --n-trials"),
        (["--storage", "postgresql://u@[::1:5432/x"], "is not a database URL"),
        (["--storage", "sqlite://"], "needs a file path"),
    ],
)
def test_search_refuses_bad_settings_before_creating_the_study(tmp_path, mnist_dir, flags, fragment):
    logs = tmp_path / "logs"
    assert_one_error_line(
        call(search, "--single-stage", "--study", "s", "--logs", str(logs), "--data-dir", str(mnist_dir), *flags),
        fragment,
    )
    assert not logs.exists() and not (tmp_path / "escape").exists()


def test_search_refuses_a_missing_gpu_and_an_unwritable_logs_folder(tmp_path, mnist_dir):
    (tmp_path / "a_file").write_text("")
    assert_one_error_line(
        call(search, "--logs", str(tmp_path / "a_file"), "--data-dir", str(mnist_dir)), "not a folder"
    )
    if not torch.cuda.is_available():
        logs = tmp_path / "logs"
        assert_one_error_line(
            call(search, "--logs", str(logs), "--device", "cuda", "--data-dir", str(mnist_dir)), "no CUDA GPU"
        )
        assert not logs.exists()


def test_nan_never_passes_a_number_check():
    from mnist_challenge.common.validate import check_float, check_int

    for bad in (math.nan, math.inf, -math.inf, True, "1", None):
        with pytest.raises(UserError):
            check_float(bad, "x", 0, 1)
    for bad in (1.0, True, "1", None, 2**70):
        with pytest.raises(UserError):
            check_int(bad, "x", 0, 2**64)


# --- interrupted -----------------------------------------------------------------------------------------
def test_a_train_stopped_with_sigterm_exits_130_and_keeps_its_finished_epochs(tmp_path, mnist_dir):
    import signal
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    args = [
        "train",
        "--spec",
        "tiny",
        "--epochs",
        "19",
        "--train-subset",
        "2000",
        "--val-size",
        "500",
        "--threads",
        "1",
    ]
    run = tmp_path / "r"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_challenge",
            *args,
            "--data-dir",
            str(mnist_dir),
            "--out",
            str(tmp_path),
            "--name",
            "r",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (run / "epochs.csv").is_file() and len((run / "epochs.csv").read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err[-2000:]
    assert len((run / "epochs.csv").read_text().splitlines()) >= 2  # the header and at least one finished epoch


@pytest.mark.parametrize(
    ("stop_first", "code", "last_line"),
    [(True, 130, "interrupted"), (False, EXIT_INTERNAL, "internal error")],
)
def test_a_start_up_import_that_fails_is_the_contracts_exit_code_not_a_traceback(tmp_path, stop_first, code, last_line):
    """A stop signal during the start-up imports, which a library swallows half-way and turns into an
    ImportError on the half-made module (numpy's "cannot load module more than once per process", seen in CI
    under load), is exit 130; the same ImportError without a stop is a bug: one line, exit 3."""
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    (tmp_path / "half_made.py").write_text(
        "import os, signal\n"
        f"if {stop_first}:\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    except KeyboardInterrupt:\n"
        "        pass  # swallowed, as a library's import may\n"
        "raise ImportError('cannot load module more than once per process')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "from mnist_challenge.common.contract import run_main; run_main('half_made')"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(last_line), result.stderr
