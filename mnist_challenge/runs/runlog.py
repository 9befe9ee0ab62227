"""A run directory, written while training goes, so a killed run keeps every finished epoch.

logs/runs/<name>/
  spec.json        the architecture (ArchSpec JSON) - rebuilds the model
  config.json      every hyperparameter, seed, torch version, device, git commit, speed settings
  summary.txt      torchsummary's table and the inspector's RF / params / MACs table
  inspection.json  the inspector's report of the trained model (the checker reads it)
  epochs.csv       per epoch: train / val / test loss and accuracy, lr, seconds
  train.log        the same, one human-readable line per epoch, as the course notebook prints it
  curves.png       loss and accuracy per epoch (redrawn after the first and the last epoch, at most every
                   CURVES_EVERY seconds between, and when a run is pruned: a drawing takes about a second)
  model.pt         {"state_dict", "spec"}: loadable alone with ``load_checkpoint``
  verdict.json     the constraint checker's verdict (written at the end)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_challenge.architecture.spec import ArchSpec
from mnist_challenge.common.errors import UserError, stopping
from mnist_challenge.common.files import append_text, try_lock, write_atomic, write_text_atomic
from mnist_challenge.common.validate import check_writable_dir, make_dir

CURVES_EVERY = 30.0  # seconds; at one redraw per epoch, a short epoch would spend ~5 % of its time on the plot

EPOCH_FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "seconds",
    "eval_seconds",
    "images_per_second",
]


def git_commit() -> str:
    """The commit checked out now; ``-dirty`` when the work tree has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


# Read once, when the code is imported: a long-lived process (a search worker) keeps running the code
# it loaded even if the checkout moves on, and its runs must name that version, not the new HEAD.
CODE_VERSION = git_commit()


def format_epoch(row: dict[str, Any], total: int) -> str:
    """One line per epoch, like the course notebook's log."""
    val = f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}%" if not math.isnan(row["val_loss"]) else "val -"
    return (
        f"EPOCH {row['epoch']:>2}/{total} | lr {row['lr']:.5f} | "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | {val} | "
        f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}% | "
        f"{row['seconds']:.1f}s ({row['images_per_second']:.0f} img/s)"
    )


LOCK_NAME = ".run.lock"  # held (flock) by the one process writing a run directory; gone when it finishes


def check_new_run_dir(path: str | Path) -> Path:
    """``path`` can become a new run directory: absent or empty, and creatable (nothing is created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"run directory {path} is a file; pick another --name or --out")
    if run_dir_in_use(path):
        raise UserError(f"run directory {path} is being written by another command now; pick another --name or --out")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"run directory {path} already exists and is not empty; pick another --name or --out")
    check_writable_dir(path, "run directory")
    return path


def run_dir_in_use(path: str | Path) -> bool:
    """Whether a live process holds ``path``'s lock (a killed one's lock is released with it)."""
    import fcntl

    try:
        fd = os.open(Path(path) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _claim(path: Path) -> int:
    """Make ``path`` this process's run directory, atomically: an exclusive lock on a file inside it, taken
    only if the folder holds nothing else. Of two commands given one run directory, exactly one gets it."""
    make_dir(path, "run directory")
    fd = try_lock(path / LOCK_NAME)
    if fd is None:
        raise UserError(f"run directory {path} is being written by another command now; pick another one")
    if any(p.name != LOCK_NAME for p in path.iterdir()):  # another command finished a run here just before us
        os.close(fd)
        raise UserError(f"run directory {path} already exists and is not empty; pick another --name or --out")
    return fd


class RunDir:
    """Owns one run's directory (exclusively, until ``close``); every method appends to a log, or replaces a
    file in one step (``files.write_atomic``), then returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: int | None = _claim(self.path)
        self.rows: list[dict[str, Any]] = []
        self.total_epochs = 0
        self._drawn = 0  # rows that curves.png shows
        self._drawn_at = -math.inf  # time.monotonic() of its last redraw

    def close(self) -> None:
        """Draw the epochs curves.png does not show yet (a run pruned or stopped at chance), then release the
        run directory (the lock file goes first, so nothing of it is left behind). Not after a stop signal: it
        may have cut matplotlib's import half-way, and a second import would fail in place of the interrupt."""
        if self._lock is not None:
            if not stopping():
                with contextlib.suppress(OSError):  # a full disk: epochs.csv has every epoch the plot would show
                    self.draw_curves()
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None

    def start(
        self, spec: ArchSpec | None, config: dict[str, Any], model: nn.Module, summary: str, inspection: dict[str, Any]
    ) -> None:
        if spec is not None:
            spec.save(self.path / "spec.json")
        self.total_epochs = int(config.get("epochs", 0))
        meta = {
            **config,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "git_commit": CODE_VERSION,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.write_json("config.json", meta)
        self.write_json("inspection.json", inspection)
        write_text_atomic(self.path / "summary.txt", summary)
        write_text_atomic(self.path / "epochs.csv", ",".join(EPOCH_FIELDS) + "\r\n")
        write_text_atomic(self.path / "train.log", "")

    def update_config(self, extra: dict[str, Any]) -> None:
        config = json.loads((self.path / "config.json").read_text())
        self.write_json("config.json", {**config, **extra})

    def log_epoch(self, row: dict[str, Any], model: nn.Module, spec: ArchSpec | None) -> str:
        self.rows.append(row)
        line = io.StringIO()
        csv.DictWriter(line, EPOCH_FIELDS, extrasaction="ignore").writerow(row)
        append_text(self.path / "epochs.csv", line.getvalue())  # one write: a row is on disk whole or not at all
        text = format_epoch(row, self.total_epochs)
        self.log_text(text)
        self.save_model(model, spec)
        if row["epoch"] >= self.total_epochs or time.monotonic() - self._drawn_at >= CURVES_EVERY:
            self.draw_curves()
        return text

    def draw_curves(self) -> None:
        if len(self.rows) > self._drawn:
            plot_curves(self.rows, self.path / "curves.png")
            self._drawn, self._drawn_at = len(self.rows), time.monotonic()

    def log_text(self, text: str) -> None:
        append_text(self.path / "train.log", text.rstrip("\n") + "\n")

    def save_model(self, model: nn.Module, spec: ArchSpec | None) -> None:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        blob = {"state_dict": state, "spec": spec.to_dict() if spec else None}
        write_atomic(self.path / "model.pt", lambda tmp: torch.save(blob, tmp))  # never a half-written checkpoint

    def write_json(self, name: str, data: Any) -> None:
        write_text_atomic(self.path / name, json.dumps(data, indent=2, default=str) + "\n")


def read_epochs(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of ``epochs.csv`` as floats (an empty cell is NaN); a malformed file is a ``UserError``."""
    path = Path(run_dir) / "epochs.csv"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory: epochs.csv is missing")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"epoch", "test_acc"} - set(reader.fieldnames or ())
            if missing:
                raise UserError(f"{path} is malformed: no column {', '.join(sorted(missing))} in its header")
            rows = []
            for row in reader:
                if None in row:
                    raise UserError(f"{path} is malformed: line {reader.line_num} has more cells than the header")
                if None in row.values():  # csv fills the cells a row lacks with None
                    raise UserError(
                        f"{path} is malformed: line {reader.line_num} has fewer cells than the header "
                        f"(a row cut short by a killed run or a full disk?)"
                    )
                rows.append({k: float(v) if v != "" else math.nan for k, v in row.items()})
            return rows
    except (ValueError, csv.Error, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise UserError(f"{path} is malformed: {' '.join(str(exc).split())[:200]}") from None


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ArchSpec]:
    """The tensors and the spec saved in a ``model.pt``, unchecked against each other; a file that is not
    such a checkpoint is a ``UserError`` naming it."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a file that is not a checkpoint
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(f"cannot read checkpoint {path}: {reason}") from None
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(blob, dict) or not blob.get("spec") or not isinstance(state, dict):
        raise UserError(f"{path} has no spec and state_dict inside; it was not written by this kit")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: its state_dict is not a mapping of names to tensors")
    try:
        spec = ArchSpec.from_dict(blob["spec"])
    except UserError as exc:
        raise UserError(f"{path}: its spec is invalid: {exc}") from None
    return state, spec


def weights_mismatch(state: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """How ``state``'s tensors differ from ``model``'s (names, then shapes); None if they fit exactly."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    if missing or extra:
        return f"tensors missing {missing[:3]}, unexpected {extra[:3]}"
    wrong = [f"{k} {got[k]} vs {expected[k]}" for k in expected if got[k] != expected[k]]
    return f"tensor shapes differ: {', '.join(wrong[:3])}" if wrong else None


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ArchSpec]:
    """Rebuild a trained model from ``model.pt`` alone (the spec travels inside it)."""
    from mnist_challenge.architecture.model import build_model

    state, spec = read_checkpoint(path)
    model = build_model(spec)
    mismatch = weights_mismatch(state, model)
    if mismatch:
        raise UserError(f"{path}: its weights do not fit its spec ({mismatch})")
    model.load_state_dict(state)
    return model.eval(), spec


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch for train / val / test, as two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in (("train", "-"), ("val", "--"), ("test", "-.")):
        losses = [r[f"{split}_loss"] for r in rows]
        if all(math.isnan(v) for v in losses):
            continue
        ax_loss.plot(epochs, losses, style, marker="o", label=split)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in rows], style, marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_acc.axhline(99.4, color="grey", lw=0.8, ls=":", label="99.4 % target")
    accs = [r[f"{s}_acc"] for r in rows for s in ("val", "test") if not math.isnan(r[f"{s}_acc"])]
    if accs:
        ax_acc.set_ylim(max(0.0, min(accs) - 0.5), 100.0)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.12, top=0.92, wspace=0.2)  # tight_layout: ~40 % of a draw
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
