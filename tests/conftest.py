"""Shared fixtures. MNIST comes from the shared read-only copy (no internet here, never committed)."""

from __future__ import annotations

import os
import subprocess
import sys
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


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` from the repo root the way a user would, capturing output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
