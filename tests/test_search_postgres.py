"""The distributed path for real: a PostgreSQL server on loopback, two workers on one study."""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile

import optuna
import pytest
from optuna.trial import TrialState

from .conftest import ROOT
from .test_search import assert_no_draw_trained_twice

TINY = ["--epochs", "1", "--train-subset", "600", "--val-size", "500", "--workers", "1", "--threads", "1"]


def _bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture
def postgres_url():
    if not _bin("postgres") or not _bin("initdb"):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing: .ci/run must install Debian's postgresql package")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = tempfile.mkdtemp(prefix="kit-pg-", dir="/tmp")
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data = os.path.join(root, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        as_postgres + [_bin("initdb"), "-D", data, "-A", "trust", "-U", "kit"], check=True, capture_output=True
    )
    subprocess.run(
        as_postgres
        + [
            _bin("pg_ctl"),
            "-D",
            data,
            "-l",
            os.path.join(root, "log"),
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            as_postgres + [_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "kit", "studies"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://kit@127.0.0.1:{port}/studies"
    finally:
        subprocess.run(as_postgres + [_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _search(url, logs, mnist_dir, n):
    cmd = [
        sys.executable,
        "-m",
        "search",
        "--study",
        "shared",
        "--storage",
        url,
        "--logs",
        str(logs),
        "--data-dir",
        str(mnist_dir),
        "--single-stage",
        "--n-trials",
        str(n),
        "--space",
        "1",
        "--enqueue",
        "compact",
        "--pruner",
        "none",
        *TINY,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_workers_share_one_study_and_it_resumes(postgres_url, mnist_dir, tmp_path):
    # Two independent commands, as two machines would run them, against one database; both enqueue the same
    # preset. Every trial is stored once, and no parameter set is trained twice (resume included).
    machines = [_search(postgres_url, tmp_path / f"machine{i}", mnist_dir, 2) for i in (1, 2)]
    for proc in machines:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # every trial stored once
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    run_dirs = [t.user_attrs["run_dir"] for t in trials if "run_dir" in t.user_attrs]
    assert len(run_dirs) == len(set(run_dirs))
    again = _search(postgres_url, tmp_path / "machine1", mnist_dir, 2)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name="shared", storage=postgres_url).get_trials(deepcopy=False)
    assert len(trials) == 6
    assert_no_draw_trained_twice(trials)
    assert len({t.user_attrs["sampler_seed"] for t in trials}) == 3  # each command samples differently
