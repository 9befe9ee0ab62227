"""Get an ``nn.Module`` to inspect from what the user typed: a spec, a factory, or a torchvision name."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

from torch import nn

from mnist_challenge.common.errors import UserError


def module_from_factory(target: str) -> nn.Module:
    """``path/to/file.py:Factory`` or ``package.module:Factory``; Factory is called with no arguments."""
    location, sep, attr = target.rpartition(":")
    if not sep or not location or not attr:
        raise UserError(f"--module expects FILE.py:Factory or package.module:Factory, got {target!r}")
    try:
        if location.endswith(".py"):
            path = Path(location)
            if not path.is_file():
                raise UserError(f"module file not found: {path}")
            spec = importlib.util.spec_from_file_location(f"_inspected_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(location)
    except UserError:
        raise
    except (Exception, SystemExit) as exc:  # anything the user's file raises on import, sys.exit() included
        raise UserError(f"cannot import {location!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"{location!r} has no callable {attr!r}")
    try:
        model = factory()
    except (Exception, SystemExit) as exc:
        raise UserError(f"{attr}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{attr}() returned {type(model).__name__}, not an nn.Module")
    return model


def torchvision_model(name: str) -> nn.Module:
    """A torchvision model with random weights (nothing is downloaded)."""
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        close = [m for m in available if name.lower() in m][:8]
        hint = f"; did you mean {close}?" if close else "; see torchvision.models.list_models()"
        raise UserError(f"unknown torchvision model {name!r}{hint}")
    with warnings.catch_warnings():  # inception_v3's notice about its future initialisation: not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        return torchvision.models.get_model(name, weights=None)


def torchvision_published_params(name: str) -> int | None:
    """The parameter count torchvision publishes with the model's default weights, if it has any."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    return weights.DEFAULT.meta.get("num_params")


def first_line(exc: BaseException) -> str:
    """An exception from a user's code in one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def run_forward(model: nn.Module, input_size: tuple[int, ...]) -> None:
    """One plain forward pass of a user's model; an exception from it is a ``UserError``."""
    import torch

    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    except Exception as exc:
        raise UserError(f"the model's forward fails on input size {input_size}: {first_line(exc)}") from None
