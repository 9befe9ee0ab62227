"""Measurements the benchmark command prints: the engine with each speed trick off (``ablate``), one 2-thread
process against two 1-thread ones (``compare_layouts``), where a training step spends its time
(``profile_step``), and peak memory."""

from __future__ import annotations

import resource
from dataclasses import replace

import torch

from mnist_challenge.architecture.model import build_model
from mnist_challenge.architecture.spec import ArchSpec, load_spec
from mnist_challenge.bench.suite import engine_seconds
from mnist_challenge.engine.data import MnistData, load_mnist
from mnist_challenge.engine.train import TrainConfig, prepare_model, resolve_device


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _layout_worker(spec_name: str, data_dir: str | None, steps: int, warmup: int, threads: int, queue) -> None:
    """One process of the layout comparison: time the engine with ``threads`` threads."""
    torch.set_num_threads(threads)
    spec = load_spec(spec_name)
    cfg = TrainConfig(epochs=1, threads=threads, val_size=0, device="cpu")
    data = load_mnist(data_dir, val_size=0, train_subset=(steps + warmup) * cfg.batch_size)
    seconds, _ = engine_seconds(spec, data, cfg, steps, warmup)
    queue.put(steps * cfg.batch_size / seconds)


def compare_layouts(spec_name: str, data_dir: str | None, steps: int, warmup: int) -> dict[str, float]:
    """Images/s of one 2-thread process vs. two 1-thread processes training at the same time."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = {}
    for label, processes, threads in (("one process x 2 threads", 1, 2), ("two processes x 1 thread", 2, 1)):
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_layout_worker, args=(spec_name, data_dir, steps, warmup, threads, queue))
            for _ in range(processes)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        results[label] = sum(queue.get() for _ in procs)
    return results


# The engine's opt-out speed tricks (TrainConfig fields that are True by default), each with its flag.
TRICKS = {
    "fused_tail": "--no-fused-tail",
    "cl_weight_grad": "--no-cl-weight-grad",
    "pooled_dropout": "--no-pooled-dropout",
    "fast_maxpool": "--no-fast-maxpool",
}


def ablate(spec: ArchSpec, data: MnistData, cfg: TrainConfig, steps: int, warmup: int, repeats: int) -> dict[str, list]:
    """Engine images/s with each trick turned off in turn (``repeats`` runs each, the variants alternating)."""
    timed_images = steps * cfg.batch_size
    runs: dict[str, list[float]] = {trick: [] for trick in TRICKS}
    for _ in range(repeats):
        for trick in TRICKS:
            seconds, _ = engine_seconds(spec, data, replace(cfg, **{trick: False}), steps, warmup)
            runs[trick].append(timed_images / seconds)
    return runs


# What each op of a training step is, for --profile: ATen's conv ops, the kit's C kernels (autograd Functions
# named after their classes), the batched augmentation; the rest (adds, crops, loss, optimizer, EMA) is "other".
PROFILE_KINDS = (
    ("conv backward", ("aten::convolution_backward",)),
    ("conv forward", ("aten::mkldnn_convolution", "aten::_convolution")),
    ("fused tail (C)", ("_Tail",)),
    ("max-pool (C)", ("_NativeMaxPool2x2", "_MaxPool2x2", "aten::max_pool2d")),
    ("augmentation", ("aten::grid_sampler_2d", "aten::affine_grid_generator", "aten::bmm")),
)


def profile_step(spec: ArchSpec, data: MnistData, batch_size: int, steps: int, warmup: int) -> dict[str, float]:
    """Self CPU time (microseconds, over ``steps`` engine steps after ``warmup``) by kind of op."""
    import torch.nn.functional as F
    from torch.profiler import profile

    from mnist_challenge.engine.augment import random_affine

    device = resolve_device("cpu")
    cfg = TrainConfig(batch_size=batch_size, device="cpu").resolved(device)
    model = build_model(spec)
    prepare_model(model, cfg, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    images, labels = data.train.images[:batch_size], data.train.labels[:batch_size]

    def step() -> None:
        x = random_affine(images, cfg.augment).contiguous(memory_format=layout)
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    with profile() as prof:
        for _ in range(steps):
            step()
    kinds: dict[str, float] = {}
    for event in prof.key_averages():
        kind = next((k for k, names in PROFILE_KINDS if event.key.startswith(names)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total
    return kinds
