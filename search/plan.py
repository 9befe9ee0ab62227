"""From what a user asked (``SearchRequest``, the search command's flags) to what runs (``ResolvedSearch``):
the budget's settings filled in, flags that clash with it refused, every setting checked before a study is
created or opened for writing. No argparse here; ``search.commands.run`` only parses and prints.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from mnist_challenge.common.errors import UserError
from mnist_challenge.common.validate import (
    NAME_MAX,
    check_writable_dir,
    float_flag,
    int_flag,
    parse_bool,
    positive_int,
    seed_flag,
    short_name_flag,
    shown,
)
from mnist_challenge.engine.train import TrainConfig
from mnist_challenge.runs.budgets import BUDGETS, Budget, resolve_budget

DEFAULT_BUDGET = "assignment"  # the main job: what `mnist-search` with no --budget runs (as `make search`)
DEFAULT_STUDY = f"budget-{DEFAULT_BUDGET}"  # the study the other commands (reproduce, digest, ablate) read by default
SINGLE_STAGE_STUDY = "single-stage"  # the plain search's study (--single-stage); no longer the default
DEFAULT_EPOCHS = 15  # epochs per trial of a plain search
DEFAULT_MAX_PARAMS = BUDGETS["assignment"].max_params
MAX_EPOCHS = BUDGETS["assignment"].epochs  # the assignment's rule: fewer than 20 epochs
# A study's name becomes its trials' spec names, "<study>-trial<N>", which must fit a name's NAME_MAX
# characters with room for a trial number of six digits.
STUDY_NAME_MAX = NAME_MAX - len("-trial") - 6
GRACE_FACTOR = 2  # --grace must be at least this many heartbeats: a live trial is never taken for a dead one
DEFAULT_GRACE_FACTOR = 3
PRUNERS = ("hyperband", "median", "sha", "none")


def default_workers() -> int:
    """Two single-thread workers on a CPU box with >= 2 cores; one worker on a GPU."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))


def study_dir(logs: str | Path, study: str) -> Path:
    return Path(logs) / study


def storage_url(given: str | None, folder: Path) -> str:
    from .storage import default_storage_url

    return given or default_storage_url(folder)


def option(default, help: str, **argparse_keywords):
    """A field that is also a flag of the search command: its help and parsing (``type``, ``choices`` ...) are
    declared here, once, and ``search.commands.run`` makes the flag from them (``--field-name``)."""
    return field(default=default, metadata={"option": {"help": help, **argparse_keywords}})


@dataclass(frozen=True)
class SearchRequest:
    """The search command's flags as given (None: not given, the budget or a default decides). Fields made with
    ``option`` are declared here; the others are the flags of shared declarations: the study's place
    (``commands.flags``), a budget's stages (``Budget``), the base recipe (``TrainConfig``) and the data."""

    study: str | None = None
    storage: str | None = None
    logs: str = "logs/search"
    budget: str | None = option(
        None,
        "the budget whose whole staged search runs: screen designs on a short complete schedule, promote the best "
        "through longer ones, confirm the top ones with seeds (sets the cap, epochs, pruning; default "
        f"{DEFAULT_BUDGET})",
        choices=sorted(BUDGETS),
    )
    single_stage: bool = option(
        False,
        f"instead of a budget's stages: a plain Optuna search of --n-trials trials, each trained --epochs epochs "
        f"under --max-params with a pruner (study {SINGLE_STAGE_STUDY!r} unless --study)",
        action="store_true",
    )
    rungs: str | None = option(None, "staged search: the shorter schedules before the full one, e.g. 4,8")
    screen: int | None = None
    confirm: int | None = None
    seeds: int | None = None
    transfer_from: str | None = option(
        None,
        "staged search: enqueue the confirmed designs of another staged study (under --logs) first, their "
        "relative widths re-fitted to this budget's cap; trials.csv and the summary mark them as transferred",
        type=short_name_flag(STUDY_NAME_MAX),
        metavar="STUDY",
    )
    transfer_top: int | None = option(
        None, "with --transfer-from: only its N best confirmed designs (default: all)", type=int_flag(1, 1000)
    )
    n_trials: int = option(
        20, "with --single-stage: trials to add in this run, over all workers (default 20)", type=int_flag(1, 100_000)
    )
    epochs: int | None = option(
        None,
        f"with --single-stage: epochs per trial; must be < {MAX_EPOCHS + 1} (default {DEFAULT_EPOCHS})",
        type=positive_int,
    )
    max_params: int | None = option(
        None,
        f"with --single-stage: parameter cap, strictly fewer (default {DEFAULT_MAX_PARAMS})",
        type=int_flag(1, 10**8),
    )
    min_rf: int = option(20, "minimum receptive field at the head in px (default 20)", type=int_flag(1, 10_000))
    mode: str = option(
        "single",
        "with --single-stage: single: max val acc under the cap; multi: (val acc, params) Pareto front",
        choices=("single", "multi"),
    )
    pruner: str = option(
        "hyperband", "with --single-stage: how trials are stopped early (default hyperband)", choices=PRUNERS
    )
    workers: int | None = option(
        None, "worker processes on this machine (default: 2 on CPU, 1 on GPU)", type=int_flag(1, 256)
    )
    threads: int | None = None
    train_subset: int | None = None
    val_size: int | None = None  # None: the budget's, else 10,000
    seed: int = 0
    sampler_seed: int | None = option(
        None,
        "seed worker i's sampler with this + i, to replay a recorded run (default: drawn per process, so that every "
        "command and machine draws differently; recorded as each trial's sampler_seed)",
        type=seed_flag,
    )
    timeout: float | None = option(
        None, "stop starting new trials after this many seconds", type=float_flag(0, None, lo_open=True)
    )
    device: str = "auto"
    heartbeat: int = option(60, "seconds between trial heartbeats (default 60)", type=int_flag(1, 3600))
    grace: int | None = option(
        None,
        f"a RUNNING trial silent this long is failed and retried; at least {GRACE_FACTOR}x --heartbeat "
        f"(default {DEFAULT_GRACE_FACTOR}x --heartbeat)",
        type=int_flag(1, 86_400),
    )
    enqueue: tuple[str, ...] = option(
        (),
        "with --single-stage: run this spec (preset name or spec.json) first, with the default recipe or the given "
        "recipe values (e.g. compact:lr=0.1,rotation=10); repeatable; skipped if the study already has the same trial",
        action="append",
        metavar="SPEC[:KEY=VALUE,...]",
    )
    space: int | None = option(
        None,
        "architecture space: 5 (the default for a new study) fits each drawn topology's widths to --max-params, "
        "may draw dense (concatenating), branch and weight-shared blocks, pool-only transitions and batch 32 and "
        "draws brightness / contrast augmentation; 4 the same without the dense, branch and shared blocks; 3 also "
        "without brightness / contrast; 2 also without pool-only transitions and batch 32; 1 draws absolute "
        "widths (needed by --enqueue). A study keeps the one it was made with",
        type=int_flag(1, 5),
        choices=(1, 2, 3, 4, 5),  # space.SPACE_VERSIONS (not imported here: it loads optuna)
    )
    data_dir: str | None = None

    @classmethod
    def from_namespace(cls, args: object) -> SearchRequest:
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**values | {"enqueue": tuple(values.get("enqueue") or ())})


@dataclass(frozen=True)
class ResolvedSearch:
    """A request with every choice made: what the run plan, the stages and the summary lines read."""

    request: SearchRequest
    budget: Budget | None  # None: a plain single-stage search
    study: str
    study_dir: Path
    storage_url: str
    epochs: int  # epochs per trial (a staged search: its first rung)
    max_params: int
    pruner: str
    workers: int
    threads: int
    grace: int
    base: TrainConfig  # the recipe every trial starts from

    def describe(self) -> str:
        b = self.budget
        if b is None:
            return f"{self.request.n_trials} trials, {self.epochs} epochs each"
        return (
            f"budget {b.name}: < {b.max_params:,} params; {b.screen} designs screened on {b.ladder[0]} epochs, "
            f"promoted through {', '.join(map(str, b.ladder[1:]))}, top {b.confirm} x {b.seeds} seeds"
        )


def resolve(request: SearchRequest) -> ResolvedSearch:
    """Fill in what ``--budget`` sets (study name, cap, epochs of the first rung, no pruning), or the plain
    search's defaults; a flag that a budget sets and the user also gave is refused."""
    r = request
    staged_flags = {"--rungs": r.rungs, "--screen": r.screen, "--confirm": r.confirm, "--seeds": r.seeds}
    staged_flags |= {"--transfer-from": r.transfer_from, "--transfer-top": r.transfer_top}
    if r.single_stage:
        given = [flag for flag, value in staged_flags.items() if value is not None]
        if r.budget is not None:
            given.insert(0, f"--budget {r.budget}")
        if given:
            raise UserError(f"--single-stage is a plain search; {', '.join(given)} belong to a staged one: drop them")
        budget, study = None, r.study or SINGLE_STAGE_STUDY
        epochs, max_params, pruner = r.epochs or DEFAULT_EPOCHS, r.max_params or DEFAULT_MAX_PARAMS, r.pruner
    else:
        clashing = [
            flag
            for flag, value in (
                ("--epochs", r.epochs),
                ("--max-params", r.max_params),
                ("--enqueue", r.enqueue or None),
                ("--mode multi", r.mode == "multi" or None),
            )
            if value is not None
        ]
        if clashing and r.budget is None:
            raise UserError(
                f"{', '.join(clashing)}: a plain search needs --single-stage (without it, mnist-search runs the "
                f"staged search of --budget {DEFAULT_BUDGET}, which sets the cap, the epochs and the stages itself)"
            )
        if clashing:
            raise UserError(
                f"--budget {r.budget} sets the cap, the epochs and the stages itself; drop {', '.join(clashing)}"
            )
        budget = resolve_budget(r.budget or DEFAULT_BUDGET, r.rungs, r.screen, r.confirm, r.seeds)
        study = r.study or f"budget-{budget.name}"
        epochs, max_params, pruner = budget.ladder[0], budget.max_params, "none"
    workers = r.workers or default_workers()
    threads = r.threads or max(1, (os.cpu_count() or 1) // workers)
    folder = study_dir(r.logs, study)
    train_subset = r.train_subset if r.train_subset is not None else budget.train_subset if budget else None
    val_size = r.val_size if r.val_size is not None else (budget.val_size if budget else None) or 10_000
    base = TrainConfig(
        epochs=epochs, seed=r.seed, threads=threads, train_subset=train_subset, val_size=val_size, device=r.device
    )
    return ResolvedSearch(
        request=r,
        budget=budget,
        study=study,
        study_dir=folder,
        storage_url=storage_url(r.storage, folder),
        epochs=epochs,
        max_params=max_params,
        pruner=pruner,
        workers=workers,
        threads=threads,
        grace=r.grace if r.grace is not None else DEFAULT_GRACE_FACTOR * r.heartbeat,
        base=base,
    )


def validate(s: ResolvedSearch) -> None:
    """Every setting, checked before a study is created or opened for writing: nothing is written when
    any of them is wrong, so the corrected command finds no half-made study."""
    from mnist_challenge.engine.data import check_split
    from mnist_challenge.engine.train import resolve_device

    from .runner import refuse_earlier_runs
    from .space import smallest_params
    from .storage import parse_storage_url

    r = s.request
    if s.epochs > MAX_EPOCHS:
        raise UserError(f"--epochs must be < {MAX_EPOCHS + 1} (the assignment's rule), got {s.epochs}")
    floor = smallest_params()
    if s.max_params <= floor:
        raise UserError(f"--max-params {s.max_params}: no spec in the search space has fewer than {floor} parameters")
    if r.enqueue and r.space != 1:
        raise UserError(
            "--enqueue needs --space 1: a known spec has absolute widths, which only the version 1 space "
            "draws (the fitted space scales relative widths to the cap)"
        )
    if s.grace < GRACE_FACTOR * r.heartbeat:
        raise UserError(
            f"--grace {s.grace} must be at least {GRACE_FACTOR}x --heartbeat {r.heartbeat}: a "
            f"live trial would be taken for a dead one and run twice; leave --grace out to use "
            f"{DEFAULT_GRACE_FACTOR}x"
        )
    check_split(s.base.val_size, s.base.train_subset, need_val=True)
    resolve_device(s.base.device)
    check_writable_dir(s.study_dir, "--logs")
    parsed = parse_storage_url(s.storage_url)
    if parsed.get_backend_name() == "sqlite":
        check_writable_dir(Path(parsed.database).parent, "--storage folder")
        if not Path(parsed.database).exists():  # a new database: refuse before creating it (runner checks others)
            refuse_earlier_runs(s.study_dir)


def recipe_with(base: TrainConfig, overrides: str, keys: Collection[str], what: str) -> TrainConfig:
    """``base`` with ``KEY=VALUE,...`` on top, each KEY one of ``keys``; one error line naming ``what`` for a
    bad pair or a value out of the setting's bounds."""
    recipe = base
    for pair in filter(None, overrides.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or key not in keys:
            raise UserError(f"{what}: expected KEY=VALUE with KEY one of {sorted(keys)}, got {pair!r}")
        kind = type(getattr(base, key))
        parse = parse_bool if kind is bool else kind  # bool("false") is True
        try:
            recipe = dataclasses.replace(recipe, **{key: parse(value)})
        except ValueError:
            expected = "true or false (also yes/no, 1/0)" if kind is bool else f"of type {kind.__name__}"
            raise UserError(f"{what}: {key} must be {expected}, got {shown(value)}") from None
        except UserError as exc:
            raise UserError(f"{what}: {exc}") from None
    return recipe


def enqueued_params(item: str, base: TrainConfig, max_params: int) -> dict:
    """``SPEC`` or ``SPEC:lr=0.1,rotation=10``: the trial params of that spec with that recipe."""
    from mnist_challenge.architecture.spec import load_spec

    from .space import RECIPE_KEYS, params_from_spec

    source, _, overrides = item.partition(":")
    recipe = recipe_with(base, overrides, RECIPE_KEYS, f"--enqueue {item!r}")
    try:
        return params_from_spec(load_spec(source), recipe, max_params)
    except UserError as exc:
        raise UserError(f"--enqueue {item!r}: {exc}") from None


def transferred(s: ResolvedSearch) -> tuple[tuple[dict, str], ...]:
    """The params of the top confirmed designs of ``--transfer-from``'s study, each with where it came from.

    A fitted design's params are its topology and *relative* widths (and its recipe), so the same params in
    this study draw the same design re-fitted to this budget's cap (``space.fitted_spec``)."""
    r = s.request
    if r.transfer_from is None:
        return ()
    if r.transfer_from == s.study:
        raise UserError(f"--transfer-from {r.transfer_from}: that is this study; name another staged study")
    from .space import SPACE_VERSIONS
    from .storage import open_existing_study

    folder = study_dir(r.logs, r.transfer_from)
    other = open_existing_study(storage_url(r.storage, folder), r.transfer_from)
    if other.user_attrs.get("space_version", 1) < 2 or other.user_attrs.get("space_version") not in SPACE_VERSIONS:
        raise UserError(
            f"--transfer-from {r.transfer_from}: its designs have absolute widths (space version 1); only a fitted "
            f"study's relative widths can be re-fitted to another cap"
        )
    confirmed = (other.user_attrs.get("stages") or {}).get("confirmed") or []
    if not confirmed:
        raise UserError(f"--transfer-from {r.transfer_from}: the study has no confirmed designs yet (not staged?)")
    trials = {t.number: t for t in other.get_trials(deepcopy=False)}
    ranked = sorted(confirmed, key=lambda e: -e["mean"])[: r.transfer_top or len(confirmed)]
    return tuple((trials[e["trial"]].params, f"{r.transfer_from} trial {e['trial']}") for e in ranked)


def run_plan(
    s: ResolvedSearch,
    sampler_seed: int,
    enqueue: tuple[dict, ...] = (),
    transfer: tuple[tuple[dict, str], ...] = (),
):
    """The runner's plan for this search (``search.runner.RunPlan``)."""
    from .objective import SearchSettings
    from .runner import RunPlan

    r = s.request
    settings = SearchSettings(
        study_name=s.study,
        study_dir=s.study_dir,
        base=s.base,
        max_params=s.max_params,
        min_rf=r.min_rf,
        multi_objective=r.mode == "multi",
        select_last=1 if s.budget else 3,
        space_version=r.space,
    )
    return RunPlan(
        settings=settings,
        storage_url=s.storage_url,
        n_trials=r.n_trials,
        workers=s.workers,
        pruner=s.pruner,
        seed=r.seed,
        data_dir=r.data_dir,
        timeout=r.timeout,
        heartbeat_interval=r.heartbeat,
        grace_period=s.grace,
        enqueue=enqueue,
        transfer=transfer,
        sampler_seed=sampler_seed,
        fill_to=s.budget.screen if s.budget else None,
        budget=s.budget.record() if s.budget else None,
    )
