"""The checker fails each rule on purpose-built runs and passes a good one."""

import json

from mnist_challenge import ArchSpec, ConvBlock, build_model, load_spec
from mnist_challenge.architecture.inspector import inspect_module
from mnist_challenge.runs.checker import Limits, check_run
from mnist_challenge.runs.runlog import RunDir

from .conftest import run_cli


def make_run(path, model, spec, test_accs, planned=None):
    """A run directory with the real inspection of ``model`` and the given per-epoch test accuracies (of
    ``planned`` epochs: more than logged is a run that was stopped)."""
    run = RunDir(path)
    run.start(spec, {"epochs": planned or len(test_accs)}, model, "", inspect_module(model, (1, 28, 28)).as_dict())
    for i, acc in enumerate(test_accs, start=1):
        run.log_epoch(epoch_row(i, acc), model, spec)
    run.close()
    return path


def epoch_row(epoch, acc):
    return {
        "epoch": epoch,
        "lr": 0.01,
        "train_loss": 0.1,
        "train_acc": 98.0,
        "val_loss": 0.02,
        "val_acc": acc,
        "test_loss": 0.02,
        "test_acc": acc,
        "seconds": 1.0,
        "eval_seconds": 0.1,
        "images_per_second": 1.0,
    }


GOOD = [98.0] * 12 + [99.41, 99.45, 99.43]


def failed_rules(path, **limits):
    verdict = check_run(path, Limits(**limits))
    return verdict.passed, [r["rule"] for r in verdict.rules if not r["passed"]]


def test_good_run_passes(tmp_path):
    spec = load_spec("classic")
    assert failed_rules(make_run(tmp_path / "r", build_model(spec), spec, GOOD)) == (True, [])


def test_too_many_params_fails(tmp_path):
    big = ArchSpec(blocks=(ConvBlock((32, 32), 0, False, 16), ConvBlock((32, 32, 32), 0)), stem_channels=16)
    passed, failed = failed_rules(make_run(tmp_path / "r", build_model(big), big, GOOD))
    assert not passed and failed == ["parameters < 20,000"]


def test_linear_layer_fails(tmp_path):
    # A spec never builds nn.Linear, so a logged one also disagrees with the spec: both rules fail.
    spec = load_spec("compact")
    path = make_run(tmp_path / "r", build_model(spec), spec, GOOD)
    inspection = json.loads((path / "inspection.json").read_text())
    inspection.update(has_linear=True, linear_layers=["fc"])
    (path / "inspection.json").write_text(json.dumps(inspection))
    passed, failed = failed_rules(path)
    assert not passed and failed == ["logged model matches spec.json", "no fully connected layer"]


def test_too_many_epochs_fails(tmp_path):
    spec = load_spec("compact")
    passed, failed = failed_rules(make_run(tmp_path / "r", build_model(spec), spec, [98.0] * 17 + [99.5] * 3))
    assert not passed and failed == ["epochs <= 19"]


def test_one_good_epoch_then_a_drop_fails(tmp_path):
    spec = load_spec("compact")
    passed, failed = failed_rules(make_run(tmp_path / "r", build_model(spec), spec, [98.0] * 12 + [99.5, 99.38, 99.45]))
    assert not passed and failed == ["test accuracy >= 99.4% in each of the last 3 epochs"]


def test_logged_params_must_match_the_spec(tmp_path):
    spec = load_spec("compact")
    path = make_run(tmp_path / "r", build_model(spec), spec, GOOD)
    inspection = json.loads((path / "inspection.json").read_text())
    inspection["params"] = 5_000
    (path / "inspection.json").write_text(json.dumps(inspection))
    passed, failed = failed_rules(path)
    assert not passed and failed == ["logged model matches spec.json"]


def test_cli_exit_codes(tmp_path):
    spec = load_spec("compact")
    good = make_run(tmp_path / "good", build_model(spec), spec, GOOD)
    bad = make_run(tmp_path / "bad", build_model(spec), spec, [99.0] * 15)
    assert run_cli("mnist_challenge", "check", str(good)).returncode == 0
    result = run_cli("mnist_challenge", "check", str(bad))
    assert result.returncode == 1 and "[FAIL] test accuracy" in result.stdout and "99.00%" in result.stdout
    missing = run_cli("mnist_challenge", "check", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "run directory not found" in missing.stderr
    (good / "epochs.csv").unlink()
    assert run_cli("mnist_challenge", "check", str(good)).returncode == 2


def test_rule_sets_set_the_limits_and_the_required_layers(tmp_path):
    """``check --rules NAME``: the set's limits (a flag still overrides one) and, for bn-dropout-gap, the layers the
    forward must call; the search's budgets take their caps and epochs from the same table."""
    import dataclasses

    from mnist_challenge.cli.main import main as kit
    from mnist_challenge.runs.budgets import BUDGETS, RULES

    from .conftest import call

    classic = load_spec("classic")  # 12,738 params, BN and dropout, GAP head
    no_dropout = dataclasses.replace(classic, dropout=0.0)
    good = make_run(tmp_path / "good", build_model(classic), classic, GOOD)
    dry = make_run(tmp_path / "dry", build_model(no_dropout), no_dropout, GOOD)
    code, out, _ = call(kit, "check", str(good), "--rules", "10k")
    assert code == 1 and "[FAIL] parameters < 10,000: 12,738" in out and "epochs <= 15" in out
    assert call(kit, "check", str(good), "--rules", "10k", "--max-params", "13000")[0] == 0
    code, out, _ = call(kit, "check", str(good), "--rules", "bn-dropout-gap")
    assert code == 0 and "[PASS] uses Dropout" in out and "[PASS] uses global average pooling" in out
    code, out, _ = call(kit, "check", str(dry), "--rules", "bn-dropout-gap")
    assert code == 1 and "[FAIL] uses Dropout: never called in forward" in out and "[PASS] uses BatchNorm" in out
    assert call(kit, "check", str(dry))[0] == 0  # the original rules do not ask for dropout
    for name, budget in BUDGETS.items():
        rules = RULES[{"assignment": "original", "compact": "8k"}.get(name, name)]
        assert (budget.max_params, budget.epochs) == (rules.limits.max_params, rules.limits.max_epochs)


def test_curves_are_redrawn_after_the_first_and_last_epoch_and_when_a_run_stops_early(tmp_path, monkeypatch):
    """A drawing takes about a second: a run of quick epochs draws its first and last, not every one, and a run
    stopped early still gets a drawing of every epoch it logged."""
    import mnist_challenge.runs.runlog as runlog

    drawn = []
    monkeypatch.setattr(runlog, "plot_curves", lambda rows, path: drawn.append(len(rows)))
    spec = load_spec("tiny")
    make_run(tmp_path / "whole", build_model(spec), spec, GOOD)
    assert drawn == [1, len(GOOD)]
    drawn.clear()
    monkeypatch.setattr(runlog, "CURVES_EVERY", 0.0)  # a slow run: every epoch
    make_run(tmp_path / "slow", build_model(spec), spec, GOOD[:3])
    assert drawn == [1, 2, 3]
    drawn.clear()
    monkeypatch.setattr(runlog, "CURVES_EVERY", 1e9)
    run = RunDir(tmp_path / "stopped")
    run.start(spec, {"epochs": 15}, build_model(spec), "", {})
    for epoch in (1, 2, 3):
        run.log_epoch(epoch_row(epoch, 99.0), build_model(spec), spec)
    run.close()
    assert drawn == [1, 3]
