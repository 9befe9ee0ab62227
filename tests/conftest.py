"""Shared fixtures. MNIST comes from the shared read-only copy (no internet here, never committed)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST IDX files: $MNIST_DATA_DIR if set (CI sets it), else ../shared/data/mnist."""
    path = Path(os.environ.get("MNIST_DATA_DIR", SHARED_MNIST))
    if not (path / "train-images-idx3-ubyte.gz").exists() and not (path / "train-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST not found in {path}; set MNIST_DATA_DIR to a directory of IDX files")
    return path


def make_bare_venv(folder: Path) -> Path:
    """A fresh virtual environment whose Python sees this one's packages (torch, nbclient, ...) but not the kit;
    its ``python``. The packages come through a path file listing this environment's site-packages, whose own
    path files (the editable install of the kit that ``make`` makes among them) are not processed from there."""
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="session")
def kitless_python(tmp_path_factory) -> Path:
    """A Python in which ``import mnist_challenge`` fails (from any folder but the checkout)."""
    return make_bare_venv(tmp_path_factory.mktemp("kitless") / "venv")


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` from the repo root the way a user would, capturing output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def call(main: Callable, *argv: str) -> tuple[int, str, str]:
    """Run a CLI's ``main`` in this process (fast: no interpreter start, no torch import): exit code,
    stdout, stderr. argparse's own exits (bad flags, --help) come back as codes too."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return code, out.getvalue(), err.getvalue()


def assert_one_error_line(result: tuple[int, str, str], fragment: str = "") -> None:
    """Exit 2 with exactly one ``error:`` line on stderr that contains ``fragment``."""
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def inline_worker(monkeypatch):
    """Run the model-building worker in this process (the subprocess is tested on its own below)."""
    import json

    from mnist_challenge.grading import build, worker
    from mnist_challenge.grading.sandbox import Outcome

    def run_inline(arguments, readable, job, timeout):
        program, size, choice, _folder = arguments
        built = worker.build(Path(program.replace("{job}", str(job))), tuple(map(int, size.split(","))), choice or None)
        return Outcome(0, json.dumps(worker.check_outcome(json.dumps(built).encode())), "", "inline")

    monkeypatch.setattr(build, "run_worker", run_inline)


@pytest.fixture(scope="session")
def installed_kit(tmp_path_factory) -> Path:
    """The bin folder of a fresh venv with the kit installed by pip from the checkout."""
    import sys

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
