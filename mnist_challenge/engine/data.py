"""MNIST as in-memory tensors: IDX files verified by SHA-256, seeded train/validation split.

The whole dataset (70k images of 28x28) is 220 MB as float32: it lives on the training device once,
and every batch is an index into it. No DataLoader, no workers, no per-sample PIL.

Where the files come from, in order: ``--data-dir``, then ``$MNIST_DATA_DIR``, then ``./data/mnist``.
A directory may hold the IDX files gzipped or raw, directly or in torchvision's ``MNIST/raw`` layout.
``allow_download=True`` (``--download``) fetches missing files with torchvision into that directory;
with no directory named at all, the default ``./data/mnist`` is filled that way on first use.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_challenge.common.errors import UserError

ENV_VAR = "MNIST_DATA_DIR"
DEFAULT_DIR = Path("data/mnist")
MEAN, STD = 0.1307, 0.3081  # the usual MNIST normalisation (train-set pixel statistics)
IMAGE_SIDE, NUM_CLASSES = 28, 10
TRAIN_IMAGES = 60_000  # the official training set, before the validation hold-out

# Published SHA-256 of each file, gzipped and raw, so a corrupt or truncated copy is caught either way.
FILES = {
    "train_images": (
        "train-images-idx3-ubyte",
        "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": (
        "train-labels-idx1-ubyte",
        "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": (
        "t10k-images-idx3-ubyte",
        "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": (
        "t10k-labels-idx1-ubyte",
        "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir or os.environ.get(ENV_VAR) or DEFAULT_DIR)


def _find(directory: Path, stem: str) -> Path | None:
    for folder in (directory, directory / "MNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_verified(path: Path, gz_sha: str, raw_sha: str) -> bytes:
    try:
        blob = path.read_bytes()
    except OSError as exc:  # no permission, an I/O error: the file is there but cannot be read
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; fix its permissions or copy MNIST again") from None
    expected = gz_sha if path.suffix == ".gz" else raw_sha
    if hashlib.sha256(blob).hexdigest() != expected:
        raise UserError(f"{path} is corrupt (SHA-256 mismatch): delete it and copy or download MNIST again")
    return gzip.decompress(blob) if path.suffix == ".gz" else blob


def _parse_idx(blob: bytes, path: Path) -> torch.Tensor:
    """IDX: 2 zero bytes, a type byte (0x08 = uint8), a dims byte, big-endian int32 sizes, then data."""
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    ndim = blob[3]
    shape = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = 1
    for s in shape:
        count *= s
    if len(blob) - offset != count:
        raise UserError(f"{path} is truncated: expected {count} values, found {len(blob) - offset}")
    return torch.frombuffer(bytearray(blob[offset:]), dtype=torch.uint8).reshape(shape)


def download(directory: Path) -> None:
    """Fetch MNIST with torchvision into ``directory`` (lands in ``directory/MNIST/raw``)."""
    import torchvision

    folders = (directory / "MNIST" / "raw", directory / "MNIST", directory, *directory.parents)
    created = [d for d in folders if not d.exists()]
    try:
        torchvision.datasets.MNIST(str(directory), train=True, download=True)
        torchvision.datasets.MNIST(str(directory), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        for folder in created:  # innermost first: leave no empty folders behind that look like a dataset
            try:
                folder.rmdir()
            except OSError:
                pass
        raise UserError(
            f"could not download MNIST into {directory} ({_one_line(exc)}); copy the four IDX files there, "
            f"or set --data-dir / ${ENV_VAR}"
        ) from None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened at a word boundary (torchvision's spans lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def load_raw(data_dir: str | Path | None = None, allow_download: bool = False) -> dict[str, torch.Tensor]:
    """The four MNIST arrays as uint8 tensors: train/test images (N, 28, 28) and labels (N,)."""
    directory = resolve_data_dir(data_dir)
    # With no directory named anywhere, the default ./data/mnist is the kit's own cache: fill it.
    allow_download = allow_download or (data_dir is None and not os.environ.get(ENV_VAR))
    paths = {key: _find(directory, stem) for key, (stem, _, _) in FILES.items()}
    if any(p is None for p in paths.values()) and allow_download:
        download(directory)
        paths = {key: _find(directory, stem) for key, (stem, _, _) in FILES.items()}
    missing = [FILES[k][0] for k, p in paths.items() if p is None]
    if missing:
        raise UserError(
            f"MNIST files missing in {directory}: {', '.join(missing)} (.gz or raw). "
            f"Point --data-dir or ${ENV_VAR} at a folder with the four IDX files, or pass --download"
        )
    arrays = {key: _parse_idx(_read_verified(path, *FILES[key][1:]), path) for key, path in paths.items()}
    for split in ("train", "test"):
        if arrays[f"{split}_images"].shape[0] != arrays[f"{split}_labels"].shape[0]:
            raise UserError(f"MNIST {split} images and labels disagree in count: the files do not belong together")
    return arrays


@dataclass
class Split:
    """Normalised images (N, 1, 28, 28) float32 and labels (N,) int64, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class MnistData:
    train: Split
    val: Split | None  # held out from the 60k training images; None when training on all of them
    test: Split  # the official 10k test set, reported, never used for selection


def _to_split(images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Split:
    x = (images.to(device=device, dtype=torch.float32).unsqueeze(1) / 255.0 - MEAN) / STD
    return Split(x.contiguous(), labels.to(device=device, dtype=torch.int64))


def check_split(val_size: int, train_subset: int | None, n: int = TRAIN_IMAGES, need_val: bool = False) -> None:
    """The validation hold-out and the training subset fit in the ``n`` training images, leaving at least
    two to train on (BatchNorm's minimum) and, where selection needs one, a validation set."""
    if need_val and val_size < 1:
        raise UserError("--val-size must be at least 1: the search selects on the validation split")
    if not 0 <= val_size <= n - 2:
        raise UserError(
            f"--val-size {val_size}: must be in 0..{n - 2} (the {n:,} training images must keep two to train on)"
        )
    if train_subset is not None and not 2 <= train_subset <= n - val_size:
        raise UserError(
            f"--train-subset {train_subset}: must be in 2..{n - val_size} "
            f"(the {n - val_size:,} training images left after holding out {val_size:,} for validation)"
        )


def load_mnist(
    data_dir: str | Path | None = None,
    *,
    val_size: int = 10_000,
    split_seed: int = 0,
    train_subset: int | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
) -> MnistData:
    """Seeded split of the 60k training images into train / validation, plus the official test set.

    ``train_subset`` keeps only that many training images (after the split): for tests and quick looks.
    The validation set is drawn with ``split_seed`` independently of the training seed, so every run
    and every search trial is judged on the same held-out images.
    """
    check_split(val_size, train_subset)
    raw = load_raw(data_dir, allow_download)
    n = raw["train_images"].shape[0]
    check_split(val_size, train_subset, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    device = torch.device(device)
    train = _to_split(raw["train_images"][train_idx], raw["train_labels"][train_idx], device)
    val = _to_split(raw["train_images"][val_idx], raw["train_labels"][val_idx], device) if val_size else None
    test = _to_split(raw["test_images"], raw["test_labels"], device)
    return MnistData(train, val, test)
