"""MNIST loading: the real files, verified; corrupt and missing files give one clear error."""

import gzip
import shutil

import pytest
import torch

from mnist_challenge import UserError
from mnist_challenge.engine.data import FILES, load_mnist, load_raw

from .conftest import run_cli

STEMS = [stem for stem, _, _ in FILES.values()]


def test_real_files_load_with_the_published_shapes(mnist_dir):
    raw = load_raw(mnist_dir)
    assert raw["train_images"].shape == (60_000, 28, 28) and raw["test_images"].shape == (10_000, 28, 28)
    assert raw["train_labels"].unique().tolist() == list(range(10))


def test_split_is_seeded_disjoint_and_normalised(mnist_dir):
    a = load_mnist(mnist_dir, val_size=5_000, split_seed=3)
    b = load_mnist(mnist_dir, val_size=5_000, split_seed=3)
    assert len(a.train) == 55_000 and len(a.val) == 5_000 and len(a.test) == 10_000
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    assert abs(a.train.images.mean().item()) < 0.05 and abs(a.train.images.std().item() - 1) < 0.05
    # No validation image is also a training image.
    train_keys = {hash(img.numpy().tobytes()) for img in a.train.images[:, 0]}
    overlap = sum(hash(img.numpy().tobytes()) in train_keys for img in a.val.images[:500, 0])
    assert overlap <= 2  # MNIST has a handful of exact duplicate digits; a leak would be ~500
    assert load_mnist(mnist_dir, val_size=0).val is None


def test_raw_uncompressed_files_and_torchvision_layout_load(mnist_dir, tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for stem in STEMS:
        with gzip.open(mnist_dir / f"{stem}.gz") as src, open(raw_dir / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert load_raw(tmp_path)["test_labels"].shape == (10_000,)


def _copy(mnist_dir, tmp_path):
    for stem in STEMS:
        shutil.copy(mnist_dir / f"{stem}.gz", tmp_path / f"{stem}.gz")
    return tmp_path


def test_corrupt_file_is_named(mnist_dir, tmp_path):
    _copy(mnist_dir, tmp_path)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(target.read_bytes())
    blob[100] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_raw(tmp_path)


def test_missing_files_say_what_to_do(mnist_dir, tmp_path):
    _copy(mnist_dir, tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match="missing .*train-images-idx3-ubyte.*--data-dir"):
        load_raw(tmp_path)


def test_cli_train_with_bad_data_is_one_line_exit_2(mnist_dir, tmp_path):
    _copy(mnist_dir, tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    for data_dir in (tmp_path, tmp_path / "nowhere"):
        result = run_cli(
            "mnist_challenge",
            "train",
            "--spec",
            "compact",
            "--epochs",
            "1",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path / "runs"),
        )
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
