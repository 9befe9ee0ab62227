"""Submission notebooks: the generated model equals the kit's for every block kind and head, an exported
notebook runs (smoke mode) from an empty folder where the kit cannot be imported, and the committed
notebooks carry their full logs and a verdict."""

import json
import os
import subprocess

import nbformat
import pytest
import torch

from mnist_challenge import ArchSpec, build_model, count_params, load_spec
from mnist_challenge.cli.main import main as kit
from mnist_challenge.export.notebook import model_code
from mnist_challenge.runs.runlog import load_checkpoint

from .conftest import ROOT, assert_one_error_line, call

RUN = ROOT / "logs" / "submission" / "tiny" / "seed1"
BLOCK = {"channels": [6, 8], "padding": 0}
VARIANTS = {
    "plain": {},
    "separable": {"blocks": [{**BLOCK, "kind": "separable", "transition": 6}, {"channels": [8, 10], "padding": 1}]},
    "dilated": {"blocks": [{**BLOCK, "kind": "dilated", "transition": 6}, {"channels": [10], "kind": "dilated"}]},
    "residual, projected and cropped": {
        "blocks": [{**BLOCK, "residual": True, "transition": 6}, {"channels": [6, 6], "padding": 1, "residual": True}]
    },
    "pool-only transitions": {
        "blocks": [
            {**BLOCK, "transition": "pool"},
            {"channels": [8, 10], "padding": 0, "transition": "pool"},
            {**BLOCK, "padding": 1},
        ]
    },
    "conv_gap head, BN before ReLU": {"head": "conv_gap", "batchnorm": "before_relu"},
    "conv3_gap head, no BN": {"head": "conv3_gap", "batchnorm": "none"},
    "dropout at block ends": {"dropout": 0.1, "dropout_at": "block_end"},
    "dropout after every conv": {"dropout": 0.05, "dropout_at": "every_conv"},
    # Space version 5's kinds: concatenating, two-branch, weight-shared (the shared conv named once in the code).
    "dense": {"blocks": [{"channels": [4, 4, 4], "padding": 1, "kind": "dense", "transition": 6}, BLOCK]},
    "branch": {"blocks": [{"channels": [6, 8], "padding": 1, "kind": "branch", "transition": "pool"}, BLOCK]},
    "shared, residual": {
        "blocks": [{"channels": [8, 8, 8], "padding": 1, "kind": "shared", "residual": True, "transition": 6}, BLOCK]
    },
}


def _net_from_code(spec: ArchSpec) -> torch.nn.Module:
    source = model_code(spec)
    assert "mnist_challenge" not in source and "search" not in source
    namespace: dict = {}
    exec(compile(source, f"<model of {spec.name}>", "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace["Net"]()


def _same_network(kit_model: torch.nn.Module, spec: ArchSpec) -> None:
    net = _net_from_code(spec)
    assert count_params(net) == count_params(kit_model)
    net.load_state_dict(kit_model.state_dict())  # strict: the same parameter and buffer names and shapes
    kit_model.eval()
    net.eval()
    x = torch.randn(8, spec.in_channels, spec.input_size, spec.input_size)
    torch.testing.assert_close(net(x), kit_model(x))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_generated_model_is_the_kits_network(variant):
    base = {"blocks": [{**BLOCK, "transition": 6}, {"channels": [8, 10], "padding": 0}], "name": "v"}
    spec = ArchSpec.from_dict({**base, **VARIANTS[variant]})
    model = build_model(spec)
    with torch.no_grad():  # trained-looking BN statistics, so a mix-up of buffers would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    _same_network(model, spec)


@pytest.mark.parametrize("preset", ["classic", "compact", "tiny"])
def test_generated_model_of_each_preset(preset):
    spec = load_spec(preset)
    _same_network(build_model(spec), spec)


def test_a_committed_runs_weights_give_the_same_outputs():
    model, spec = load_checkpoint(RUN / "model.pt")
    _same_network(model, spec)


def test_bad_input_is_one_error_line(tmp_path):
    assert_one_error_line(
        call(kit, "export-notebook", str(tmp_path)), "is not a complete run directory: spec.json is missing"
    )
    assert_one_error_line(call(kit, "export-notebook", str(RUN), "-o", str(tmp_path / "x.txt")), "ends in .ipynb")


def _execute_without_the_kit(notebook, folder, mnist_dir, python):
    """Run a notebook in smoke mode from ``folder`` with ``python``, where the kit is not importable."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(KIT_NOTEBOOK_SMOKE="1", MNIST_DATA_DIR=str(mnist_dir.resolve()))
    probe = subprocess.run([python, "-c", "import mnist_challenge"], cwd=folder, env=env, capture_output=True)
    assert probe.returncode != 0, "the kit is importable from the empty folder: the test would prove nothing"
    script = (
        "import sys, nbformat\n"
        "from nbclient import NotebookClient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        # Belt and braces: any import of the kit inside the kernel fails.
        'nb.cells.insert(0, nbformat.v4.new_code_cell(\'import sys\\nsys.modules["mnist_challenge"] = None\\n'
        'sys.modules["search"] = None\'))\n'
        "NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': '.'}}).execute()\n"
        "nbformat.write(nb, 'executed.ipynb')\n"
    )
    result = subprocess.run([python, "-c", script, str(notebook)], cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return _outputs(nbformat.read(folder / "executed.ipynb", as_version=4))


def _outputs(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_an_exported_notebook_runs_without_the_kit(tmp_path, mnist_dir, kitless_python):
    out = tmp_path / "out" / "submission.ipynb"
    out.parent.mkdir()
    code, stdout, err = call(kit, "export-notebook", str(RUN), "-o", str(out), "--max-params", "5000")
    assert code == 0 and out.is_file(), err
    empty = tmp_path / "empty"
    empty.mkdir()
    text = _execute_without_the_kit(out, empty, mnist_dir, kitless_python)
    assert "EPOCH  1/1" in text and "Total params" in text and "fewer than 5,000 parameters" in text
    assert "VERDICT: FAIL (smoke mode)" in text  # one epoch cannot pass the last-3-epochs rule
    assert sorted(p.name for p in empty.iterdir()) == ["executed.ipynb"]  # local data: nothing downloaded


COMMITTED = sorted((ROOT / "notebooks").glob("submission_*.ipynb"))


@pytest.mark.parametrize("notebook", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_notebooks_show_full_logs_and_run_without_the_kit(notebook, tmp_path, mnist_dir, kitless_python):
    nb = nbformat.read(notebook, as_version=4)
    logged = _outputs(nb)
    epochs = [line for line in logged.splitlines() if line.startswith("EPOCH ")]
    assert len(epochs) >= 15 and logged.strip().splitlines()[-1].startswith("VERDICT: ")
    text = _execute_without_the_kit(notebook, tmp_path, mnist_dir, kitless_python)
    assert "EPOCH  1/1" in text and "VERDICT:" in text


def test_execute_saves_the_notebook_with_its_outputs(tmp_path, mnist_dir, monkeypatch):
    """--execute runs the notebook here and saves it with its outputs (smoke mode)."""
    monkeypatch.setenv("KIT_NOTEBOOK_SMOKE", "1")
    out = tmp_path / "n.ipynb"
    code, stdout, err = call(
        kit, "export-notebook", str(RUN), "-o", str(out), "--execute", "--data-dir", str(mnist_dir)
    )
    assert code == 0, err[-2000:]
    assert "VERDICT: FAIL" in stdout and "EPOCH  1/1" in _outputs(nbformat.read(out, as_version=4))
    assert json.loads(out.read_text())["metadata"]["kernelspec"]["name"] == "python3"


def test_every_committed_run_exports(tmp_path):
    """export-notebook works on any committed run (each distinct design once): its notebook builds, with the
    run's parameter count."""
    runs, seen = [], set()
    for path in sorted((ROOT / "logs").rglob("spec.json")):
        design = path.read_text()
        if (path.parent / "config.json").is_file() and design not in seen:  # later rungs and seeds: same design
            seen.add(design)
            runs.append(path.parent)
    assert runs
    for run in runs:
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.ipynb"
        code, _, err = call(kit, "export-notebook", str(run), "-o", str(out))
        assert code == 0, (run, err)
        spec = ArchSpec.load(run / "spec.json")
        assert f"{count_params(build_model(spec)):,} parameters" in out.read_text()


TEMPLATES = sorted(
    p.stem for p in (ROOT / "mnist_challenge" / "export" / "templates").glob("*.py") if p.stem not in ("__init__",)
)


@pytest.mark.parametrize("template", [t for t in TEMPLATES if t != "generated"])
def test_every_cell_template_has_its_cell_and_compiles(template):
    from mnist_challenge.export.notebook import cell_source

    code = cell_source(template)
    compile(code, f"<cell {template}>", "exec")  # the cell alone is valid Python
    assert "# --- cell ---" not in code and not code.startswith("\n")


def test_the_training_helpers_template_matches_the_kit():
    """The notebook's augmentation at zero strength is the identity, its EMA follows the kit's warm-up, and its
    evaluation agrees with a plain loop: imported from the template file itself."""
    import torch

    from mnist_challenge.engine.ema import WeightEMA as KitEMA
    from mnist_challenge.export.templates import training_helpers as cell

    x = torch.randn(4, 1, 28, 28)
    still = dict(rotation=0, translate=0, scale=0, shear=0)
    assert torch.equal(cell.random_affine(x, torch.Generator().manual_seed(0), still), x)
    moved = cell.random_affine(x, torch.Generator().manual_seed(0), still | {"rotation": 15})
    assert moved.shape == x.shape and not torch.equal(moved, x)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 10, 28), torch.nn.Flatten(), torch.nn.LogSoftmax(dim=1))
    ours, kit = cell.WeightEMA(net, 0.9), KitEMA(net, 0.9)
    for _ in range(3):
        with torch.no_grad():
            net[0].weight.add_(0.1)
        ours.update()
        kit.update()
    assert torch.allclose(ours.shadow[0], kit.shadow[0])

    labels = torch.randint(0, 10, (4,))
    loss, acc = cell.evaluate(net, x, labels)
    with torch.no_grad():
        out = net(x)
    assert acc == 100.0 * (out.argmax(1) == labels).float().mean().item()
    assert loss == pytest.approx(torch.nn.functional.nll_loss(out, labels).item(), rel=1e-5)
