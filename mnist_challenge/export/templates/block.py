from torch import nn


# --- cell ---
class Block(nn.Module):
    """Conv units at one resolution. With a residual connection the block's input is added to its output,
    centre-cropped when unpadded convs shrank the map and projected by a 1x1 conv when the width changes."""

    def __init__(self, convs, residual=False, proj=None, crop=0, drop=None):
        super().__init__()
        self.convs = convs
        self.residual = residual
        self.crop = crop
        self.proj = proj
        self.drop = drop
