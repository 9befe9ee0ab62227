import gzip
import os
from pathlib import Path

import torch

from mnist_challenge.export.templates.setup import DEVICE, SMOKE

# --- cell ---
MEAN, STD = 0.1307, 0.3081  # MNIST's training-set pixel statistics


def read_idx(folder, stem):
    """An MNIST IDX file (raw or gzipped, flat or in torchvision's MNIST/raw layout) as a uint8 tensor."""
    for path in (Path(folder) / stem, Path(folder) / "MNIST" / "raw" / stem):
        for candidate in (path, path.with_name(path.name + ".gz")):
            if candidate.is_file():
                data = candidate.read_bytes()
                data = gzip.decompress(data) if candidate.suffix == ".gz" else data
                ndim = data[3]
                shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
                return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)
    raise FileNotFoundError(f"{stem} not found in {folder}")


def load_mnist():
    """(train images, train labels, test images, test labels) as tensors on DEVICE, images normalised."""
    folder = os.environ.get("MNIST_DATA_DIR")
    if folder:  # offline: a local copy of the four IDX files
        stems = [f"{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
        parts = [read_idx(folder, stem) for stem in stems]
    else:  # Colab: torchvision downloads them
        import torchvision

        sets = [torchvision.datasets.MNIST("data", train=t, download=True) for t in (True, False)]
        parts = [x for s in sets for x in (s.data, s.targets)]
    images = [((x.float() / 255 - MEAN) / STD).unsqueeze(1).to(DEVICE) for x in parts[0::2]]
    labels = [y.long().to(DEVICE) for y in parts[1::2]]
    return images[0], labels[0], images[1], labels[1]


train_x, train_y, test_x, test_y = load_mnist()
if SMOKE:
    train_x, train_y = train_x[:2000], train_y[:2000]
print(f"{len(train_x):,} training images, {len(test_x):,} test images")
