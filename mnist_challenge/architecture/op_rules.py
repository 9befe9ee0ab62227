"""How each torch op changes what an output unit sees (the receptive-field rules): one small function per kind of
op, found by the op's name in ``SPATIAL_RULES``; what an op costs is in ``macs``.

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
    transposed,
)

# Ops that return a tensor but say nothing about architecture; they get no row of their own.
QUIET_OPS = {"contiguous", "to", "float", "half", "double", "type", "detach", "clone", "requires_grad_",
             "__get__", "type_as", "cpu", "cuda"}  # fmt: skip
CONV_OPS = {"conv1d", "conv2d", "conv3d"}
CONV_T_OPS = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
POOL_OPS = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
            "max_pool2d_with_indices", "lp_pool2d"}  # fmt: skip
ADAPTIVE_OPS = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                "adaptive_max_pool2d", "adaptive_max_pool3d"}  # fmt: skip
REDUCE_OPS = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp", "std", "var"}
MATMUL_OPS = {"matmul", "mm", "bmm", "addmm", "baddbmm", "__matmul__"}
# A fully connected layer is what these do when one operand holds parameters and the other activations,
# however it is written (nn.Linear, F.linear, x @ W.T, einsum ...); a 1x1 conv is a conv, not one of them.
FC_OPS = MATMUL_OPS | {"linear", "einsum", "bilinear", "tensordot", "inner", "__rmatmul__", "matmul_", "mv", "dot",
                       "vdot", "linalg_multi_dot", "chain_matmul"}  # fmt: skip
# An elementwise product of features and a parameter matrix, then a sum over the features, is a matrix product.
PRODUCT_OPS = {"mul", "__mul__", "__rmul__", "multiply"}
PERMUTE_OPS = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"}
RESHAPE_OPS = {"view", "reshape", "flatten", "unflatten", "unsqueeze", "squeeze", "contiguous", "expand", "repeat"}
# Ops that merge the spatial axes into features or reduce over them: the map they read is the head's input.
AGGREGATE_OPS = {"flatten", "view", "reshape", "mean", "sum", "amax", "amin", "max", "min", "logsumexp", "std",
                 "var", "norm", "linear", "matmul", "__matmul__", "einsum", "softmax", "log_softmax"}  # fmt: skip
INTERPOLATION_TAPS = {"nearest": 1, "nearest-exact": 1, "linear": 2, "bilinear": 2, "trilinear": 2, "bicubic": 4}
# Questions about a tensor, not uses of it: the hooks' own numel() must not mark a parameter as used.
META_OPS = {"numel", "nelement", "dim", "size", "stride", "element_size", "data_ptr", "is_contiguous", "__len__",
            "is_floating_point", "is_complex", "get_device", "is_shared", "is_pinned", "ndimension"}  # fmt: skip

# Ops that keep a map's shape but move its pixels (their rule: ``moves_pixels``).
PIXEL_MOVERS = ("roll", "flip", "fliplr", "flipud", "rot90", "grid_sample", "grid_sampler", "deform_conv2d",
                "gather", "index_select", "take_along_dim", "fold")  # fmt: skip
# Ops that keep a tensor's shape but combine or reorder values along an axis: along flattened positions, they mix
# them.
POSITION_MIXERS = {*PIXEL_MOVERS, "softmax", "log_softmax", "sort", "argsort", "cumsum", "cumprod", "cummax",
                   "cummin", "logcumsumexp", "scatter", "scatter_add", "index_add", "normalize"}  # fmt: skip


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
    # Output i pools input [floor(i*n/o), ceil((i+1)*n/o)): windows vary in width; the widest one counts.
    widths = [max(-((-(i + 1) * n) // o) - (i * n) // o for i in range(o)) for n, o in zip(in_sizes, out_sizes)]
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
    """An output pixel reads 1 input pixel per resized axis (nearest), 2 (bilinear) or 4 (bicubic); with
    ``antialias`` a downscale by s widens that kernel to taps / s; an axis kept at its size reads one pixel;
    ``area`` is adaptive average pooling."""
    mode = arg(c.args, c.kwargs, 3, "mode", "nearest" if c.name != "upsample_bilinear2d" else "bilinear")
    if mode == "area":
        return adaptive_pool(c)
    antialias = bool(arg(c.args, c.kwargs, 6, "antialias", False))
    scales = [Fraction(o, n) for o, n in zip(c.out.shape[-c.k :], c.in_sizes)]
    axes = []
    for a, s in zip(c.meta.geometry, scales):
        taps = INTERPOLATION_TAPS.get(mode, 1) if s != 1 else 1
        if antialias and s < 1 and taps > 1:
            taps = math.ceil(taps / s)
        lead = Fraction(taps - 2, 2) if taps > 2 else Fraction(0)  # a wide kernel starts before the centre pixel
        axes.append(Axis(a.lo - lead * a.jump, a.hi + (taps - 1 - lead) * a.jump, a.jump / s))
    return c.meta._replace(geometry=tuple(axes))


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
    sizes = c.in_sizes
    if (
        c.out.dim() == c.x.dim() - c.k + 1
        and c.out.shape[:-1] == c.x.shape[: -c.k]
        and c.out.shape[-1] == math.prod(sizes)
        and any(n > 1 for n in sizes)
    ):
        # Only the spatial axes were flattened into the last one (``flatten(2)``, ``view(n, c, -1)``): the
        # positions are still there, in order; ``through_folded`` follows them until a reshape restores the map.
        return c.meta._replace(spatial=False, folded=tuple(sizes))
    return None  # the spatial axes were merged with others: ``merge`` aggregates them


def _along_last(c: OpCall) -> bool:
    """The op works along the last axis (its ``dim`` argument, where it has one, names it or is absent)."""
    dim = arg(c.args, c.kwargs, 1, "dim", None)
    if c.name in ("roll", "take_along_dim"):
        dim = arg(c.args, c.kwargs, 2, "dims" if c.name == "roll" else "dim", None)
    if isinstance(dim, (list, tuple)):
        return any(isinstance(d, int) and d % c.x.dim() == c.x.dim() - 1 for d in dim)
    return not isinstance(dim, int) or dim % c.x.dim() == c.x.dim() - 1


def through_folded(c: OpCall, inputs: list[tuple[torch.Tensor, TensorMeta]]) -> TensorMeta:
    """An op on a map whose positions were flattened into the last axis. Elementwise ops keep the positions and a
    reshape back to the map restores its geometry; any other op mixes them (a matmul over positions, a gather, a
    softmax, a transpose into tokens) and is taken as aggregating the map, as a flatten head is; a map rebuilt after
    that is not tracked (a non-local block, ``F.fold``)."""
    meta, out, sizes = c.meta, c.out, list(c.meta.folded)
    restores = out.dim() >= c.k and list(out.shape[-c.k :]) == sizes and out.numel() == c.x.numel()
    if restores:
        if meta.mixed is not None or c.name not in RESHAPE_OPS:
            # A map again (its positions are positions, not features: a conv on it is a conv), whose RF is lost.
            return meta._replace(lost=meta.mixed or c.name, spatial=True, folded=None, flattened=False)
        return meta._replace(spatial=True, folded=None, flattened=False)
    if meta.mixed is not None:
        return meta
    elementwise = (
        out.shape == c.x.shape
        and c.name not in FC_OPS
        and not (c.name in POSITION_MIXERS and _along_last(c))
        and all(m.mixed is None and (m.folded == meta.folded or t.shape[-1] == 1) for t, m in inputs)
    )
    if elementwise:
        merged = meta.geometry
        for _, other in inputs[1:]:
            merged = tuple(a.union(b) for a, b in zip(merged, other.geometry))
        return meta._replace(geometry=merged)
    return globalise(meta, sizes, False)._replace(flattened=True, mixed=c.name)


def moves_pixels(c: OpCall) -> TensorMeta | None:
    """Ops that keep the map's shape but move its pixels (roll, flip, rot90, grid_sample, a gather or an index
    along a spatial axis, a deformable conv): which pixel lands where depends on the op's arguments or its input,
    which one interval per axis cannot hold, so no RF is reported past it. Along the channel axis only, the map's
    geometry is unchanged."""
    dims = {"roll": (2, "dims"), "flip": (1, "dims"), "rot90": (2, "dims"), "index_select": (1, "dim"),
            "gather": (1, "dim"), "take_along_dim": (2, "dim")}.get(c.name)  # fmt: skip
    if dims is not None:
        default = (0, 1) if c.name == "rot90" else None
        given = arg(c.args, c.kwargs, dims[0], dims[1], default)
        given = [given] if isinstance(given, int) else list(given) if given is not None else None
        spatial = set(range(c.x.dim() - c.k, c.x.dim()))
        if given is not None and not {d % c.x.dim() for d in given} & spatial:
            return c.meta
    return c.meta._replace(lost=c.name)


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
    (PIXEL_MOVERS, moves_pixels),
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
    if c.meta.folded is not None:
        return through_folded(c, inputs)
    k, out = c.k, c.out
    out_sizes = list(out.shape[-k:])
    inputs = sorted(inputs, key=lambda item: list(item[0].shape[-k:]) != out_sizes)
    x, meta = inputs[0]
    in_sizes = list(x.shape[-k:])
    merged, head = meta.geometry, meta.head
    for t, other in inputs[1:]:
        if t.dim() >= k and all(n == 1 for n in t.shape[-k:]) and any(o > 1 for o in out_sizes):
            continue
        merged = tuple(a.union(b) for a, b in zip(merged, other.geometry))
        if other.head is not None:  # two heads meet (cat of two GAPs): the output sees what both saw
            head = other.head if head is None else tuple(max(a, b) for a, b in zip(head, other.head))
    meta = meta._replace(geometry=merged, head=head, flattened=any(m.flattened for _, m in inputs))
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
        # A reshape keeps the positions as features (a layer on them is fully connected); a reduction does not.
        positions = c.name in RESHAPE_OPS and any(n > 1 for n in in_sizes)
        return globalise(meta, in_sizes, False)._replace(flattened=positions)
    if still_spatial:
        return meta._replace(lost=c.name)  # an op the tracer cannot map: no RF is reported past it
    return meta._replace(spatial=False)


WINDOW_OPS = CONV_OPS | CONV_T_OPS | POOL_OPS


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
    if c.name in WINDOW_OPS and sorted(dims) == list(range(x.dim() - c.k, x.dim())):
        # A conv or pool between two transposes: its kernel's axes are the original axes in swapped order.
        order = [dims.index(d) for d in range(x.dim() - c.k, x.dim())]  # the original axis at each position
        shown = meta._replace(geometry=tuple(meta.geometry[i] for i in order), moved=None)
        found = SPATIAL_RULES[c.name](c._replace(meta=shown))
        if found is None or found.lost:
            return meta._replace(lost=c.name)
        back = [None] * c.k
        for position, axis in enumerate(order):
            back[axis] = found.geometry[position]
        return found._replace(geometry=tuple(back), moved=dims)
    keeps_spatial = out.dim() == x.dim() and all(out.shape[d] == x.shape[d] for d in dims)
    if same_layout and keeps_spatial and (out.shape == x.shape or x.dim() - 1 not in dims):
        merged = meta.geometry
        for _, other in inputs[1:]:
            merged = tuple(a.union(b) for a, b in zip(merged, other.geometry))
        return meta._replace(geometry=merged)  # elementwise, or along the channel axis (LayerNorm, Linear)
    return meta._replace(lost=c.name)
