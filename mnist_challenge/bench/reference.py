"""The course's training pipeline, kept as the speed reference for ``bench``.

What the course notebook does: a Dataset that turns each uint8 image into a PIL image, applies
``RandomRotation`` + ``ToTensor`` + ``Normalize`` per sample, a ``DataLoader`` with two worker
processes, a plain fp32 model with ``nn.Dropout`` and SGD on ``nll_loss``.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mnist_challenge.engine.data import MEAN, STD


class PilMnist(Dataset):
    """Like torchvision's MNIST dataset: one PIL image per ``__getitem__``, transformed per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rotation: float) -> None:
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.Compose(
            [
                transforms.RandomRotation((-rotation, rotation), fill=(0,)),
                transforms.ToTensor(),
                transforms.Normalize((MEAN,), (STD,)),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].numpy())), int(self.labels[i])


def time_reference_steps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    warmup: int,
    batch_size: int = 128,
    rotation: float = 7.0,
    workers: int = 2,
) -> float:
    """Seconds for ``steps`` optimizer steps after ``warmup`` steps, through the course pipeline."""
    loader = DataLoader(
        PilMnist(images, labels, rotation),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=False,
    )
    if len(loader) < steps + warmup:
        raise ValueError(f"need {(steps + warmup) * batch_size} images for the reference run, got {len(images)}")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    batches = iter(loader)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x, y = next(batches)
        loss = F.nll_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - start
    del batches  # shuts the worker processes down
    return elapsed


def time_expert_steps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    warmup: int,
    batch_size: int = 128,
    rotation: float = 7.0,
    channels_last: bool = False,
) -> float:
    """Seconds for ``steps`` optimizer steps after ``warmup``, through a plain loop an expert would write.

    No kit tricks: stock ``nn`` layers as ``build_model`` makes them, normalised images already a tensor in memory,
    a shuffled index per step, one batched random rotation through ``affine_grid`` / ``grid_sample`` (the kit's
    ``random_affine``, which is exactly that), SGD with momentum on ``nll_loss``; NCHW or channels-last.
    """
    from mnist_challenge.engine.augment import AugmentConfig, random_affine

    if len(images) < batch_size:
        raise ValueError(f"need {batch_size} images for the expert loop, got {len(images)}")
    augment = AugmentConfig(rotation=rotation)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        x = random_affine(images[idx], augment, generator).contiguous(memory_format=layout)
        loss = F.nll_loss(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start
