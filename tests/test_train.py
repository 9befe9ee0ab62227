"""The engine on small real subsets: it learns, it is repeatable, and its run directory is complete."""

import csv

import torch

from mnist_challenge import load_spec
from mnist_challenge.engine.train import TrainConfig
from mnist_challenge.runs.experiment import run_experiment
from mnist_challenge.runs.runlog import load_checkpoint

from .conftest import run_cli

RUN_FILES = {
    "spec.json",
    "config.json",
    "summary.txt",
    "inspection.json",
    "epochs.csv",
    "train.log",
    "curves.png",
    "model.pt",
    "verdict.json",
}
TIMING = {"seconds", "eval_seconds", "images_per_second"}


def small_run(mnist_dir, out, seed=1, **overrides):
    cfg = TrainConfig(epochs=2, train_subset=3_000, val_size=2_000, seed=seed, threads=1, **overrides)
    return run_experiment(load_spec("compact"), cfg, out, data_dir=mnist_dir, progress=False, echo=False)


def read_rows(path):
    with open(path / "epochs.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def test_small_run_beats_chance_and_writes_every_file(mnist_dir, tmp_path):
    result = small_run(mnist_dir, tmp_path / "run")
    assert RUN_FILES <= {p.name for p in (tmp_path / "run").iterdir()}
    last = result.epochs[-1]
    assert last["val_acc"] > 50 and last["test_acc"] > 50  # chance is 10 %
    assert len(read_rows(tmp_path / "run")) == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert "EPOCH  1/2" in log and "EPOCH  2/2" in log and "VERDICT" in log


def test_checkpoint_rebuilds_the_trained_model(mnist_dir, tmp_path):
    result = small_run(mnist_dir, tmp_path / "run")
    model, spec = load_checkpoint(tmp_path / "run" / "model.pt")
    assert spec == load_spec("compact")
    x = torch.randn(8, 1, 28, 28)
    result.model.eval()
    assert torch.allclose(model(x), result.model(x), atol=1e-6)


def test_same_seed_same_epochs_csv(mnist_dir, tmp_path):
    small_run(mnist_dir, tmp_path / "a", seed=5)
    small_run(mnist_dir, tmp_path / "b", seed=5)
    small_run(mnist_dir, tmp_path / "c", seed=6)
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")
    assert read_rows(tmp_path / "a") != read_rows(tmp_path / "c")


def test_cli_train_then_check(mnist_dir, tmp_path):
    result = run_cli(
        "mnist_challenge",
        "train",
        "--spec",
        "compact",
        "--epochs",
        "2",
        "--train-subset",
        "3000",
        "--val-size",
        "1000",
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(tmp_path),
        "--name",
        "r",
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert "EPOCH  1/2" in result.stdout and "EPOCH  2/2" in result.stdout
    check = run_cli("mnist_challenge", "check", str(tmp_path / "r"), "--last-k", "1", "--min-acc", "50")
    assert check.returncode == 0, check.stdout
    assert "VERDICT: PASS" in check.stdout
    again = run_cli(
        "mnist_challenge",
        "train",
        "--spec",
        "compact",
        "--epochs",
        "1",
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(tmp_path),
        "--name",
        "r",
    )
    assert again.returncode == 2 and "already exists" in again.stderr


def test_bad_train_flags_are_one_line_exit_2(mnist_dir):
    for args in (["--epochs", "0"], ["--lr", "-1"], ["--optimizer", "lion"], ["--batch-size", "1"]):
        result = run_cli("mnist_challenge", "train", "--spec", "compact", "--data-dir", str(mnist_dir), *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
