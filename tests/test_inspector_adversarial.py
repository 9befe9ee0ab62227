"""The inspector on adversarial models (issue #26), each against an independent reference: the gradient footprint per
axis (the widest over every output unit), ``numel`` and perturbation for parameter use, ``FlopCounterMode`` or a hand
count for MACs; or, where the tracer cannot map an op, an explicit "RF not tracked past <op>"."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnist_challenge.architecture.inspector import format_report, inspect_module
from mnist_challenge.cli.main import main as kit

from .conftest import assert_one_error_line, call, run_cli
from .test_inspector import linearised


def footprint_axes(model: nn.Module, in_ch: int, side: int) -> list[int]:
    """Per axis (H, W), the widest input extent any unit of the output map depends on (gradient footprint of the
    linearised model: positive weights, ReLU as identity, so every path passes gradient)."""
    body = linearised(model)
    x = torch.ones(1, in_ch, side, side, dtype=torch.float64, requires_grad=True)
    out = body(x)
    widest = [0, 0]
    rows, cols = out.shape[-2], out.shape[-1]
    # a central window of units: every phase of an upsampled or adaptive map, away from the image border
    for h in range(max(0, rows // 2 - 3), min(rows, rows // 2 + 3)):
        for w in range(max(0, cols // 2 - 3), min(cols, cols // 2 + 3)):
            (grad,) = torch.autograd.grad(out[0, :, h, w].sum(), x, retain_graph=True)
            for axis, dims in ((0, (0, 2)), (1, (0, 1))):
                hit = torch.nonzero(grad[0].abs().sum(dim=dims))
                if hit.numel():
                    widest[axis] = max(widest[axis], int(hit.max() - hit.min() + 1))
    return widest


def flop_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, *input_size))
    return counter.get_total_flops() // 2


# --- 1. reading a parameter's attributes is not using it --------------------------------------------------------
class Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.probe = nn.Parameter(torch.zeros(1000))

    def forward(self, x):
        x = x.to(self.probe.device, self.probe.dtype)
        if self.probe.requires_grad and self.probe.shape[0] == 1000 and self.probe.dim() == 1:
            x = x + 0
        return self.conv(x).mean((2, 3))


def test_reading_a_parameters_device_shape_or_flag_is_not_using_it():
    model = Probe()
    report = inspect_module(model, (1, 28, 28))
    assert report.params_unused == model.probe.numel() == 1000
    x = torch.randn(1, 1, 28, 28)
    before = model(x)
    with torch.no_grad():
        model.probe.add_(5.0)  # perturbing it changes nothing: unused
    assert torch.equal(model(x), before)
    assert report.params == 40


# --- 2. fully connected layers, however disguised ----------------------------------------------------------------
class MaskedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(10, 4 * 13 * 13))
        self.register_buffer("mask", (torch.rand(10, 4 * 13 * 13) > 0.5).float())

    def forward(self, m, f):
        return F.linear(f.flatten(1), self.W * self.mask)


def _spectral(m, f):
    return f.flatten(1) @ m.holder.weight.T


def _mv(m, f):
    return torch.mv(m.W, f.flatten(1)[0]).unsqueeze(0)


def _multi_dot(m, f):
    return torch.linalg.multi_dot([f.flatten(1), m.W.T, m.W2])


def _mul_sum(m, f):
    return f.flatten(1).unsqueeze(1).mul(m.W).sum(-1)


def _view_1x1(m, f):
    return m.wide(f.flatten(1).view(1, -1, 1, 1)).flatten(1)


def _conv1d(m, f):
    return m.line(f.flatten(1).unsqueeze(1)).flatten(1)


def _valid_conv(m, f):
    return m.whole(f).flatten(1)  # a 13x13 conv on the 13x13 map: a conv, not an FC layer


class Disguised(nn.Module):
    def __init__(self, how) -> None:
        super().__init__()
        features = 4 * 13 * 13
        self.how = how
        self.conv = nn.Conv2d(1, 4, 3)
        self.W = nn.Parameter(torch.randn(10, features))
        self.W2 = nn.Parameter(torch.randn(10, 10))
        self.holder = nn.Module()
        self.holder.weight = nn.Parameter(torch.randn(10, features))
        nn.utils.parametrizations.spectral_norm(self.holder, "weight")
        self.wide = nn.Conv2d(features, 10, 1)
        self.line = nn.Conv1d(1, 10, features)
        self.whole = nn.Conv2d(4, 10, 13)
        self.masked = MaskedLinear()

    def forward(self, x):
        f = F.max_pool2d(self.conv(x), 2)
        return self.masked(self, f) if self.how == "masked" else self.how(self, f)


@pytest.mark.parametrize("how", ["masked", _spectral, _mv, _multi_dot, _mul_sum, _view_1x1, _conv1d])
def test_a_fully_connected_layer_is_flagged_however_it_is_disguised(how):
    report = inspect_module(Disguised(how), (1, 28, 28))
    assert report.has_linear and report.linear_layers, getattr(how, "__name__", how)


def test_a_valid_conv_covering_the_whole_map_stays_a_conv():
    report = inspect_module(Disguised(_valid_conv), (1, 28, 28))
    assert not report.has_linear and report.linear_layers == []


# --- 3. MACs -----------------------------------------------------------------------------------------------------
def _einsum(m, f):
    return torch.einsum("nchw,kchw->nk", f, m.K)


def _tensordot(m, f):
    return torch.tensordot(f, m.K, dims=([1, 2, 3], [1, 2, 3]))


def _inner(m, f):
    return torch.inner(f.flatten(1), m.K.flatten(1))


def _matvec(m, f):
    return (f.flatten(1) @ m.v).unsqueeze(1)


class Products(nn.Module):
    def __init__(self, how) -> None:
        super().__init__()
        self.how, self.conv = how, nn.Conv2d(1, 4, 3)
        self.K = nn.Parameter(torch.randn(19, 4, 13, 13))
        self.W = nn.Parameter(torch.randn(10, 676))
        self.W2 = nn.Parameter(torch.randn(10, 10))
        self.v = nn.Parameter(torch.randn(676))

    def forward(self, x):
        return self.how(self, F.max_pool2d(self.conv(x), 2))


@pytest.mark.parametrize("how", [_einsum, _tensordot, _inner, _multi_dot])
def test_macs_of_every_product_match_the_flop_counter(how):
    model = Products(how)
    report = inspect_module(model, (1, 28, 28))
    assert report.macs == flop_macs(model, (1, 28, 28)), how.__name__
    assert report.has_linear


@pytest.mark.parametrize("how, product", [(_mv, 10 * 676), (_matvec, 676)])
def test_macs_of_matrix_vector_products_by_hand(how, product):  # the flop counter does not count mv
    report = inspect_module(Products(how), (1, 28, 28))
    assert report.macs == 26 * 26 * 4 * 9 + product and report.has_linear


def test_bilinear_and_deformable_conv_macs_by_hand():
    from torchvision.ops import deform_conv2d

    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.W = nn.Conv2d(1, 4, 3), nn.Parameter(torch.randn(10, 4, 4))

        def forward(self, x):
            y = self.conv(x)
            return F.bilinear(y.mean((2, 3)), y.amax((2, 3)), self.W)

    class Deformable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.weight = nn.Conv2d(1, 4, 3), nn.Parameter(torch.randn(6, 4, 3, 3))
            self.offsets = nn.Conv2d(4, 18, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return deform_conv2d(y, self.offsets(y), self.weight, padding=1)

    conv = 26 * 26 * 4 * 9
    assert inspect_module(Bilinear(), (1, 28, 28)).macs == conv + 10 * 4 * (4 + 1)  # per output: W_o x2, then . x1
    report = inspect_module(Deformable(), (1, 28, 28))
    assert report.macs == conv + 26 * 26 * 18 * 36 + 26 * 26 * 6 * 36  # the offsets' conv, then the deformable one
    assert report.rf_untracked_past == "deform_conv2d"


# --- 4. spatial ops that keep the shape ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "op, name",
    [
        (lambda y: y + torch.roll(y, 3, -1), "roll"),
        (lambda y: y + y.flip(-1), "flip"),
        (lambda y: F.grid_sample(y, torch.zeros(1, *y.shape[-2:], 2), align_corners=False), "grid_sample"),
    ],
)
def test_ops_that_move_pixels_are_reported_not_tracked(op, name):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), Lambda(op), nn.Conv2d(2, 2, 3))
    report = inspect_module(model, (1, 28, 28))
    assert report.rf_untracked_past == name and report.receptive_field_head is None
    assert f"RF not tracked past {name}" in format_report(report)
    channel_flip = nn.Sequential(nn.Conv2d(1, 2, 3), Lambda(lambda y: y + y.flip(1)), nn.Conv2d(2, 2, 3))
    assert inspect_module(channel_flip, (1, 28, 28)).receptive_field_head == 5  # flipping channels moves no pixel


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class TransposedRow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.row = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, (1, 7), padding=(0, 3))

    def forward(self, x):
        return self.row(self.conv(x).transpose(2, 3)).transpose(2, 3)  # the (1, 7) kernel runs along H


def test_a_conv_between_two_transposes_acts_on_the_swapped_axes():
    model = TransposedRow()
    report = inspect_module(model, (1, 32, 32))
    assert report.receptive_field_head_axes == [9, 3] == footprint_axes(model, 1, 32)


# --- 6. adaptive pooling windows ---------------------------------------------------------------------------------
@pytest.mark.parametrize("out_size, rf", [(2, 18), (3, 16)])  # windows of 4 and 3 units (7 -> 2: [0-3], [3-6])
def test_adaptive_pool_windows_are_as_wide_as_torch_makes_them(out_size, rf):
    body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))  # 24 -> 7x7
    model = nn.Sequential(*body, nn.AdaptiveAvgPool2d(out_size), nn.Conv2d(2, 2, 1))
    report = inspect_module(model, (1, 24, 24))
    assert report.layers[-1].rf == rf == max(footprint_axes(model, 1, 24))


# --- 7. merges of heads ----------------------------------------------------------------------------------------------
class TwoHeads(nn.Module):
    def __init__(self, order, bilinear=False) -> None:
        super().__init__()
        self.order, self.bilinear = order, bilinear
        self.shallow = nn.Conv2d(1, 4, 3)
        self.deep = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
        self.W = nn.Parameter(torch.randn(10, 4, 4))

    def forward(self, x):
        heads = [self.shallow(x).mean((2, 3)), self.deep(x).mean((2, 3))][:: self.order]
        return F.bilinear(*heads, self.W) if self.bilinear else torch.cat(heads, 1)


@pytest.mark.parametrize("order, bilinear", [(1, False), (-1, False), (1, True)])
def test_at_a_merge_of_two_heads_the_head_rf_is_the_wider_one(order, bilinear):
    assert inspect_module(TwoHeads(order, bilinear), (1, 28, 28)).receptive_field_head == 9


# --- 8. interpolation taps ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "resize, kernel, rf",
    [
        (lambda y: F.interpolate(y, scale_factor=0.5, mode="area"), 3, [8, 8]),  # = avg_pool2d(2)
        (lambda y: F.interpolate(y, scale_factor=0.5, mode="bilinear", antialias=True), 3, [10, 10]),  # 4 taps
        (lambda y: F.interpolate(y, size=(2 * y.shape[-2], y.shape[-1]), mode="bilinear"), 3, [5, 5]),  # H only
        (lambda y: F.interpolate(y, scale_factor=2, mode="nearest"), 4, [5, 5]),  # whole pixels: the widest phase
        (lambda y: F.interpolate(y, scale_factor=3, mode="nearest"), 3, [4, 4]),
    ],
)
def test_interpolation_then_a_conv_sees_what_the_gradient_footprint_shows(resize, kernel, rf):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Lambda(resize), nn.Conv2d(2, 2, kernel))
    report = inspect_module(model, (1, 24, 24))
    assert report.layers[-1].rf_axes == rf == footprint_axes(model, 1, 24)


# --- 9. usable output ------------------------------------------------------------------------------------------------
def test_prints_scripted_modules_and_dict_outputs(tmp_path):
    source = tmp_path / "models.py"
    source.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Noisy(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        print('building')\n"
        "        self.conv = nn.Conv2d(1, 10, 3)\n"
        "    def forward(self, x):\n        print('shape', x.shape)\n        return self.conv(x).mean((2, 3))\n\n"
        "class Both(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.a, self.b = nn.Conv2d(1, 10, 3), nn.Conv2d(1, 10, 5)\n"
        "    def forward(self, x):\n"
        "        return {'aux': self.a(x).mean((2, 3)), 'logits': self.b(x).mean((2, 3))}\n\n"
        "def Scripted():\n    return nn.Sequential(torch.jit.script(nn.Conv2d(1, 10, 3)), nn.Flatten())\n\n"
        "def ScriptedWhole():\n    return torch.jit.script(nn.Sequential(nn.Conv2d(1, 10, 3), nn.Flatten()))\n"
    )
    result = run_cli("mnist_challenge", "inspect", "--module", f"{source}:Noisy", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["params"] == 100 and "shape" in result.stderr
    code, out, _ = call(kit, "inspect", "--module", f"{source}:Both", "--json")
    report = json.loads(out)
    assert report["receptive_field_head"] == 3 and report["output_used"] == "key 'aux' of the output dict (aux, logits)"
    code, out, _ = call(kit, "inspect", "--module", f"{source}:Both", "--output", "logits")
    assert code == 0 and "RF reported for:" in out and "key 'logits'" in out
    assert "RF at the head's input:         5" in out
    assert_one_error_line(call(kit, "inspect", "--module", f"{source}:Both", "--output", "nope"), "no key 'nope'")
    assert_one_error_line(
        call(kit, "inspect", "--module", f"{source}:Scripted"), "TorchScript modules are not supported"
    )


# --- 5. a flatten and a reshape back ----------------------------------------------------------------------------------
class RoundTrip(nn.Module):
    """3x3 conv, then the map flattened (``flatten(2)``) and brought back in one of several ways, then two 3x3."""

    def __init__(self, how) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3)
        self.theta, self.phi = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        if self.how == "view":
            y = (y.flatten(2) * 2).view(n, c, h, w)
        elif self.how == "unflatten":
            y = torch.relu(y.flatten(2)).unflatten(2, (h, w))
        elif self.how == "channel softmax":  # along channels: the positions stay where they are
            y = torch.softmax(y.flatten(2), 1).view(n, c, h, w)
        elif self.how == "fold":
            y = F.fold(y.flatten(2), (h, w), 1)
        elif self.how == "gather":
            index = torch.arange(h * w).flip(0).expand(n, c, h * w)
            y = y.flatten(2).gather(2, index).view(n, c, h, w)
        else:  # a non-local block: every position attends to every other
            attention = torch.softmax(self.theta(y).flatten(2).transpose(1, 2) @ self.phi(y).flatten(2), -1)
            y = y + (y.flatten(2) @ attention.transpose(1, 2)).view(n, c, h, w)
        return self.c(self.b(y))


@pytest.mark.parametrize("how", ["view", "unflatten", "channel softmax"])
def test_a_round_trip_that_restores_the_map_is_followed(how):
    model = RoundTrip(how)
    report = inspect_module(model, (1, 28, 28))
    assert report.rf_untracked_past is None
    assert [report.layers[-1].rf] * 2 == footprint_axes(model, 1, 28) == [7, 7]


@pytest.mark.parametrize("how, op", [("fold", "fold"), ("gather", "gather"), ("non-local", "matmul")])
def test_a_map_rebuilt_from_mixed_positions_is_reported_not_tracked(how, op):
    report = inspect_module(RoundTrip(how), (1, 28, 28))
    assert report.rf_untracked_past == op and report.receptive_field_head is None
