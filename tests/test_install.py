"""The kit as a new user installs it: ``pip install .`` into a fresh virtual environment, then both console
scripts and ``python -m`` from a directory that is not the checkout.

The fresh environment gets the package from a wheel built here (package data included: presets, native.c);
its dependencies (torch and the rest) are taken from the test's own environment through a path file, so the
test needs no index and no download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import make_bare_venv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin folder of a fresh venv with the kit installed by pip from the checkout."""
    home = tmp_path_factory.mktemp("fresh")
    python = make_bare_venv(home / "venv")
    build = home / "build"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", build, ROOT],
        check=True,
        cwd=home,
        capture_output=True,
    )
    (wheel,) = build.glob("mnist_challenge-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        check=True,
        capture_output=True,
    )
    return python.parent


def run(bin_dir: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(bin_dir / command[0]), *command[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_installed_commands_work_from_another_directory(installed, tmp_path):
    where = run(
        installed, "python", "-c", "import mnist_challenge, search; print(mnist_challenge.__file__)", cwd=tmp_path
    )
    assert where.returncode == 0, where.stderr
    assert str(installed.parent) in where.stdout  # the installed copy, not the checkout

    inspected = run(installed, "mnist-challenge", "inspect", "--spec", "classic", "--json", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["params"] == 12_738  # the preset ships inside the package

    helped = run(installed, "mnist-search", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--budget" in helped.stdout, helped.stderr
    for command in ("reproduce", "fidelity", "digest", "ablate"):
        sub = run(installed, "mnist-search", command, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: mnist-search {command}"), sub.stderr

    bad = run(installed, "mnist-challenge", "inspect", "--spec", "no-such-preset", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr

    module = run(installed, "python", "-m", "mnist_challenge", "check", "--help", cwd=tmp_path)
    assert module.returncode == 0 and "--max-params" in module.stdout, module.stderr
    bench = run(installed, "python", "-m", "mnist_challenge.bench", "--help", cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr


def test_the_version_is_the_package_metadata(installed, tmp_path):
    shown = run(
        installed,
        "python",
        "-c",
        "import importlib.metadata as m, mnist_challenge as k; print(m.version('mnist-challenge'), k.__version__)",
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    metadata, attribute = shown.stdout.split()
    assert metadata == attribute
