"""One logged training run: spec -> model -> run directory -> training -> verdict.

``train`` (the CLI), every search trial and the reproduction of the best spec all go through
``run_experiment``, so their run directories look the same.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mnist_challenge.architecture.inspector import format_report, inspect_module, inspect_spec, torchsummary_table
from mnist_challenge.architecture.model import build_model
from mnist_challenge.architecture.spec import ArchSpec
from mnist_challenge.common.errors import UserError
from mnist_challenge.engine.data import IMAGE_SIDE, NUM_CLASSES, MnistData, load_mnist, resolve_data_dir
from mnist_challenge.engine.train import EpochHook, TrainConfig, TrainResult, fit, resolve_device
from mnist_challenge.runs.checker import Limits, check_run
from mnist_challenge.runs.runlog import RunDir


def summary_text(model: nn.Module, input_size: tuple[int, ...], report_text: str) -> str:
    return f"{torchsummary_table(model, input_size)}\n{report_text}\n"


def require_mnist_shape(spec: ArchSpec) -> None:
    """Training reads MNIST: 1x28x28 images, 10 classes. A spec built for another shape cannot be fed."""
    if (spec.in_channels, spec.input_size, spec.num_classes) != (1, IMAGE_SIDE, NUM_CLASSES):
        raise UserError(
            f"spec {spec.name!r} takes {spec.in_channels}x{spec.input_size}x{spec.input_size} inputs and "
            f"{spec.num_classes} classes, but MNIST is 1x{IMAGE_SIDE}x{IMAGE_SIDE} with {NUM_CLASSES}: "
            f"set in_channels 1, input_size {IMAGE_SIDE}, num_classes {NUM_CLASSES} to train it"
        )


def load_data(cfg: TrainConfig, data_dir: str | Path | None, allow_download: bool = False) -> MnistData:
    return load_mnist(
        data_dir,
        val_size=cfg.val_size,
        split_seed=cfg.split_seed,
        train_subset=cfg.train_subset,
        device=resolve_device(cfg.device),
        allow_download=allow_download,
    )


def run_experiment(
    spec: ArchSpec,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    data: MnistData | None = None,
    data_dir: str | Path | None = None,
    model: nn.Module | None = None,
    on_epoch: EpochHook | None = None,
    limits: Limits = Limits(),
    progress: bool = True,
    echo: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``spec`` (or a given ``model``) with ``cfg``, logging everything into ``run_dir``.

    ``on_epoch`` runs after the epoch is on disk, so a pruned or killed run keeps what it finished.
    """
    require_mnist_shape(spec)
    cfg = cfg.resolved(resolve_device(cfg.device))  # config.json records the layout the run chose
    data = data if data is not None else load_data(cfg, data_dir)
    run = RunDir(run_dir)
    try:
        torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
        given = model is not None
        model = model if given else build_model(spec)  # first: the seed fixes the initial weights
        input_size = (spec.in_channels, spec.input_size, spec.input_size)
        report = inspect_module(model, input_size) if given else inspect_spec(spec)  # the trial's, if it made one
        config = {
            **cfg.to_dict(),
            "data_dir": str(resolve_data_dir(data_dir)),
            "train_images": len(data.train),
            "val_images": len(data.val) if data.val else 0,
            "test_images": len(data.test),
            **(extra_config or {}),
        }
        run.start(spec, config, model, summary_text(model, input_size, format_report(report)), report.as_dict())
        header = (
            f"{spec.name}: {report.params:,} params, RF {report.receptive_field_head} at the head, "
            f"{report.macs:,} MACs | "
            f"{len(data.train):,} train / {config['val_images']:,} val / {len(data.test):,} test images"
        )
        run.log_text(header)
        if echo:
            tqdm.write(header)

        def log_and_forward(epoch: int, row: dict[str, Any]) -> None:
            line = run.log_epoch(row, model, spec)
            if echo:
                tqdm.write(line)
            if on_epoch is not None:
                on_epoch(epoch, row)

        started = time.perf_counter()
        try:
            result = fit(
                model,
                data,
                cfg,
                log_and_forward,
                progress=progress,
                on_start=lambda s: run.update_config({"runtime": s}),
            )
        finally:
            run.update_config({"wall_seconds": time.perf_counter() - started, "epochs_completed": len(run.rows)})
        verdict = check_run(run.path, limits)
        run.write_json("verdict.json", verdict.as_dict())
        run.log_text(verdict.format())
        if echo:
            tqdm.write(verdict.format())
        return result
    finally:
        run.close()
