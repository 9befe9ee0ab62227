"""Speed tricks for small CNNs on a CPU, each one opt-out-able and recorded in ``config.json``.

Measured on the 2-core course machine (see ``python -m mnist_challenge.bench``): in a 12k-parameter net
with dropout after every conv, drawing dropout masks with ``bernoulli_`` is over a third of a training
step, more than all the convolutions' forward passes. ``PooledDropout`` cuts the masks from a pool of
pre-drawn random numbers instead (dropout inside a conv unit goes to the fused kernel of ``fused.py``;
this covers the rest). ATen's MaxPool2d on NCHW maps with few channels is also slow (about as long as a
conv); ``MaxPool2x2`` computes the same thing in one pass of ``native.c``, or from strided views where
that cannot run. oneDNN's NCHW weight gradient is slow for convs reading 10 channels;
``ConvWeightGradChannelsLast`` computes that one gradient in channels_last. bf16 autocast pays only with
AMX: on AVX512-BF16 alone, measured here, it is slower than fp32 for these tiny convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_challenge.engine.native import kernel_layout, load_kernels, plain_cpu_float32


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast can run at all (AVX512-BF16 / AMX, or a recent GPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast is worth turning on by default: GPUs with bf16, CPUs with AMX tiles."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bf16_supported(device) and bool(torch._C._cpu._is_amx_tile_supported())
    except AttributeError:
        return False


class PooledDropout(nn.Module):
    """Dropout whose masks are random windows into a pool of pre-drawn masks.

    Every element of every mask is still kept with probability 1 - p and scaled by 1 / (1 - p), so the
    expectation is exactly that of ``nn.Dropout``. The pool holds ``pool_factor`` masks' worth of
    random numbers and is redrawn every ``refresh`` calls, so masks of neighbouring steps overlap only
    as shifted windows of fresh noise. Same state_dict as ``nn.Dropout`` (none).
    """

    def __init__(
        self, p: float, pool_factor: int = 4, refresh: int = 64, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.p = p
        self.generator = generator
        self.pool_factor = pool_factor
        self.refresh = refresh
        self.pool: torch.Tensor | None = None
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        pool = self.pool
        if (
            pool is None
            or pool.numel() < self.pool_factor * n
            or pool.dtype != x.dtype
            or pool.device != x.device
            or self.calls % self.refresh == 0
        ):
            keep = torch.rand(self.pool_factor * n, generator=self.generator).to(x.device) >= self.p
            pool = self.pool = keep.to(x.dtype) * (1.0 / (1.0 - self.p))
        self.calls += 1
        start = int(torch.randint(0, pool.numel() - n + 1, (1,), generator=self.generator))
        mask = pool[start : start + n]
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            b, c, h, w = x.shape
            mask = mask.view(b, h, w, c).permute(0, 3, 1, 2)  # same memory order as x: a straight multiply
        else:
            mask = mask.view(x.shape)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, pooled"


class _MaxPool2x2(torch.autograd.Function):
    """max_pool2d(kernel 2, stride 2) from four strided quarter views, keeping which one won.

    ATen's CPU max-pool forward is slow on NCHW maps with few channels; elementwise maxima over the four
    quarter-size views are an order of magnitude faster. Ties go to the first element in row-major
    order, exactly as in ``F.max_pool2d``, and the winners' flat indices feed ATen's own max-pool
    backward, so outputs and gradients are identical.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        h, w = height // 2 * 2, width // 2 * 2
        a0, a1 = x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2]
        a2, a3 = x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]
        top, bottom = torch.maximum(a0, a1), torch.maximum(a2, a3)
        lower = (bottom > top) | bottom.isnan()  # a NaN wins, as in ATen's scan (NaN > x is False)
        right_top, right_bottom = (a1 > a0) | a1.isnan(), (a3 > a2) | a3.isnan()
        right = right_top ^ ((right_top ^ right_bottom) & lower)  # pick the row's winner; bool ops, no where()
        rows = torch.arange(0, h, 2, device=x.device).view(-1, 1) * width
        corner = rows + torch.arange(0, w, 2, device=x.device)  # flat index of each window's top-left pixel
        indices = corner + lower.long() * width + right.long()
        ctx.save_for_backward(x, indices)
        ctx.mark_non_differentiable(indices)
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
        )


class _NativeMaxPool2x2(torch.autograd.Function):
    """The same pooling in one pass of ``native.c``, keeping a byte per output for which pixel won; NCHW or
    channels-last (``native.kernel_layout``), the output in the input's layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        nhwc = kernel_layout(x) == "nhwc"
        layout = torch.channels_last if nhwc else torch.contiguous_format
        out = torch.empty(n, c, h // 2, w // 2, memory_format=layout)
        winner = torch.empty(out.shape, dtype=torch.uint8, memory_format=layout)
        pointers = (x.data_ptr(), out.data_ptr(), winner.data_ptr())
        if nhwc:
            load_kernels().maxpool2x2_forward_nhwc(*pointers, n, h, w, c)
        elif load_kernels().maxpool2x2_forward(*pointers, n * c, h, w):
            raise MemoryError("max-pool kernel: out of memory")
        ctx.save_for_backward(winner)
        ctx.input_shape, ctx.layout = x.shape, layout
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (winner,) = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad = grad.contiguous(memory_format=ctx.layout)
        dx = torch.empty(ctx.input_shape, memory_format=ctx.layout)
        pointers = (grad.data_ptr(), winner.data_ptr(), dx.data_ptr())
        if ctx.layout is torch.channels_last:
            load_kernels().maxpool2x2_backward_nhwc(*pointers, n, h, w, c)
        else:
            load_kernels().maxpool2x2_backward(*pointers, n * c, h, w)
        return dx


class MaxPool2x2(nn.Module):
    """Drop-in for ``nn.MaxPool2d(2)`` on 4-D tensors: the native kernel on float32 CPU tensors (NCHW or
    channels-last) when it could be built, else ``_MaxPool2x2``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and kernel_layout(x) is not None and load_kernels() is not None:
            return _NativeMaxPool2x2.apply(x)
        return _MaxPool2x2.apply(x)


def _is_plain_2x2_pool(m: nn.Module) -> bool:
    def pair(v):
        return v if isinstance(v, tuple) else (v, v)

    return (
        type(m) is nn.MaxPool2d
        and pair(m.kernel_size) == (2, 2)
        and pair(m.stride or m.kernel_size) == (2, 2)
        and pair(m.padding) == (0, 0)
        and pair(m.dilation) == (1, 1)
        and not m.ceil_mode
        and not m.return_indices
    )


class _ConvWeightGradChannelsLast(torch.autograd.Function):
    """conv2d whose weight gradient is computed on channels_last copies of the input and the gradient.

    oneDNN's NCHW weight-gradient kernel is slow when the input channels are not a multiple of its
    16-channel blocks (the 10-channel maps after a 1x1 squeeze): measured on the course machine, the
    channels_last one is about twice as fast there even counting both copies, while forward and the
    input gradient are faster in NCHW. Same arithmetic, so the same results up to summation order.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, dilation)
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        conv_backward = torch.ops.aten.convolution_backward
        args = (list(stride), list(padding), list(dilation), False, [0, 0], 1)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_backward(grad, x, weight, None, *args, [True, False, False])[0]
        cl = torch.channels_last
        _, grad_w, grad_b = conv_backward(
            grad.contiguous(memory_format=cl),
            x.contiguous(memory_format=cl),
            weight.contiguous(memory_format=cl),
            [weight.shape[0]] if ctx.has_bias else None,
            *args,
            [False, True, ctx.has_bias],
        )
        return grad_x, grad_w.contiguous(), grad_b, None, None, None


class ConvWeightGradChannelsLast(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state_dict) using ``_ConvWeightGradChannelsLast`` when training
    on contiguous float32 CPU tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and plain_cpu_float32(x):
            return _ConvWeightGradChannelsLast.apply(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation
            )
        return super().forward(x)


def _slow_weight_grad_conv(m: nn.Module) -> bool:
    """A plain 3x3 conv whose input channels are not a multiple of 16 (but more than one)."""
    return (
        type(m) is nn.Conv2d
        and m.kernel_size == (3, 3)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and isinstance(m.padding, tuple)
        and m.in_channels > 1
        and m.in_channels % 16 != 0
    )


def speed_up(
    model: nn.Module,
    pooled_dropout: bool,
    fast_maxpool: bool,
    seed: int = 0,
    fused_tail: bool = False,
    cl_weight_grad: bool = False,
) -> dict[str, int]:
    """Swap layers for faster equivalents in place; returns how many of each were swapped.

    The state_dict (and ``model.pt``) is unchanged: parameter-free layers are swapped, a fused tail
    (``fused.ConvUnitTail``) takes over its BatchNorm's parameters under the same keys, and a conv only
    changes class. Each swapped random layer gets its own seeded generator: runs are repeatable whatever
    the layer order.
    Tails are fused first; dropout outside them (e.g. at block ends) then becomes PooledDropout.
    """
    from mnist_challenge.engine.fused import fuse_conv_unit_tails

    swapped = {
        "fused_tail": fuse_conv_unit_tails(model, seed) if fused_tail else 0,
        "pooled_dropout": 0,
        "fast_maxpool": 0,
        "cl_weight_grad": 0,
    }
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if cl_weight_grad and _slow_weight_grad_conv(child):
                child.__class__ = (
                    ConvWeightGradChannelsLast  # a subclass with no state of its own: same parameters, same keys
                )
                swapped["cl_weight_grad"] += 1
            elif pooled_dropout and type(child) is nn.Dropout:
                generator = torch.Generator().manual_seed(seed * 1000 + swapped["pooled_dropout"])
                setattr(parent, name, PooledDropout(child.p, generator=generator))
                swapped["pooled_dropout"] += 1
            elif fast_maxpool and _is_plain_2x2_pool(child):
                setattr(parent, name, MaxPool2x2())
                swapped["fast_maxpool"] += 1
    return swapped
