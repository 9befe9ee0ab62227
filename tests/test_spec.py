import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mnist_challenge import ArchSpec, ConvBlock, UserError, build_model, count_params, load_spec
from mnist_challenge.architecture.spec import (
    BATCHNORM_CHOICES,
    BLOCK_KINDS,
    DILATION,
    DROPOUT_PLACES,
    HEAD_CHOICES,
    PADDED_KINDS,
    POOL_ONLY,
)


@st.composite
def specs(draw, max_channels: int = 24, input_size: int = 28) -> ArchSpec:
    """Random *valid* specs: keep drawing blocks while the feature map still has room."""
    n_blocks = draw(st.integers(1, 3))
    side = input_size - 2 * (1 - (stem_padding := draw(st.integers(0, 1))))
    blocks = []
    for _ in range(n_blocks):
        kind = draw(st.sampled_from(BLOCK_KINDS))
        padding = 1 if kind in PADDED_KINDS else draw(st.integers(0, 1))
        max_convs = 3 if padding else max(0, min(3, (side - 1) // (2 * DILATION[kind])))
        if max_convs == 0:
            break
        low = 2 if kind == "branch" else 1
        channels = draw(st.lists(st.integers(low, max(low, max_channels)), min_size=1, max_size=max_convs))
        if kind == "shared":
            channels = [channels[0]] * len(channels)
        side -= 0 if padding else 2 * DILATION[kind] * len(channels)
        transition = draw(st.none() | st.integers(1, max_channels) | st.just(POOL_ONLY)) if side >= 2 else None
        side = side // 2 if transition else side
        residual = draw(st.booleans()) and kind != "dense"
        blocks.append(ConvBlock(channels, padding, residual, transition, kind))
    if not blocks:
        blocks = [ConvBlock([4], 1)]
    return ArchSpec(
        blocks=tuple(blocks),
        stem_channels=draw(st.integers(1, max_channels)),
        stem_padding=stem_padding,
        batchnorm=draw(st.sampled_from(BATCHNORM_CHOICES)),
        dropout=draw(st.sampled_from([0.0, 0.05, 0.1])),
        dropout_at=draw(st.sampled_from(DROPOUT_PLACES)),
        head=draw(st.sampled_from(HEAD_CHOICES)),
        input_size=input_size,
    )


@settings(max_examples=60, deadline=None)
@given(specs())
def test_json_round_trip_is_exact(spec):
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec
    assert json.loads(again.to_json()) == json.loads(spec.to_json())


@settings(max_examples=30, deadline=None)
@given(specs())
def test_built_models_never_contain_linear_and_output_log_probs(spec):
    import torch

    model = build_model(spec).eval()
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


def test_presets_are_in_their_budgets():
    assert 10_000 <= count_params(build_model(load_spec("classic"))) <= 14_000
    assert count_params(build_model(load_spec("compact"))) <= 8_000
    assert count_params(build_model(load_spec("tiny"))) <= 5_000


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"blocks": [{"channels": [8]}], "colour": "red"}', "unknown field(s) ['colour']"),
        ('{"blocks": [{"channels": [8], "kernel": 5}]}', "block 1 has unknown field(s) ['kernel']"),
        ('{"blocks": [{"channels": [0]}]}', "block channels must be an integer in [1,"),
        ('{"blocks": [{"channels": [-4]}]}', "block channels must be an integer in [1,"),
        ('{"blocks": [{"channels": [8]}], "stem_channels": 0}', "stem_channels must be an integer in [1,"),
        ('{"blocks": []}', "at least one block"),
        ('{"stem_channels": 8}', "missing the required field 'blocks'"),
        ('{"blocks": [{"channels": [8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]}]}', "below 1x1"),
        (
            '{"blocks": [' + ", ".join(['{"channels": [8], "padding": 1, "transition": 8}'] * 5) + "]}",
            "below 1x1",
        ),
        ('{"blocks": [{"channels": [8]}], "batchnorm": "sometimes"}', "batchnorm must be one of"),
        ('{"blocks": [{"channels": [8]}], "dropout": 1.5}', "dropout must be in [0, 1)"),
        ('{"blocks": [{"channels": [8], "padding": 2}]}', "padding must be 0 or 1"),
        ('{"blocks": [{"channels": "eight"}]}', "must be a list of integers"),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(text, fragment):
    with pytest.raises(UserError) as info:
        ArchSpec.from_json(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_spec_is_frozen():
    spec = load_spec("classic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.stem_channels = 3  # type: ignore[misc]


def test_a_pool_only_transition_keeps_the_channels_and_adds_no_parameters():
    squeezed = ArchSpec(blocks=(ConvBlock([8, 8], 1, transition=8), ConvBlock([8], 1)))
    pooled = ArchSpec(blocks=(ConvBlock([8, 8], 1, transition=POOL_ONLY), ConvBlock([8], 1)))
    assert ArchSpec.from_dict(json.loads(pooled.to_json())) == pooled  # "transition": "pool" in JSON
    assert [s for s in pooled.feature_sizes() if s[0] == "transition1"] == [("transition1", 8, 13)]  # 26 px / 2
    model, with_squeeze = build_model(pooled), build_model(squeezed)
    squeeze_params = sum(p.numel() for p in with_squeeze.transition1.parameters())
    assert squeeze_params > 0 and count_params(with_squeeze) - count_params(model) == squeeze_params
    assert list(model.transition1.parameters()) == []
    with pytest.raises(UserError, match='"pool" for the pool alone'):
        ConvBlock([8], 1, transition="squeeze")
