"""Receptive field, parameters and MACs of any ``nn.Module``, by watching one real forward pass.

Why a forward pass and not ``nn.Sequential`` arithmetic: residual adds, concatenations, crops and
functional calls (``F.max_pool2d``, ``torch.flatten``, ``x.mean((2, 3))``) all change what an output
unit can see, and they only show up when the graph runs. A ``TorchFunctionMode`` sees every torch op
as it is called; module hooks say which layer is running. Every tensor carries its *geometry*: for
each spatial dimension, the interval of input pixels ``[lo, hi]`` that output unit 0 depends on, and
the *jump* (input pixels between neighbouring units). Unit ``i`` then sees ``[lo + i*jump, hi + i*jump]``
and the receptive field is ``hi - lo + 1``. Where paths merge (add, cat, multiply) the intervals are
united, so the RF is the maximum over paths.

Two receptive fields are reported:

* ``receptive_field_head`` - one unit of the last feature map *before* global aggregation (the input of
  GAP / flatten): how much of the image a single location of the final feature map sees. This is the
  number the course asks for ("RF at the end should be >= the image size").
* ``receptive_field`` - one unit of the model's output, *after* GAP: it spans every position of the
  head's input map, so it is the head RF plus (map side - 1) x jump. Both are theoretical values and can
  exceed the image side because zero padding is counted.

Parameters are counted once per tensor (shared modules are not double counted, unlike torchsummary);
parameters that never reach an op during ``forward`` are reported separately as unused. MACs count
multiply-accumulates of convolutions, linear layers and matrix products, for one sample.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# Ops that return a tensor but say nothing about architecture; they get no row of their own.
_QUIET_OPS = {
    "contiguous",
    "to",
    "float",
    "half",
    "double",
    "type",
    "detach",
    "clone",
    "requires_grad_",
    "__get__",
    "type_as",
    "cpu",
    "cuda",
}
_CONV_OPS = {"conv1d", "conv2d", "conv3d"}
_CONV_T_OPS = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_POOL_OPS = {
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "max_pool2d_with_indices",
    "lp_pool2d",
}
_ADAPTIVE_OPS = {
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
}
_REDUCE_OPS = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp", "std", "var"}
_MATMUL_OPS = {"matmul", "mm", "bmm", "addmm", "baddbmm", "__matmul__"}
# A fully connected layer is what these do when one operand holds parameters and the other activations,
# however it is written (nn.Linear, F.linear, x @ W.T, einsum ...); a 1x1 conv is a conv, not one of them.
_FC_OPS = _MATMUL_OPS | {"linear", "einsum", "bilinear", "tensordot", "inner", "__rmatmul__", "matmul_"}
_PERMUTE_OPS = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"}
_RESHAPE_OPS = {"view", "reshape", "flatten", "unflatten", "unsqueeze", "squeeze", "contiguous", "expand", "repeat"}
# Ops that merge the spatial axes into features or reduce over them: the map they read is the head's input.
_AGGREGATE_OPS = {
    "flatten",
    "view",
    "reshape",
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "logsumexp",
    "std",
    "var",
    "norm",
    "linear",
    "matmul",
    "__matmul__",
    "einsum",
    "softmax",
    "log_softmax",
}
_INTERPOLATION_TAPS = {"nearest": 1, "nearest-exact": 1, "linear": 2, "bilinear": 2, "trilinear": 2, "bicubic": 4}
# Questions about a tensor, not uses of it: the hooks' own numel() must not mark a parameter as used.
_META_OPS = {"numel", "nelement", "dim", "size", "stride", "element_size", "data_ptr", "is_contiguous", "__len__"}


@dataclass(frozen=True)
class Axis:
    """Input pixels seen by output unit 0 along one spatial axis, and the stride between units."""

    lo: Fraction
    hi: Fraction
    jump: Fraction

    @property
    def rf(self) -> Fraction:
        return self.hi - self.lo + 1

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


def _as_int(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)


@dataclass
class LayerRow:
    name: str
    type: str
    out_shape: list[int]
    rf: int | float | None  # largest RF over the spatial axes of this layer's output
    jump: int | float | None
    params: int
    macs: int
    rf_axes: list[int | float] | None = None  # RF along each spatial axis (H, W), where they may differ

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Report:
    """What ``inspect_module`` found; ``as_dict`` is the ``--json`` output."""

    input_size: tuple[int, ...]
    layers: list[LayerRow]
    params: int  # parameters that take part in forward, each shared tensor once
    params_unused: int  # parameters of the module that forward never touched
    params_total: int
    trainable_params: int
    macs: int
    receptive_field: int | float | None  # one output unit, after global pooling
    receptive_field_head: int | float | None  # one unit of the map entering the head (before GAP/flatten)
    has_linear: bool
    linear_layers: list[str] = field(default_factory=list)
    unused_modules: list[str] = field(default_factory=list)
    rf_untracked_past: str | None = None  # the op the tracer could not follow: no RF is reported past it
    receptive_field_head_axes: list[int | float] | None = None  # the head RF along each spatial axis (H, W)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["input_size"] = list(self.input_size)
        d["layers"] = [row.as_dict() for row in self.layers]
        return d


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _per_axis(value: Any, n: int, default: Any = None) -> list:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        value = default
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == n else [value[0]] * n
    return [value] * n


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _attention_macs(args: tuple, kwargs: dict) -> int:
    """MACs of ``F.multi_head_attention_forward`` (sequence-first tensors): the q/k/v projections, q @ k^T
    and weights @ v over all heads, and the output projection."""
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    embed = q.shape[-1]
    batch = q.shape[1] if q.dim() == 3 else 1
    target, source = q.shape[0], k.shape[0]
    projections = batch * (target * embed + source * k.shape[-1] + source * v.shape[-1]) * embed
    attention = 2 * batch * target * source * embed
    return projections + attention + batch * target * embed * embed


def _transposed(a: Axis, kernel: int, padding: int, dilation: int) -> Axis:
    """After a stride-1 transposed conv: output unit o reads input units o + padding - t*dilation for t in
    0..kernel-1, a window as wide as a conv's, reaching (kernel-1)*dilation - padding units back."""
    return Axis(a.lo + (padding - (kernel - 1) * dilation) * a.jump, a.hi + padding * a.jump, a.jump)


def _permuted(name: str, args: tuple, kwargs: dict, ndim: int, dims: tuple[int, ...]) -> tuple[int, ...] | None:
    """Where the axes now at positions ``dims`` are after a permute-like op; None if its arguments cannot be read."""
    try:
        if name == "permute":
            perm = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            perm = [int(p) % ndim for p in kwargs.get("dims", perm)]
            return tuple(perm.index(d) for d in dims)
        if name in ("transpose", "swapaxes", "swapdims", "t"):
            a, b = (
                (0, 1) if name == "t" else (_arg(args, kwargs, 1, "dim0") % ndim, _arg(args, kwargs, 2, "dim1") % ndim)
            )
            return tuple({a: b, b: a}.get(d, d) for d in dims)
        if name in ("movedim", "moveaxis"):
            src, dst = _arg(args, kwargs, 1, "source"), _arg(args, kwargs, 2, "destination")
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


class _Meta(NamedTuple):
    """What the tracer knows of one tensor."""

    tensor: torch.Tensor  # kept alive, so that its id is not reused
    geometry: Geometry
    spatial: bool  # its spatial axes still exist (False once aggregated: GAP, flatten ...)
    head: tuple[Fraction, ...] | None = None  # per-axis RF of the map its path last aggregated (the head's input)
    moved: tuple[int, ...] | None = None  # where the spatial axes are, when a permute moved them off the end
    lost: str | None = None  # the op past which its RF could not be followed


class _Tracer(TorchFunctionMode):
    """Propagates geometry through every op and attributes MACs and rows to the running layer."""

    def __init__(self, model: nn.Module, spatial_dims: int) -> None:
        super().__init__()
        self.k = spatial_dims
        self.geo: dict[int, _Meta] = {}
        self.used_params: set[int] = set()
        self.param_ids = {id(p) for p in model.parameters()}
        self.stack: list[str] = []  # names of the modules currently running, outermost first
        self.leaf_macs: list[int] = []  # MACs accumulated by the leaf module that is running
        self.rows: list[LayerRow] = []
        self.params_only: dict[int, torch.Tensor] = {}  # tensors computed from parameters alone (W.T, W * 2 ...)
        self.fc_sites: list[str] = []  # where a parameter met activations in a matmul-like op

    # --- tensor metadata ---------------------------------------------------------------------------
    def mark(self, t: torch.Tensor, meta: _Meta) -> None:
        self.geo[id(t)] = meta._replace(tensor=t)

    def lookup(self, t: torch.Tensor) -> _Meta | None:
        entry = self.geo.get(id(t))
        return entry if entry is not None and entry.tensor is t else None

    def rf_of(self, t: Any) -> tuple[int | float | None, int | float | None]:
        """The largest RF and jump over the spatial axes (None past an op the tracer cannot follow)."""
        axes = self.rf_axes(t)
        if axes is None:
            return None, None
        found = self.lookup(t)
        return max(axes), _as_int(max(a.jump for a in found.geometry))

    def rf_axes(self, t: Any) -> list[int | float] | None:
        found = self.lookup(t) if isinstance(t, torch.Tensor) else None
        if found is None or found.lost:
            return None
        return [_as_int(a.rf) for a in found.geometry]

    @staticmethod
    def globalise(meta: _Meta, sizes: list[int], spatial: bool) -> _Meta:
        """Aggregate every position: the aggregated map (if larger than one unit) is the head's input."""
        head = tuple(a.rf for a in meta.geometry) if any(s > 1 for s in sizes) else meta.head
        return meta._replace(
            geometry=tuple(a.whole(s) for a, s in zip(meta.geometry, sizes)), spatial=spatial, head=head
        )

    # --- the op hook ----------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name in _META_OPS:
            return out
        operands = list(_tensors((args, kwargs)))
        for t in operands:
            if id(t) in self.param_ids:
                self.used_params.add(id(t))
        from_params = [t for t in operands if self.is_param_like(t)]
        if from_params and len(from_params) == len(operands):
            for t in _tensors(out):
                self.params_only[id(t)] = t  # kept alive so that the id is not reused
        elif from_params and name in _FC_OPS:
            self.fc_sites.append(f"{self.stack[-1]}.{name}" if self.stack else name)
        if name == "__get__":  # W.T, W.data ...: followed above, no row of its own
            return out
        outputs = list(_tensors(out))
        if not outputs:
            return out
        first = outputs[0]
        inputs = [(t, m) for t in _tensors(args) if (m := self.lookup(t)) is not None]
        if inputs:
            lost = next((m for _, m in inputs if m.lost), None)
            if lost is not None:
                meta = lost
            elif any(m.moved for _, m in inputs):
                meta = self.follow_moved(name, args, kwargs, inputs, first)
            else:
                meta = self.propagate(name, args, kwargs, inputs, first)
            for t in outputs:
                if t.dim() == first.dim():
                    self.mark(t, meta)
        macs = self.macs(name, args, kwargs, first)
        if len(self.stack) and self.leaf_macs:
            self.leaf_macs[-1] += macs
        elif name not in _QUIET_OPS:
            rf, jump = self.rf_of(first)
            where = self.stack[-1] + "." if self.stack else ""
            self.rows.append(
                LayerRow(f"{where}{name}", f"op:{name}", list(first.shape), rf, jump, 0, macs, self.rf_axes(first))
            )
        return out

    def is_param_like(self, t: torch.Tensor) -> bool:
        return id(t) in self.param_ids or self.params_only.get(id(t)) is t

    def propagate(self, name: str, args: tuple, kwargs: dict, inputs: list, out: torch.Tensor) -> _Meta:
        """The output's metadata, for inputs whose spatial axes are the last k."""
        x, meta = inputs[0]
        geometry, spatial = meta.geometry, meta.spatial
        k = self.k
        in_sizes = list(x.shape[-k:])

        def moved_to(g: Geometry) -> _Meta:
            return meta._replace(geometry=g)

        if spatial and name in _CONV_OPS and x.dim() >= k + 1:
            weight = _arg(args, kwargs, 1, "weight")
            kernel = list(weight.shape[-k:])
            stride = _per_axis(_arg(args, kwargs, 3, "stride", 1), k, 1)
            dilation = _per_axis(_arg(args, kwargs, 5, "dilation", 1), k, 1)
            padding = _arg(args, kwargs, 4, "padding", 0)
            if padding == "valid":
                padding = 0
            if padding == "same":
                padding = [d * (kk - 1) // 2 for d, kk in zip(dilation, kernel)]
            padding = _per_axis(padding, k, 0)
            return moved_to(
                tuple(a.through(kk, s, p, d) for a, kk, s, p, d in zip(geometry, kernel, stride, padding, dilation))
            )
        if spatial and name in _CONV_T_OPS and x.dim() >= k + 1:
            weight = _arg(args, kwargs, 1, "weight")
            stride = _per_axis(_arg(args, kwargs, 3, "stride", 1), k, 1)
            padding = _per_axis(_arg(args, kwargs, 4, "padding", 0), k, 0)
            dilation = _per_axis(_arg(args, kwargs, 7, "dilation", 1), k, 1)
            if any(s != 1 for s in stride):
                # Which input units an output reads depends on its phase (o mod stride): one interval and
                # one jump per axis cannot hold that exactly, so the RF is not reported past this op.
                return meta._replace(lost=f"{name} (stride > 1)")
            return moved_to(
                tuple(_transposed(a, kk, p, d) for a, kk, p, d in zip(geometry, weight.shape[-k:], padding, dilation))
            )
        if spatial and name in _POOL_OPS:
            lp = name.startswith("lp_pool")  # lp_pool2d(input, norm_type, kernel_size, stride): no padding
            kernel = _per_axis(_arg(args, kwargs, 2 if lp else 1, "kernel_size"), k)
            stride = _per_axis(_arg(args, kwargs, 3 if lp else 2, "stride"), k, kernel)  # default: the kernel, per axis
            padding = [0] * k if lp else _per_axis(_arg(args, kwargs, 3, "padding", 0), k, 0)
            dilation = _per_axis(_arg(args, kwargs, 4, "dilation", 1), k, 1) if "max" in name else [1] * k
            return moved_to(
                tuple(a.through(kk, s, p, d) for a, kk, s, p, d in zip(geometry, kernel, stride, padding, dilation))
            )
        if spatial and name in _ADAPTIVE_OPS:
            out_sizes = list(out.shape[-k:])
            if all(o == 1 for o in out_sizes):
                return self.globalise(meta, in_sizes, True)
            # Adaptive windows vary in width; the widest one is ceil(n/o) (+1 when n is not a multiple of o).
            widths = [math.ceil(n / o) + (1 if n % o else 0) for n, o in zip(in_sizes, out_sizes)]
            return moved_to(
                tuple(a.through(w, Fraction(n, o), 0) for a, w, n, o in zip(geometry, widths, in_sizes, out_sizes))
            )
        if name == "pad" and spatial:
            pads = list(_arg(args, kwargs, 1, "pad"))
            shifted = list(geometry)
            for axis in range(min(k, len(pads) // 2)):  # pads run from the last dimension backwards
                i = k - 1 - axis
                a = shifted[i]
                shifted[i] = Axis(a.lo - pads[2 * axis] * a.jump, a.hi - pads[2 * axis] * a.jump, a.jump)
            return moved_to(tuple(shifted))
        if name == "__getitem__" and spatial and out.dim() == x.dim():
            return moved_to(self.crop(geometry, args[1], x))
        if name in ("interpolate", "upsample", "upsample_nearest2d", "upsample_bilinear2d") and spatial:
            # An output pixel reads 1 input pixel per axis (nearest), 2 (bilinear) or 4 (bicubic).
            mode = _arg(args, kwargs, 3, "mode", "nearest" if name != "upsample_bilinear2d" else "bilinear")
            taps = _INTERPOLATION_TAPS.get(mode, 1)
            scales = [Fraction(o, n) for o, n in zip(out.shape[-k:], in_sizes)]
            return moved_to(tuple(Axis(a.lo, a.hi + (taps - 1) * a.jump, a.jump / s) for a, s in zip(geometry, scales)))
        if spatial and name in ("pixel_shuffle", "pixel_unshuffle"):
            r = Fraction(
                out.shape[-1], in_sizes[-1]
            )  # > 1: shuffle (like nearest upsampling), < 1: unshuffle (an r x r window)
            if r > 1:
                return moved_to(tuple(Axis(a.lo, a.hi, a.jump / r) for a in geometry))
            return moved_to(tuple(a.through(int(1 / r), 1 / r, 0) for a in geometry))
        if spatial and name in _PERMUTE_OPS:
            dims = _permuted(name, args, kwargs, x.dim(), tuple(range(x.dim() - k, x.dim())))
            if dims is None:
                return meta._replace(lost=name)
            return meta._replace(moved=None if dims == tuple(range(out.dim() - k, out.dim())) else dims)
        if spatial and name in _RESHAPE_OPS and out.dim() >= k and list(out.shape[-k:]) == in_sizes:
            return meta  # only the leading axes were split or merged (a channel shuffle, say)
        # Every other op: merge the inputs (residual add, cat, multiply ...). The full-size path keeps the
        # jump and its head. A path broadcast from a 1x1 map (squeeze-excitation's scale) is channel
        # attention: it adds no window of its own (its global mean would make every later unit "see" the
        # whole image, and the RF of an SE net meaningless), and its own GAP is not the network's head.
        out_sizes = list(out.shape[-k:])
        inputs = sorted(inputs, key=lambda item: list(item[0].shape[-k:]) != out_sizes)
        x, meta = inputs[0]
        in_sizes = list(x.shape[-k:])
        merged = meta.geometry
        for t, other in inputs[1:]:
            if t.dim() >= k and all(n == 1 for n in t.shape[-k:]) and any(o > 1 for o in out_sizes):
                continue
            merged = tuple(a.union(b) for a, b in zip(merged, other.geometry))
        meta = meta._replace(geometry=merged)
        still_spatial = all(m.spatial for _, m in inputs)
        broadcast = all(
            t.dim() == out.dim() and all(n in (o, 1) for n, o in zip(t.shape[-k:], out_sizes)) for t, _ in inputs
        )
        if still_spatial and out.dim() == x.dim() and in_sizes == out_sizes and broadcast:
            return meta  # elementwise or along channels: geometry unchanged
        if still_spatial and name in _REDUCE_OPS and out.dim() == x.dim() and all(o == 1 for o in out.shape[-k:]):
            return self.globalise(meta, in_sizes, True)  # mean(..., keepdim=True) style GAP
        if still_spatial and name in _AGGREGATE_OPS:
            # Spatial axes merged away (flatten, view, mean over them ...): each output may see every position.
            return self.globalise(meta, in_sizes, False)
        if still_spatial:
            return meta._replace(lost=name)  # an op the tracer cannot map: no RF is reported past it
        return meta._replace(spatial=False)

    def follow_moved(self, name: str, args: tuple, kwargs: dict, inputs: list, out: torch.Tensor) -> _Meta:
        """Ops on a tensor whose spatial axes a permute moved (channels-last blocks, as in ConvNeXt): layout
        changes, elementwise ops, and ops that mix only the last (channel) axis keep the geometry."""
        x, meta = inputs[0]
        dims = meta.moved
        same_layout = all(m.moved == dims and t.dim() == x.dim() for t, m in inputs)
        if name in _PERMUTE_OPS:
            moved = _permuted(name, args, kwargs, x.dim(), dims)
            if moved is None:
                return meta._replace(lost=name)
            return meta._replace(moved=None if moved == tuple(range(out.dim() - self.k, out.dim())) else moved)
        keeps_spatial = out.dim() == x.dim() and all(out.shape[d] == x.shape[d] for d in dims)
        if same_layout and keeps_spatial and (out.shape == x.shape or x.dim() - 1 not in dims):
            merged = meta.geometry
            for _, other in inputs[1:]:
                merged = tuple(a.union(b) for a, b in zip(merged, other.geometry))
            return meta._replace(geometry=merged)  # elementwise, or along the channel axis (LayerNorm, Linear)
        return meta._replace(lost=name)

    def crop(self, geometry: Geometry, index: Any, x: torch.Tensor) -> Geometry:
        index = index if isinstance(index, tuple) else (index,)
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (x.dim() - len(index) + 1) + index[at + 1 :]
        index = index + (slice(None),) * (x.dim() - len(index))
        cropped = list(geometry)
        for i, (item, size) in enumerate(zip(index[-self.k :], x.shape[-self.k :])):
            if isinstance(item, slice):
                start, _, step = item.indices(size)
                a = cropped[i]
                cropped[i] = Axis(a.lo + start * a.jump, a.hi + start * a.jump, a.jump * step)
        return tuple(cropped)

    def macs(self, name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> int:
        if name in _CONV_OPS:
            return out.numel() * _arg(args, kwargs, 1, "weight").shape[1:].numel()
        if name in _CONV_T_OPS:  # every input value is spread over (out channels / groups) x kernel outputs
            return _arg(args, kwargs, 0, "input").numel() * _arg(args, kwargs, 1, "weight").shape[1:].numel()
        if name == "linear":
            return out.numel() * _arg(args, kwargs, 1, "weight").shape[-1]
        if name == "multi_head_attention_forward":  # one op to this tracer: its projections and two matmuls
            return _attention_macs(args, kwargs)
        if name == "scaled_dot_product_attention":  # q @ k^T and weights @ v
            q, k_, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
            return q.shape[:-1].numel() * k_.shape[-2] * (q.shape[-1] + v.shape[-1])
        if name in _MATMUL_OPS:
            mats = [t for t in _tensors(args) if t.dim() >= 2]
            return out.numel() * mats[-1].shape[-2] if mats else 0
        return 0


def inspect_module(model: nn.Module, input_size: tuple[int, ...]) -> Report:
    """Run one sample of shape ``input_size`` (C, H, W) through ``model`` in eval mode and report."""
    k = len(input_size) - 1
    tracer = _Tracer(model, k)
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}
    counted: set[int] = set()  # parameter tensors already shown in a row (shared ones count once)

    def pre_hook(module: nn.Module, _inputs: Any) -> None:
        tracer.stack.append(names[module])
        if not any(True for _ in module.children()):
            tracer.leaf_macs.append(0)

    def post_hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        tracer.stack.pop()
        if any(True for _ in module.children()):
            return
        macs = tracer.leaf_macs.pop()
        own = [p for p in module.parameters(recurse=False) if id(p) not in counted]
        counted.update(id(p) for p in own)
        first = next(iter(_tensors(output)), None)
        shape = list(first.shape) if first is not None else []
        rf, jump = tracer.rf_of(first)
        tracer.rows.append(
            LayerRow(
                names[module],
                type(module).__name__,
                shape,
                rf,
                jump,
                sum(p.numel() for p in own),
                macs,
                tracer.rf_axes(first),
            )
        )

    was_training = model.training
    model.eval()
    x = torch.randn(1, *input_size)
    tracer.mark(x, _Meta(x, tuple(Axis(Fraction(0), Fraction(0), Fraction(1)) for _ in range(k)), True))
    with ExitStack() as stack:
        for module in model.modules():
            stack.callback(module.register_forward_pre_hook(pre_hook).remove)
            stack.callback(module.register_forward_hook(post_hook).remove)
        with torch.no_grad(), tracer:
            output = model(x)
    model.train(was_training)

    unique = {id(p): p for p in model.parameters()}
    used = sum(p.numel() for i, p in unique.items() if i in tracer.used_params)
    total = sum(p.numel() for p in unique.values())
    out = next(iter(_tensors(output)), None)
    rf, _ = tracer.rf_of(out)
    final = tracer.lookup(out) if isinstance(out, torch.Tensor) else None
    untracked = final.lost if final is not None else None
    # The head's input is the map the output's own path last aggregated (GAP, flatten); a net that ends
    # in a map without aggregating (a valid conv down to 1x1) has its output unit's RF there.
    if untracked or final is None:
        head_axes = None
    else:
        head_axes = [_as_int(h) for h in final.head] if final.head is not None else tracer.rf_axes(out)
    head_rf = max(head_axes) if head_axes else None
    linear = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Bilinear, nn.LazyLinear))]
    linear += [
        site for site in dict.fromkeys(tracer.fc_sites) if site.rsplit(".", 1)[0] not in linear
    ]  # functional FC layers
    unused_modules = [  # modules none of whose own parameters reached an op (used directly counts too)
        n
        for n, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
        and not any(id(p) in tracer.used_params for p in m.parameters(recurse=False))
    ]
    return Report(
        input_size=tuple(input_size),
        layers=tracer.rows,
        params=used,
        params_unused=total - used,
        params_total=total,
        trainable_params=sum(p.numel() for i, p in unique.items() if i in tracer.used_params and p.requires_grad),
        macs=sum(r.macs for r in tracer.rows),
        receptive_field=rf,
        receptive_field_head=head_rf,
        receptive_field_head_axes=head_axes,
        has_linear=bool(linear),
        linear_layers=linear,
        unused_modules=unused_modules,
        rf_untracked_past=untracked,
    )


def format_report(report: Report) -> str:
    """The human-readable table printed by ``inspect``."""
    header = f"{'layer':<32} {'type':<20} {'output shape':<18} {'RF':>6} {'jump':>5} {'params':>11} {'MACs':>13}"
    lines = [header, "-" * len(header)]
    for r in report.layers:
        shape = "x".join(str(s) for s in r.out_shape)
        rf = "-" if r.rf is None else _axes_text(r.rf_axes) if r.rf_axes and len(set(r.rf_axes)) > 1 else f"{r.rf:g}"
        jump = "-" if r.jump is None else f"{r.jump:g}"
        lines.append(f"{r.name[:32]:<32} {r.type[:20]:<20} {shape:<18} {rf:>6} {jump:>5} {r.params:>11,} {r.macs:>13,}")
    lines.append("-" * len(header))
    lines += [
        f"input size (C, H, W):           {tuple(report.input_size)}",
        f"parameters used in forward:     {report.params:,} (trainable {report.trainable_params:,})",
        f"parameters never used:          {report.params_unused:,}"
        + (f"  in {', '.join(report.unused_modules)}" if report.unused_modules else ""),
        f"MACs per image:                 {report.macs:,}",
        f"RF at the head's input:         {_head_text(report)}  (one unit of the last map before GAP/flatten)",
        f"RF after GAP (model output):    {report.receptive_field}  (spans the whole head input map; padding counted)",
        *(
            [f"RF not tracked past {report.rf_untracked_past}: the tracer cannot map that op's geometry"]
            if report.rf_untracked_past
            else []
        ),
        "fully connected layer:          "
        + (
            f"YES - breaks the no-FC rule: {', '.join(report.linear_layers) or 'F.linear'}"
            if report.has_linear
            else "none"
        ),
    ]
    return "\n".join(lines)


def _head_text(report: Report) -> str:
    axes = report.receptive_field_head_axes
    return _axes_text(axes) if axes and len(set(axes)) > 1 else str(report.receptive_field_head)


def _axes_text(axes: list[int | float]) -> str:
    """RFh x RFw, for a layer whose axes see different extents (a 2x4 pool, say)."""
    return "x".join(f"{a:g}" for a in axes)


def torchsummary_table(model: nn.Module, input_size: tuple[int, ...]) -> str:
    """torchsummary's familiar table, captured as text (it prints straight to stdout)."""
    import torchsummary

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        torchsummary.summary(model, input_size, device="cpu")
    return buffer.getvalue()
