"""``summary(model, input_size)``: the inspector as notebook users know torchinfo's ``summary``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mnist_challenge.architecture.inspector import Report, inspect_module
from mnist_challenge.common.errors import UserError


def summary(model: nn.Module, input_size: Sequence[int] = (1, 28, 28), output: str | None = None) -> Report:
    """The inspector's report of ``model`` for one input of ``input_size``: per layer its name, type, output
    shape, receptive field, jump, parameters and MACs, then the totals, the FC verdict with its call site and the
    parameters the forward never uses. In a notebook cell, as its last line, it shows as a table.

    ``input_size`` is (C, H, W), or batch-first (N, C, H, W) as torchinfo takes it (N is dropped: one sample is
    traced); the sample is made on the model's device and in its dtype. ``output`` picks one of several outputs
    (a dict's key or a tuple's index) for the RF. The model is left as it was (its train/eval mode too)::

        import mnist_challenge as mc
        mc.summary(Net(), input_size=(1, 28, 28))
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"summary: model must be a torch.nn.Module, not {type(model).__name__}")
    return inspect_module(model, sample_size(model, input_size), output)


def sample_size(model: nn.Module, input_size: Any) -> tuple[int, ...]:
    """``input_size`` as (C, spatial...) for ``model``: a batch-first size loses its batch; anything else is one
    ``UserError`` naming the argument."""
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    k = len(convs[0].kernel_size) if convs else 2
    shape = ", ".join(["C", "H", "W"][-(k + 1) :] if k <= 2 else ["C", *(f"D{i}" for i in range(1, k + 1))])
    expected = f"(C, ...) of {k + 1} or (N, C, ...) of {k + 2} positive integers, e.g. ({shape})"
    if not isinstance(input_size, (tuple, list, torch.Size)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size
    ):
        raise UserError(f"input_size={input_size!r}: expected {expected}")
    if len(input_size) == k + 2:
        return tuple(input_size[1:])
    if len(input_size) != k + 1:
        raise UserError(f"input_size={tuple(input_size)!r}: this model's convolutions are {k}-D; expected {expected}")
    return tuple(input_size)
