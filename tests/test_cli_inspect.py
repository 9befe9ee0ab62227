"""``python -m mnist_challenge inspect`` as a user runs it: tables, JSON, and one-line errors."""

import json

import pytest

from .conftest import run_cli

RESIDUAL_FACTORY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.again = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        x = self.conv(x)
        return self.out(torch.relu(self.again(x)) + x).mean((2, 3))

def make():
    return Net()
"""

REQUIRED = {"params", "params_unused", "macs", "receptive_field", "receptive_field_head", "has_linear", "layers"}


def test_inspect_spec_prints_torchsummary_and_our_table():
    result = run_cli("mnist_challenge", "inspect", "--spec", "mnist_challenge/architecture/presets/classic.json")
    assert result.returncode == 0, result.stderr
    assert "Total params" in result.stdout  # torchsummary's table
    assert "RF at the head's input" in result.stdout and "RF after GAP" in result.stdout


def test_inspect_json_for_spec_module_and_torchvision(tmp_path):
    factory = tmp_path / "mynet.py"
    factory.write_text(RESIDUAL_FACTORY)
    for source in (
        ["--spec", "compact"],
        ["--module", f"{factory}:make"],
        ["--torchvision", "resnet18", "--input-size", "3", "64", "64"],
    ):
        result = run_cli("mnist_challenge", "inspect", *source, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert REQUIRED <= report.keys()
        assert {"name", "type", "out_shape", "rf", "jump", "params", "macs"} <= report["layers"][0].keys()
    assert report["params"] == 11_689_512 and report["has_linear"] is True


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--spec", "missing.json"], "spec file not found"),
        (["--spec", "nope"], "spec file not found"),
        (["--spec", "tests"], "tests: a folder, not a spec file"),
        (["--module", "no/such/file.py:make"], "module file not found"),
        (["--module", "json:nothing_here"], "has no callable"),
        (["--module", "no_such_package_xyz:make"], "cannot import"),
        (["--module", "justtext"], "expects FILE.py:Factory"),
        (["--torchvision", "resnet_9000"], "unknown torchvision model"),
        (["--spec", "classic", "--input-size", "1", "0", "28"], "must be an integer in [1, 1024], got 0"),
        (["--spec", "classic", "--input-size", "1", "4", "4"], "cannot run on input size"),
        ([], "one of the arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    result = run_cli("mnist_challenge", "inspect", *args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_spec_json_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    for text in ('{"blocks": [{"channels": [0]}]}', "{oops", '{"blocks": [{"channels": [8]}], "extra": 1}'):
        bad.write_text(text)
        result = run_cli("mnist_challenge", "inspect", "--spec", str(bad))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert str(bad) in result.stderr
