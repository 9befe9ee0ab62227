"""Would training K seeds of one design as one grouped model pay? (``bench --grouped K``, issue #22 item 6)

The K seeds of a design share every shape, so they can run as one network whose convs have K times the channels
and K times the groups: seed ``i`` owns channels ``[i*C, (i+1)*C)`` of every layer, sees its own batch as input
channel ``i``, and nothing crosses between seeds (a grouped conv, a per-channel BN, elementwise ReLU / dropout /
adds / crops, a per-channel pool). One step then trains K seeds with one call per layer instead of K.

``grouped_copy`` builds that network from K ordinary ``build_model`` networks (their weights concatenated), so a
test can check it against them; ``time_grouped`` times the K seeds trained one after another with stock layers, the
grouped network with stock layers (each in both layouts, the faster counted), and the engine's own single-seed step
for the same K seeds. It is a measurement only: the engine does not train grouped models.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_challenge.architecture.model import SpecNet, build_model
from mnist_challenge.architecture.spec import ArchSpec
from mnist_challenge.bench.suite import engine_seconds
from mnist_challenge.engine.augment import AugmentConfig, random_affine
from mnist_challenge.engine.data import MnistData
from mnist_challenge.engine.train import TrainConfig


def _grouped_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    first, k = convs[0], len(convs)
    grouped = nn.Conv2d(
        first.in_channels * k,
        first.out_channels * k,
        first.kernel_size,
        stride=first.stride,
        padding=first.padding,
        dilation=first.dilation,
        groups=first.groups * k,
        bias=first.bias is not None,
    )
    with torch.no_grad():
        grouped.weight.copy_(torch.cat([c.weight for c in convs]))
        if first.bias is not None:
            grouped.bias.copy_(torch.cat([c.bias for c in convs]))
    return grouped


def _grouped_bn(norms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    grouped = nn.BatchNorm2d(norms[0].num_features * len(norms), eps=norms[0].eps, momentum=norms[0].momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(grouped, name).copy_(torch.cat([getattr(n, name) for n in norms]))
    return grouped


def _group_children(target: nn.Module, sources: list[nn.Module]) -> None:
    """Replace, in ``target`` (a copy of ``sources[0]``), every conv and BN by its K-seed grouped version."""
    for name, child in list(target.named_children()):
        peers = [getattr(s, name) for s in sources]
        if isinstance(child, nn.Conv2d):
            setattr(target, name, _grouped_conv(peers))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(target, name, _grouped_bn(peers))
        else:
            _group_children(child, peers)


class GroupedNet(nn.Module):
    """K copies of one ``SpecNet`` as one network: input ``(N, K, H, W)``, output log-probabilities ``(N, K, 10)``."""

    def __init__(self, nets: list[SpecNet]) -> None:
        super().__init__()
        if any(net.spec.in_channels != 1 for net in nets):
            raise ValueError("grouped seeds need one input channel per seed")
        self.k, self.num_classes = len(nets), nets[0].spec.num_classes
        self.body = copy.deepcopy(nets[0])
        _group_children(self.body, nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.body.children():
            x = module(x)
        return F.log_softmax(x.reshape(len(x), self.k, self.num_classes), dim=-1)


def grouped_copy(nets: list[SpecNet]) -> GroupedNet:
    return GroupedNet(nets)


def _batches(data: MnistData, k: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """K independent augmented batches (one per seed): images ``(K, N, 1, H, W)`` and labels ``(K, N)``."""
    augment = AugmentConfig(rotation=7.0)
    idx = torch.randint(0, len(data.train), (k, batch_size), generator=generator)
    images = torch.stack([random_affine(data.train.images[i], augment, generator) for i in idx])
    return images, data.train.labels[idx]


def _time_loop(step, steps: int, warmup: int) -> float:
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        step()
    return time.perf_counter() - start


def _stock_seconds(
    spec: ArchSpec, data: MnistData, k: int, grouped: bool, channels_last: bool, steps: int, warmup: int, batch: int
) -> float:
    """Seconds of ``steps`` steps of K seeds with stock layers: K separate nets in turn, or one grouped net."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    nets = [build_model(spec) for _ in range(k)]
    models: list[nn.Module] = [grouped_copy(nets)] if grouped else list(nets)
    models = [m.to(memory_format=layout).train() for m in models]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]

    def step() -> None:
        images, labels = _batches(data, k, batch, generator)
        if grouped:
            x = images[:, :, 0].transpose(0, 1).contiguous(memory_format=layout)  # (N, K, H, W)
            loss = F.nll_loss(models[0](x).flatten(0, 1), labels.t().flatten()) * k  # the K seeds' losses summed
            opts[0].zero_grad(set_to_none=True)
            loss.backward()
            opts[0].step()
            return
        for model, opt, x, y in zip(models, opts, images, labels, strict=True):
            loss = F.nll_loss(model(x.contiguous(memory_format=layout)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return _time_loop(step, steps, warmup)


def time_grouped(
    spec: ArchSpec, data: MnistData, k: int, threads: int, steps: int, warmup: int, repeats: int, batch: int
) -> dict[str, Any]:
    """Seed-images/s (images trained per second, summed over the K seeds) of each way to train K seeds, medians of
    ``repeats`` alternating runs: stock layers separately and grouped (each the faster layout), and the engine."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(epochs=1, batch_size=batch, threads=threads, val_size=0, device="cpu")
    cfg = cfg.resolved(torch.device("cpu"))
    seed_images = k * steps * batch
    runs: dict[str, list[float]] = {
        f"{how}_{layout}": [] for how in ("separate", "grouped") for layout in ("nchw", "channels_last")
    }
    runs["engine"] = []
    for _ in range(repeats):
        for how in ("separate", "grouped"):
            for layout in ("nchw", "channels_last"):
                seconds = _stock_seconds(spec, data, k, how == "grouped", layout != "nchw", steps, warmup, batch)
                runs[f"{how}_{layout}"].append(seed_images / seconds)
        # The engine trains one seed at a time: K seeds cost K times one seed's steps.
        runs["engine"].append(seed_images / (k * engine_seconds(spec, data, cfg, steps, warmup)[0]))
    medians = {side: statistics.median(values) for side, values in runs.items()}
    best = {how: max(medians[f"{how}_nchw"], medians[f"{how}_channels_last"]) for how in ("separate", "grouped")}
    return {
        "k": k,
        "threads": threads,
        "runs": runs,
        "medians": medians,
        "separate": best["separate"],
        "grouped": best["grouped"],
        "engine": medians["engine"],
        "grouped_vs_separate": best["grouped"] / best["separate"],
        "grouped_vs_engine": best["grouped"] / medians["engine"],
    }
