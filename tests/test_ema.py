"""The weight EMA: the arithmetic of one update, the swap in and out, and a run that saves the average."""

import torch
from torch import nn

from mnist_challenge.engine.ema import WeightEMA
from mnist_challenge.engine.train import TrainConfig
from mnist_challenge.runs.runlog import load_checkpoint

from .test_train import small_run


def test_update_lerps_every_float_entry_and_applied_swaps_back():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    ema = WeightEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(2.0)
    ema.update()  # step 1: decay min(0.9, 2/11) = 2/11
    d = 2 / 11
    weight = model[0].weight.detach().clone()
    with ema.applied():
        assert torch.allclose(model[0].weight, start["0.weight"] * d + weight * (1 - d))
        assert torch.allclose(
            model[1].running_mean, start["1.running_mean"] * d + (start["1.running_mean"] + 2) * (1 - d)
        )
        assert model[1].num_batches_tracked == start["1.num_batches_tracked"]  # integers are not averaged
    assert torch.equal(model[0].weight, weight)  # the live weights are back


def test_a_run_evaluates_and_saves_the_average(mnist_dir, tmp_path):
    result = small_run(mnist_dir, tmp_path / "ema", ema_decay=0.99)
    model, _ = load_checkpoint(tmp_path / "ema" / "model.pt")
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(model(x), result.model.eval()(x), atol=1e-6)  # what was saved is what training returned
    plain = small_run(mnist_dir, tmp_path / "plain", ema_decay=0.0)
    assert plain.epochs[0]["train_loss"] == result.epochs[0]["train_loss"]  # the average never feeds training
    assert plain.epochs[-1]["test_loss"] != result.epochs[-1]["test_loss"]  # ... but is what is evaluated


def test_configs_recorded_before_the_ema_ran_without_it():
    assert TrainConfig.from_dict({"epochs": 3}).ema_decay == 0.0
    assert TrainConfig().ema_decay == 0.999 and TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
