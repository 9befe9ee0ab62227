"""The engine's speed tricks compute what the plain layers compute."""

import pytest
import torch
from torch import nn

from mnist_challenge import build_model, load_spec
from mnist_challenge.engine import fast
from mnist_challenge.engine.fast import MaxPool2x2, PooledDropout, speed_up
from tests.test_fused import require_kernels


@pytest.fixture(params=[True, False], ids=["native-kernel", "strided-views"])
def pool_path(request, monkeypatch):
    """Run a max-pool test on the C kernel, then again on the strided-view fallback."""
    if request.param:
        require_kernels()
    else:
        monkeypatch.setattr(fast, "load_kernels", lambda: None)


@pytest.fixture(params=["nchw", "channels_last"])
def layout(request) -> torch.memory_format:
    return torch.channels_last if request.param == "channels_last" else torch.contiguous_format


@pytest.mark.parametrize("shape", [(4, 3, 22, 22), (2, 5, 11, 11), (3, 2, 9, 14), (1, 1, 2, 2), (2, 17, 7, 9)])
def test_fast_maxpool_matches_aten_including_ties(shape, pool_path, layout):
    x = torch.randn(*shape).relu().round().contiguous(memory_format=layout)  # zeros and rounding make ties common
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    out_fast, out_ref = MaxPool2x2()(a), nn.functional.max_pool2d(b, 2)
    out_fast.backward(grad)
    out_ref.backward(grad)
    assert torch.equal(out_fast, out_ref)
    assert torch.equal(a.grad, b.grad)
    assert out_fast.is_contiguous(memory_format=layout)


def test_fast_maxpool_propagates_nan_like_aten(pool_path, layout):
    x = torch.randn(2, 3, 6, 8).contiguous(memory_format=layout)
    x[0, 1, 2, 3] = x[1, 2, 5, 6] = float("nan")
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fast, out_ref = MaxPool2x2()(a), nn.functional.max_pool2d(b, 2)
    assert torch.equal(out_fast.isnan(), out_ref.isnan()) and out_fast.isnan().sum() == 2
    grad = torch.randn_like(out_ref)
    out_fast.backward(grad)
    out_ref.backward(grad)
    assert torch.equal(a.grad, b.grad)  # the gradient goes to the NaN, as in ATen


def test_pooled_dropout_keeps_1_minus_p_and_rescales():
    drop = PooledDropout(0.2, generator=torch.Generator().manual_seed(0))
    x = torch.ones(64, 8, 12, 12)
    outs = torch.stack([drop(x) for _ in range(200)])
    kept = (outs != 0).float().mean().item()
    assert abs(kept - 0.8) < 0.01
    assert torch.allclose(outs[outs != 0], torch.tensor(1 / 0.8))
    assert abs(outs.mean().item() - 1.0) < 0.02  # unbiased, like nn.Dropout
    assert not torch.equal(outs[0], outs[1])  # masks change from call to call
    drop.eval()
    assert torch.equal(drop(x), x)


def test_speed_up_swaps_parameter_free_layers_only():
    model = build_model(load_spec("classic"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swapped = speed_up(model, pooled_dropout=True, fast_maxpool=True)
    assert swapped == {
        "fused_tail": 0,
        "pooled_dropout": 8,
        "fast_maxpool": 1,
        "cl_weight_grad": 0,
    }
    assert model.state_dict().keys() == before.keys()
    assert not any(type(m) in (nn.Dropout, nn.MaxPool2d) for m in model.modules())


def test_speed_up_fuses_every_conv_unit_tail_and_keeps_the_state_dict():
    model = build_model(load_spec("classic"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swapped = speed_up(model, pooled_dropout=True, fast_maxpool=True, fused_tail=True, cl_weight_grad=True)
    # one tail per conv unit; the two 3x3 convs reading 10 channels get channels_last weight gradients
    assert swapped == {
        "fused_tail": 8,
        "pooled_dropout": 0,
        "fast_maxpool": 1,
        "cl_weight_grad": 2,
    }
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(type(m) in (nn.Dropout, nn.ReLU, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("bias,padding", [(False, 0), (True, 1)])
def test_channels_last_weight_grad_conv_matches_conv2d(bias, padding):
    torch.manual_seed(0)
    plain = nn.Conv2d(10, 16, 3, padding=padding, bias=bias)
    swapped = nn.Conv2d(10, 16, 3, padding=padding, bias=bias)
    swapped.load_state_dict(plain.state_dict())
    assert (
        speed_up(nn.Sequential(swapped), pooled_dropout=False, fast_maxpool=False, cl_weight_grad=True)[
            "cl_weight_grad"
        ]
        == 1
    )
    assert type(swapped) is fast.ConvWeightGradChannelsLast
    x = torch.randn(8, 10, 13, 13)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_plain, out_swapped = plain(a), swapped(b)
    torch.testing.assert_close(out_swapped, out_plain)
    grad = torch.randn_like(out_plain)
    out_plain.backward(grad)
    out_swapped.backward(grad)
    torch.testing.assert_close(b.grad, a.grad)
    for p_swapped, p_plain in zip(swapped.parameters(), plain.parameters()):
        torch.testing.assert_close(p_swapped.grad, p_plain.grad, rtol=1e-4, atol=1e-4)
