"""The inspector against independent references: gradient footprints, numel sums, published counts."""

import copy

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from mnist_challenge import ArchSpec, ConvBlock, build_model, load_spec
from mnist_challenge.architecture.inspector import format_report, inspect_module
from mnist_challenge.architecture.loading import torchvision_model, torchvision_published_params

from .test_spec import specs


def linearised(model: nn.Module) -> nn.Module:
    """Same geometry, but every path passes gradient: ReLU -> identity, max-pool -> avg-pool,
    all weights positive. Then d(output unit)/d(input) is non-zero exactly on the unit's receptive field."""
    model = copy.deepcopy(model).double().eval()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (nn.ReLU, nn.Dropout)):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.abs() + 0.1)
    return model


def measured_rf(body: nn.Module, in_ch: int, side: int) -> int:
    """Width of the input region that the centre unit of ``body``'s output depends on."""
    x = torch.ones(1, in_ch, side, side, dtype=torch.float64, requires_grad=True)
    out = body(x)
    h, w = out.shape[-2] // 2, out.shape[-1] // 2
    out[0, :, h, w].sum().backward()
    rows = torch.nonzero(x.grad[0].abs().sum(dim=(0, 2)))
    cols = torch.nonzero(x.grad[0].abs().sum(dim=(0, 1)))
    assert rows.numel() and cols.numel()
    assert rows.min() > 0 and rows.max() < side - 1, "footprint clipped by the image border: use a larger input"
    return int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def spec_body(spec: ArchSpec) -> nn.Sequential:
    """The spec's model up to the head's input: the map global average pooling reads."""
    model = build_model(spec)
    layers = [m for name, m in model.named_children() if name != "head"]
    if spec.head != "gap_conv":  # the head's conv comes before GAP and widens what each unit sees
        layers.append(model.head[0])
    return nn.Sequential(*layers)


@settings(max_examples=25, deadline=None)
@given(specs(max_channels=4, input_size=128))  # room for dilated blocks after two pools (RF up to ~100)
def test_head_rf_matches_gradient_footprint_for_random_specs(spec):
    report = inspect_module(build_model(spec), (1, spec.input_size, spec.input_size))
    assert report.receptive_field_head == measured_rf(linearised(spec_body(spec)), 1, spec.input_size)


@settings(max_examples=40, deadline=None)
@given(specs(max_channels=6))
def test_params_and_macs_of_every_block_kind_match_numel_and_flop_counter(spec):
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(spec).eval()
    report = inspect_module(model, (1, 28, 28))
    assert report.params == sum(p.numel() for p in model.parameters()) and report.params_unused == 0
    assert spec.conv_weights() == sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, 28, 28))
    assert report.macs == counter.get_total_flops() // 2  # the flop counter counts a multiply-add as two


@pytest.mark.parametrize(
    "kind, weights, rf",
    [
        ("conv", 9 * 8 * 12 + 9 * 12 * 12, 3 + 2 + 2),  # stem 3x3, then two 3x3: RF 7
        ("separable", (9 * 8 + 8 * 12) + (9 * 12 + 12 * 12), 3 + 2 + 2),  # depthwise 3x3 + 1x1: same RF, fewer weights
        ("dilated", 9 * 8 * 12 + 9 * 12 * 12, 3 + 4 + 4),  # dilation 2: each 3x3 spans 5 pixels
    ],
)
def test_each_block_kind_has_the_published_weights_and_rf(kind, weights, rf):
    spec = ArchSpec(
        blocks=(ConvBlock((12, 12), padding=1, kind=kind),), stem_channels=8, batchnorm="none", head="conv_gap"
    )
    model = build_model(spec)
    body = [m for m in model.block1.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.weight.numel() for m in body) == weights
    report = inspect_module(model, (1, 28, 28))
    assert report.receptive_field_head == rf == measured_rf(linearised(spec_body(spec)), 1, 28)
    assert report.params == sum(p.numel() for p in model.parameters())


def test_a_3x3_head_widens_the_rf_at_gap_and_old_spec_files_load_unchanged():
    spec = load_spec("tiny")
    wider = ArchSpec.from_dict({**spec.to_dict(), "head": "conv3_gap"})
    a, b = inspect_module(build_model(spec), (1, 28, 28)), inspect_module(build_model(wider), (1, 28, 28))
    assert b.receptive_field_head == a.receptive_field_head + 2 * 2  # one more 3x3 at jump 2 (tiny pools once)
    old = {
        **spec.to_dict(),
        "blocks": [{k: v for k, v in block.items() if k != "kind"} for block in spec.to_dict()["blocks"]],
    }
    assert ArchSpec.from_dict(old) == spec  # a spec file written before block kinds existed


class TwoPathResidual(nn.Module):
    """Path A (two 3x3 convs, padded: RF 5) + path B (a dilated 3x3 on a cropped map: RF 1 + 2*3 = 7)."""

    def __init__(self) -> None:
        super().__init__()
        self.a1 = nn.Conv2d(1, 3, 3)
        self.a2 = nn.Conv2d(3, 3, 3)
        self.b = nn.Conv2d(1, 3, 3, dilation=3)
        self.pool = nn.MaxPool2d(2)
        self.after = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a2(torch.relu(self.a1(x)))  # side - 4
        b = self.b(x)[..., 1:-1, 1:-1]  # side - 6, then cropped by one per side: side - 8
        return self.after(self.pool(a[..., 2:-2, 2:-2] + b))


def test_residual_model_rf_is_max_over_paths_and_matches_gradient():
    model = TwoPathResidual()
    report = inspect_module(model, (1, 40, 40))
    # A sees 5 px, B 7 px, both centred on the same pixel: the add sees 7; pool(2) -> 8; 3x3 at jump 2 -> 12.
    assert report.receptive_field_head == 12
    assert measured_rf(linearised(model), 1, 40) == 12


def test_rf_after_gap_spans_the_whole_head_map():
    report = inspect_module(build_model(load_spec("classic")), (1, 28, 28))
    # After GAP one unit sees the whole 5x5 head map: head RF + (5 - 1) * jump 2.
    assert report.receptive_field == report.receptive_field_head + 4 * 2


def test_spec_models_are_fully_counted_without_linear():
    model = build_model(load_spec("classic"))
    report = inspect_module(model, (1, 28, 28))
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.params_unused == 0
    assert not report.has_linear
    assert sum(row.params for row in report.layers) == report.params


class SharedAndUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)  # applied twice in forward
        self.spare = nn.Sequential(nn.Conv2d(4, 64, 3), nn.BatchNorm2d(64))  # defined, never called
        self.out = nn.Conv2d(4, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(self.shared(self.first(x)))
        return self.out(x).mean((2, 3))


def test_shared_modules_once_and_unused_modules_separately():
    model = SharedAndUnused()
    used = [model.first, model.shared, model.out]
    expected_used = sum(p.numel() for m in used for p in m.parameters())
    expected_unused = sum(p.numel() for p in model.spare.parameters())
    report = inspect_module(model, (1, 28, 28))
    assert report.params == expected_used
    assert report.params_unused == expected_unused
    assert sorted(report.unused_modules) == ["spare.0", "spare.1"]
    assert [row.name for row in report.layers].count("shared") == 2  # a row per call ...
    assert sum(row.params for row in report.layers) == expected_used  # ... but its weights once
    # torchsummary, the usual reference, counts the shared conv twice:
    import contextlib
    import io

    import torchsummary

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        torchsummary.summary(model, (1, 28, 28), device="cpu")
    line = next(row for row in buffer.getvalue().splitlines() if row.startswith("Total params"))
    assert int(line.split(":")[1].replace(",", "")) == expected_used + sum(p.numel() for p in model.shared.parameters())


def test_linear_is_flagged():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    report = inspect_module(model, (1, 28, 28))
    assert report.has_linear and report.linear_layers == ["3"]
    assert report.macs == 26 * 26 * 4 * 9 + 40


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "squeezenet1_1", "googlenet", "efficientnet_b0"])
def test_torchvision_parameter_counts_match_published(name):
    report = inspect_module(torchvision_model(name), (3, 224, 224))
    # googlenet is built with its auxiliary classifiers, which eval-mode forward never calls: the
    # published count excludes them, and so does ours (they show up as unused instead).
    assert report.params == torchvision_published_params(name)
    assert (report.params_unused > 0) == (name == "googlenet")


def test_vgg16_per_layer_table_and_receptive_field():
    report = inspect_module(torchvision_model("vgg16"), (3, 224, 224))
    with_params = [row.params for row in report.layers if row.params]
    assert with_params == [
        1_792,
        36_928,
        73_856,
        147_584,
        295_168,
        590_080,
        590_080,
        1_180_160,
        2_359_808,
        2_359_808,
        2_359_808,
        2_359_808,
        2_359_808,
        102_764_544,
        16_781_312,
        4_097_000,
    ]
    assert report.params == 138_357_544
    assert report.receptive_field_head == 212  # the textbook VGG-16 value at pool5
    assert report.has_linear
    assert report.macs == pytest.approx(15.47e9, rel=0.01)  # the published 15.5 GMACs


class SpareBesideUsed(nn.Module):
    """One module whose forward uses one of its two parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 1, 3, 3))
        self.spare = nn.Parameter(torch.randn(1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, weight=self.w).mean((2, 3))  # weight as a keyword, too


class FunctionalFC(nn.Module):
    """A fully connected layer written without nn.Linear, in the ways people write one."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(1, 8, 3)
        self.W = nn.Parameter(torch.randn(10, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x).mean((2, 3))
        if self.how == "matmul":
            return f @ self.W.T
        if self.how == "einsum":
            return torch.einsum("bc,kc->bk", f, self.W)
        if self.how == "torch.matmul":
            return torch.matmul(f, self.W.t())
        return torch.nn.functional.linear(f, weight=self.W)


def test_parameter_use_is_tracked_per_tensor():
    report = inspect_module(SpareBesideUsed(), (1, 28, 28))
    assert report.params == 36 and report.params_unused == 1000 and report.macs == 26 * 26 * 4 * 9


@pytest.mark.parametrize("how", ["matmul", "einsum", "torch.matmul", "linear"])
def test_a_fully_connected_layer_is_flagged_however_it_is_written(how):
    report = inspect_module(FunctionalFC(how), (1, 28, 28))
    assert report.has_linear and report.linear_layers, report.linear_layers
    assert report.params == 80 + 80 and report.params_unused == 0  # W is used, not "unused"


def test_a_1x1_conv_after_gap_is_not_a_fully_connected_layer():
    for head in ("gap_conv", "conv_gap"):
        spec = load_spec("tiny")
        report = inspect_module(build_model(ArchSpec.from_dict({**spec.to_dict(), "head": head})), (1, 28, 28))
        assert not report.has_linear and report.linear_layers == []


class PoolThenConv(nn.Module):
    """A functional pool (tuple kernel, no stride, or an LP pool) or an upsampling, then a 3x3 conv."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.first = nn.Conv2d(1, 2, 3)
        self.lp = nn.LPPool2d(2, 3)
        self.conv = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        if self.how == "tuple_kernel":
            x = torch.nn.functional.avg_pool2d(
                x, (2, 4)
            )  # stride defaults to the kernel, per axis (avg: all of the window passes gradient)
        elif self.how == "lp_module":
            x = self.lp(x)
        elif self.how == "lp_functional":
            x = torch.nn.functional.lp_pool2d(x, 2.0, 2)
        else:
            x = torch.nn.functional.interpolate(x, scale_factor=2, mode=self.how)
        return self.conv(x)


@pytest.mark.parametrize("how", ["tuple_kernel", "lp_module", "lp_functional", "nearest", "bilinear", "bicubic"])
def test_pools_and_upsampling_match_the_gradient_footprint(how):
    model = PoolThenConv(how)
    report = inspect_module(model, (1, 40, 40))
    assert report.layers[-1].rf == measured_rf(linearised(model), 1, 40)


def test_transposed_conv_macs_match_the_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.ConvTranspose2d(6, 2, 2)
    )
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, 28, 28))
    assert inspect_module(model, (1, 28, 28)).macs == counter.get_total_flops() // 2


class LayoutThenConv(nn.Module):
    """3x3 conv, a layout change that keeps every pixel where it is (or moves it exactly), 3x3 conv."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.first = nn.Conv2d(1, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.mix = nn.Linear(4, 4)
        self.last = nn.Conv2d(1 if how == "pixel_shuffle" else 16 if how == "pixel_unshuffle" else 4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        if self.how == "nhwc":  # a ConvNeXt-style channels-last block: LayerNorm and Linear over channels
            x = self.mix(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        elif self.how == "shuffle":  # ShuffleNet's channel shuffle
            b, c, h, w = x.shape
            x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        else:
            x = getattr(torch.nn.functional, self.how)(x, 2)
        return self.last(x)


@pytest.mark.parametrize("how", ["nhwc", "shuffle", "pixel_shuffle", "pixel_unshuffle"])
def test_layout_changes_are_followed_through(how):
    model = LayoutThenConv(how)
    report = inspect_module(model, (1, 32, 32))
    assert report.rf_untracked_past is None
    assert report.receptive_field_head == measured_rf(linearised(model), 1, 32)  # NHWC round trip: 5, not 3


class SqueezeExcitationThenValidConv(nn.Module):
    """The SE block's own GAP is not the network's head: a valid conv to 1x1 at the end sees the whole image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.squeeze = nn.Conv2d(4, 4, 1)
        self.to_one = nn.Conv2d(4, 10, 26)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x * torch.sigmoid(self.squeeze(x.mean((2, 3), keepdim=True)))
        return self.to_one(x).flatten(1)


def test_the_head_rf_follows_the_output_path_not_the_last_gap():
    report = inspect_module(SqueezeExcitationThenValidConv(), (1, 28, 28))
    assert report.receptive_field_head == 28


class Untrackable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.unfold(self.conv(x), 3).sum(-1)


def test_an_op_the_tracer_cannot_follow_is_reported_not_guessed():
    report = inspect_module(Untrackable(), (1, 28, 28))
    assert (
        report.rf_untracked_past == "unfold" and report.receptive_field_head is None and report.receptive_field is None
    )
    assert "RF not tracked past unfold" in format_report(report)


@pytest.mark.parametrize("name, head_rf", [("shufflenet_v2_x1_0", 527), ("convnext_tiny", 1688)])
def test_torchvision_models_with_layout_changes_get_their_true_head_rf(name, head_rf):
    assert inspect_module(torchvision_model(name), (3, 224, 224)).receptive_field_head == head_rf


class TokensThroughAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(1, 8, 4, stride=4)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)  # 49 tokens of 8 features
        return self.attention(tokens, tokens, tokens, need_weights=False)[0].mean(1)


def test_attention_counts_its_projections_and_matmuls_and_uses_out_proj():
    report = inspect_module(TokensThroughAttention(), (1, 28, 28))
    tokens, width = 49, 8
    attention = 3 * tokens * width * width + 2 * tokens * tokens * width + tokens * width * width
    assert report.macs == 49 * 8 * 16 + attention  # the patch conv, then q/k/v, q @ k^T, weights @ v, out_proj
    assert report.unused_modules == [] and report.params_unused == 0


@pytest.mark.parametrize("name", ["vit_b_16", "resnet18"])
def test_torchvision_macs_match_the_published_operation_counts(name):
    import torchvision

    published = torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"] * 1e9
    assert inspect_module(torchvision_model(name), (3, 224, 224)).macs == pytest.approx(published, rel=2e-3)


def test_axes_that_see_different_extents_are_reported_per_axis():
    model = PoolThenConv("tuple_kernel")  # 3x3, a 2x4 pool, 3x3: H sees 4 + 2 * 2 = 8 rows, W 6 + 2 * 4 = 14 columns
    report = inspect_module(model, (1, 40, 40))
    assert report.layers[-1].rf_axes == [8, 14] and report.receptive_field_head_axes == [8, 14]
    assert report.receptive_field_head == 14 == measured_rf(linearised(model), 1, 40)
    text = format_report(report)
    assert "8x14" in text and "RF at the head's input:         8x14" in text


@pytest.mark.parametrize("kernel, padding, dilation", [(3, 1, 1), (5, 0, 1), (2, 0, 1), (3, 2, 2)])
def test_stride_1_transposed_convs_widen_the_rf_as_the_gradient_footprint_shows(kernel, padding, dilation):
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 2, kernel, padding=padding, dilation=dilation), nn.Conv2d(2, 2, 3)
    )
    report = inspect_module(model, (1, 24, 24))
    assert report.rf_untracked_past is None
    assert report.layers[-1].rf == measured_rf(linearised(model), 1, 24)


def test_a_strided_transposed_conv_is_reported_as_not_tracked():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 2, 3, stride=2), nn.Conv2d(2, 2, 3))
    report = inspect_module(model, (1, 24, 24))
    assert report.rf_untracked_past == "conv_transpose2d (stride > 1)" and report.receptive_field_head is None
