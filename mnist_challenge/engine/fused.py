"""ReLU + BatchNorm + dropout after a conv as one layer, run by the fused C kernel in ``native.c``.

Measured on the 2-core course machine (``python -m mnist_challenge.bench``): these three layers are
memory-bound passes over the largest tensors of the net and cost about as much as the convolutions.
The kernel does the forward in two passes and the backward in two, keeps only the conv output for
backward, and regenerates the dropout mask from a counter-based hash instead of storing it. Where the
kernel cannot run (no C compiler, GPU, bf16, eval) the layer runs the plain ATen ops
with the same parameters, so results and checkpoints stay interchangeable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_challenge.engine.native import kernel_layout, load_kernels, unavailable_reason


def _dropout_args(p: float) -> tuple[int, float]:
    """(drop_below, scale): an element is dropped when its 32 hash bits are below drop_below."""
    if p == 0:
        return 0, 1.0
    return max(1, round(p * 2**32)), 1.0 / (1.0 - p)


def dropout_mask(numel: int, p: float, seed: int) -> torch.Tensor:
    """The mask the kernel applies for ``seed`` (1/(1-p) where kept, 0 where dropped), flattened."""
    lib = load_kernels()
    if lib is None:
        raise RuntimeError(unavailable_reason())
    out = torch.empty(numel)
    lib.tail_mask(out.data_ptr(), numel, *_dropout_args(p), seed)
    return out


class _Tail(torch.autograd.Function):
    """The fused tail on a contiguous NCHW or channels-last float32 CPU tensor (``native.kernel_layout``)."""

    @staticmethod
    def forward(
        ctx, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, bn_after: bool, p: float, seed: int
    ):
        lib = load_kernels()
        n, c, h, w = z.shape
        weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
        y = torch.empty_like(z)  # keeps z's memory format
        mean, var, invstd = torch.empty(c), torch.empty(c), torch.empty(c)
        drop_below, scale = _dropout_args(p)
        pointers = [t.data_ptr() for t in (z, y, weight, bias, mean, var, invstd)]
        settings = (int(bn_after), drop_below, scale, seed)
        if kernel_layout(z) == "nhwc":
            failed = lib.tail_forward_nhwc(*pointers, n * h * w, c, eps, *settings)
        else:
            failed = lib.tail_forward(*pointers, n, c, h * w, eps, *settings)
        if failed:
            raise MemoryError("conv-unit tail kernel: out of memory")
        ctx.save_for_backward(z, weight, bias, mean, invstd)
        ctx.settings = settings
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _dmean, _dvar):
        z, weight, bias, mean, invstd = ctx.saved_tensors
        n, c, h, w = z.shape
        nhwc = kernel_layout(z) == "nhwc"
        dy = dy.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        dz, dweight, dbias = torch.empty_like(z), torch.empty(c), torch.empty(c)
        pointers = [t.data_ptr() for t in (dy, z, weight, bias, mean, invstd, dz, dweight, dbias)]
        lib = load_kernels()
        if nhwc:
            failed = lib.tail_backward_nhwc(*pointers, n * h * w, c, *ctx.settings)
        else:
            failed = lib.tail_backward(*pointers, n, c, h * w, *ctx.settings)
        if failed:
            raise MemoryError("conv-unit tail kernel: out of memory")
        return dz, dweight, dbias, None, None, None, None


class ConvUnitTail(nn.BatchNorm2d):
    """ReLU -> BN -> dropout (``bn_after``) or BN -> ReLU -> dropout in one layer.

    A BatchNorm2d subclass holding the very BN it replaces (same parameters, buffers and state_dict
    keys), so checkpoints load into the plain model. Training on float32 CPU tensors, NCHW or channels-last, uses
    the fused kernel; anything else (eval, GPU, bf16 autocast, strided views) the plain ATen ops.
    """

    def __init__(self, bn: nn.BatchNorm2d, bn_after: bool, p: float, generator: torch.Generator | None = None) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.weight, self.bias = bn.weight, bn.bias
        self.running_mean, self.running_var, self.num_batches_tracked = (
            bn.running_mean,
            bn.running_var,
            bn.num_batches_tracked,
        )
        self.bn_after, self.p, self.generator = bn_after, p, generator

    def _fusable(self, z: torch.Tensor) -> bool:
        return (
            self.training
            and z.dim() == 4
            and kernel_layout(z) is not None
            and z.shape[0] * z.shape[2] * z.shape[3] > 1
            and self.weight.dtype == torch.float32
            and load_kernels() is not None
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self._fusable(z):
            if self.bn_after:
                return F.dropout(super().forward(torch.relu(z)), self.p, self.training)
            return F.dropout(torch.relu(super().forward(z)), self.p, self.training)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        y, mean, var = _Tail.apply(z, self.weight, self.bias, self.eps, self.bn_after, self.p, seed)
        with torch.no_grad():  # running statistics exactly as nn.BatchNorm2d keeps them (unbiased variance)
            self.num_batches_tracked += 1
            count = z.numel() // z.shape[1]
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * (count / (count - 1)), self.momentum)
        return y

    def extra_repr(self) -> str:
        order = "relu -> bn" if self.bn_after else "bn -> relu"
        return f"{super().extra_repr()}, {order} -> dropout(p={self.p}), fused"


def _tail_at(layers: list[nn.Module], i: int) -> tuple[int, bool, float] | None:
    """If a fusable tail starts at ``layers[i]``: (its length, bn_after, dropout p)."""

    def is_bn(m: nn.Module) -> bool:
        return type(m) is nn.BatchNorm2d and m.affine and m.track_running_stats and m.momentum is not None

    pair = layers[i : i + 2]
    if len(pair) < 2:
        return None
    if type(pair[0]) is nn.ReLU and is_bn(pair[1]):
        bn_after = True
    elif is_bn(pair[0]) and type(pair[1]) is nn.ReLU:
        bn_after = False
    else:
        return None
    if i + 2 < len(layers) and type(layers[i + 2]) is nn.Dropout:
        return 3, bn_after, layers[i + 2].p
    return 2, bn_after, 0.0


def fuse_conv_unit_tails(model: nn.Module, seed: int = 0) -> int:
    """Replace every ReLU/BN(/dropout) run inside an ``nn.Sequential`` by one ``ConvUnitTail``.

    The tail takes the BN's slot (so state_dict keys stay put); the ReLU and dropout slots become
    ``nn.Identity``. Returns how many tails were fused; 0 when the kernel cannot be built here.
    """
    if load_kernels() is None:
        return 0
    fused = 0
    for seq in [m for m in model.modules() if type(m) is nn.Sequential]:
        i = 0
        while i < len(seq):
            found = _tail_at(list(seq), i)
            if found is None:
                i += 1
                continue
            length, bn_after, p = found
            bn_slot = i + 1 if bn_after else i
            generator = torch.Generator().manual_seed(seed * 1000 + 500 + fused)
            tail = ConvUnitTail(seq[bn_slot], bn_after, p, generator)
            for j in range(i, i + length):
                seq[j] = tail if j == bn_slot else nn.Identity()
            fused += 1
            i += length
    return fused
