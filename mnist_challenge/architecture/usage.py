"""Which of BatchNorm, Dropout and global average pooling a model's forward uses, and where.

Some variants of the assignment require all three. A layer that is defined but never called does not count, and a
functional call counts as much as a module: the forward is run once under a ``TorchFunctionMode`` that sees every
``F.batch_norm`` / ``F.dropout*`` / pooling / ``mean`` call, each attributed to the innermost module running it.

Global average pooling is an average that leaves one value per channel: an (adaptive) average pool whose output
map is 1x1 from a larger input, or a ``mean`` over both spatial axes of an ``(N, C, H, W)`` map.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from mnist_challenge.architecture.loading import sample_input

BATCHNORM = (F.batch_norm, torch.batch_norm, F.instance_norm)
DROPOUT = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, torch.dropout)
POOLS = (F.adaptive_avg_pool2d, F.avg_pool2d, torch._C._nn.adaptive_avg_pool2d, torch._C._nn.avg_pool2d)
MEANS = (torch.mean, torch.Tensor.mean)


def _spatial_mean(args: tuple, kwargs: dict) -> bool:
    """``mean`` of an ``(N, C, H, W)`` map over both H and W (any spelling of the dims)."""
    x = args[0] if args else kwargs.get("input")
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or dims is None:
        return False
    dims = [dims] if isinstance(dims, int) else list(dims)
    return {d % 4 for d in dims} >= {2, 3} and x.shape[2] * x.shape[3] > 1


def _global_pool(x: Any, out: Any) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and isinstance(out, torch.Tensor)
        and x.dim() >= 3
        and x.shape[-2] * x.shape[-1] > 1
        and out.shape[-2:] == (1, 1)
    )


class _Recorder(TorchFunctionMode):
    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.found: dict[str, list[str]] = {"batchnorm": [], "dropout": [], "gap": []}

    def note(self, kind: str, func: Any) -> None:
        where = self.stack[-1] if self.stack else "forward"
        name = getattr(func, "__name__", str(func))
        entry = f"{where} ({name})"
        if entry not in self.found[kind]:
            self.found[kind].append(entry)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in BATCHNORM:
            self.note("batchnorm", func)
        elif func in DROPOUT:
            self.note("dropout", func)
        elif func in POOLS and _global_pool(args[0] if args else kwargs.get("input"), out):
            self.note("gap", func)
        elif func in MEANS and _spatial_mean(args, kwargs):
            self.note("gap", func)
        return out


def layers_used(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, list[str]]:
    """``{"batchnorm": [...], "dropout": [...], "gap": [...]}``: where one forward pass (eval mode, batch of two)
    calls each; an empty list means the forward never does."""
    stack: list[str] = []
    names = {module: name or "model" for name, module in model.named_modules()}

    def enter(module: nn.Module, _inputs: Any) -> None:
        stack.append(names[module])

    def leave(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        stack.pop()  # a forward hook that returned a value would replace the module's output

    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    recorder = _Recorder(stack)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            model(sample_input(model, input_size, batch=2))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return recorder.found
