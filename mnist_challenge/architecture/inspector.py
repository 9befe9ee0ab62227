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

The geometry is in ``geometry``; how each op changes it, and its MACs, in ``op_rules`` (a table of small
functions); here, the tracer that applies them to every op of a forward pass, and the report.
"""

from __future__ import annotations

import contextlib
import functools
import io
from contextlib import ExitStack
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from mnist_challenge.architecture.spec import ArchSpec

from mnist_challenge.architecture.geometry import Axis, TensorMeta, as_int, tensors
from mnist_challenge.architecture.loading import pick_output, sample_input, scripted_modules
from mnist_challenge.architecture.macs import macs_of
from mnist_challenge.architecture.op_rules import (
    CONV_OPS,
    FC_OPS,
    META_OPS,
    PRODUCT_OPS,
    QUIET_OPS,
    REDUCE_OPS,
    OpCall,
    follow_moved,
    propagate,
)
from mnist_challenge.architecture.rendering import format_report, report_html


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


@dataclass(repr=False)
class Report:
    """What ``inspect_module`` (and ``summary``) found. Its repr is the table ``inspect`` prints, and in Jupyter or
    Colab it renders as an HTML table; ``as_dict`` is the ``--json`` output."""

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
    linear_unused: list[str] = field(default_factory=list)  # Linear modules the forward never calls (not FC)
    unused_modules: list[str] = field(default_factory=list)
    rf_untracked_past: str | None = None  # the op the tracer could not follow: no RF is reported past it
    receptive_field_head_axes: list[int | float] | None = None  # the head RF along each spatial axis (H, W)
    output_used: str | None = None  # which of several outputs (a dict's key, a tuple's index) the RF is of

    def __repr__(self) -> str:
        return format_report(self)

    def _repr_html_(self) -> str:
        return report_html(self)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["input_size"] = list(self.input_size)
        d["layers"] = [row.as_dict() for row in self.layers]
        return d


class _Tracer(TorchFunctionMode):
    """Propagates geometry through every op and attributes MACs and rows to the running layer."""

    def __init__(self, model: nn.Module, spatial_dims: int) -> None:
        super().__init__()
        self.k = spatial_dims
        self.geo: dict[int, TensorMeta] = {}
        self.used_params: set[int] = set()
        self.param_ids = {id(p) for p in model.parameters()}
        self.stack: list[str] = []  # names of the modules currently running, outermost first
        self.leaf_macs: list[int] = []  # MACs accumulated by the leaf module that is running
        self.rows: list[LayerRow] = []
        # tensors computed from parameters and constants, never from the input (W.T, W * mask, a parametrization)
        self.params_only: dict[int, torch.Tensor] = {}
        self.fc_sites: list[str] = []  # where a parameter met activations in a matmul-like op
        self.weighted: dict[int, torch.Tensor] = {}  # features times a parameter matrix, before their sum

    # --- tensor metadata ---------------------------------------------------------------------------
    def mark(self, t: torch.Tensor, meta: TensorMeta) -> None:
        self.geo[id(t)] = meta._replace(tensor=t)

    def lookup(self, t: torch.Tensor) -> TensorMeta | None:
        entry = self.geo.get(id(t))
        return entry if entry is not None and entry.tensor is t else None

    def rf_of(self, t: Any) -> tuple[int | float | None, int | float | None]:
        """The largest RF and jump over the spatial axes (None past an op the tracer cannot follow)."""
        axes = self.rf_axes(t)
        if axes is None:
            return None, None
        found = self.lookup(t)
        return max(axes), as_int(max(a.jump for a in found.geometry))

    def rf_axes(self, t: Any) -> list[int | float] | None:
        found = self.lookup(t) if isinstance(t, torch.Tensor) else None
        if found is None or found.lost:
            return None
        return [as_int(a.rf) for a in found.geometry]

    # --- the op hook ----------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        outputs = list(tensors(out))
        if name in META_OPS or (name == "__get__" and not outputs):
            return out  # questions about a tensor (.shape, .device, .dtype, .requires_grad), not uses of it
        operands = list(tensors((args, kwargs)))
        for t in operands:
            if id(t) in self.param_ids:
                self.used_params.add(id(t))
        self.note_fc(name, args, operands, outputs)
        if name == "__get__":  # W.T, W.data ...: followed above, no row of its own
            return out
        if not outputs:
            return out
        first = outputs[0]
        inputs = [(t, m) for t in tensors(args) if (m := self.lookup(t)) is not None]
        if inputs:
            lost = next((m for _, m in inputs if m.lost), None)
            if lost is not None:
                meta = lost
            else:
                x, first_meta = inputs[0]
                call = OpCall(name, args, kwargs, x, first_meta, first, self.k)
                meta = follow_moved(call, inputs) if any(m.moved for _, m in inputs) else propagate(call, inputs)
            for t in outputs:
                if t.dim() == first.dim():
                    self.mark(t, meta)
        macs = macs_of(name, args, kwargs, first)
        if len(self.stack) and self.leaf_macs:
            self.leaf_macs[-1] += macs
        elif name not in QUIET_OPS:
            rf, jump = self.rf_of(first)
            where = self.stack[-1] + "." if self.stack else ""
            self.rows.append(
                LayerRow(f"{where}{name}", f"op:{name}", list(first.shape), rf, jump, 0, macs, self.rf_axes(first))
            )
        return out

    def is_param_like(self, t: torch.Tensor) -> bool:
        return id(t) in self.param_ids or self.params_only.get(id(t)) is t

    def note_fc(self, name: str, args: tuple, operands: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Track what is computed from parameters alone, and record a fully connected layer however it is
        written: a matmul-like op of activations and parameters; a conv over features that hold a flattened
        map's positions (``view(N, 784, 1, 1)`` into a 1x1 conv, a ``Conv1d`` as wide as the flattened map);
        features times a parameter matrix, then summed."""
        activations = [t for t in operands if self.lookup(t) is not None]
        from_params = [t for t in operands if self.is_param_like(t)]
        where = f"{self.stack[-1]}.{name}" if self.stack else name
        if from_params and not activations:
            for t in outputs:
                self.params_only[id(t)] = t  # kept alive so that the id is not reused
            return
        if not from_params:
            if name in REDUCE_OPS and operands and self.weighted.get(id(operands[0])) is operands[0]:
                self.fc_sites.append(where)
            return
        if name in FC_OPS:
            self.fc_sites.append(where)
        elif name in CONV_OPS and args and isinstance(args[0], torch.Tensor):
            meta = self.lookup(args[0])
            if meta is not None and meta.flattened:
                self.fc_sites.append(f"{where} (over a flattened map)")
        elif name in PRODUCT_OPS and outputs:
            x = activations[0]
            meta = self.lookup(x)
            if meta is not None and not meta.spatial and max(t.dim() for t in from_params) >= 2:
                if outputs[0].numel() > x.numel():  # each feature meets a row of weights per output
                    self.weighted[id(outputs[0])] = outputs[0]


def inspect_module(model: nn.Module, input_size: tuple[int, ...], output_choice: str | None = None) -> Report:
    """Run one sample of shape ``input_size`` (C, H, W) through ``model`` in eval mode and report. A model that
    returns several outputs (a dict, a tuple) is reported for the first, or the one ``output_choice`` names."""
    scripted = scripted_modules(model)
    if scripted:
        raise ValueError(
            f"TorchScript modules are not supported ({', '.join(scripted[:3])}): their ops run inside the TorchScript "
            "interpreter, where the inspector cannot watch them; inspect the model before torch.jit.script"
        )
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
        first = next(iter(tensors(output)), None)
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
    x = sample_input(model, input_size, random=True)
    tracer.mark(x, TensorMeta(x, tuple(Axis(Fraction(0), Fraction(0), Fraction(1)) for _ in range(k)), True))
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
    chosen, output_used = pick_output(output, output_choice)
    out = next(iter(tensors(chosen)), None)
    rf, _ = tracer.rf_of(out)
    final = tracer.lookup(out) if isinstance(out, torch.Tensor) else None
    untracked = final.lost if final is not None else None
    # The head's input is the map the output's own path last aggregated (GAP, flatten); a net that ends
    # in a map without aggregating (a valid conv down to 1x1) has its output unit's RF there.
    if untracked or final is None:
        head_axes = None
    else:
        head_axes = [as_int(h) for h in final.head] if final.head is not None else tracer.rf_axes(out)
    head_rf = max(head_axes) if head_axes else None
    linear_modules = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Bilinear, nn.LazyLinear))]
    unused_names = {n for n, m in model.named_modules() if not any(id(p) in tracer.used_params for p in m.parameters())}
    # The no-FC rule is about the forward: a Linear defined but never called is reported as unused, not as FC.
    linear = [n for n in linear_modules if n not in unused_names]
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
        linear_unused=[n for n in linear_modules if n in unused_names],
        unused_modules=unused_modules,
        rf_untracked_past=untracked,
        output_used=output_used,
    )


@functools.lru_cache(maxsize=64)
def inspect_spec(spec: ArchSpec) -> Report:
    """The inspection of ``spec``'s network, built and inspected once per process and spec: a search trial's
    rule check, its run's log and its verdict all read this one report (the weights never enter it). The
    report is shared: read it, do not change it."""
    from mnist_challenge.architecture.model import build_model

    return inspect_module(build_model(spec), (spec.in_channels, spec.input_size, spec.input_size))


def torchsummary_table(model: nn.Module, input_size: tuple[int, ...]) -> str:
    """torchsummary's familiar table, captured as text (it prints straight to stdout)."""
    import torchsummary

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        torchsummary.summary(model, input_size, device="cpu")
    return buffer.getvalue()
