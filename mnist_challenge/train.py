"""The training engine: a flat loop over in-memory tensors, evaluated on validation and test every epoch.

Timing is honest: ``seconds`` in the epoch log is the training time of that epoch, evaluation excluded
(evaluation is timed separately as ``eval_seconds``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .augment import AugmentConfig, random_affine
from .data import MnistData, Split
from .ema import WeightEMA
from .errors import TrainingDiverged, UserError, check_interrupted
from .fast import bf16_pays, bf16_supported, speed_up
from .inference import inference_copy
from .native import unavailable_reason
from .validate import SEED_MAX, check_choice, check_float, check_int, require

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "step", "none")
MAX_EPOCHS = 1000  # a bound for typos; the assignment itself allows 19


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; saved as ``config.json`` beside the run's logs."""

    epochs: int = 15  # full passes over the training split
    batch_size: int = 128  # images per optimizer step
    optimizer: str = "sgd"  # one of OPTIMIZERS
    lr: float = 0.05  # peak learning rate (OneCycle's max_lr; the start value for step / none)
    momentum: float = 0.9  # SGD momentum (AdamW uses it as beta1)
    nesterov: bool = True  # Nesterov momentum for SGD
    weight_decay: float = 1e-4  # L2 for SGD, decoupled decay for AdamW
    schedule: str = "onecycle"  # one of SCHEDULES
    step_size: int = 6  # StepLR: epochs between decays
    gamma: float = 0.1  # StepLR: decay factor
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    rotation: float = 7.0  # augmentation: max rotation in degrees
    translate: float = 0.0  # augmentation: max shift, fraction of the side
    scale: float = 0.0  # augmentation: zoom range +/-
    shear: float = 0.0  # augmentation: max shear in degrees
    seed: int = 1  # model init, batch order, augmentation and dropout
    val_size: int = 10_000  # images held out of the 60k training set for validation (0: train on all)
    split_seed: int = 0  # which images are held out (fixed, so all runs share one validation set)
    train_subset: int | None = None  # keep only this many training images (tests, quick looks)
    device: str = "auto"  # auto (cuda if present), cpu or cuda
    bf16: str = "auto"  # bf16 autocast: auto (GPUs with bf16, CPUs with AMX), on, off
    # NHWC activations: "auto" (channels-last on CPU, where the suite measures it faster for every net, depthwise
    # and 1x1 convs most; NCHW on GPU, unmeasured), true or false. run_experiment records the resolved choice.
    channels_last: bool | str = "auto"
    pooled_dropout: bool = True  # dropout masks from a pre-drawn pool (fast.PooledDropout) instead of bernoulli_
    fast_maxpool: bool = True  # MaxPool2d(2) from strided views (fast.MaxPool2x2): same values, faster on CPU
    fused_tail: bool = True  # ReLU/BN/dropout after each conv as one C kernel on CPU (fused.py); ATen if no C compiler
    cl_weight_grad: bool = (
        True  # weight gradients of 3x3 convs whose input channels are not a multiple of 16, in channels_last (fast.py)
    )
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    eval_batch_size: int = (
        256  # evaluation batch size: 3x faster than 2,000 on the course CPU (cache-sized maps; see bench)
    )
    ema_decay: float = 0.999  # EMA of the weights, evaluated and saved as the model (ema.py); 0: off
    fold_bn_eval: bool = True  # evaluate a copy with BN folded into the convs before it (inference.py)

    def __post_init__(self) -> None:
        """Every field typed and in range (NaN, inf and bools-for-numbers rejected): a bad value is one
        ``UserError`` naming the field, before any data is loaded or any file written."""
        check_int(self.epochs, "epochs", 1, MAX_EPOCHS)
        check_int(self.batch_size, "batch_size (BatchNorm needs two images)", 2, 60_000)
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        check_float(self.lr, "lr", 0.0, 10.0, lo_open=True)
        check_float(self.momentum, "momentum", 0.0, 1.0, hi_open=True)
        require(
            not (self.optimizer == "sgd" and self.nesterov and self.momentum == 0),
            "momentum 0 with Nesterov: Nesterov momentum needs a momentum > 0 (add --no-nesterov for plain SGD)",
        )
        check_float(self.weight_decay, "weight_decay", 0.0, 1.0)
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_int(self.step_size, "step_size", 1, MAX_EPOCHS)
        check_float(self.gamma, "gamma", 0.0, 1.0, lo_open=True)
        check_float(self.label_smoothing, "label_smoothing", 0.0, 1.0, hi_open=True)
        check_float(self.rotation, "rotation (degrees)", 0.0, 180.0)
        check_float(self.translate, "translate (fraction of the side)", 0.0, 1.0)
        check_float(self.scale, "scale", 0.0, 1.0, hi_open=True)
        check_float(self.shear, "shear (degrees)", 0.0, 60.0)
        check_int(self.seed, "seed", 0, SEED_MAX)
        check_int(self.val_size, "val_size", 0, 59_998)
        check_int(self.split_seed, "split_seed", 0, SEED_MAX)
        if self.train_subset is not None:
            check_int(self.train_subset, "train_subset (BatchNorm needs two images)", 2, 60_000)
        check_choice(self.device, "device", ("auto", "cpu", "cuda"))
        check_choice(self.bf16, "bf16", ("auto", "on", "off"))
        if self.threads is not None:
            check_int(self.threads, "threads", 1, 1024)
        check_int(self.eval_batch_size, "eval_batch_size", 1, 100_000)
        check_float(self.ema_decay, "ema_decay", 0.0, 1.0, hi_open=True)
        require(
            self.channels_last == "auto" or isinstance(self.channels_last, bool),
            f"channels_last must be auto, true or false, got {self.channels_last!r}",
        )
        tricks = ("pooled_dropout", "fast_maxpool", "fused_tail", "cl_weight_grad", "fold_bn_eval")
        for flag in ("nesterov", *tricks):
            require(isinstance(getattr(self, flag), bool), f"{flag} must be true or false, got {getattr(self, flag)!r}")

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig(self.rotation, self.translate, self.scale, self.shear)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        require(isinstance(data, dict), f"a training config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        # A config recorded before a field existed ran without what the field adds: no EMA, NCHW, no folding.
        before = {"ema_decay": 0.0, "channels_last": False, "fold_bn_eval": False}
        return cls(**{**before, **{k: v for k, v in data.items() if k in known}})

    def resolved(self, device: torch.device) -> TrainConfig:
        """This config with "auto" choices made for ``device``: what a run records in config.json."""
        if self.channels_last != "auto":
            return self
        return dataclasses.replace(self, channels_last=device.type == "cpu")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.bf16 == "on" and not bf16_supported(device):
        raise UserError(f"--bf16 on: this {device.type} has no bf16 support; use auto or off")
    return cfg.bf16 == "on" or (cfg.bf16 == "auto" and bf16_pays(device))


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    # fused: one kernel for all parameters instead of a few small ops per tensor (same arithmetic).
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            fused=True,
        )
    else:
        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay, fused=True
        )
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch
        )
        return opt, sched, True  # stepped every batch
    if cfg.schedule == "step":
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma), False
    return opt, None, False


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, batch_size: int, autocast: bool, channels_last: bool, fold_bn: bool = True
) -> tuple[float, float]:
    """(mean NLL loss, accuracy in %) over a whole split; with ``fold_bn``, on ``inference.inference_copy``."""
    was_training = model.training
    model.eval()
    evaluated = inference_copy(model, channels_last) if fold_bn else model
    loss_sum = torch.zeros((), device=split.images.device)
    correct = torch.zeros((), device=split.images.device, dtype=torch.int64)
    for i in range(0, len(split), batch_size):
        x, y = split.images[i : i + batch_size], split.labels[i : i + batch_size]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = evaluated(x).float()
        loss_sum += F.nll_loss(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    return loss_sum.item() / len(split), 100.0 * correct.item() / len(split)


def wants_fused_tail(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.fused_tail and device.type == "cpu"  # a CPU kernel: on a GPU the plain layers run


def prepare_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> dict[str, int]:
    """Swap in the engine's fast layers as ``cfg`` asks, move the model to ``device`` in the layout ``cfg``
    resolves to; returns what was swapped."""
    channels_last = cfg.resolved(device).channels_last
    swapped = speed_up(
        model,
        cfg.pooled_dropout,
        cfg.fast_maxpool,
        cfg.seed,
        fused_tail=wants_fused_tail(cfg, device),
        cl_weight_grad=cfg.cl_weight_grad and not channels_last,  # an NCHW trick: a no-op on channels-last maps
    )
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return swapped


@dataclass
class TrainResult:
    model: nn.Module
    epochs: list[dict[str, Any]]  # one row per finished epoch, as written to epochs.csv
    settings: dict[str, Any]  # what the run actually used (device, bf16, threads ...)


EpochHook = Callable[[int, dict[str, Any]], None]


def train_model(
    model: nn.Module,
    data: MnistData,
    cfg: TrainConfig,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place. ``on_start(settings)`` gets what the run resolved (device, bf16 ...);
    ``on_epoch(epoch, row)`` runs after each epoch (logging, pruning): an exception it raises (e.g.
    ``optuna.TrialPruned``) stops training there."""
    device = data.train.images.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    autocast = use_bf16(cfg, device)
    cfg = cfg.resolved(device)
    swapped = prepare_model(model, cfg, device)
    n = len(data.train)
    steps = n // cfg.batch_size + (1 if n % cfg.batch_size >= 2 else 0)  # a 1-image tail batch would break BatchNorm
    if steps == 0:
        raise UserError(f"the training split has {n} images: fewer than one batch")
    opt, sched, per_step = make_optimizer(model, cfg, steps)
    ema = (
        WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    )  # after prepare_model: it holds the model's tensors
    settings = {
        "device": str(device),
        "bf16_autocast": autocast,
        "threads": torch.get_num_threads(),
        "swapped_layers": swapped,
        "fused_tail_unavailable": unavailable_reason() if wants_fused_tail(cfg, device) else None,
        "channels_last": cfg.channels_last,
        "steps_per_epoch": steps,
    }
    if on_start is not None:
        on_start(settings)
    rows: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        lr = opt.param_groups[0]["lr"]
        start = time.perf_counter()
        order = torch.randperm(n, device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        bar = tqdm(
            range(steps),
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=None if progress else True,
            unit="batch",
        )
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = random_affine(data.train.images[idx], cfg.augment, generator), data.train.labels[idx]
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(x)
            out = out.float()
            # The model returns log-probabilities; cross_entropy re-normalises them, which is the identity,
            # and adds label smoothing that nll_loss lacks.
            loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            check_interrupted()
            if ema is not None:
                ema.update()
            if per_step:
                sched.step()
            loss_sum += loss.detach() * y.shape[0]
            correct += (out.detach().argmax(1) == y).sum()
        if sched is not None and not per_step:
            sched.step()
        seconds = time.perf_counter() - start
        seen = min(n, steps * cfg.batch_size)
        train_loss, train_acc = loss_sum.item() / seen, 100.0 * correct.item() / seen
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training diverged in epoch {epoch} (loss {train_loss}); lower the learning rate")
        eval_start = time.perf_counter()
        with ema.applied() if ema is not None else contextlib.nullcontext():  # the averaged weights are the model
            nan = (float("nan"), float("nan"))
            # one folded copy serves both splits
            evaluated = inference_copy(model, cfg.channels_last) if cfg.fold_bn_eval else model
            val_loss, val_acc = (
                evaluate(evaluated, data.val, cfg.eval_batch_size, autocast, cfg.channels_last, fold_bn=False)
                if data.val is not None
                else nan
            )
            test_loss, test_acc = evaluate(
                evaluated, data.test, cfg.eval_batch_size, autocast, cfg.channels_last, fold_bn=False
            )
            row = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": seconds,
                "eval_seconds": time.perf_counter() - eval_start,
                "images_per_second": seen / seconds,
            }
            rows.append(row)
            if on_epoch is not None:
                on_epoch(epoch, row)  # logs and saves the model: the averaged one
    if ema is not None:
        ema.copy_to_model()
    return TrainResult(model, rows, settings)
