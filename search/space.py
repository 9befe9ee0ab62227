"""The search space: ``suggest_spec(trial)`` and ``suggest_recipe(trial)``, nothing else.

Model construction lives in ``mnist_challenge.architecture.model``; here only choices are made, so the params of
any finished trial turn back into the same spec by replaying them (``spec_from_params``).

Two versions of the architecture space exist; a study keeps the one it was created with
(``space_version`` in its user attrs; studies from before the attribute are version 1):

* 1: absolute channel widths from a list (narrowed under small caps); draws over the cap are rejected.
* 2: a topology with *relative* widths and block kinds, fitted to the cap (``fitted_spec``,
  ``budget.fit_to_cap``), so every draw fits and lands just under the cap.
* 3: version 2, and a transition may be the pool alone (no 1x1 squeeze: the family of the smallest public
  nets) and the batch may be 32.
* 4: version 3, and the recipe draws brightness / contrast augmentation (one strength for both), which an
  ablation on the micro-v3 design showed to help (``logs/ablation/``).
* 5 (new studies): version 4, and a block may also be ``dense`` (concatenating: every unit reads all earlier
  maps), ``branch`` (a 3x3 and a dilated 3x3 side by side) or ``shared`` (one conv applied again: depth without
  parameters), the parameter-efficient families the nano study's analysis pointed at (capacity, not reach,
  limits it under 3,000 parameters).
"""

from __future__ import annotations

from typing import Any

import optuna

from mnist_challenge import ArchSpec, ConvBlock, UserError
from mnist_challenge.architecture.spec import BLOCK_KINDS, CHAIN_KINDS, DILATION, MAX_CHANNELS, PADDED_KINDS, POOL_ONLY
from mnist_challenge.engine.train import TrainConfig

from .budget import fit_to_cap, width

SPACE_VERSION = 5  # the version new studies get
SPACE_VERSIONS = (1, 2, 3, 4, 5)

CHANNELS = [4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32]
SQUEEZE = [6, 8, 10, 12, 16]
STEM = [4, 6, 8, 10, 12, 16]
DROPOUT = [0.0, 0.02, 0.05, 0.1]
N_BLOCKS = (2, 4)  # inclusive integer ranges
N_CONVS = (1, 3)
PADDING = (0, 1)
BATCHNORM = ["after_relu", "before_relu", "none"]
DROPOUT_AT = ["every_conv", "block_end"]
HEADS = ["gap_conv", "conv_gap"]
SCHEDULES = ["onecycle", "step"]
BATCH_SIZES = [64, 128, 256]


def widths(max_params: int | None = None) -> list[int]:
    """The conv widths worth drawing under a parameter cap: one c->c 3x3 conv with BN costs ~9c^2, and
    a net needs several, so widths with 18c^2 > cap would be rejected almost always. Drawing them anyway
    spent a 5k-parameter search's trials on rejections. No cap (or the assignment's 20k): all widths."""
    if max_params is None:
        return CHANNELS
    return [c for c in CHANNELS if 18 * c * c <= max_params] or CHANNELS[:1]


def suggest_spec(trial: optuna.Trial, name: str = "search", max_params: int | None = None) -> ArchSpec:
    """Draw a GAP-headed CNN. Conditional: each block's convs, channels, padding, residual and whether
    a transition follows exist only for the blocks the trial has. Widths come from ``widths(max_params)``
    (fixed per study, as Optuna needs). May raise ``UserError`` for a draw whose feature map vanishes;
    the objective records that as the trial's reason."""
    channel_choices = widths(max_params)
    n_blocks = trial.suggest_int("n_blocks", *N_BLOCKS)
    blocks = []
    for i in range(1, n_blocks + 1):
        n_convs = trial.suggest_int(f"b{i}_convs", *N_CONVS)
        channels = [trial.suggest_categorical(f"b{i}_c{j}", channel_choices) for j in range(1, n_convs + 1)]
        padding = trial.suggest_int(f"b{i}_padding", *PADDING)
        residual = trial.suggest_categorical(f"b{i}_residual", [False, True])
        transition = None
        if i < n_blocks and trial.suggest_categorical(f"b{i}_transition", [True, False]):
            transition = trial.suggest_categorical(f"b{i}_squeeze", SQUEEZE)
        blocks.append(ConvBlock(tuple(channels), padding, residual, transition))
    dropout = trial.suggest_categorical("dropout", DROPOUT)
    return ArchSpec(
        blocks=tuple(blocks),
        stem_channels=trial.suggest_categorical("stem_channels", STEM),
        stem_padding=trial.suggest_int("stem_padding", *PADDING),
        batchnorm=trial.suggest_categorical("batchnorm", BATCHNORM),
        dropout=dropout,
        dropout_at=trial.suggest_categorical("dropout_at", DROPOUT_AT) if dropout > 0 else "none",
        head=trial.suggest_categorical("head", HEADS),
        name=f"{name}-trial{trial.number}",
    )


# --- version 2: topology and relative widths, fitted to the cap ---------------------------------------
FITTED_CONVS = (2, 3)  # convs per block: one-conv blocks add too little RF for their transition's cost
RELATIVE_WIDTH = (0.5, 2.0)  # a block's width relative to the others (log-uniform)
SQUEEZE_RATIO = (0.4, 1.0)  # a transition's squeeze width relative to its block's
STEM_RATIO = (0.3, 1.0)  # the stem's width relative to the first block's


def fitted_spec(
    trial: optuna.Trial, name: str, max_params: int, min_rf: int = 0, version: int = SPACE_VERSION
) -> ArchSpec:
    """Draw a topology and relative widths, then scale the widths to the cap.

    Two repairs keep every draw a network worth training (both are replayed exactly from the params):
    a block whose unpadded convs would shrink the map below 4 px is padded instead, and if the drawn
    network would see less than ``min_rf`` pixels at its head, its last block becomes dilated (twice
    the RF growth). The first transition is always there: full 28 px maps cost much and see little."""
    n_blocks = trial.suggest_int("n_blocks", *N_BLOCKS)
    stem_padding = trial.suggest_int("stem_padding", *PADDING)
    side = 28 - 2 * (1 - stem_padding)
    shapes = []
    for i in range(1, n_blocks + 1):
        convs = trial.suggest_int(f"b{i}_convs", *FITTED_CONVS)
        kind = trial.suggest_categorical(f"b{i}_kind", list(BLOCK_KINDS if version >= 5 else CHAIN_KINDS))
        drawn_padding = 1 if kind in PADDED_KINDS else trial.suggest_int(f"b{i}_padding", *PADDING)
        padding = _keep_map(drawn_padding, side, kind, convs)
        side -= 0 if padding else 2 * DILATION[kind] * convs
        residual = kind != "dense" and trial.suggest_categorical(f"b{i}_residual", [False, True])
        relative = trial.suggest_float(f"b{i}_width", *RELATIVE_WIDTH, log=True)
        squeeze = None
        if i < n_blocks and side >= 4 and (i == 1 or trial.suggest_categorical(f"b{i}_transition", [True, False])):
            pool_only = version >= 3 and trial.suggest_categorical(f"b{i}_pool_only", [False, True])
            squeeze = POOL_ONLY if pool_only else trial.suggest_float(f"b{i}_squeeze", *SQUEEZE_RATIO)
            side //= 2
        shapes.append([convs, kind, padding, residual, relative, squeeze])
    stem_ratio = trial.suggest_float("stem_width", *STEM_RATIO)
    dropout = trial.suggest_categorical("dropout", DROPOUT)
    head = trial.suggest_categorical("head", list(HEADS_V2))
    if _head_rf(shapes, head) < min_rf:  # the last block sees too little: dilate it
        convs, _, padding, *rest = shapes[-1]
        side_before = side + (0 if padding else 2 * DILATION[shapes[-1][1]] * convs)
        shapes[-1] = [convs, "dilated", _keep_map(padding, side_before, "dilated", convs), *rest]
    common = dict(
        stem_padding=stem_padding,
        batchnorm=trial.suggest_categorical("batchnorm", BATCHNORM),
        dropout=dropout,
        dropout_at=trial.suggest_categorical("dropout_at", DROPOUT_AT) if dropout > 0 else "none",
        head=head,
        name=f"{name}-trial{trial.number}",
    )

    def build(scale: float) -> ArchSpec:
        blocks = tuple(
            ConvBlock(
                (width(scale, rel, MAX_CHANNELS),) * convs,
                padding,
                residual,
                squeeze if squeeze in (None, POOL_ONLY) else width(scale, rel * squeeze, MAX_CHANNELS),
                kind,
            )
            for convs, kind, padding, residual, rel, squeeze in shapes
        )
        return ArchSpec(blocks=blocks, stem_channels=width(scale, shapes[0][4] * stem_ratio, MAX_CHANNELS), **common)

    return fit_to_cap(build, max_params)[0]


def _keep_map(padding: int, side: int, kind: str, convs: int) -> int:
    """The block's padding, or 1 where unpadded convs would leave a map under 4 px."""
    return 1 if padding == 0 and side - 2 * DILATION[kind] * convs < 4 else padding


def _head_rf(shapes: list, head: str) -> int:
    """RF at the head's input of a drawn topology (widths do not change it): stem 3x3, each 3x3 adds
    (kernel span - 1) x jump, each 2x2 max-pool adds one jump and doubles it, a 3x3 head adds two jumps."""
    rf, jump = 3, 1
    for convs, kind, _, _, _, squeeze in shapes:
        rf += convs * 2 * DILATION[kind] * jump
        if squeeze is not None:
            rf, jump = rf + jump, jump * 2
    return rf + (2 * jump if head == "conv3_gap" else 0)


HEADS_V2 = ("gap_conv", "conv_gap", "conv3_gap")


def draw_spec(trial: optuna.Trial, name: str, max_params: int, min_rf: int, version: int) -> ArchSpec:
    """The spec of a trial in a study of space ``version``."""
    if version == 1:
        return suggest_spec(trial, name, max_params)
    return fitted_spec(trial, name, max_params, min_rf, version)


def spec_of_trial(trial: optuna.trial.FrozenTrial, study_name: str) -> ArchSpec:
    """The spec a finished trial drew: stored with it (every version), else replayed (version 1)."""
    if isinstance(trial.user_attrs.get("spec"), dict):
        return ArchSpec.from_dict(trial.user_attrs["spec"])
    return spec_from_params(trial.params, study_name, trial.number)


# The recipe fields a trial draws (any space version), in the order its record lists them; a subset of the
# engine's recipe (mnist_challenge.engine.train.RECIPE_KEYS).
RECIPE_FIELDS = (
    "lr",
    "batch_size",
    "schedule",
    "step_size",
    "rotation",
    "translate",
    "weight_decay",
    "label_smoothing",
    "brightness",
    "contrast",
)
RECIPE_KEYS = frozenset(RECIPE_FIELDS) - {"label_smoothing", "brightness", "contrast"}  # what version 1 draws


# Version 1's recipe ranges (inclusive), read by suggest_recipe and by params_from_spec's check of an
# enqueued recipe: a warm start is a point of the space, not a way around it.
RECIPE_RANGES: dict[str, tuple[float, float]] = {
    "lr": (0.01, 0.3),  # drawn on a log scale
    "step_size": (3, 8),
    "rotation": (0.0, 15.0),
    "translate": (0.0, 0.1),
    "weight_decay": (1e-5, 1e-3),  # drawn on a log scale
}


def suggest_recipe(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The training recipe: learning rate, batch size, schedule and augmentation strength."""
    r = RECIPE_RANGES
    schedule = trial.suggest_categorical("schedule", SCHEDULES)
    return TrainConfig(
        **{
            **base.to_dict(),
            "lr": trial.suggest_float("lr", *r["lr"], log=True),
            "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
            "schedule": schedule,
            "step_size": trial.suggest_int("step_size", *r["step_size"]) if schedule == "step" else base.step_size,
            "rotation": trial.suggest_float("rotation", *r["rotation"]),
            "translate": trial.suggest_float("translate", *r["translate"]),
            "weight_decay": trial.suggest_float("weight_decay", *r["weight_decay"], log=True),
        }
    )


def spec_from_params(params: dict[str, Any], name: str = "search", number: int = 0) -> ArchSpec:
    """The spec a trial with these params trained (replays ``suggest_spec`` on a FixedTrial)."""
    trial = optuna.trial.FixedTrial(params, number=number)
    return suggest_spec(trial, name)


def recipe_from_params(params: dict[str, Any], base: TrainConfig) -> TrainConfig:
    return suggest_recipe(optuna.trial.FixedTrial(params), base)


# Batch sizes of the fitted recipe, by space version: version 3 adds 32 (the smallest public nets' batch).
FITTED_BATCHES = {2: [64, 128], 3: [32, 64, 128]}
# Version 4's brightness / contrast strength (both get it; engine.augment.random_photometric): off, or up to
# the ablated 0.2.
PHOTOMETRIC = [0.0, 0.1, 0.2]


def fitted_recipe(trial: optuna.Trial, base: TrainConfig, version: int = SPACE_VERSION) -> TrainConfig:
    """Version 2's recipe, for tiny nets on complete schedules: OneCycle always (a staged search compares
    complete schedules of several lengths), batch 64 or 128 (version 3: also 32), label smoothing, and the
    ranges the first searches found worth drawing (version 1's translation above 0.06 and learning rates
    under 0.02 all finished last); version 4 also draws brightness / contrast."""
    drawn = {
        "schedule": "onecycle",
        "lr": trial.suggest_float("lr", 0.02, 0.2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", FITTED_BATCHES[min(version, 3)]),
        "label_smoothing": trial.suggest_categorical("label_smoothing", [0.0, 0.05, 0.1]),
        "rotation": trial.suggest_float("rotation", 0.0, 12.0),
        "translate": trial.suggest_float("translate", 0.0, 0.06),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 5e-4, log=True),
    }
    if version >= 4:
        strength = trial.suggest_categorical("photometric", PHOTOMETRIC)
        drawn |= {"brightness": strength, "contrast": strength}
    return TrainConfig(**{**base.to_dict(), **drawn})


def draw_recipe(trial: optuna.Trial, base: TrainConfig, version: int) -> TrainConfig:
    return suggest_recipe(trial, base) if version == 1 else fitted_recipe(trial, base, version)


def recipe_of_trial(trial: optuna.trial.FrozenTrial, base: TrainConfig) -> TrainConfig:
    """The recipe a finished trial trained with: stored with it (every version), else replayed (version 1)."""
    stored = trial.user_attrs.get("recipe")
    if isinstance(stored, dict):
        return TrainConfig.from_dict({**base.to_dict(), **stored})
    return recipe_from_params(trial.params, base)


def smallest_params() -> int:
    """Fewest parameters any spec in the space can have: a cap below this can never be met."""
    from mnist_challenge import build_model, count_params

    # Two one-conv blocks of the narrowest width, no BatchNorm (a conv bias costs less than BN's pair).
    tiny = ArchSpec(
        blocks=(ConvBlock((CHANNELS[0],), 1), ConvBlock((CHANNELS[0],), 1)), stem_channels=STEM[0], batchnorm="none"
    )
    return count_params(build_model(tiny))


def params_from_spec(
    spec: ArchSpec, recipe: TrainConfig | None = None, max_params: int | None = None
) -> dict[str, Any]:
    """The trial params that make ``suggest_spec`` (and, given a recipe, ``suggest_recipe``) draw exactly
    this spec: how a known design is enqueued into a study as a warm start. A spec the space cannot
    express (a width not in ``CHANNELS``, say) is a ``UserError`` naming the first mismatch."""

    def pick(name: str, value: Any, choices: list | tuple[int, int]) -> Any:
        allowed = range(choices[0], choices[1] + 1) if isinstance(choices, tuple) else choices  # tuple: an int range
        if value not in allowed:
            raise UserError(
                f"spec {spec.name!r} is outside the search space: {name}={value!r} is not one of {list(allowed)}"
            )
        return value

    if (spec.in_channels, spec.input_size, spec.num_classes) != (1, 28, 10):
        raise UserError(
            f"spec {spec.name!r} is outside the search space: the space is for 1x28x28 inputs and 10 classes"
        )
    channel_choices = widths(max_params)
    params: dict[str, Any] = {"n_blocks": pick("n_blocks", len(spec.blocks), N_BLOCKS)}
    for i, block in enumerate(spec.blocks, start=1):
        pick(f"b{i} kind", block.kind, ["conv"])
        params[f"b{i}_convs"] = pick(f"b{i}_convs", len(block.channels), N_CONVS)
        for j, c in enumerate(block.channels, start=1):
            params[f"b{i}_c{j}"] = pick(f"b{i}_c{j}", c, channel_choices)
        params[f"b{i}_padding"] = pick(f"b{i}_padding", block.padding, PADDING)
        params[f"b{i}_residual"] = block.residual
        if i < len(spec.blocks):
            params[f"b{i}_transition"] = block.transition is not None
            if block.transition is not None:
                params[f"b{i}_squeeze"] = pick(f"b{i}_squeeze", block.transition, SQUEEZE)
        elif block.transition is not None:
            raise UserError(f"spec {spec.name!r} is outside the search space: the last block has a transition")
    params["dropout"] = pick("dropout", spec.dropout, DROPOUT)
    params["stem_channels"] = pick("stem_channels", spec.stem_channels, STEM)
    params["stem_padding"] = pick("stem_padding", spec.stem_padding, PADDING)
    params["batchnorm"] = pick("batchnorm", spec.batchnorm, BATCHNORM)
    if spec.dropout > 0:
        params["dropout_at"] = pick("dropout_at", spec.dropout_at, DROPOUT_AT)
    params["head"] = pick("head", spec.head, HEADS)
    if recipe is not None:
        drawn = ["lr", "rotation", "translate", "weight_decay"] + (["step_size"] if recipe.schedule == "step" else [])
        for key in drawn:
            lo, hi = RECIPE_RANGES[key]
            value = getattr(recipe, key)
            if not lo <= value <= hi:
                raise UserError(f"the recipe is outside the search space: {key}={value!r} is not in [{lo:g}, {hi:g}]")
            params[key] = value
        params.update(
            schedule=pick("schedule", recipe.schedule, SCHEDULES),
            batch_size=pick("batch_size", recipe.batch_size, BATCH_SIZES),
        )
    return params
