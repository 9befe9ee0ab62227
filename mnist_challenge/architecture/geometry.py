"""The geometry the inspector carries on every tensor: per spatial axis, the input pixels that output unit 0
sees (``[lo, hi]``) and the stride between neighbouring units (``jump``), as exact fractions; and the small
readers of an op's arguments that the per-op rules (``op_rules``) share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

import torch


@dataclass(frozen=True)
class Axis:
    """Input pixels seen by output unit 0 along one spatial axis, and the stride between units."""

    lo: Fraction
    hi: Fraction
    jump: Fraction

    @property
    def rf(self) -> Fraction:
        """Whole pixels: where units sit at fractional positions (after upsampling, or adaptive pooling) the
        window of unit 0 spans ``hi - lo``, and some unit's window covers ``ceil(hi - lo) + 1`` pixels."""
        return Fraction(math.ceil(self.hi - self.lo) + 1)

    def through(self, kernel: int, stride: Fraction, padding: Fraction, dilation: int = 1) -> Axis:
        """After a sliding window (conv or pool): unit u reads input units u*stride - padding + t*dilation."""
        return Axis(
            self.lo - padding * self.jump, self.hi + (dilation * (kernel - 1) - padding) * self.jump, self.jump * stride
        )

    def whole(self, size: int) -> Axis:
        """After aggregating all ``size`` units (GAP, flatten): one unit sees all of them."""
        return Axis(self.lo, self.hi + (size - 1) * self.jump, self.jump * size)

    def union(self, other: Axis) -> Axis:
        """Both paths feed this unit; the stride between units stays ours (the full-size path's)."""
        return Axis(min(self.lo, other.lo), max(self.hi, other.hi), self.jump)


Geometry = tuple[Axis, ...]  # one Axis per spatial dimension of the model's input


def as_int(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)


class TensorMeta(NamedTuple):
    """What the inspector knows of one tensor."""

    tensor: torch.Tensor  # kept alive, so that its id is not reused
    geometry: Geometry
    spatial: bool  # its spatial axes still exist (False once aggregated: GAP, flatten ...)
    head: tuple[Fraction, ...] | None = None  # per-axis RF of the map its path last aggregated (the head's input)
    moved: tuple[int, ...] | None = None  # where the spatial axes are, when a permute moved them off the end
    lost: str | None = None  # the op past which its RF could not be followed
    flattened: bool = False  # its features include a map's positions (flatten / view of a map wider than 1x1)
    folded: tuple[int, ...] | None = None  # the map's spatial sizes, when only they were flattened into the last axis
    mixed: str | None = None  # the first op that mixed those flattened positions (a round trip back is then lost)


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def per_axis(value: Any, n: int, default: Any = None) -> list:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        value = default
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == n else [value[0]] * n
    return [value] * n


def tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors(item)


def transposed(a: Axis, kernel: int, padding: int, dilation: int) -> Axis:
    """After a stride-1 transposed conv: output unit o reads input units o + padding - t*dilation for t in
    0..kernel-1, a window as wide as a conv's, reaching (kernel-1)*dilation - padding units back."""
    return Axis(a.lo + (padding - (kernel - 1) * dilation) * a.jump, a.hi + padding * a.jump, a.jump)


def permuted(name: str, args: tuple, kwargs: dict, ndim: int, dims: tuple[int, ...]) -> tuple[int, ...] | None:
    """Where the axes now at positions ``dims`` are after a permute-like op; None if its arguments cannot be read."""
    try:
        if name == "permute":
            perm = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            perm = [int(p) % ndim for p in kwargs.get("dims", perm)]
            return tuple(perm.index(d) for d in dims)
        if name in ("transpose", "swapaxes", "swapdims", "t"):
            a, b = (0, 1) if name == "t" else (arg(args, kwargs, 1, "dim0") % ndim, arg(args, kwargs, 2, "dim1") % ndim)
            return tuple({a: b, b: a}.get(d, d) for d in dims)
        if name in ("movedim", "moveaxis"):
            src, dst = arg(args, kwargs, 1, "source"), arg(args, kwargs, 2, "destination")
            src = [s % ndim for s in ([src] if isinstance(src, int) else src)]
            dst = [d % ndim for d in ([dst] if isinstance(dst, int) else dst)]
            order: list[int | None] = [None] * ndim
            for s, d in zip(src, dst):
                order[d] = s
            rest = iter(a for a in range(ndim) if a not in src)
            order = [o if o is not None else next(rest) for o in order]
            return tuple(order.index(d) for d in dims)
    except (TypeError, ValueError, IndexError, StopIteration):
        return None
    return None


def globalise(meta: TensorMeta, sizes: list[int], spatial: bool) -> TensorMeta:
    """Aggregate every position: the aggregated map (if larger than one unit) is the head's input."""
    head = tuple(a.rf for a in meta.geometry) if any(s > 1 for s in sizes) else meta.head
    return meta._replace(geometry=tuple(a.whole(s) for a, s in zip(meta.geometry, sizes)), spatial=spatial, head=head)


def crop(geometry: Geometry, index: Any, x: torch.Tensor, k: int) -> Geometry:
    """After ``x[index]`` that keeps the dimensions: each sliced spatial axis starts later and may step."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (x.dim() - len(index) + 1) + index[at + 1 :]
    index = index + (slice(None),) * (x.dim() - len(index))
    cropped = list(geometry)
    for i, (item, size) in enumerate(zip(index[-k:], x.shape[-k:])):
        if isinstance(item, slice):
            start, _, step = item.indices(size)
            a = cropped[i]
            cropped[i] = Axis(a.lo + start * a.jump, a.hi + start * a.jump, a.jump * step)
    return tuple(cropped)
