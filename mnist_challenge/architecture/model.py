"""``build_model(spec)``: turn an ``ArchSpec`` into an ``nn.Module``.

Module names follow the spec (``stem``, ``block1``, ``transition1``, ..., ``head``) so that the
inspector's table and torchsummary read like the spec. No ``nn.Linear`` is ever created.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_challenge.architecture.spec import DILATION, POOL_ONLY, ArchSpec, ConvBlock


class Branches(nn.Module):
    """Convs side by side on the same input, their maps concatenated (a ``branch`` block's unit)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


def conv_unit(
    spec: ArchSpec,
    in_ch: int,
    out_ch: int,
    kernel: int,
    padding: int,
    with_dropout: bool,
    kind: str = "conv",
    shared: nn.Conv2d | None = None,
) -> nn.Sequential:
    """conv -> (BN) -> ReLU -> (BN) -> (dropout), as the spec places them. The conv is ``kind``'s: one
    ``kernel`` conv, a depthwise 3x3 followed by a 1x1 (separable), a 3x3 of dilation 2 (dilated), a 3x3 and a
    dilated 3x3 side by side (branch), or ``shared``, a conv another unit uses too; ``padding`` 1 keeps the
    map's size in each case.

    Convs carry no bias when a BatchNorm follows: BN's own shift makes it redundant parameters. The
    depthwise half of a separable conv has none either: the 1x1 after it is linear too.
    """
    bias = spec.batchnorm == "none"
    if shared is not None:
        layers: list[nn.Module] = [shared]
    elif kind == "separable":
        layers = [
            nn.Conv2d(in_ch, in_ch, 3, padding=padding, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=bias),
        ]
    elif kind == "branch":
        half = out_ch // 2
        layers = [
            Branches(
                nn.Conv2d(in_ch, half, 3, padding=padding, bias=bias),
                nn.Conv2d(in_ch, out_ch - half, 3, padding=2 * padding, dilation=2, bias=bias),
            )
        ]
    else:
        dilation = DILATION[kind]
        layers = [nn.Conv2d(in_ch, out_ch, kernel, padding=padding * dilation, dilation=dilation, bias=bias)]
    if spec.batchnorm == "before_relu":
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU())
    if spec.batchnorm == "after_relu":
        layers.append(nn.BatchNorm2d(out_ch))
    if with_dropout and spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    return nn.Sequential(*layers)


class Block(nn.Module):
    """3x3 conv units at one resolution, with an optional residual connection around them; in a dense block
    each unit reads the concatenation of the block's input and every earlier unit's map."""

    def __init__(self, spec: ArchSpec, block: ConvBlock, in_ch: int) -> None:
        super().__init__()
        every_conv = spec.dropout_at == "every_conv"
        units, shared = [], None
        for j, (cin, out_ch) in enumerate(zip(block.unit_inputs(in_ch), block.channels)):
            if block.kind == "shared" and j == 1:  # the conv every later unit applies again
                shared = nn.Conv2d(cin, out_ch, 3, padding=block.padding, bias=spec.batchnorm == "none")
            units.append(conv_unit(spec, cin, out_ch, 3, block.padding, every_conv, block.kind, shared))
        ch = block.width(in_ch)
        self.convs = nn.Sequential(*units)
        self.dense = block.kind == "dense"
        self.residual = block.residual
        # Unpadded convs shrink the map on each side; the skip path is centre-cropped to match.
        self.crop = block.shrink // 2
        self.proj = nn.Conv2d(in_ch, ch, 1, bias=False) if block.residual and in_ch != ch else None
        self.drop = nn.Dropout(spec.dropout) if spec.dropout_at == "block_end" and spec.dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:  # each unit reads the block's input and all earlier maps; all of them go on
            maps = [x]
            for unit in self.convs:
                maps.append(unit(torch.cat(maps, 1)))
            y = torch.cat(maps, 1)
        else:
            y = self.convs(x)
        if self.residual:
            skip = self.proj(x) if self.proj is not None else x
            if self.crop:
                skip = skip[..., self.crop : -self.crop, self.crop : -self.crop]
            y = y + skip
        if self.drop is not None:
            y = self.drop(y)
        return y


class SpecNet(nn.Module):
    """The network an ``ArchSpec`` describes; ``forward`` returns log-probabilities."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        every_conv = spec.dropout_at == "every_conv"
        self.stem = conv_unit(spec, spec.in_channels, spec.stem_channels, 3, spec.stem_padding, every_conv)
        ch = spec.stem_channels
        for i, block in enumerate(spec.blocks, start=1):
            self.add_module(f"block{i}", Block(spec, block, ch))
            width = block.width(ch)
            if block.transition == POOL_ONLY:
                self.add_module(f"transition{i}", nn.Sequential(nn.MaxPool2d(2)))
            elif block.transition is not None:
                squeeze = conv_unit(spec, width, block.transition, 1, 0, every_conv)
                self.add_module(f"transition{i}", nn.Sequential(nn.MaxPool2d(2), squeeze))
            ch = block.out_channels(ch)
        kernel = 3 if spec.head == "conv3_gap" else 1
        to_classes = nn.Conv2d(ch, spec.num_classes, kernel, padding=kernel // 2, bias=False)
        gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(gap, to_classes) if spec.head == "gap_conv" else nn.Sequential(to_classes, gap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return F.log_softmax(x.flatten(1), dim=1)


def build_model(spec: ArchSpec) -> SpecNet:
    """The network ``spec`` describes (a ``SpecNet``: plain PyTorch layers, fresh weights); the same spec always
    builds the same architecture, which is how a run's ``model.pt`` is read back (``mc.build_model(mc.load_spec(
    "tiny"))``)."""
    return SpecNet(spec)


def count_params(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor once (``parameters()`` already de-duplicates)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
