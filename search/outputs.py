"""What a search leaves in ``logs/search/<study>/``: trials.csv, best spec, Pareto front, plots, summary."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_challenge.common.files import write_atomic, write_text_atomic

from .space import spec_of_trial

TRIAL_FIELDS = [
    "number",
    "state",
    "val_acc",
    "params",
    "rf_head",
    "macs",
    "epochs_run",
    "planned_epochs",
    "seconds",
    "test_acc_last",
    "reason",
    "run_dir",
    "duplicate_of",
    "sampler_seed",
    "worker",
    "origin",
    "rung_val_acc",
    "confirmed",
    "hyperparameters",
]


def staged_figures(study: optuna.Study) -> dict[int, dict[str, str]]:
    """Per trial, from a staged search's record: its score on each rung, and its seeds' mean ± std."""
    stages = study.user_attrs.get("stages") or {}
    figures: dict[int, dict[str, Any]] = {}
    for rung in stages.get("rungs", []):
        for e in rung["entries"]:
            figures.setdefault(e["trial"], {"rungs": {}})["rungs"][rung["epochs"]] = e["val_acc"]
    for e in stages.get("confirmed", []):
        figures.setdefault(e["trial"], {"rungs": {}})["confirmed"] = (
            f"{e['mean']:.2f} ± {e['std']:.2f} ({len(e['seeds'])} seeds)"
        )
    return {
        n: {"rung_val_acc": json.dumps(f["rungs"]), "confirmed": f.get("confirmed", "")} for n, f in figures.items()
    }


def trial_row(t: FrozenTrial, staged: dict[str, str] | None = None) -> dict[str, Any]:
    attrs = t.user_attrs
    return {
        **(staged or {"rung_val_acc": "", "confirmed": ""}),
        "number": t.number,
        "state": t.state.name,
        "val_acc": attrs.get("val_acc", ""),
        "params": attrs.get("params", ""),
        "rf_head": attrs.get("rf_head", ""),
        "macs": attrs.get("macs", ""),
        "epochs_run": attrs.get("epochs_run", ""),
        "planned_epochs": attrs.get("planned_epochs", ""),
        "seconds": round(attrs["seconds"], 1) if "seconds" in attrs else "",
        "test_acc_last": attrs.get("test_acc_last", ""),
        "reason": attrs.get("reason", ""),
        "run_dir": attrs.get("run_dir", ""),
        "duplicate_of": attrs.get("duplicate_of", ""),
        "sampler_seed": attrs.get("sampler_seed", ""),
        "worker": attrs.get("worker", ""),
        "origin": origin_of(t),
        "hyperparameters": json.dumps(t.params, sort_keys=True),
    }


def origin_of(t: FrozenTrial) -> str:
    """Whether a trial's design was drawn by the sampler or transferred from another study (``--transfer-from``)."""
    source = t.user_attrs.get("transferred_from")
    return f"transferred from {source}" if source else "drawn"


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, TRIAL_FIELDS)
    writer.writeheader()
    staged = staged_figures(study)
    for t in study.get_trials(deepcopy=False):
        writer.writerow(trial_row(t, staged.get(t.number)))
    write_text_atomic(path, text.getvalue())


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials that trained their own draw (not those that reused a twin's result)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in done if "duplicate_of" not in t.user_attrs]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """A staged search's winner (best mean over seeds); otherwise the highest validation accuracy among
    completed trials, fewer parameters breaking ties."""
    done = completed(study)
    if not done:
        return None
    winner = (study.user_attrs.get("stages") or {}).get("winner")
    if winner is not None:
        return next(t for t in done if t.number == winner["trial"])
    return max(done, key=lambda t: (t.values[0], -t.user_attrs.get("params", math.inf)))


def pruning_savings(study: optuna.Study) -> dict[str, Any]:
    """Epochs trained vs. epochs a no-pruning search would have trained for the same candidates."""
    trained = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("run_dir") and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    run = sum(t.user_attrs.get("epochs_run", 0) for t in trained)
    planned = sum(t.user_attrs.get("planned_epochs", 0) for t in trained)
    rejected = sum(
        1
        for t in study.get_trials(deepcopy=False)
        if str(t.user_attrs.get("reason", "")).startswith("rejected before training")
    )
    return {
        "trained_trials": len(trained),
        "pruned_trials": sum(1 for t in trained if t.state == TrialState.PRUNED),
        "rejected_before_training": rejected,
        "epochs_run": run,
        "epochs_without_pruning": planned,
        "epochs_saved_fraction": round(1 - run / planned, 4) if planned else 0.0,
        "train_seconds": round(sum(t.user_attrs.get("seconds", 0.0) for t in trained), 1),
    }


def export(study: optuna.Study, study_dir: Path, multi_objective: bool) -> dict[str, Any]:
    """Rewrite every output file from the storage (cheap; called after each trial and at the end)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    write_trials_csv(study, study_dir / "trials.csv")
    summary: dict[str, Any] = {"study": study.study_name, "trials": len(study.trials), **pruning_savings(study)}
    best = best_trial(study)
    if best is not None:
        spec = spec_of_trial(best, study.study_name)
        spec.save(study_dir / "best_spec.json")
        summary["best"] = {
            "trial": best.number,
            "val_acc": best.values[0],
            "params": best.user_attrs.get("params"),
            "rf_head": best.user_attrs.get("rf_head"),
            "hyperparameters": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
            "origin": origin_of(best),
        }
    stages = study.user_attrs.get("stages")
    if stages:  # a staged search: the rungs' sizes, every confirmed design's seeds, the winner by mean
        summary["stages"] = {
            "budget": stages["budget"],
            "rungs": [{"epochs": r["epochs"], "designs": len(r["entries"])} for r in stages["rungs"]],
            "confirmed": stages["confirmed"],
            "winner": stages["winner"],
        }
        if stages["winner"] and best is not None:
            summary["best"].update(
                val_acc_mean=stages["winner"]["mean"],
                val_acc_std=stages["winner"]["std"],
                full_epochs=stages["budget"]["epochs"],
                run_dir=stages["winner"]["run_dir"],
            )
    if multi_objective and completed(study):
        front = sorted(study.best_trials, key=lambda t: t.values[1])
        pareto = [
            {
                "trial": t.number,
                "val_acc": t.values[0],
                "params": int(t.values[1]),
                "spec": spec_of_trial(t, study.study_name).to_dict(),
            }
            for t in front
        ]
        write_text_atomic(study_dir / "pareto.json", json.dumps(pareto, indent=2) + "\n")
    write_text_atomic(study_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def plot(study: optuna.Study, study_dir: Path, multi_objective: bool) -> list[str]:
    """Optimization history, parameter importances and (multi-objective) the Pareto front, as PNGs."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Some regimes for parameter")  # PED-ANOVA on few trials
    warnings.filterwarnings(
        "ignore", message="Tight layout not applied"
    )  # a crowded legend; the figure is still written
    made = []
    if len(completed(study)) < 2:
        return made
    target = (lambda t: t.values[0]) if multi_objective else None
    jobs = {
        "optimization_history.png": lambda: ovm.plot_optimization_history(
            study, target=target, target_name="val acc (%)"
        ),
        "param_importances.png": lambda: ovm.plot_param_importances(study, target=target, target_name="val acc (%)"),
    }
    if multi_objective:
        jobs["pareto_front.png"] = lambda: ovm.plot_pareto_front(study, target_names=["val acc (%)", "params"])
    else:
        jobs["intermediate_values.png"] = lambda: ovm.plot_intermediate_values(study)
    try:  # the same figures as the plot, as numbers (the README's explanation quotes them)
        importances = optuna.importance.get_param_importances(study, target=target)
        write_text_atomic(
            study_dir / "param_importances.json",
            json.dumps({k: round(v, 4) for k, v in importances.items()}, indent=2) + "\n",
        )
    except (ValueError, RuntimeError, ZeroDivisionError):
        pass
    for name, make in jobs.items():
        try:
            ax = make()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need varied params
            (study_dir / f"{Path(name).stem}.skipped.txt").write_text(f"{type(exc).__name__}: {exc}\n")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(9, 9 if name == "param_importances.png" else 5)  # ~40 conditional params need the height
        fig.tight_layout()
        try:
            write_atomic(study_dir / name, lambda tmp, fig=fig: fig.savefig(tmp, dpi=100, format="png"))
        finally:
            plt.close(fig)
        made.append(name)
    return made


def summary_table(study: optuna.Study, top: int = 10) -> str:
    rows = sorted(completed(study), key=lambda t: -t.values[0])[:top]
    lines = [f"{'trial':>5} {'val acc':>8} {'params':>7} {'RF':>4} {'epochs':>6} {'seconds':>8}"]
    for t in rows:
        a = t.user_attrs
        lines.append(
            f"{t.number:>5} {t.values[0]:>7.2f}% {a.get('params', 0):>7,} {a.get('rf_head', 0):>4} "
            f"{a.get('epochs_run', 0):>6} {a.get('seconds', 0):>8.0f}"
        )
    return "\n".join(lines)
