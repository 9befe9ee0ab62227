"""Batched random augmentation on image tensors: affine (rotation, translation, scale, shear) and photometric
(brightness, contrast).

One ``affine_grid`` + ``grid_sample`` call per batch replaces per-sample PIL transforms. Images are
normalised, so the empty border is filled with the normalised background value rather than zero. A strength
of 0 draws no random numbers, so a recipe without an augmentation replays the same batches as before it existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mnist_challenge.engine.data import MEAN, STD

BACKGROUND = (0.0 - MEAN) / STD  # a black pixel after normalisation
WHITE = (1.0 - MEAN) / STD  # a white one


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 7.0  # max rotation in degrees, uniform in [-rotation, rotation]
    translate: float = 0.0  # max shift as a fraction of the image side, per axis
    scale: float = 0.0  # zoom uniform in [1 - scale, 1 + scale]
    shear: float = 0.0  # max shear angle in degrees
    brightness: float = 0.0  # max shift of every pixel, a fraction of black-to-white, uniform in [-b, b]
    contrast: float = 0.0  # pixel values scaled by a factor uniform in [1 - contrast, 1 + contrast]

    @property
    def geometric(self) -> bool:  # any affine draw at all (rotation, shift, zoom, shear)
        return any(v > 0 for v in (self.rotation, self.translate, self.scale, self.shear))

    @property
    def photometric(self) -> bool:
        return self.brightness > 0 or self.contrast > 0


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """The affine transform, then brightness and contrast, each image drawn independently."""
    return random_photometric(random_affine(images, cfg, generator), cfg, generator)


def random_photometric(
    images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each image's pixel values v (0 black, 1 white) become clamp(factor * v + shift, 0, 1), with a factor
    uniform in [1 - contrast, 1 + contrast] and a shift uniform in [-brightness, brightness] per image; done on
    the normalised values, where it is the same affine map of the pixel values."""
    if not cfg.photometric:
        return images
    shape = (images.shape[0],) + (1,) * (images.dim() - 1)
    factor = 1 + (torch.rand(shape, generator=generator, device=images.device) * 2 - 1) * cfg.contrast
    shift = (torch.rand(shape, generator=generator, device=images.device) * 2 - 1) * cfg.brightness
    # v = x * STD + MEAN; factor * v + shift, normalised again, is factor * x + ((factor - 1) * MEAN + shift) / STD.
    moved = images * factor.to(images.dtype) + (((factor - 1) * MEAN + shift) / STD).to(images.dtype)
    return moved.clamp(BACKGROUND, WHITE)


def random_affine(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply an independent random affine transform to each image of a (B, C, H, W) batch."""
    if not cfg.geometric:
        return images
    b = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator, device=images.device) * 2 - 1) * limit

    angle = uniform(math.radians(cfg.rotation))
    shear = uniform(math.radians(cfg.shear))
    zoom = 1 + uniform(cfg.scale)
    # affine_grid maps *output* coordinates to input ones, in [-1, 1]: so the inverse of the wanted
    # transform. A random sign makes the inverse as random as the transform itself; zoom is inverted.
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = cos / zoom
    theta[:, 0, 1] = (-sin + torch.tan(shear) * cos) / zoom
    theta[:, 1, 0] = sin / zoom
    theta[:, 1, 1] = (cos + torch.tan(shear) * sin) / zoom
    theta[:, 0, 2] = uniform(2 * cfg.translate)
    theta[:, 1, 2] = uniform(2 * cfg.translate)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    shifted = images - BACKGROUND  # so grid_sample's zero padding is the background
    return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + BACKGROUND
