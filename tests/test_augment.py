"""Batched augmentation: the identity at zero strength (drawing nothing), brightness and contrast as an affine map
of each image's pixel values, the background kept by the affine transform, and the notebook's copy equal to it."""

import torch

from mnist_challenge.engine.augment import BACKGROUND, WHITE, AugmentConfig, augment
from mnist_challenge.engine.data import MEAN, STD
from mnist_challenge.engine.train import TrainConfig
from mnist_challenge.export.templates import training_helpers as cell

STILL = AugmentConfig(rotation=0.0)


def pixels(v: torch.Tensor) -> torch.Tensor:
    return v * STD + MEAN  # normalised values back to 0 (black) .. 1 (white)


def test_zero_strength_is_the_identity_and_draws_nothing():
    x = torch.randn(8, 1, 28, 28)
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    assert torch.equal(augment(x, STILL, generator), x)
    assert torch.equal(generator.get_state(), before)  # old recipes replay the same batches


def test_brightness_and_contrast_map_each_images_pixels_affinely_within_the_ranges():
    gray = 0.35 + 0.25 * torch.rand(64, 1, 28, 28)  # pixel values away from 0 and 1: no clamping at these strengths
    x = (gray - MEAN) / STD
    out = augment(x, AugmentConfig(rotation=0.0, brightness=0.2, contrast=0.3), torch.Generator().manual_seed(0))
    v, w = pixels(x).flatten(1), pixels(out).flatten(1)
    factor = (w[:, 1] - w[:, 0]) / (v[:, 1] - v[:, 0])
    shift = w[:, 0] - factor * v[:, 0]
    assert torch.allclose(w, factor[:, None] * v + shift[:, None], atol=1e-4)  # one map per image
    assert factor.min() >= 0.7 - 1e-4 and factor.max() <= 1.3 + 1e-4
    assert shift.abs().max() <= 0.2 + 1e-4
    assert factor.std() > 0.05 and shift.std() > 0.03  # drawn per image, not per batch


def test_brightness_clamps_to_black_and_white():
    x = torch.randn(32, 1, 28, 28) * 3
    out = augment(x, AugmentConfig(rotation=0.0, brightness=1.0, contrast=0.9), torch.Generator().manual_seed(1))
    assert out.min() >= BACKGROUND - 1e-6 and out.max() <= WHITE + 1e-6


def test_the_affine_transform_fills_the_border_with_background():
    x = torch.full((4, 1, 28, 28), BACKGROUND)
    moved = augment(x, AugmentConfig(rotation=30.0, translate=0.2, scale=0.2), torch.Generator().manual_seed(2))
    assert torch.allclose(moved, x, atol=1e-5)


def test_the_notebooks_augmentation_is_the_kits():
    """The submission notebook reproduces a run without the kit: the same draws from the same generator."""
    x = torch.randn(16, 1, 28, 28)
    recipe = TrainConfig(rotation=9.0, translate=0.05, scale=0.1, shear=5.0, brightness=0.2, contrast=0.25)
    config = recipe.to_dict()
    kit = augment(x, recipe.augment, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    ours = cell.random_brightness_contrast(cell.random_affine(x, generator, config), generator, config)
    assert torch.allclose(kit, ours, atol=1e-6)
