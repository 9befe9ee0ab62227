"""The training engine: a flat loop over in-memory tensors, evaluated on validation and test every epoch.

Timing is honest: ``seconds`` in the epoch log is the training time of that epoch, evaluation excluded
(evaluation is timed separately as ``eval_seconds``).
"""

from __future__ import annotations

import contextlib
import copy
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

from mnist_challenge.common.errors import TrainingDiverged, UserError, check_interrupted
from mnist_challenge.common.settings import check_settings, recipe_fields, setting
from mnist_challenge.common.validate import SEED_MAX, require
from mnist_challenge.engine.augment import AugmentConfig, augment
from mnist_challenge.engine.data import MnistData, Split
from mnist_challenge.engine.ema import WeightEMA
from mnist_challenge.engine.fast import bf16_pays, bf16_supported, speed_up
from mnist_challenge.engine.inference import inference_copy
from mnist_challenge.engine.native import unavailable_reason

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "step", "none")
MAX_EPOCHS = 1000  # a bound for typos; the assignment itself allows 19


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; saved as ``config.json`` beside the run's logs. Each field declares its
    bounds, choices and help once (``setting``): the flags of ``train`` and ``search reproduce`` come from them."""

    epochs: int = setting(15, "full passes over the training split", lo=1, hi=MAX_EPOCHS, recipe=True)
    batch_size: int = setting(
        128, "images per optimizer step", lo=2, hi=60_000, what="batch_size (BatchNorm needs two images)", recipe=True
    )
    optimizer: str = setting("sgd", "optimizer", choices=OPTIMIZERS, recipe=True)
    lr: float = setting(
        0.05, "peak learning rate (OneCycle's max_lr; the start value for step / none)", lo=0.0, hi=10.0,
        lo_open=True, recipe=True,
    )  # fmt: skip
    momentum: float = setting(0.9, "SGD momentum (AdamW's beta1)", lo=0.0, hi=1.0, hi_open=True, recipe=True)
    nesterov: bool = setting(True, "Nesterov momentum for SGD", recipe=True)
    weight_decay: float = setting(1e-4, "L2 for SGD, decoupled decay for AdamW", lo=0.0, hi=1.0, recipe=True)
    schedule: str = setting("onecycle", "learning-rate schedule", choices=SCHEDULES, recipe=True)
    step_size: int = setting(6, "StepLR: epochs between decays", lo=1, hi=MAX_EPOCHS, recipe=True)
    gamma: float = setting(0.1, "StepLR: decay factor", lo=0.0, hi=1.0, lo_open=True, recipe=True)
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing", lo=0.0, hi=1.0, hi_open=True, recipe=True)
    rotation: float = setting(
        7.0, "max random rotation in degrees (0: off)", lo=0.0, hi=180.0, what="rotation (degrees)", recipe=True
    )
    translate: float = setting(
        0.0, "max random shift, fraction of the side", lo=0.0, hi=1.0, what="translate (fraction of the side)",
        recipe=True,
    )  # fmt: skip
    scale: float = setting(0.0, "random zoom range +/-", lo=0.0, hi=1.0, hi_open=True, recipe=True)
    shear: float = setting(0.0, "max random shear in degrees", lo=0.0, hi=60.0, what="shear (degrees)", recipe=True)
    brightness: float = setting(
        0.0, "max random brightness shift, fraction of black-to-white", lo=0.0, hi=1.0, recipe=True
    )
    contrast: float = setting(0.0, "random contrast factor range +/-", lo=0.0, hi=1.0, hi_open=True, recipe=True)
    # The weights' EMA comes before the seed so that a recipe lists what shapes the result, then its seed.
    ema_decay: float = setting(
        0.999, "exponential moving average of the weights, evaluated and saved as the model (0: off)", lo=0.0,
        hi=1.0, hi_open=True, recipe=True,
    )  # fmt: skip
    seed: int = setting(1, "model init, batch order, augmentation and dropout", lo=0, hi=SEED_MAX, recipe=True)
    val_size: int = setting(
        10_000, "validation images held out of the 60k (0: train on all)", lo=0, hi=59_998, metavar="N"
    )
    split_seed: int = setting(0, "which images are held out (fixed: all runs share one validation set)", lo=0,
                              hi=SEED_MAX)  # fmt: skip
    train_subset: int | None = setting(
        None, "train on only this many images (tests, quick looks)", lo=2, hi=60_000,
        what="train_subset (BatchNorm needs two images)", metavar="N",
    )  # fmt: skip
    device: str = setting("auto", "auto (cuda if present), cpu or cuda", choices=("auto", "cpu", "cuda"))
    bf16: str = setting("auto", "bf16 autocast (auto: GPUs with bf16, CPUs with AMX)", choices=("auto", "on", "off"))
    # auto: channels-last on CPU, where the suite measures it faster for every net (depthwise and 1x1 convs
    # most), NCHW on GPU (unmeasured). run_experiment records the resolved choice in config.json.
    channels_last: bool | str = setting(
        "auto", "NHWC activations (default auto: on for CPU, off for GPU)", choices=("auto", True, False)
    )
    pooled_dropout: bool = setting(True, "dropout masks from a pre-drawn pool (fast.PooledDropout), not bernoulli_")
    fast_maxpool: bool = setting(True, "MaxPool2d(2) from one C pass or strided views (fast.MaxPool2x2)")
    fused_tail: bool = setting(True, "ReLU/BN/dropout after each conv as one C kernel on CPU (fused.py)")
    cl_weight_grad: bool = setting(
        True, "weight gradients of 3x3 convs whose input channels are not a multiple of 16 in channels_last"
    )
    threads: int | None = setting(None, "torch intra-op threads (default: torch's)", lo=1, hi=1024)
    eval_batch_size: int = setting(
        256, "evaluation batch size (3x faster than 2,000 on the course CPU: cache-sized maps)", lo=1, hi=100_000,
        flag=False,
    )  # fmt: skip
    fold_bn_eval: bool = setting(True, "evaluate a copy with BN folded into the convs before it (inference.py)")

    def __post_init__(self) -> None:
        """Every field typed and in range (NaN, inf and bools-for-numbers rejected): a bad value is one
        ``UserError`` naming the field, before any data is loaded or any file written."""
        check_settings(self)
        require(
            not (self.optimizer == "sgd" and self.nesterov and self.momentum == 0),
            "momentum 0 with Nesterov: Nesterov momentum needs a momentum > 0 (add --no-nesterov for plain SGD)",
        )

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig(self.rotation, self.translate, self.scale, self.shear, self.brightness, self.contrast)

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


# What a result depends on (the notebook's recipe, what a search's trial records), in declaration order.
RECIPE_KEYS = recipe_fields(TrainConfig)


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


@dataclass
class Training:
    """What one run sets up before its first step and carries through its epochs (``start_training``)."""

    model: nn.Module
    data: MnistData
    cfg: TrainConfig  # with "auto" choices resolved for the device
    device: torch.device
    generator: torch.Generator  # batch order, augmentation (dropout masks draw from torch's seed)
    autocast: bool  # bf16 autocast
    steps: int  # optimizer steps per epoch
    opt: torch.optim.Optimizer
    sched: Any  # an LR scheduler, or None
    per_step: bool  # the scheduler steps every batch (OneCycle), else every epoch
    ema: WeightEMA | None
    settings: dict[str, Any]  # what the run resolved, for config.json


def start_training(model: nn.Module, data: MnistData, cfg: TrainConfig) -> Training:
    """Seed, resolve the device's choices, swap in the fast layers, and make the optimizer, schedule and EMA."""
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
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None  # after prepare_model: it holds its tensors
    settings = {
        "device": str(device),
        "bf16_autocast": autocast,
        "threads": torch.get_num_threads(),
        "swapped_layers": swapped,
        "fused_tail_unavailable": unavailable_reason() if wants_fused_tail(cfg, device) else None,
        "channels_last": cfg.channels_last,
        "steps_per_epoch": steps,
    }
    return Training(model, data, cfg, device, generator, autocast, steps, opt, sched, per_step, ema, settings)


def train_epoch(t: Training, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over the shuffled training split: train loss and accuracy, seconds (evaluation excluded)."""
    cfg, model, device, images = t.cfg, t.model, t.device, t.data.train.images
    model.train()
    start = time.perf_counter()
    n = len(t.data.train)
    order = torch.randperm(n, device=device, generator=t.generator)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    shown = None if progress else True  # tqdm: None shows the bar on a terminal only
    bar = tqdm(range(t.steps), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=shown, unit="batch")
    for step in bar:
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x, y = augment(images[idx], cfg.augment, t.generator), t.data.train.labels[idx]
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.autocast):
            out = model(x)
        out = out.float()
        # The model returns log-probabilities; cross_entropy re-normalises them, which is the identity,
        # and adds label smoothing that nll_loss lacks.
        loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
        t.opt.zero_grad(set_to_none=True)
        loss.backward()
        t.opt.step()
        check_interrupted()
        if t.ema is not None:
            t.ema.update()
        if t.per_step:
            t.sched.step()
        loss_sum += loss.detach() * y.shape[0]
        correct += (out.detach().argmax(1) == y).sum()
    if t.sched is not None and not t.per_step:
        t.sched.step()
    seconds = time.perf_counter() - start
    seen = min(n, t.steps * cfg.batch_size)
    train_loss = loss_sum.item() / seen
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"training diverged in epoch {epoch} (loss {train_loss}); lower the learning rate")
    return {"train_loss": train_loss, "train_acc": 100.0 * correct.item() / seen, "seconds": seconds, "seen": seen}


def evaluate_splits(t: Training) -> dict[str, float]:
    """Validation (NaN without one) and test loss and accuracy of the model as it is now (the caller applies
    the EMA weights); one folded copy serves both splits."""
    cfg = t.cfg
    evaluated = inference_copy(t.model, cfg.channels_last) if cfg.fold_bn_eval else t.model
    figures = {}
    for split, name in ((t.data.val, "val"), (t.data.test, "test")):
        loss, acc = (
            evaluate(evaluated, split, cfg.eval_batch_size, t.autocast, cfg.channels_last, fold_bn=False)
            if split is not None
            else (float("nan"), float("nan"))
        )
        figures |= {f"{name}_loss": loss, f"{name}_acc": acc}
    return figures


def train_model(
    model: nn.Module,
    data: MnistData,
    cfg: TrainConfig,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a copy of ``model`` by ``cfg`` and return it as ``result.model`` (same classes, device and dtype, the
    trained or EMA-averaged weights), one row per epoch in ``result.epochs``; ``model`` is left as given (its
    classes: the engine swaps in faster layers on its copy; device, dtype, mode, weights).
    ``model.load_state_dict(result.model.state_dict())`` takes the weights. ``on_start(settings)`` gets what the
    run resolved; ``on_epoch(epoch, row)`` runs after each epoch (an exception it raises stops training)."""
    work = copy.deepcopy(model)
    result = fit(work, data, cfg, on_epoch, progress, on_start)
    trained = copy.deepcopy(model)
    trained.load_state_dict(work.state_dict())
    trained.train(model.training)
    return TrainResult(trained, result.epochs, result.settings)


def fit(
    model: nn.Module,
    data: MnistData,
    cfg: TrainConfig,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place, the engine's loop (``train_model`` is this on a copy): its layers are swapped for
    the engine's faster ones (``prepare_model``), it is moved to the data's device, and it ends holding the
    EMA-averaged weights. ``on_start(settings)`` gets what the run resolved (device, bf16 ...);
    ``on_epoch(epoch, row)`` runs after each epoch (logging, pruning): an exception it raises (e.g.
    ``optuna.TrialPruned``) stops training there."""
    t = start_training(model, data, cfg)
    if on_start is not None:
        on_start(t.settings)
    rows: list[dict[str, Any]] = []
    for epoch in range(1, t.cfg.epochs + 1):
        lr = t.opt.param_groups[0]["lr"]
        trained = train_epoch(t, epoch, progress)
        eval_start = time.perf_counter()
        with t.ema.applied() if t.ema is not None else contextlib.nullcontext():  # the averaged weights are the model
            scores = evaluate_splits(t)
            row = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": trained["train_loss"],
                "train_acc": trained["train_acc"],
                **scores,
                "seconds": trained["seconds"],
                "eval_seconds": time.perf_counter() - eval_start,
                "images_per_second": trained["seen"] / trained["seconds"],
            }
            rows.append(row)
            if on_epoch is not None:
                on_epoch(epoch, row)  # logs and saves the model: the averaged one
    if t.ema is not None:
        t.ema.copy_to_model()
    return TrainResult(model, rows, t.settings)
