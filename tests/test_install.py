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

from .conftest import ROOT


def run(bin_dir: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(bin_dir / command[0]), *command[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_installed_commands_work_from_another_directory(installed_kit, tmp_path):
    (tmp_path / "search.py").write_text("raise SystemExit('the user's own search.py was imported')\n")
    code = "import mnist_challenge, mnist_search; print(mnist_challenge.__file__)"
    where = run(installed_kit, "python", "-c", code, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert str(installed_kit.parent) in where.stdout  # the installed copy, not the checkout

    inspected = run(installed_kit, "mnist-challenge", "inspect", "--spec", "classic", "--json", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["params"] == 12_738  # the preset ships inside the package

    helped = run(installed_kit, "mnist-search", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--budget" in helped.stdout, helped.stderr
    module = run(installed_kit, "python", "-m", "mnist_search", "--help", cwd=tmp_path)  # beside a user's search.py
    assert module.returncode == 0 and "--budget" in module.stdout, module.stderr
    for command in ("reproduce", "fidelity", "digest", "ablate"):
        sub = run(installed_kit, "mnist-search", command, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: mnist-search {command}"), sub.stderr

    bad = run(installed_kit, "mnist-challenge", "inspect", "--spec", "no-such-preset", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr

    module = run(installed_kit, "python", "-m", "mnist_challenge", "check", "--help", cwd=tmp_path)
    assert module.returncode == 0 and "--max-params" in module.stdout, module.stderr
    bench = run(installed_kit, "python", "-m", "mnist_challenge.bench", "--help", cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr


def test_the_version_is_the_package_metadata(installed_kit, tmp_path):
    shown = run(
        installed_kit,
        "python",
        "-c",
        "import importlib.metadata as m, mnist_challenge as k; print(m.version('mnist-challenge'), k.__version__)",
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    metadata, attribute = shown.stdout.split()
    assert metadata == attribute


def _stand_in_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel of ``name`` ``version`` holding nothing but its metadata: it stands for an installed torch."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: stand-in\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    records = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        records.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*records, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_installing_the_kit_keeps_the_runtimes_own_torch(tmp_path):
    """As in Colab: a torch and torchvision of other (older) versions are installed; resolving the kit with every
    extra, index allowed, must not plan to replace either (pip install --dry-run --report)."""
    import venv

    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    stand_ins = [_stand_in_wheel(tmp_path, "torch", "2.4.0"), _stand_in_wheel(tmp_path, "torchvision", "0.19.0")]
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *stand_ins], check=True, capture_output=True)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--dry-run", "--report", report, f"{ROOT}[all]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    planned = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "mnist-challenge" in planned and "optuna" in planned
    assert "torch" not in planned and "torchvision" not in planned, planned
    assert not any(name.startswith(("nvidia-", "triton")) for name in planned), planned


def test_the_inspector_and_the_grader_import_with_torch_alone(tmp_path):
    """A Python that holds torch (and what torch itself needs) and the kit, nothing else."""
    import importlib.metadata as metadata
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    keep = {"torch", *(r.split()[0].split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0]
                       for r in metadata.requires("torch") or [] if "extra ==" not in r)}  # fmt: skip
    alone = tmp_path / "torch-only"
    alone.mkdir()
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in {k.lower().replace("_", "-") for k in keep}:
            for file in dist.files or []:
                top = Path(str(file)).parts[0]
                if not (alone / top).exists() and (site / top).exists():
                    (alone / top).symlink_to(site / top)
    (alone / "mnist_challenge").symlink_to(ROOT / "mnist_challenge")
    code = (
        "import sys, mnist_challenge as mc, torch.nn as nn\n"
        "r = mc.summary(nn.Sequential(nn.Conv2d(1, 10, 28), nn.Flatten()), (1, 28, 28))\n"
        "from mnist_challenge.grading.grade import grade_notebook\n"
        "assert r.params == 7850, r.params\n"
        "bad = [m for m in ('tqdm', 'matplotlib', 'optuna', 'torchsummary', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(alone), "PYTHONNOUSERSITE": "1"}
    done = subprocess.run(
        [sys.base_prefix + "/bin/python3", "-S", "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_quickstart_runs_from_an_empty_folder_with_the_kit_installed(installed_kit, tmp_path, mnist_dir):
    """notebooks/quickstart.ipynb as a user runs it, in smoke mode (fewer designs, the winner's notebook one epoch
    on 2,000 images): in an empty folder, with the kit installed from a wheel (not the checkout on sys.path)."""
    notebook = tmp_path / "quickstart.ipynb"
    notebook.write_bytes((ROOT / "notebooks" / "quickstart.ipynb").read_bytes())
    code = (
        "import sys, nbformat, nbclient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "nbclient.NotebookClient(nb, timeout=900, kernel_name='python3',"
        " resources={'metadata': {'path': sys.argv[2]}}).execute()\n"
        "nbformat.write(nb, sys.argv[1])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env = {k: v for k, v in env.items() if k != "MPLBACKEND"}  # the kernel draws inline, as in Jupyter
    env |= {"KIT_NOTEBOOK_SMOKE": "1", "MNIST_DATA_DIR": str(mnist_dir)}
    done = subprocess.run(
        [installed_kit / "python", "-c", code, notebook, tmp_path],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    cells = json.loads(notebook.read_text())["cells"]
    shown = "\n".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in cells if c["cell_type"] == "code" for o in c["outputs"]
    )  # fmt: skip
    assert "parameters used in forward:" in shown and "[PASS] no fully connected layer" in shown, shown[-3000:]
    assert "== student.ipynb" in shown and "VERDICT: PASS" in shown, shown[-3000:]
    assert "winner: trial" in shown and "== demo/budget-demo/winner.ipynb" in shown
    assert any(o.get("data", {}).get("image/png") for c in cells if c["cell_type"] == "code" for o in c["outputs"])
