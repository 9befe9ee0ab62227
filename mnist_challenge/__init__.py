"""MNIST architecture-search challenge kit: specs, models, inspector, data, training, run records, exports,
notebook grading.

The layers, each importing only those above it:

    common/        exit-code contract, errors, value checks, atomic files, settings declared once
    architecture/  ArchSpec (a GAP-headed CNN as JSON), build_model, the inspector (RF, params, MACs)
    engine/        MNIST as tensors, batched augmentation, the training loop and its fast kernels
    runs/          run directories, one run from spec to verdict, the checker, budgets, the results table
    export/        the self-contained submission notebook and its cell templates
    grading/       anyone's notebook: the model its cells define (built in a subprocess), its epoch log, its grade
    bench/         the engine's benchmarks (suite, reference loops)
    cli/           the commands (``mnist-challenge``, ``python -m mnist_challenge``); nothing imports it

The search (``search/``, ``mnist-search``) builds on this package; nothing here imports it.

The public names are imported on first use (PEP 562), so that a command can set its stop-signal handlers
before torch is imported: a Ctrl-C or SIGTERM during start-up is exit 130 too.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "2.0.0"

_EXPORTS = {
    "summary": "architecture.summary",  # the notebook's one line: mc.summary(model, input_size=(1, 28, 28))
    "check_notebook": "grading.grade",  # mc.check_notebook("my_submission.ipynb")
    "ArchSpec": "architecture.spec",
    "ConvBlock": "architecture.spec",
    "load_spec": "architecture.spec",
    "build_model": "architecture.model",
    "count_params": "architecture.model",
    "inspect_module": "architecture.inspector",
    "Report": "architecture.inspector",
    "format_report": "architecture.rendering",
    "Grade": "grading.grade",
    "UserError": "common.errors",
    "TrainConfig": "engine.train",
    "train_model": "engine.train",
    "load_mnist": "engine.data",
    "Limits": "runs.checker",
    "check_run": "runs.checker",
    "run_experiment": "runs.experiment",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __dir__() -> list[str]:
    """The public names (they are imported on first use, so ``dir()`` and tab completion need this)."""
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value
