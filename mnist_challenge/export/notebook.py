"""``export-notebook``: a self-contained submission notebook for a run's spec and recipe.

The course wants one artifact, a notebook with its logs visible, that is the student's own work. The
notebook written here needs torch, torchvision, torchsummary and matplotlib only: the model is plain
PyTorch code generated from the spec (one attribute per spec block, each layer commented with its output
shape and receptive field), the data are MNIST tensors in memory (torchvision's download in Colab, a local
IDX folder named by ``MNIST_DATA_DIR`` offline), and the recipe is the run's (optimizer, schedule, batched
affine augmentation, label smoothing, weight EMA). It trains on all 60,000 training images, prints one
line per epoch with train and test loss and accuracy, draws the curves and ends with the four rules and
a verdict. ``KIT_NOTEBOOK_SMOKE=1`` trains one epoch on 2,000 images (the test suite runs it that way).

The generated ``Net`` mirrors ``build_model(spec)`` module for module, so the two share parameter names:
a run's ``state_dict`` loads into it and gives the same outputs (tested for every block kind and head).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from mnist_challenge.architecture.inspector import inspect_module
from mnist_challenge.architecture.model import Block, Branches, build_model, count_params
from mnist_challenge.architecture.spec import ArchSpec
from mnist_challenge.common.errors import UserError
from mnist_challenge.common.files import display_path, write_text_atomic
from mnist_challenge.common.validate import check_writable_dir
from mnist_challenge.engine.train import RECIPE_KEYS, TrainConfig
from mnist_challenge.runs.checker import Limits, checkpoint_mismatch, read_json_object, require_file

SMOKE_ENV = "KIT_NOTEBOOK_SMOKE"
INDENT = "    "


# --- the model as code ------------------------------------------------------------------------------
def _shape_comment(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    _, c, h, w = row["out_shape"]
    rf = "x".join(str(r) for r in row["rf_axes"]) if row.get("rf_axes") and len(set(row["rf_axes"])) > 1 else row["rf"]
    params = f", {row['params']:,} params" if row["params"] else ""
    return f"  # -> {c}x{h}x{w}, RF {rf}{params}"


def _leaf(module: nn.Module) -> str:
    """Constructor code of one layer the spec builder uses (defaults left out)."""
    if isinstance(module, nn.Conv2d):
        extra = "".join(
            f", {name}={value}"
            for name, value, default in (
                ("stride", module.stride[0], 1),
                ("padding", module.padding[0], 0),
                ("dilation", module.dilation[0], 1),
                ("groups", module.groups, 1),
                ("bias", module.bias is not None, True),
            )
            if value != default
        )
        return f"nn.Conv2d({module.in_channels}, {module.out_channels}, {module.kernel_size[0]}{extra})"
    if isinstance(module, nn.BatchNorm2d):
        return f"nn.BatchNorm2d({module.num_features})"
    if isinstance(module, nn.Dropout):
        return f"nn.Dropout({module.p})"
    if isinstance(module, nn.MaxPool2d):
        return f"nn.MaxPool2d({module.kernel_size})"
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return f"nn.AdaptiveAvgPool2d({module.output_size})"
    if isinstance(module, nn.ReLU):
        return "nn.ReLU()"
    raise TypeError(f"no code for {type(module).__name__}")  # the spec builder makes none of these


def _module_code(
    module: nn.Module, path: str, rows: dict[str, dict[str, Any]], depth: int, shared: dict[int, str | None]
) -> list[str]:
    """Lines of code that rebuild ``module`` (named ``path`` in the model), the last without a comma. A module
    used more than once (a shared block's conv; a key of ``shared``) is named at its first use (``(shared1 :=
    nn.Conv2d(...))``) and that name is its code after, so the notebook's net shares the weights as the kit's."""
    pad = INDENT * depth
    if shared.get(id(module)) is not None:
        return [f"{pad}{shared[id(module)]}  # the same conv again: its weights are shared"]
    if isinstance(module, nn.Sequential):
        lines = [f"{pad}nn.Sequential("]
        for name, child in module.named_children():
            child_lines = _module_code(child, f"{path}.{name}", rows, depth + 1, shared)
            lines += _with_comma(child_lines)
        return [*lines, f"{pad})"]
    if isinstance(module, Branches):
        lines = [f"{pad}Branches("]
        for i, branch in enumerate(module.branches):
            lines += _with_comma(_module_code(branch, f"{path}.branches.{i}", rows, depth + 1, shared))
        return [*lines, f"{pad})"]
    if isinstance(module, Block):
        lines = [f"{pad}Block("]
        lines += _with_comma(_module_code(module.convs, f"{path}.convs", rows, depth + 1, shared))
        if module.dense:
            lines.append(f"{pad}{INDENT}dense=True,")
        if module.residual:
            lines.append(f"{pad}{INDENT}residual=True,")
        if module.proj is not None:
            lines.append(f"{pad}{INDENT}proj={_leaf(module.proj)},  # 1x1 projection of the skip path")
        if module.residual and module.crop:
            lines.append(f"{pad}{INDENT}crop={module.crop},  # the skip path is centre-cropped to the shrunk map")
        if module.drop is not None:
            lines.append(f"{pad}{INDENT}drop={_leaf(module.drop)},")
        return [*lines, f"{pad})"]
    if id(module) in shared:  # used again later in the net: named here
        name = shared[id(module)] = f"shared{sum(v is not None for v in shared.values()) + 1}"
        params = sum(p.numel() for p in module.parameters())
        return [f"{pad}({name} := {_leaf(module)})  # {params:,} params, applied again by the units below"]
    return [f"{pad}{_leaf(module)}{_shape_comment(rows.get(path))}"]


def _with_comma(lines: list[str]) -> list[str]:
    """Put a comma after the last line's code (before its comment, if any)."""
    last = lines[-1]
    code, sep, comment = last.partition("  # ")
    return [*lines[:-1], f"{code},{sep}{comment}" if sep else f"{last},"]


CELL_MARK = "# --- cell ---\n"  # in a template, what follows this line is the cell's code


def cell_source(template: str) -> str:
    """The code of one notebook cell: what follows the mark in ``templates/<template>.py``."""
    text = (Path(__file__).parent / "templates" / f"{template}.py").read_text(encoding="utf-8")
    return text.split(CELL_MARK, 1)[1].strip("\n") + "\n"


def _block_code() -> str:
    """``Block`` for the notebook: its own constructor (modules passed in), the kit's forward verbatim."""
    return cell_source("block").rstrip("\n") + "\n\n" + inspect.getsource(Block.forward)


def model_code(spec: ArchSpec) -> str:
    """Plain PyTorch source of the spec's network: imports, ``Block`` and ``Net``, self-contained."""
    model = build_model(spec)
    size = (spec.in_channels, spec.input_size, spec.input_size)
    report = inspect_module(model, size)
    rows = {row.name: row.as_dict() for row in report.layers}
    kinds = sorted({b.kind for b in spec.blocks})
    rf = report.receptive_field_head
    doc = (
        f'    """{spec.name}: {count_params(model):,} parameters, no fully connected layer; receptive field\n'
        f"    {rf} px at the head's input. Input {'x'.join(map(str, size))}. Block kinds: {', '.join(kinds)}.\n"
        f"    Each layer's comment: its output (channels x height x width), its receptive field in px.\n"
        f'    """'
    )
    lines = ["import torch", "import torch.nn.functional as F", "from torch import nn", "", "", _block_code()]
    lines += ["", "class Net(nn.Module):"]
    lines += [doc, "", "    def __init__(self):", "        super().__init__()"]
    uses = [id(m) for _, m in model.named_modules(remove_duplicate=False)]
    shared: dict[int, str | None] = {i: None for i in set(uses) if uses.count(i) > 1}  # named at first use
    for name, child in model.named_children():
        code = _module_code(child, name, rows, 2, shared)
        lines += [f"        self.{name} = {code[0].strip()}", *code[1:]]
    lines += [
        "",
        "    def forward(self, x):",
        "        for module in self.children():",
        "            x = module(x)",
        "        return F.log_softmax(x.flatten(1), dim=1)  # GAP left a 1x1 map per class",
    ]
    return "\n".join(lines) + "\n"


# --- the notebook -----------------------------------------------------------------------------------


def _literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _config_code(recipe: TrainConfig, limits: Limits) -> str:
    items = ",\n".join(f"    {json.dumps(k)}: {_literal(getattr(recipe, k))}" for k in RECIPE_KEYS)
    limit_items = ", ".join(f"{k}={getattr(limits, k)!r}" for k in ("max_params", "max_epochs", "min_acc", "last_k"))
    return (
        "# The recipe of the run this notebook was exported from (its config.json).\n"
        f"CONFIG = {{\n{items},\n}}\n"
        "# The assignment's rules, as the kit's checker applies them.\n"
        f"LIMITS = dict({limit_items})\n"
    )


def build_notebook(spec: ArchSpec, recipe: TrainConfig, limits: Limits, source: str) -> Any:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    params = count_params(build_model(spec))
    intro = (
        f"# MNIST with {params:,} parameters: `{spec.name}`\n\n"
        f"A CNN without fully connected layers: 3x3 convolutions, max-pooling and a global-average-pooling head. "
        f"Rules checked in the last cell: fewer than {limits.max_params:,} parameters, no Linear layer, at most "
        f"{limits.max_epochs} epochs, test accuracy of at least {limits.min_acc}% in each of the last "
        f"{limits.last_k} epochs.\n\n"
        f"Trained for {recipe.epochs} epochs on all 60,000 training images; the 10,000 test images are "
        f"evaluated after every epoch. *Runtime > Run all* (a GPU runtime is faster; a CPU works). "
        f"Exported from `{display_path(source)}`."
    )
    cells = [
        new_markdown_cell(intro),
        new_code_cell(cell_source("setup")),
        new_markdown_cell("## The model\nEach comment: output channels x height x width, receptive field (px)."),
        new_code_cell(model_code(spec).split("\n\n\n", 1)[1]),  # the imports are in the first cell
        new_markdown_cell("## Recipe and rules"),
        new_code_cell(_config_code(recipe, limits)),
        new_markdown_cell("## Parameters (torchsummary)"),
        new_code_cell(cell_source("summary")),
        new_markdown_cell("## Data\nMNIST as tensors on the device; no DataLoader."),
        new_code_cell(cell_source("data")),
        new_markdown_cell("## Training\nAugmentation: random affine transforms per batch; an average of the weights."),
        new_code_cell(cell_source("training_helpers")),
        new_markdown_cell("## Training log\nOne line per epoch."),
        new_code_cell(cell_source("training")),
        new_markdown_cell("## Curves"),
        new_code_cell(cell_source("curves")),
        new_markdown_cell("## The rules"),
        new_code_cell(cell_source("verdict")),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["accelerator"] = "GPU"  # Colab opens it on a GPU runtime when one is free
    nbformat.validate(nb)
    return nb


def read_run(run_dir: str | Path) -> tuple[ArchSpec, TrainConfig]:
    """The spec and recipe a notebook is made from; a run whose ``model.pt`` holds another network than its
    ``spec.json``, or whose spec MNIST cannot feed, is refused (the notebook would not be that run)."""
    from mnist_challenge.runs.experiment import require_mnist_shape

    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    for name in ("spec.json", "config.json"):
        require_file(path / name)
    try:
        recipe = TrainConfig.from_dict(read_json_object(path / "config.json"))
    except UserError as exc:
        raise UserError(f"{path / 'config.json'}: {exc}") from None
    spec = ArchSpec.load(path / "spec.json")
    require_mnist_shape(spec)
    if (path / "model.pt").exists():  # a run killed before its first epoch has none; the notebook trains anew
        mismatch = checkpoint_mismatch(path / "model.pt", spec, build_model(spec))
        if mismatch:
            raise UserError(f"{path / 'model.pt'} does not hold the network of {path / 'spec.json'}: {mismatch}")
    return spec, recipe


def notebook_path(given: str | None, spec_name: str) -> Path:
    """Where ``export-notebook`` writes: ``given`` or ``submission_<spec name>.ipynb``, a notebook file name in
    a folder that exists and can be written (checked before anything is written)."""
    out = Path(given or f"submission_{spec_name}.ipynb")
    if out.suffix != ".ipynb":
        raise UserError(f"-o {out}: a notebook file name ends in .ipynb")
    if out.is_dir():
        raise UserError(f"-o {out} is a folder; give the notebook's file name")
    if not out.resolve().parent.is_dir():
        raise UserError(f"-o {out}: the folder {out.resolve().parent} does not exist; create it first")
    check_writable_dir(out.resolve().parent, "-o folder")
    return out


def outputs_text(nb: Any) -> str:
    """Everything an executed notebook's code cells printed."""
    return "\n".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )


def export_notebook(run_dir: str | Path, out: Path, limits: Limits) -> Any:
    spec, recipe = read_run(run_dir)
    nb = build_notebook(spec, recipe, limits, str(run_dir))
    write_notebook(nb, out)
    return nb


def write_notebook(nb: Any, out: Path) -> None:
    """The notebook written whole or not at all (a full disk leaves the old file, or none, and no ``.tmp``)."""
    import nbformat

    write_text_atomic(out, nbformat.writes(nb) + "\n")


def _execute_stoppably(client: Any) -> None:
    """``client.execute()`` in a thread, so that the kit's own Ctrl-C / SIGTERM handling stays in charge: nbclient
    replaces the process's signal handlers when it runs in the main thread, and a stop then ended in a kernel
    traceback and an internal error instead of ``interrupted``. On a stop the kernel is killed, and the stop goes
    on as a KeyboardInterrupt."""
    import subprocess
    import threading

    failure: list[BaseException] = []

    def work() -> None:
        try:
            client.execute(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=work, name="notebook-kernel", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        pid = getattr(getattr(client.km, "provisioner", None), "pid", None) if client.km is not None else None
        if pid:  # the kernel runs in a session of its own: its whole group goes
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        worker.join(10)
        raise
    if failure:
        raise failure[0]


def execute_notebook(nb: Any, out: Path, data_dir: Path | None, threads: int | None = None) -> None:
    """Run every cell in ``out``'s folder, saving the outputs into ``out``; a failing cell is one ``UserError``
    naming it, the partial notebook saved. The notebook imports nothing of the kit (the tests run it where the
    kit cannot be imported). The kernel inherits ``MNIST_DATA_DIR`` (no download) and, with ``threads``,
    ``OMP_NUM_THREADS``."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from traitlets.config import Config

    settings = {"MNIST_DATA_DIR": str(data_dir.resolve()) if data_dir else None}
    settings["OMP_NUM_THREADS"] = str(threads) if threads else None
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update({key: value for key, value in settings.items() if value is not None})
    try:
        with tempfile.TemporaryDirectory(prefix="kit-kernel-") as sockets:
            # The kernel talks over local sockets in a private folder, not TCP on localhost (which the kernel
            # warns is unencrypted); its own process output goes nowhere (the cells' output is in the notebook).
            config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
            client = NotebookClient(
                nb,
                timeout=None,
                kernel_name="python3",
                config=config,
                resources={"metadata": {"path": str(out.resolve().parent)}},
            )
            _execute_stoppably(client)
    except CellExecutionError as exc:
        write_notebook(nb, out)
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the notebook failed while executing ({last}); the partial notebook is {out}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    write_notebook(nb, out)
