"""Engine v3: the engine's nets in either layout, and the folded evaluation copy, compute what the plain layers do.

Every block kind (plain, separable, dilated), residual adds with crops, transitions, every head and every BN
placement: the engine's prepared model (fused tails, native max-pool, channels-last) against the stock
``build_model`` network, outputs, parameter gradients and BN running statistics after a step; and
``inference_copy`` (BN folded into the conv) against the plain model in eval mode.
"""

import json

import pytest
import torch
from torch import nn

from mnist_challenge import build_model
from mnist_challenge.architecture.spec import ArchSpec, ConvBlock
from mnist_challenge.common.errors import UserError
from mnist_challenge.engine.inference import inference_copy
from mnist_challenge.engine.train import TrainConfig, prepare_model
from tests.test_fused import require_kernels

BN_PLACES = ("before_relu", "after_relu", "none")
HEADS = ("gap_conv", "conv_gap", "conv3_gap")


def every_kind_spec(batchnorm: str, head: str, dropout: float = 0.0, dropout_at: str = "none") -> ArchSpec:
    """One net with each block kind, a residual block with a crop, a padded residual block and a transition."""
    return ArchSpec(
        blocks=(
            ConvBlock(channels=(10, 12), kind="separable", residual=True, transition=7),
            ConvBlock(channels=(9, 9), kind="conv", padding=1, residual=True),
            ConvBlock(channels=(11,), kind="dilated"),
        ),
        stem_channels=6,
        stem_padding=1,
        batchnorm=batchnorm,
        head=head,
        dropout=dropout,
        dropout_at=dropout_at,
        name="every-kind",
    )


def randomise_bn(model: nn.Module) -> None:
    """BN statistics and affine parameters away from their initial values, so that folding has work to do."""
    generator = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.3)
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("batchnorm", BN_PLACES)
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_engine_model_matches_the_plain_model_in_training(batchnorm, head, channels_last):
    require_kernels()
    torch.manual_seed(0)
    spec = every_kind_spec(batchnorm, head)
    plain, engine = build_model(spec), build_model(spec)
    engine.load_state_dict(plain.state_dict())
    cfg = TrainConfig(channels_last=channels_last, device="cpu")
    swapped = prepare_model(engine, cfg, torch.device("cpu"))
    assert swapped["fast_maxpool"] == 1
    assert swapped["fused_tail"] == (0 if batchnorm == "none" else 7)  # one per conv unit
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(16, 1, 28, 28)
    out_plain = plain(x)
    out_engine = engine(x.contiguous(memory_format=layout))
    torch.testing.assert_close(out_engine, out_plain, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out_plain)
    out_plain.backward(grad)
    out_engine.backward(grad)
    for (name, p_plain), p_engine in zip(plain.named_parameters(), engine.parameters()):
        torch.testing.assert_close(p_engine.grad, p_plain.grad, rtol=1e-3, atol=1e-4, msg=name)
    for (name, b_plain), b_engine in zip(plain.named_buffers(), engine.buffers()):
        torch.testing.assert_close(b_engine, b_plain, rtol=1e-4, atol=1e-5, msg=name)
    assert engine.state_dict().keys() == plain.state_dict().keys()  # model.pt loads into build_model


@pytest.mark.parametrize("dropout_at", ["every_conv", "block_end"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("batchnorm", BN_PLACES)
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_inference_copy_is_the_plain_model_in_eval(batchnorm, head, dropout_at, channels_last):
    torch.manual_seed(0)
    spec = every_kind_spec(batchnorm, head, dropout=0.1, dropout_at=dropout_at)
    plain = build_model(spec)
    randomise_bn(plain)
    engine = build_model(spec)
    engine.load_state_dict(plain.state_dict())
    prepare_model(engine, TrainConfig(channels_last=channels_last, device="cpu"), torch.device("cpu"))
    fast = inference_copy(engine, channels_last)
    if batchnorm == "before_relu":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # every BN folded
    x = torch.randn(32, 1, 28, 28)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.contiguous(memory_format=layout)), plain.eval()(x), rtol=1e-4, atol=1e-4)
    before = {k: v.clone() for k, v in engine.state_dict().items()}
    inference_copy(engine, channels_last)
    assert all(torch.equal(v, before[k]) for k, v in engine.state_dict().items())  # the model is untouched
    assert engine.training


def test_layout_auto_resolves_per_device_and_old_configs_keep_nchw():
    assert TrainConfig().channels_last == "auto"
    assert TrainConfig().resolved(torch.device("cpu")).channels_last is True
    assert TrainConfig().resolved(torch.device("cuda")).channels_last is False
    assert TrainConfig(channels_last=False).resolved(torch.device("cpu")).channels_last is False
    old = TrainConfig().to_dict()
    v3 = {"channels_last": False, "fold_bn_eval": False}
    for field in v3:
        del old[field]  # a config written before engine v3
    assert TrainConfig.from_dict(old) == TrainConfig(**v3)
    for bad in ("yes", 1, None):
        with pytest.raises(UserError, match="channels_last"):
            TrainConfig(channels_last=bad)


def test_a_run_records_the_layout_it_chose(mnist_dir, tmp_path):
    from mnist_challenge.architecture.spec import load_spec
    from mnist_challenge.runs.experiment import run_experiment

    cfg = TrainConfig(epochs=1, train_subset=256, val_size=256, device="cpu", threads=1)
    result = run_experiment(load_spec("tiny"), cfg, tmp_path / "run", data_dir=mnist_dir, progress=False, echo=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["channels_last"] is True and config["runtime"]["channels_last"] is True
    assert TrainConfig.from_dict(config).channels_last is True  # reproducing it runs the same layout
    assert result.settings["swapped_layers"]["cl_weight_grad"] == 0  # an NCHW trick, off in channels-last
