"""Get an ``nn.Module`` to inspect from what the user typed: a spec, a factory, or a torchvision name."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
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


def sample_input(model: nn.Module, input_size: tuple[int, ...], batch: int = 1, random: bool = False) -> torch.Tensor:
    """A batch of ``input_size`` (C, H, W) samples on the model's device and in its floating dtype (those of its
    first floating parameter or buffer; CPU float32 for a model without one), as torchinfo makes its input."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    device, dtype = (tensors[0].device, tensors[0].dtype) if tensors else (torch.device("cpu"), torch.float32)
    make = torch.randn if random else torch.zeros
    return make(batch, *input_size, device=device, dtype=dtype)


def run_forward(model: nn.Module, input_size: tuple[int, ...]) -> None:
    """One plain forward pass of a user's model; an exception from it is a ``UserError``."""
    model.eval()
    try:
        with torch.no_grad():
            model(sample_input(model, input_size))
    except Exception as exc:
        raise UserError(f"the model's forward fails on input size {input_size}: {first_line(exc)}") from None


def scripted_modules(model: nn.Module) -> list[str]:
    """Names of TorchScript modules in ``model``: their ops run inside the TorchScript interpreter, where the
    tracer cannot see them, and they take no hooks."""
    return [n or type(model).__name__ for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]


def pick_output(output: Any, choice: str | None) -> tuple[Any, str | None]:
    """The output the RF is reported for, and its name when the model returns several: a dict's key or a tuple's
    index, ``choice`` if given (a ``ValueError`` naming the choices when it is not one), else the first."""
    if isinstance(output, dict):
        keys = [str(k) for k in output]
        if choice is not None and choice not in keys:
            raise ValueError(f"the model's output has no key {choice!r}; its keys: {', '.join(keys)}")
        key = choice if choice is not None else keys[0]
        value = next(v for k, v in output.items() if str(k) == key)
        return value, f"key {key!r} of the output dict ({', '.join(keys)})"
    if isinstance(output, (tuple, list)) and len(output) > 1:
        if choice is not None and not (choice.isdigit() and int(choice) < len(output)):
            raise ValueError(
                f"the model returns {len(output)} outputs; --output is an index from 0 to {len(output) - 1}"
            )
        index = int(choice) if choice is not None else 0
        return output[index], f"output {index} of {len(output)}"
    if choice is not None:
        raise ValueError("--output picks one of several outputs; this model returns one tensor")
    return output, None
