"""How each torch op changes what an output unit sees (the receptive-field rules) and what it costs (MACs):
one small function per kind of op, found by the op's name in ``SPATIAL_RULES`` and ``MAC_RULES``.

A spatial rule gets the call (``OpCall``) for an input whose spatial axes are the last k and returns the
output's ``TensorMeta``, or None when the op does not apply in this form (a conv on an unbatched input, say);
every op without a rule that applies merges its inputs (``merge``): a residual add, a cat, a multiply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import NamedTuple

import torch

from mnist_challenge.architecture.geometry import (
    Axis,
    TensorMeta,
    arg,
    crop,
    globalise,
    per_axis,
    permuted,
    tensors,
    transposed,
)

# Ops that return a tensor but say nothing about architecture; they get no row of their own.
QUIET_OPS = {
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
CONV_OPS = {"conv1d", "conv2d", "conv3d"}
CONV_T_OPS = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
POOL_OPS = {
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "max_pool2d_with_indices",
    "lp_pool2d",
}
ADAPTIVE_OPS = {
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
}
REDUCE_OPS = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp", "std", "var"}
MATMUL_OPS = {"matmul", "mm", "bmm", "addmm", "baddbmm", "__matmul__"}
# A fully connected layer is what these do when one operand holds parameters and the other activations,
# however it is written (nn.Linear, F.linear, x @ W.T, einsum ...); a 1x1 conv is a conv, not one of them.
FC_OPS = MATMUL_OPS | {"linear", "einsum", "bilinear", "tensordot", "inner", "__rmatmul__", "matmul_"}
PERMUTE_OPS = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"}
RESHAPE_OPS = {"view", "reshape", "flatten", "unflatten", "unsqueeze", "squeeze", "contiguous", "expand", "repeat"}
# Ops that merge the spatial axes into features or reduce over them: the map they read is the head's input.
AGGREGATE_OPS = {
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
INTERPOLATION_TAPS = {"nearest": 1, "nearest-exact": 1, "linear": 2, "bilinear": 2, "trilinear": 2, "bicubic": 4}
# Questions about a tensor, not uses of it: the hooks' own numel() must not mark a parameter as used.
META_OPS = {"numel", "nelement", "dim", "size", "stride", "element_size", "data_ptr", "is_contiguous", "__len__"}


class OpCall(NamedTuple):
    """One op as a rule sees it: its name and arguments, its first tracked input and that input's metadata,
    its (first) output, and k, the number of spatial axes."""

    name: str
    args: tuple
    kwargs: dict
    x: torch.Tensor
    meta: TensorMeta
    out: torch.Tensor
    k: int

    def through_windows(self, kernel: list, stride: list, padding: list, dilation: list) -> TensorMeta:
        """After a sliding window per axis (conv, pool)."""
        g = self.meta.geometry
        return self.meta._replace(
            geometry=tuple(a.through(kk, s, p, d) for a, kk, s, p, d in zip(g, kernel, stride, padding, dilation))
        )

    @property
    def in_sizes(self) -> list[int]:
        return list(self.x.shape[-self.k :])


Rule = Callable[[OpCall], TensorMeta | None]


def conv(c: OpCall) -> TensorMeta | None:
    if c.x.dim() < c.k + 1:
        return None
    k = c.k
    kernel = list(arg(c.args, c.kwargs, 1, "weight").shape[-k:])
    stride = per_axis(arg(c.args, c.kwargs, 3, "stride", 1), k, 1)
    dilation = per_axis(arg(c.args, c.kwargs, 5, "dilation", 1), k, 1)
    padding = arg(c.args, c.kwargs, 4, "padding", 0)
    if padding == "valid":
        padding = 0
    if padding == "same":
        padding = [d * (kk - 1) // 2 for d, kk in zip(dilation, kernel)]
    return c.through_windows(kernel, stride, per_axis(padding, k, 0), dilation)


def conv_transpose(c: OpCall) -> TensorMeta | None:
    if c.x.dim() < c.k + 1:
        return None
    k = c.k
    weight = arg(c.args, c.kwargs, 1, "weight")
    stride = per_axis(arg(c.args, c.kwargs, 3, "stride", 1), k, 1)
    padding = per_axis(arg(c.args, c.kwargs, 4, "padding", 0), k, 0)
    dilation = per_axis(arg(c.args, c.kwargs, 7, "dilation", 1), k, 1)
    if any(s != 1 for s in stride):
        # Which input units an output reads depends on its phase (o mod stride): one interval and
        # one jump per axis cannot hold that exactly, so the RF is not reported past this op.
        return c.meta._replace(lost=f"{c.name} (stride > 1)")
    g = c.meta.geometry
    return c.meta._replace(
        geometry=tuple(transposed(a, kk, p, d) for a, kk, p, d in zip(g, weight.shape[-k:], padding, dilation))
    )


def pool(c: OpCall) -> TensorMeta:
    k, lp = c.k, c.name.startswith("lp_pool")  # lp_pool2d(input, norm_type, kernel_size, stride): no padding
    kernel = per_axis(arg(c.args, c.kwargs, 2 if lp else 1, "kernel_size"), k)
    stride = per_axis(arg(c.args, c.kwargs, 3 if lp else 2, "stride"), k, kernel)  # default: the kernel, per axis
    padding = [0] * k if lp else per_axis(arg(c.args, c.kwargs, 3, "padding", 0), k, 0)
    dilation = per_axis(arg(c.args, c.kwargs, 4, "dilation", 1), k, 1) if "max" in c.name else [1] * k
    return c.through_windows(kernel, stride, padding, dilation)


def adaptive_pool(c: OpCall) -> TensorMeta:
    in_sizes, out_sizes = c.in_sizes, list(c.out.shape[-c.k :])
    if all(o == 1 for o in out_sizes):
        return globalise(c.meta, in_sizes, True)
    # Adaptive windows vary in width; the widest one is ceil(n/o) (+1 when n is not a multiple of o).
    widths = [math.ceil(n / o) + (1 if n % o else 0) for n, o in zip(in_sizes, out_sizes)]
    g = c.meta.geometry
    return c.meta._replace(
        geometry=tuple(a.through(w, Fraction(n, o), 0) for a, w, n, o in zip(g, widths, in_sizes, out_sizes))
    )


def pad(c: OpCall) -> TensorMeta:
    pads = list(arg(c.args, c.kwargs, 1, "pad"))
    shifted = list(c.meta.geometry)
    for axis in range(min(c.k, len(pads) // 2)):  # pads run from the last dimension backwards
        i = c.k - 1 - axis
        a = shifted[i]
        shifted[i] = Axis(a.lo - pads[2 * axis] * a.jump, a.hi - pads[2 * axis] * a.jump, a.jump)
    return c.meta._replace(geometry=tuple(shifted))


def getitem(c: OpCall) -> TensorMeta | None:
    if c.out.dim() != c.x.dim():
        return None
    return c.meta._replace(geometry=crop(c.meta.geometry, c.args[1], c.x, c.k))


def interpolate(c: OpCall) -> TensorMeta:
    # An output pixel reads 1 input pixel per axis (nearest), 2 (bilinear) or 4 (bicubic).
    mode = arg(c.args, c.kwargs, 3, "mode", "nearest" if c.name != "upsample_bilinear2d" else "bilinear")
    taps = INTERPOLATION_TAPS.get(mode, 1)
    scales = [Fraction(o, n) for o, n in zip(c.out.shape[-c.k :], c.in_sizes)]
    g = c.meta.geometry
    return c.meta._replace(
        geometry=tuple(Axis(a.lo, a.hi + (taps - 1) * a.jump, a.jump / s) for a, s in zip(g, scales))
    )


def pixel_shuffle(c: OpCall) -> TensorMeta:
    r = Fraction(c.out.shape[-1], c.in_sizes[-1])  # > 1: shuffle (like nearest upsampling), < 1: an r x r window
    g = c.meta.geometry
    if r > 1:
        return c.meta._replace(geometry=tuple(Axis(a.lo, a.hi, a.jump / r) for a in g))
    return c.meta._replace(geometry=tuple(a.through(int(1 / r), 1 / r, 0) for a in g))


def permute(c: OpCall) -> TensorMeta:
    dims = permuted(c.name, c.args, c.kwargs, c.x.dim(), tuple(range(c.x.dim() - c.k, c.x.dim())))
    if dims is None:
        return c.meta._replace(lost=c.name)
    return c.meta._replace(moved=None if dims == tuple(range(c.out.dim() - c.k, c.out.dim())) else dims)


def reshape(c: OpCall) -> TensorMeta | None:
    if c.out.dim() >= c.k and list(c.out.shape[-c.k :]) == c.in_sizes:
        return c.meta  # only the leading axes were split or merged (a channel shuffle, say)
    return None  # the spatial axes were merged: ``merge`` aggregates them


def _table(*pairs: tuple[set[str] | tuple[str, ...], Rule]) -> dict[str, Rule]:
    return {name: rule for names, rule in pairs for name in names}


# The rules for ops on a tensor whose spatial axes are still there and last.
SPATIAL_RULES: dict[str, Rule] = _table(
    (CONV_OPS, conv),
    (CONV_T_OPS, conv_transpose),
    (POOL_OPS, pool),
    (ADAPTIVE_OPS, adaptive_pool),
    (("pad",), pad),
    (("__getitem__",), getitem),
    (("interpolate", "upsample", "upsample_nearest2d", "upsample_bilinear2d"), interpolate),
    (("pixel_shuffle", "pixel_unshuffle"), pixel_shuffle),
    (PERMUTE_OPS, permute),
    (RESHAPE_OPS, reshape),
)


def propagate(c: OpCall, inputs: list[tuple[torch.Tensor, TensorMeta]]) -> TensorMeta:
    """The output's metadata, for inputs whose spatial axes are the last k."""
    rule = SPATIAL_RULES.get(c.name) if c.meta.spatial else None
    found = rule(c) if rule is not None else None
    return found if found is not None else merge(c, inputs)


def merge(c: OpCall, inputs: list[tuple[torch.Tensor, TensorMeta]]) -> TensorMeta:
    """Every other op: merge the inputs (residual add, cat, multiply ...). The full-size path keeps the jump
    and its head. A path broadcast from a 1x1 map (squeeze-excitation's scale) is channel attention: it adds
    no window of its own (its global mean would make every later unit "see" the whole image, and the RF of
    an SE net meaningless), and its own GAP is not the network's head."""
    k, out = c.k, c.out
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
    if still_spatial and c.name in REDUCE_OPS and out.dim() == x.dim() and all(o == 1 for o in out_sizes):
        return globalise(meta, in_sizes, True)  # mean(..., keepdim=True) style GAP
    if still_spatial and c.name in AGGREGATE_OPS:
        # Spatial axes merged away (flatten, view, mean over them ...): each output may see every position.
        return globalise(meta, in_sizes, False)
    if still_spatial:
        return meta._replace(lost=c.name)  # an op the tracer cannot map: no RF is reported past it
    return meta._replace(spatial=False)


def follow_moved(c: OpCall, inputs: list[tuple[torch.Tensor, TensorMeta]]) -> TensorMeta:
    """Ops on a tensor whose spatial axes a permute moved (channels-last blocks, as in ConvNeXt): layout
    changes, elementwise ops, and ops that mix only the last (channel) axis keep the geometry."""
    x, meta, out = c.x, c.meta, c.out
    dims = meta.moved
    same_layout = all(m.moved == dims and t.dim() == x.dim() for t, m in inputs)
    if c.name in PERMUTE_OPS:
        moved = permuted(c.name, c.args, c.kwargs, x.dim(), dims)
        if moved is None:
            return meta._replace(lost=c.name)
        return meta._replace(moved=None if moved == tuple(range(out.dim() - c.k, out.dim())) else moved)
    keeps_spatial = out.dim() == x.dim() and all(out.shape[d] == x.shape[d] for d in dims)
    if same_layout and keeps_spatial and (out.shape == x.shape or x.dim() - 1 not in dims):
        merged = meta.geometry
        for _, other in inputs[1:]:
            merged = tuple(a.union(b) for a, b in zip(merged, other.geometry))
        return meta._replace(geometry=merged)  # elementwise, or along the channel axis (LayerNorm, Linear)
    return meta._replace(lost=c.name)


# --- MACs: multiply-accumulates of one sample, per op ------------------------------------------------
def attention_macs(args: tuple, kwargs: dict) -> int:
    """MACs of ``F.multi_head_attention_forward`` (sequence-first tensors): the q/k/v projections, q @ k^T
    and weights @ v over all heads, and the output projection."""
    q, k, v = (arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    embed = q.shape[-1]
    batch = q.shape[1] if q.dim() == 3 else 1
    target, source = q.shape[0], k.shape[0]
    projections = batch * (target * embed + source * k.shape[-1] + source * v.shape[-1]) * embed
    attention = 2 * batch * target * source * embed
    return projections + attention + batch * target * embed * embed


def _conv_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    return out.numel() * arg(args, kwargs, 1, "weight").shape[1:].numel()


def _conv_transpose_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    # every input value is spread over (out channels / groups) x kernel outputs
    return arg(args, kwargs, 0, "input").numel() * arg(args, kwargs, 1, "weight").shape[1:].numel()


def _linear_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    return out.numel() * arg(args, kwargs, 1, "weight").shape[-1]


def _sdpa_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    q, k_, v = (arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    return q.shape[:-1].numel() * k_.shape[-2] * (q.shape[-1] + v.shape[-1])  # q @ k^T and weights @ v


def _matmul_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    mats = [t for t in tensors(args) if t.dim() >= 2]
    return out.numel() * mats[-1].shape[-2] if mats else 0


MacRule = Callable[[tuple, dict, torch.Tensor], int]
MAC_RULES: dict[str, MacRule] = {
    **{name: _conv_macs for name in CONV_OPS},
    **{name: _conv_transpose_macs for name in CONV_T_OPS},
    "linear": _linear_macs,
    # one op to the tracer: its projections and two matmuls
    "multi_head_attention_forward": lambda args, kwargs, out: attention_macs(args, kwargs),
    "scaled_dot_product_attention": _sdpa_macs,
    **{name: _matmul_macs for name in MATMUL_OPS},
}


def macs_of(name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    rule = MAC_RULES.get(name)
    return rule(args, kwargs, out) if rule is not None else 0
