"""Data-parallel replicas (``TrainConfig.replicas``) against a single process as the reference."""

import multiprocessing

import pytest
import torch

from mnist_challenge import ArchSpec, ConvBlock, UserError, build_model, load_spec
from mnist_challenge.data import load_mnist
from mnist_challenge.train import TrainConfig, train_model


def no_batch_statistics_run(mnist_dir, replicas):
    # Without BatchNorm, dropout or augmentation, the gradient of a batch's mean loss is exactly the mean
    # of its two halves' gradients: two replicas must train the same weights as one process.
    data = load_mnist(mnist_dir, val_size=500, train_subset=2_560 + 500)
    cfg = TrainConfig(epochs=3, optimizer="adamw", lr=0.01, schedule="none", rotation=0.0, replicas=replicas, threads=1, val_size=500)
    return train_model(initial_model(), data, cfg, progress=False)


def initial_model():
    torch.manual_seed(0)
    return build_model(ArchSpec(blocks=(ConvBlock((16,), 1, False, 12), ConvBlock((16,), 1)), stem_channels=16, batchnorm="none"))


def test_two_replicas_train_the_same_weights_as_one_process(mnist_dir):
    one, two = no_batch_statistics_run(mnist_dir, 1), no_batch_statistics_run(mnist_dir, 2)
    assert two.settings["replicas"] == 2 and two.settings["threads"] == 1
    start = initial_model().state_dict()
    for name, a in one.model.state_dict().items():
        b = two.model.state_dict()[name]
        # Sums in another order differ in the last bits, and Adam amplifies that a little over 60 steps;
        # a replica that skipped averaging, or stepped twice, would be off by as much as training moved it.
        assert (a - b).norm() < 0.05 * (a - start[name]).norm(), name
    for r1, r2 in zip(one.epochs, two.epochs):
        assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-2)
    assert one.epochs[-1]["train_loss"] < one.epochs[0]["train_loss"] - 0.3  # it learned, so the comparison means something


def test_a_stop_in_the_epoch_hook_stops_every_replica(mnist_dir):
    class Pruned(Exception):
        pass

    def prune(epoch, row):
        raise Pruned

    data = load_mnist(mnist_dir, val_size=200, train_subset=600)
    cfg = TrainConfig(epochs=3, replicas=2, threads=1, val_size=200)
    with pytest.raises(Pruned):
        train_model(build_model(load_spec("compact")), data, cfg, on_epoch=prune, progress=False)
    assert multiprocessing.active_children() == []


def test_replicas_need_two_images_each():
    with pytest.raises(UserError, match="too small for 2 replicas"):
        TrainConfig(batch_size=3, replicas=2)
