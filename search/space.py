"""The search space: ``suggest_spec(trial)`` and ``suggest_recipe(trial)``, nothing else.

Model construction lives in ``mnist_challenge.model``; here only choices are made, so the params of
any finished trial turn back into the same spec by replaying them (``spec_from_params``).
"""

from __future__ import annotations

from typing import Any

import optuna

from mnist_challenge import ArchSpec, ConvBlock
from mnist_challenge.train import TrainConfig

CHANNELS = [4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32]
SQUEEZE = [6, 8, 10, 12, 16]
STEM = [4, 6, 8, 10, 12, 16]
DROPOUT = [0.0, 0.02, 0.05, 0.1]


def suggest_spec(trial: optuna.Trial, name: str = "search") -> ArchSpec:
    """Draw a GAP-headed CNN. Conditional: each block's convs, channels, padding, residual and whether
    a transition follows exist only for the blocks the trial has. May raise ``UserError`` for a draw
    whose feature map vanishes; the objective records that as the trial's reason."""
    n_blocks = trial.suggest_int("n_blocks", 2, 4)
    blocks = []
    for i in range(1, n_blocks + 1):
        n_convs = trial.suggest_int(f"b{i}_convs", 1, 3)
        channels = [trial.suggest_categorical(f"b{i}_c{j}", CHANNELS) for j in range(1, n_convs + 1)]
        padding = trial.suggest_int(f"b{i}_padding", 0, 1)
        residual = trial.suggest_categorical(f"b{i}_residual", [False, True])
        transition = None
        if i < n_blocks and trial.suggest_categorical(f"b{i}_transition", [True, False]):
            transition = trial.suggest_categorical(f"b{i}_squeeze", SQUEEZE)
        blocks.append(ConvBlock(tuple(channels), padding, residual, transition))
    dropout = trial.suggest_categorical("dropout", DROPOUT)
    return ArchSpec(
        blocks=tuple(blocks),
        stem_channels=trial.suggest_categorical("stem_channels", STEM),
        stem_padding=trial.suggest_int("stem_padding", 0, 1),
        batchnorm=trial.suggest_categorical("batchnorm", ["after_relu", "before_relu", "none"]),
        dropout=dropout,
        dropout_at=trial.suggest_categorical("dropout_at", ["every_conv", "block_end"]) if dropout > 0 else "none",
        head=trial.suggest_categorical("head", ["gap_conv", "conv_gap"]),
        name=f"{name}-trial{trial.number}",
    )


def suggest_recipe(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The training recipe: learning rate, batch size, schedule and augmentation strength."""
    schedule = trial.suggest_categorical("schedule", ["onecycle", "step"])
    return TrainConfig(**{
        **base.to_dict(),
        "lr": trial.suggest_float("lr", 0.01, 0.3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
        "schedule": schedule,
        "step_size": trial.suggest_int("step_size", 3, 8) if schedule == "step" else base.step_size,
        "rotation": trial.suggest_float("rotation", 0.0, 15.0),
        "translate": trial.suggest_float("translate", 0.0, 0.1),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
    })


def spec_from_params(params: dict[str, Any], name: str = "search", number: int = 0) -> ArchSpec:
    """The spec a trial with these params trained (replays ``suggest_spec`` on a FixedTrial)."""
    trial = optuna.trial.FixedTrial(params, number=number)
    return suggest_spec(trial, name)


def recipe_from_params(params: dict[str, Any], base: TrainConfig) -> TrainConfig:
    return suggest_recipe(optuna.trial.FixedTrial(params), base)


def smallest_params() -> int:
    """Fewest parameters any spec in the space can have: a cap below this can never be met."""
    from mnist_challenge import build_model, count_params

    # Two one-conv blocks of the narrowest width, no BatchNorm (a conv bias costs less than BN's pair).
    tiny = ArchSpec(blocks=(ConvBlock((CHANNELS[0],), 1), ConvBlock((CHANNELS[0],), 1)), stem_channels=STEM[0], batchnorm="none")
    return count_params(build_model(tiny))
