import torch
from torch import nn


# --- cell ---
class Branches(nn.Module):
    """Convs side by side on the same input, their maps concatenated."""

    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], 1)


class Block(nn.Module):
    """Conv units at one resolution. With a residual connection the block's input is added to its output,
    centre-cropped when unpadded convs shrank the map and projected by a 1x1 conv when the width changes. A
    dense block's units each read the block's input and every earlier unit's map, concatenated."""

    def __init__(self, convs, residual=False, proj=None, crop=0, drop=None, dense=False):
        super().__init__()
        self.convs = convs
        self.dense = dense
        self.residual = residual
        self.crop = crop
        self.proj = proj
        self.drop = drop
