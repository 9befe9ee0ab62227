"""MNIST architecture-search challenge kit: specs, models, inspector, data, training, search support.

The public names are imported on first use (PEP 562), so that ``python -m mnist_challenge`` can set its
stop-signal handlers before torch is imported: a Ctrl-C or SIGTERM during start-up is exit 130 too.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ArchSpec": "spec",
    "ConvBlock": "spec",
    "load_spec": "spec",
    "UserError": "errors",
    "build_model": "model",
    "count_params": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value
