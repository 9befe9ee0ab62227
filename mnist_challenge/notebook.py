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

import inspect
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from .checker import Limits, checkpoint_mismatch, read_json_object, require_file
from .errors import UserError
from .inspector import inspect_module
from .model import Block, build_model, count_params
from .spec import ArchSpec
from .train import TrainConfig

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


def _module_code(module: nn.Module, path: str, rows: dict[str, dict[str, Any]], depth: int) -> list[str]:
    """Lines of code that rebuild ``module`` (named ``path`` in the model), the last without a comma."""
    pad = INDENT * depth
    if isinstance(module, nn.Sequential):
        lines = [f"{pad}nn.Sequential("]
        for name, child in module.named_children():
            child_lines = _module_code(child, f"{path}.{name}", rows, depth + 1)
            lines += _with_comma(child_lines)
        return [*lines, f"{pad})"]
    if isinstance(module, Block):
        lines = [f"{pad}Block("]
        lines += _with_comma(_module_code(module.convs, f"{path}.convs", rows, depth + 1))
        if module.residual:
            lines.append(f"{pad}{INDENT}residual=True,")
        if module.proj is not None:
            lines.append(f"{pad}{INDENT}proj={_leaf(module.proj)},  # 1x1 projection of the skip path")
        if module.residual and module.crop:
            lines.append(f"{pad}{INDENT}crop={module.crop},  # the skip path is centre-cropped to the shrunk map")
        if module.drop is not None:
            lines.append(f"{pad}{INDENT}drop={_leaf(module.drop)},")
        return [*lines, f"{pad})"]
    return [f"{pad}{_leaf(module)}{_shape_comment(rows.get(path))}"]


def _with_comma(lines: list[str]) -> list[str]:
    """Put a comma after the last line's code (before its comment, if any)."""
    last = lines[-1]
    code, sep, comment = last.partition("  # ")
    return [*lines[:-1], f"{code},{sep}{comment}" if sep else f"{last},"]


BLOCK_CLASS = '''class Block(nn.Module):
    """Conv units at one resolution. With a residual connection the block's input is added to its output,
    centre-cropped when unpadded convs shrank the map and projected by a 1x1 conv when the width changes."""

    def __init__(self, convs, residual=False, proj=None, crop=0, drop=None):
        super().__init__()
        self.convs = convs
        self.residual = residual
        self.crop = crop
        self.proj = proj
        self.drop = drop

'''


def _block_code() -> str:
    """``Block`` for the notebook: its own constructor (modules passed in), the kit's forward verbatim."""
    return BLOCK_CLASS.rstrip("\n") + "\n\n" + inspect.getsource(Block.forward)


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
    for name, child in model.named_children():
        code = _module_code(child, name, rows, 2)
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
SETUP = """# Only torch, torchvision, torchsummary and matplotlib are needed (Colab has all but torchsummary).
import gzip
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
    import torchsummary
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "torchsummary"])
    import torchsummary

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SMOKE = os.environ.get("KIT_NOTEBOOK_SMOKE") == "1"  # one epoch on 2,000 images: a check that it runs
GPU_NAME = f" ({torch.cuda.get_device_name()})" if DEVICE.type == "cuda" else ""
print(f"torch {torch.__version__}, device {DEVICE}{GPU_NAME}")
"""

DATA = '''MEAN, STD = 0.1307, 0.3081  # MNIST's training-set pixel statistics


def read_idx(folder, stem):
    """An MNIST IDX file (raw or gzipped, flat or in torchvision's MNIST/raw layout) as a uint8 tensor."""
    for path in (Path(folder) / stem, Path(folder) / "MNIST" / "raw" / stem):
        for candidate in (path, path.with_name(path.name + ".gz")):
            if candidate.is_file():
                data = candidate.read_bytes()
                data = gzip.decompress(data) if candidate.suffix == ".gz" else data
                ndim = data[3]
                shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
                return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)
    raise FileNotFoundError(f"{stem} not found in {folder}")


def load_mnist():
    """(train images, train labels, test images, test labels) as tensors on DEVICE, images normalised."""
    folder = os.environ.get("MNIST_DATA_DIR")
    if folder:  # offline: a local copy of the four IDX files
        stems = [f"{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
        parts = [read_idx(folder, stem) for stem in stems]
    else:  # Colab: torchvision downloads them
        import torchvision

        sets = [torchvision.datasets.MNIST("data", train=t, download=True) for t in (True, False)]
        parts = [x for s in sets for x in (s.data, s.targets)]
    images = [((x.float() / 255 - MEAN) / STD).unsqueeze(1).to(DEVICE) for x in parts[0::2]]
    labels = [y.long().to(DEVICE) for y in parts[1::2]]
    return images[0], labels[0], images[1], labels[1]


train_x, train_y, test_x, test_y = load_mnist()
if SMOKE:
    train_x, train_y = train_x[:2000], train_y[:2000]
print(f"{len(train_x):,} training images, {len(test_x):,} test images")
'''

SUMMARY = """torch.manual_seed(CONFIG["seed"])
model = Net().to(DEVICE)
torchsummary.summary(model, (1, 28, 28), device=DEVICE.type)
n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(f"{n_params:,} trainable parameters")
"""

TRAIN = '''BACKGROUND = (0.0 - MEAN) / STD  # a black pixel after normalisation


def random_affine(x, generator):
    """An independent random rotation / shift / zoom / shear of each image of a batch, in one grid_sample."""
    c = CONFIG
    if not any(c[k] > 0 for k in ("rotation", "translate", "scale", "shear")):
        return x
    b = x.shape[0]

    def uniform(limit):
        return (torch.rand(b, generator=generator, device=x.device) * 2 - 1) * limit

    angle, shear = uniform(math.radians(c["rotation"])), uniform(math.radians(c["shear"]))
    zoom = 1 + uniform(c["scale"])
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = cos / zoom
    theta[:, 0, 1] = (-sin + torch.tan(shear) * cos) / zoom
    theta[:, 1, 0] = sin / zoom
    theta[:, 1, 1] = (cos + torch.tan(shear) * sin) / zoom
    theta[:, 0, 2] = uniform(2 * c["translate"])
    theta[:, 1, 2] = uniform(2 * c["translate"])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - BACKGROUND, grid, align_corners=False) + BACKGROUND  # zero padding = background


@torch.no_grad()
def evaluate(images, labels, batch=1000):
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(images), batch):
        out = model(images[i : i + batch])
        loss += F.nll_loss(out, labels[i : i + batch], reduction="sum").item()
        correct += (out.argmax(1) == labels[i : i + batch]).sum().item()
    model.train()
    return loss / len(images), 100.0 * correct / len(images)


class WeightEMA:
    """An exponential moving average of every float tensor of the state (weights and BN statistics)."""

    def __init__(self, model, decay):
        state = model.state_dict()
        self.live = [v for v in state.values() if v.dtype.is_floating_point]
        self.shadow = [t.detach().clone() for t in self.live]
        self.decay, self.steps = decay, 0

    @torch.no_grad()
    def update(self):
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))  # a short warm-up
        torch._foreach_lerp_(self.shadow, self.live, 1.0 - decay)

    @torch.no_grad()
    def swap(self):
        """Exchange the live and the averaged weights (evaluate with the average, then swap back)."""
        for live, shadow in zip(self.live, self.shadow):
            tmp = live.clone()
            live.copy_(shadow)
            shadow.copy_(tmp)


c = CONFIG
epochs = 1 if SMOKE else c["epochs"]
generator = torch.Generator(device=DEVICE).manual_seed(c["seed"])
n = len(train_x)
steps = n // c["batch_size"] + (1 if n % c["batch_size"] >= 2 else 0)  # a 1-image batch would break BatchNorm
if c["optimizer"] == "sgd":
    opt = torch.optim.SGD(model.parameters(), lr=c["lr"], momentum=c["momentum"], nesterov=c["nesterov"],
                          weight_decay=c["weight_decay"])
else:
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], betas=(c["momentum"], 0.999),
                            weight_decay=c["weight_decay"])
if c["schedule"] == "onecycle":  # stepped every batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], epochs=epochs, steps_per_epoch=steps)
elif c["schedule"] == "step":  # stepped every epoch
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=c["step_size"], gamma=c["gamma"])
else:
    sched = None
ema = WeightEMA(model, c["ema_decay"]) if c["ema_decay"] > 0 else None
history = []
for epoch in range(1, epochs + 1):
    lr, start = opt.param_groups[0]["lr"], time.perf_counter()
    order = torch.randperm(n, device=DEVICE, generator=generator)
    loss_sum, correct = torch.zeros((), device=DEVICE), torch.zeros((), device=DEVICE, dtype=torch.int64)
    for step in range(steps):
        idx = order[step * c["batch_size"] : (step + 1) * c["batch_size"]]
        x, y = random_affine(train_x[idx], generator), train_y[idx]
        out = model(x)
        loss = F.cross_entropy(out, y, label_smoothing=c["label_smoothing"])  # log-probs in: label smoothing
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update()
        if c["schedule"] == "onecycle":
            sched.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
    if c["schedule"] == "step":
        sched.step()
    seconds = time.perf_counter() - start
    seen = min(n, steps * c["batch_size"])
    if ema is not None:
        ema.swap()  # the averaged weights are the model that is evaluated
    test_loss, test_acc = evaluate(test_x, test_y)
    if ema is not None:
        ema.swap()
    row = dict(epoch=epoch, lr=lr, train_loss=loss_sum.item() / seen, train_acc=100.0 * correct.item() / seen,
               test_loss=test_loss, test_acc=test_acc, seconds=seconds)
    history.append(row)
    print(f"EPOCH {epoch:>2}/{epochs} | lr {lr:.5f} | train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
          f"test loss {test_loss:.4f} acc {test_acc:.2f}% | {seconds:.1f}s")
if ema is not None:
    ema.swap()  # keep the averaged weights: they are the trained model
print(f"training time {sum(r['seconds'] for r in history):.0f} s on {DEVICE}")
'''

CURVES = """import matplotlib.pyplot as plt

fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
epochs_axis = [r["epoch"] for r in history]
for key, label in (("train_loss", "train"), ("test_loss", "test")):
    ax_loss.plot(epochs_axis, [r[key] for r in history], marker="o", label=label)
for key, label in (("train_acc", "train"), ("test_acc", "test")):
    ax_acc.plot(epochs_axis, [r[key] for r in history], marker="o", label=label)
ax_acc.axhline(LIMITS["min_acc"], color="grey", linestyle="--", label=f"{LIMITS['min_acc']}%")
ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
for ax in (ax_loss, ax_acc):
    ax.legend()
    ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()
"""

VERDICT = """last = history[-LIMITS["last_k"]:]
rules = [
    (f"fewer than {LIMITS['max_params']:,} parameters", n_params < LIMITS["max_params"], f"{n_params:,}"),
    ("no fully connected (Linear) layer", not any(isinstance(m, nn.Linear) for m in model.modules()), "none"),
    (f"at most {LIMITS['max_epochs']} epochs", len(history) <= LIMITS["max_epochs"], f"{len(history)}"),
    (f"test accuracy >= {LIMITS['min_acc']}% in each of the last {LIMITS['last_k']} epochs",
     len(last) == LIMITS["last_k"] and all(r["test_acc"] >= LIMITS["min_acc"] for r in last),
     ", ".join(f"{r['test_acc']:.2f}%" for r in last)),
]
for rule, passed, value in rules:
    print(f"{'PASS' if passed else 'FAIL'}  {rule}: {value}")
print("VERDICT:", "PASS" if all(passed for _, passed, _ in rules) else "FAIL" + (" (smoke mode)" if SMOKE else ""))
"""

RECIPE_KEYS = (
    "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "step_size",
    "gamma", "label_smoothing", "rotation", "translate", "scale", "shear", "ema_decay", "seed",
)  # fmt: skip


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
        f"Exported from `{source}`."
    )
    cells = [
        new_markdown_cell(intro),
        new_code_cell(SETUP),
        new_markdown_cell("## The model\nEach comment: output channels x height x width, receptive field (px)."),
        new_code_cell(model_code(spec).split("\n\n\n", 1)[1]),  # the imports are in the first cell
        new_markdown_cell("## Recipe and rules"),
        new_code_cell(_config_code(recipe, limits)),
        new_markdown_cell("## Parameters (torchsummary)"),
        new_code_cell(SUMMARY),
        new_markdown_cell("## Data\nMNIST as tensors on the device; no DataLoader."),
        new_code_cell(DATA),
        new_markdown_cell("## Training log\nOne line per epoch. Augmentation: random affine transforms per batch."),
        new_code_cell(TRAIN),
        new_markdown_cell("## Curves"),
        new_code_cell(CURVES),
        new_markdown_cell("## The rules"),
        new_code_cell(VERDICT),
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
    from .experiment import require_mnist_shape

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


def export_notebook(run_dir: str | Path, out: Path, limits: Limits) -> Any:
    spec, recipe = read_run(run_dir)
    nb = build_notebook(spec, recipe, limits, str(run_dir))
    write_notebook(nb, out)
    return nb


def write_notebook(nb: Any, out: Path) -> None:
    import nbformat

    tmp = out.with_name(out.name + ".tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, out)  # a reader never sees half a notebook


def execute_notebook(nb: Any, out: Path, data_dir: Path | None, threads: int | None = None) -> None:
    """Run every cell in ``out``'s folder (the kit is not on the kernel's path there), saving the outputs
    into ``out``; a failing cell is one ``UserError`` naming it, the partial notebook saved. The kernel
    inherits ``MNIST_DATA_DIR`` (no download) and, with ``threads``, ``OMP_NUM_THREADS``."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    settings = {"MNIST_DATA_DIR": str(data_dir.resolve()) if data_dir else None}
    settings["OMP_NUM_THREADS"] = str(threads) if threads else None
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update({key: value for key, value in settings.items() if value is not None})
    try:
        client = NotebookClient(
            nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(out.resolve().parent)}}
        )
        client.execute()
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
