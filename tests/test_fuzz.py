"""Property-based: random and malformed spec JSON, flag values and corrupted run directories thrown at the
CLIs. Whatever comes in, the exit-code contract holds: 0 / 1 (a verdict) / 2 with one ``error:`` line, and
never a traceback or an internal error (exit 3). Training and searching are stubbed out: what is under test
is everything a command does before it would start work."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mnist_challenge.engine.data as data_module
import mnist_challenge.runs.experiment as experiment_module
import search.runner as runner_module
from mnist_challenge import UserError, load_spec
from mnist_challenge.cli.main import main as kit
from mnist_challenge.runs.runlog import load_checkpoint
from search.commands.main import main as search

from .conftest import call
from .test_contract import make_run

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

GOOD_SPEC = load_spec("tiny").to_dict()
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Values a spec field may well hold, so that many mutated specs are valid and get inspected.
PLAUSIBLE = st.sampled_from(
    [
        0,
        1,
        2,
        3,
        4,
        8,
        16,
        28,
        32,
        64,
        65,
        512,
        513,
        10,
        True,
        False,
        None,
        0.0,
        0.05,
        1.0,
        "gap_conv",
        "conv_gap",
        "none",
        "after_relu",
        "before_relu",
        "every_conv",
        "block_end",
        "x",
        "separable",
        "dilated",
        "conv3_gap",
        [4],
        [8, 8],
        [16, 16, 16],
    ]
)
SPEC_FIELDS = sorted(GOOD_SPEC) + ["colour"]
BLOCK_FIELDS = ["channels", "padding", "residual", "transition", "kind", "kernel"]


def assert_contract(result, allowed=(0, 2)):
    code, _, err = result
    assert code in allowed, (code, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]


@st.composite
def spec_texts(draw) -> bytes:
    """A good spec with a few fields (or block fields) replaced by random JSON, or random JSON, or bytes."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    spec = json.loads(json.dumps(GOOD_SPEC))
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            spec[draw(st.sampled_from(SPEC_FIELDS))] = draw(PLAUSIBLE | JSON)
        elif isinstance(spec.get("blocks"), list) and spec["blocks"] and isinstance(spec["blocks"][0], dict):
            block = spec["blocks"][draw(st.integers(0, len(spec["blocks"]) - 1))]
            if isinstance(block, dict):
                block[draw(st.sampled_from(BLOCK_FIELDS))] = draw(PLAUSIBLE | JSON)
    return json.dumps(spec).encode()


@FUZZ
@given(spec_texts())
def test_any_spec_file_gives_a_report_or_one_error_line(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_bytes(text)
        assert_contract(call(kit, "inspect", "--spec", str(path), "--json"))


NUMBER_TEXTS = (
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "-1",
            "0",
            "1",
            "2",
            "0.5",
            "1e400",
            "1e23",
            "abc",
            "",
            "99999999999999999999999",
            "0x10",
            "1_000",
            "3.",
            "-0",
        ]
    )
    | st.floats().map(repr)
    | st.integers(-(2**40), 2**40).map(str)
)
TRAIN_FLAGS = [
    "--epochs",
    "--batch-size",
    "--lr",
    "--momentum",
    "--weight-decay",
    "--step-size",
    "--gamma",
    "--label-smoothing",
    "--rotation",
    "--translate",
    "--scale",
    "--shear",
    "--seed",
    "--val-size",
    "--split-seed",
    "--train-subset",
    "--threads",
]
SEARCH_FLAGS = [
    "--n-trials",
    "--epochs",
    "--max-params",
    "--min-rf",
    "--workers",
    "--threads",
    "--train-subset",
    "--val-size",
    "--seed",
    "--sampler-seed",
    "--timeout",
    "--heartbeat",
    "--grace",
]


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(TRAIN_FLAGS), NUMBER_TEXTS), min_size=1, max_size=3),
    st.sampled_from(["tiny", "spec.json"]),
)
def test_train_flags_give_a_run_or_one_error_line(monkeypatch, mnist_dir, flags, spec):
    started = []
    monkeypatch.setattr(experiment_module, "run_experiment", lambda *a, **k: started.append(a))
    monkeypatch.setattr(experiment_module, "load_data", lambda *a, **k: None)
    with tempfile.TemporaryDirectory() as tmp:
        if spec == "spec.json":
            spec = str(Path(tmp) / "spec.json")
            Path(spec).write_text(json.dumps({**GOOD_SPEC, "input_size": 32}))  # a spec MNIST cannot feed
        argv = ["train", "--spec", spec, "--out", str(Path(tmp) / "runs"), "--data-dir", str(mnist_dir)]
        result = call(kit, *argv, *[part for pair in flags for part in pair])
        assert_contract(result)
        assert (result[0] == 0) == bool(started)
        assert not (Path(tmp) / "runs").exists()  # refused or stubbed: nothing written either way


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(SEARCH_FLAGS), NUMBER_TEXTS), min_size=1, max_size=3),
    st.sampled_from(
        [
            "",
            "compact",
            "compact:lr=nan",
            "tiny:rotation=1e9",
            "classic:batch_size=7",
            "nosuch",
            "compact:translate=0.05",
        ]
    ),
)
def test_search_flags_give_a_search_or_one_error_line(monkeypatch, mnist_dir, flags, enqueue):
    started = []
    monkeypatch.setattr(runner_module, "run_search", lambda plan: started.append(plan))
    monkeypatch.setattr(data_module, "load_raw", lambda *a, **k: None)
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "logs"
        argv = [
            "--single-stage",
            "--study",
            "f",
            "--logs",
            str(logs),
            "--data-dir",
            str(mnist_dir),
            *[part for pair in flags for part in pair],
        ]
        result = call(search, *argv, *(["--space", "1", "--enqueue", enqueue] if enqueue else []))
        assert_contract(result)
        assert (result[0] == 0) == bool(started)
        if result[0] == 2:
            assert not logs.exists()  # every setting is checked before anything is created


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("fuzz") / "runs" / "good", [99.5] * 3)


@st.composite
def corruptions(draw):
    name = draw(st.sampled_from(["spec.json", "config.json", "inspection.json", "epochs.csv", "model.pt"]))
    kind = draw(st.sampled_from(["delete", "truncate", "bytes", "json", "field", "lines"]))
    return name, kind, draw(st.binary(max_size=300)), draw(JSON), draw(st.integers(0, 400)), draw(st.text(max_size=80))


@FUZZ
@given(st.lists(corruptions(), min_size=1, max_size=3))
def test_a_corrupted_run_directory_gives_a_verdict_or_one_error_line(good_run, damage):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "runs" / "r"
        shutil.copytree(good_run, run)
        for name, kind, blob, value, cut, text in damage:
            path = run / name
            if kind == "delete":
                path.unlink(missing_ok=True)
            elif kind == "truncate" and path.exists():
                path.write_bytes(path.read_bytes()[:cut])
            elif kind == "bytes":
                path.write_bytes(blob)
            elif kind == "json":
                path.write_text(json.dumps(value))
            elif kind == "field" and name.endswith(".json") and path.exists():
                try:
                    data = json.loads(path.read_text())
                except ValueError:
                    continue
                if isinstance(data, dict) and data:
                    data[sorted(data)[cut % len(data)]] = value
                    path.write_text(json.dumps(data))
            elif kind == "lines":
                with open(path, "a") as f:
                    f.write(text + "\n")
        assert_contract(call(kit, "check", str(run)), allowed=(0, 1, 2))
        assert_contract(call(kit, "report", str(run.parent)), allowed=(0, 2))
        try:
            load_checkpoint(run / "model.pt")
        except UserError:
            pass


# --- edited run directories: a PASS must be what an independent reading of the files confirms --------------
EPOCH_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "-inf", "1e308", "99.5", "100", "100.0001", "-0.0", "0x10", "99,5", " "]),
)


@st.composite
def epoch_edits(draw):
    kind = draw(st.sampled_from(["cell", "drop", "repeat", "cut", "swap"]))
    return kind, draw(st.integers(1, 3)), draw(st.integers(0, 10)), draw(EPOCH_VALUES)


def independent_pass(run: Path, min_acc: float = 99.4, last_k: int = 3) -> bool:
    """Whether the rows alone allow a PASS: epochs 1..N as planned, each of the last k a finite accuracy in
    [min_acc, 100]. Written apart from the checker, from the csv module and the rules' text."""
    import csv
    import math

    planned = json.loads((run / "config.json").read_text())["epochs"]
    with open(run / "epochs.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    rows = [r for r in rows if r]  # a blank line is no record in CSV (the checker's DictReader skips it too)
    try:
        epochs = [float(r[0]) for r in rows]
        tail = [float(r[7]) for r in rows[-last_k:]]
    except (ValueError, IndexError):
        return False
    return (
        epochs == list(range(1, planned + 1))
        and len(tail) == last_k
        and all(math.isfinite(a) and min_acc <= a <= 100 for a in tail)
        and all(len(r) == 11 for r in rows)
    )


@FUZZ
@given(st.lists(epoch_edits(), min_size=1, max_size=3))
def test_an_edited_epoch_log_never_passes_what_it_does_not_show(good_run, edits):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "r"
        shutil.copytree(good_run, run)
        lines = (run / "epochs.csv").read_text().splitlines()
        for kind, row, cell, value in edits:
            row = min(row, len(lines) - 1)
            if row < 1:
                break
            cells = lines[row].split(",")
            if kind == "cell":
                cells[cell % len(cells)] = value
                lines[row] = ",".join(cells)
            elif kind == "drop":
                del lines[row]
            elif kind == "repeat":
                lines.insert(row, lines[row])
            elif kind == "cut":
                lines[row] = ",".join(cells[: cell % len(cells)])
            elif kind == "swap" and row + 1 < len(lines):
                lines[row], lines[row + 1] = lines[row + 1], lines[row]
        (run / "epochs.csv").write_text("\n".join(lines) + "\n")
        result = call(kit, "check", str(run))
        assert_contract(result, allowed=(0, 1, 2))
        if result[0] == 0:
            assert independent_pass(run), (run / "epochs.csv").read_text()


# --- signal timing: a stop signal at any moment after start-up is exit 130, with every file whole -----------
@pytest.mark.parametrize("delay", [0.3, 2.5])
def test_a_stop_signal_at_any_moment_of_train_is_exit_130(tmp_path, mnist_dir, delay):
    import signal
    import time

    from .test_reliability import _assert_clean_interrupt, _assert_no_damaged_json, _stop_group, start, train_args

    proc = start(*train_args(mnist_dir, tmp_path))
    time.sleep(delay)
    _assert_clean_interrupt(*_stop_group(proc, (signal.SIGINT if delay > 2 else signal.SIGTERM,)))
    if (tmp_path / "r").exists():
        _assert_no_damaged_json(tmp_path / "r")


@pytest.mark.parametrize("delay", [0.5, 8.0])
def test_a_stop_signal_at_any_moment_of_a_two_worker_search_is_exit_130(tmp_path, mnist_dir, delay):
    import time

    import optuna
    from optuna.trial import TrialState

    from .test_reliability import _assert_clean_interrupt, _assert_no_damaged_json, _stop_group, search_args, start

    proc = start(*search_args(mnist_dir, tmp_path, "f"))
    time.sleep(delay)
    _assert_clean_interrupt(*_stop_group(proc))
    db = tmp_path / "f" / "study.db"
    if db.exists():
        _assert_no_damaged_json(tmp_path / "f")
        try:
            trials = optuna.load_study(study_name="f", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
        except KeyError:  # stopped while the study was being created
            trials = []
        assert TrialState.RUNNING not in [t.state for t in trials]
