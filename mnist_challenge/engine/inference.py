"""The evaluation fast path: a copy of the trained model with every BatchNorm that follows a conv folded into it.

In eval mode a BatchNorm is a fixed per-channel affine map, so a BN directly after a conv (``before_relu``, the
placement the searched winners use) is the conv with scaled weights and a bias: one pass over the largest maps
fewer, and the ReLU after it runs in place. A BN after the ReLU (``after_relu``) cannot fold into the conv
before it and stays (folding it into the *next* conv would be wrong at that conv's zero padding). Dropout is the
identity in eval. The copy is built from the live weights at every evaluation (a few hundred microseconds for
these nets), so EMA-swapped weights are what it evaluates; the model itself, its state_dict and ``model.pt``
are untouched. Results equal the plain model's up to float rounding (tested).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mnist_challenge.engine.fast import PooledDropout
from mnist_challenge.engine.fused import ConvUnitTail


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` in eval mode as one conv: weights scaled per output channel, BN's shift as the bias."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    folded.__class__ = type(conv)  # the engine's conv subclasses (fast.py) hold no state of their own
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return folded.to(conv.weight.device)


def _foldable_bn(m: nn.Module) -> bool:
    """A BN that acts right after the layer before it: a plain BatchNorm2d, or a fused tail that starts with BN."""
    if isinstance(m, ConvUnitTail):
        return not m.bn_after
    return type(m) is nn.BatchNorm2d and m.track_running_stats and m.running_mean is not None


def _after_fold(m: nn.Module) -> nn.Module:
    """What stays of a folded BN: the ReLU (in place) and dropout (identity in eval) of a fused tail, else nothing."""
    return nn.ReLU(inplace=True) if isinstance(m, ConvUnitTail) else nn.Identity()


def inference_copy(model: nn.Module, channels_last: bool) -> nn.Module:
    """An eval-mode copy of ``model`` for fast evaluation: conv+BN folded, ReLUs in place, in the given layout."""
    fast = copy.deepcopy(model).eval()
    for seq in [m for m in fast.modules() if type(m) is nn.Sequential]:
        for i in range(len(seq)):
            if type(seq[i]) is nn.ReLU:
                seq[i] = nn.ReLU(inplace=True)  # its input is a fresh conv output nobody else reads
            elif isinstance(seq[i], (nn.Dropout, PooledDropout)):
                seq[i] = nn.Identity()
            elif i > 0 and isinstance(seq[i - 1], nn.Conv2d) and _foldable_bn(seq[i]):
                seq[i - 1], seq[i] = _folded_conv(seq[i - 1], seq[i]), _after_fold(seq[i])
    if channels_last:
        fast.to(memory_format=torch.channels_last)
    return fast
