"""``python -m search digest --study NAME``: what a staged search learned, from its own files.

Where the time went (runs, epochs and hours of training plus evaluation per stage, read from every run's
``epochs.csv``), how well the short screening schedule ranked the designs that went on to the full one
(Spearman), which choices mattered (``param_importances.json``, written by the search), whether the designs
transferred from another study (``--transfer-from``) did better than the drawn ones (``trials.csv``), and what
the winner looks like (its parameters per stage of the network and receptive field at the head). Printed,
and written to ``digest.json`` in the study folder; the README's figures come from it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from mnist_challenge import ArchSpec, UserError, build_model
from mnist_challenge.architecture.inspector import inspect_module
from mnist_challenge.common.files import write_text_atomic
from mnist_challenge.common.validate import read_json_file, require
from mnist_challenge.runs.runlog import read_epochs

from .stages import spearman

RUNG_DIR = re.compile(r"e\d{1,4}")


def stage_time(run_dirs: list[Path]) -> dict[str, Any]:
    """Runs, epochs trained and hours spent (training + evaluation, as logged) over some run folders. An epoch
    whose time is not logged (an edited file: no ``seconds`` column, an empty cell) adds no hours and is
    counted in ``epochs_without_time``: the figure is never NaN."""
    rows = [row for run in run_dirs if (run / "epochs.csv").is_file() for row in read_epochs(run)]
    timed = [r.get("seconds", math.nan) + r.get("eval_seconds", 0.0) for r in rows]
    seconds = sum(t for t in timed if math.isfinite(t))
    result = {"runs": len(run_dirs), "epochs": len(rows), "hours": round(seconds / 3600, 2)}
    untimed = sum(not math.isfinite(t) for t in timed)
    return result | ({"epochs_without_time": untimed} if untimed else {})


def params_by_stage(spec: ArchSpec) -> dict[str, int]:
    """Parameters per top-level part of the network (stem, block1, transition1, ..., head)."""
    model = build_model(spec)
    return {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}


def transfer_effect(study_dir: Path) -> dict[str, Any] | None:
    """How the transferred designs fared against the drawn ones, from ``trials.csv``: screening scores (best,
    median, each transferred design's rank among all screened), and how many went on to the full schedule and
    to confirmation. None for a study without transferred designs."""
    path = study_dir / "trials.csv"
    if not path.is_file():
        return None
    try:
        return _transfer_effect(path)
    except (KeyError, ValueError, TypeError, csv.Error) as exc:  # an edited file: "n/a", bad JSON, a lost column
        raise UserError(
            f"{path} is malformed ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); rewrite it with "
            f"mnist-search --budget <budget> --study {study_dir.name} --export-only"
        ) from None


def _transfer_effect(path: Path) -> dict[str, Any] | None:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("state") == "COMPLETE" and r.get("val_acc")]
    for r in rows:
        if not math.isfinite(float(r["val_acc"])):
            raise ValueError(f"trial {r.get('number')}: val_acc {r['val_acc']!r}")
    moved = [r for r in rows if (r.get("origin") or "drawn") != "drawn"]
    drawn = [float(r["val_acc"]) for r in rows if (r.get("origin") or "drawn") == "drawn"]
    if not moved or not drawn:
        return None
    ranked = sorted(rows, key=lambda r: -float(r["val_acc"]))
    rank = {r["number"]: i + 1 for i, r in enumerate(ranked)}
    scores = [float(r["val_acc"]) for r in moved]

    def went_on(r: dict[str, str]) -> bool:  # trained on a rung after the screening one
        return len(json.loads(r.get("rung_val_acc") or "{}")) > 1

    return {
        "screened": len(rows),
        "transferred": len(moved),
        "best_transferred": max(scores),
        "median_transferred": statistics.median(scores),
        "best_drawn": max(drawn),
        "median_drawn": statistics.median(drawn),
        "transferred_ranks": sorted(rank[r["number"]] for r in moved),
        "transferred_promoted": sum(went_on(r) for r in moved),
        "transferred_confirmed": sum(bool(r.get("confirmed")) for r in moved),
    }


def digest(study_dir: Path, stages: dict[str, Any] | None) -> dict[str, Any]:
    """``stages``: the study's record of its rungs and confirmation (its ``stages`` user attr)."""
    summary_path = study_dir / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"no summary.json in {study_dir}: run the search (or --export-only) first")
    summary = read_json_file(summary_path)
    require(isinstance(summary, dict), f"{summary_path} is malformed: expected a JSON object")
    if not stages:
        raise UserError(f"{study_dir} is not a staged search (made with --budget): nothing to digest")
    # Rung folders are e<EPOCHS>; anything else under rungs/ (a copy, a note) is not a rung.
    rung_dirs = sorted(
        (p for p in (study_dir / "rungs").glob("e*") if p.is_dir() and RUNG_DIR.fullmatch(p.name)),
        key=lambda p: int(p.name[1:]),
    )
    time_spent = {"screen": stage_time(sorted((study_dir / "trials").glob("trial_*")))}
    for folder in rung_dirs:
        time_spent[f"rung {folder.name[1:]} epochs"] = stage_time(sorted(folder.glob("trial_*")))
    time_spent["confirm"] = stage_time(sorted((study_dir / "confirm").glob("trial_*")))
    rungs = stages["rungs"]
    first = {e["trial"]: e["val_acc"] for e in rungs[0]["entries"]}
    full = {e["trial"]: e["val_acc"] for e in rungs[-1]["entries"]} if len(rungs) > 1 else {}
    both = sorted(set(first) & set(full))
    rho = spearman([first[t] for t in both], [full[t] for t in both]) if len(both) > 2 else float("nan")
    result: dict[str, Any] = {
        "study": study_dir.name,
        "draws": summary.get("trials"),
        "rejected_before_training": summary.get("rejected_before_training"),
        "time": time_spent,
        "hours_total": round(sum(s["hours"] for s in time_spent.values()), 2),
        "screen_vs_full_spearman": None if rho != rho else round(rho, 3),  # NaN: too few designs to rank
        "screen_vs_full_designs": len(both),
    }
    transfer = transfer_effect(study_dir)
    if transfer is not None:
        result["transfer"] = transfer
    importances = study_dir / "param_importances.json"
    if importances.is_file():
        values = read_json_file(importances)
        require(
            isinstance(values, dict)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()),
            f"{importances} is malformed: expected an object of parameter names and importances",
        )
        ranked = sorted(values.items(), key=lambda kv: -kv[1])
        result["importances_top"] = dict(ranked[:8])
    winner = stages.get("winner")
    best_spec = study_dir / "best_spec.json"
    if winner and best_spec.is_file():
        spec = ArchSpec.load(best_spec)
        report = inspect_module(build_model(spec), (spec.in_channels, spec.input_size, spec.input_size))
        best = summary.get("best") if isinstance(summary.get("best"), dict) else {}
        result["winner"] = {
            **winner,
            "origin": best.get("origin") if best.get("trial") == winner.get("trial") else None,
            "rf_head": report.receptive_field_head,
            "macs": report.macs,
            "params_by_stage": params_by_stage(spec),
            "blocks": [
                {"kind": b.kind, "channels": list(b.channels), "padding": b.padding, "residual": b.residual}
                for b in spec.blocks
            ],
            "head": spec.head,
            "batchnorm": spec.batchnorm,
            "dropout": spec.dropout,
        }
    try:
        write_text_atomic(study_dir / "digest.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    except UserError as exc:  # a study on read-only media: the digest is still printed
        result["not_saved"] = str(exc)
    return result


def format_digest(d: dict[str, Any]) -> str:
    lines = [f"study {d['study']}: {d['draws']} draws, {d['rejected_before_training']} rejected before training"]
    for stage, t in d["time"].items():
        untimed = f" ({t['epochs_without_time']} epochs without a logged time)" if t.get("epochs_without_time") else ""
        lines.append(f"  {stage:<18} {t['runs']:>4} runs {t['epochs']:>5} epochs {t['hours']:>6.2f} h{untimed}")
    lines.append(f"  {'total':<18} {'':>35}{d['hours_total']:>6.2f} h (training + evaluation, summed over workers)")
    if d["screen_vs_full_spearman"] is not None:
        lines.append(
            f"screen vs full schedule: Spearman {d['screen_vs_full_spearman']:+.3f} "
            f"over the {d['screen_vs_full_designs']} designs trained on both"
        )
    if "transfer" in d:
        t = d["transfer"]
        lines.append(
            f"transferred designs: {t['transferred']} of {t['screened']} screened, screening score best "
            f"{t['best_transferred']:.2f} / median {t['median_transferred']:.2f}% (drawn: {t['best_drawn']:.2f} / "
            f"{t['median_drawn']:.2f}%), ranks {t['transferred_ranks']}; {t['transferred_promoted']} promoted, "
            f"{t['transferred_confirmed']} confirmed"
        )
    if "importances_top" in d:
        lines.append("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in d["importances_top"].items()))
    if "winner" in d:
        w = d["winner"]
        lines.append(
            f"winner: trial {w['trial']}, {w['params']:,} params, val acc {w['mean']:.2f} ± {w['std']:.2f}%, "
            f"RF {w['rf_head']} at the head, {w['macs']:,} MACs" + (f", {w['origin']}" if w.get("origin") else "")
        )
        lines.append("  params by stage: " + ", ".join(f"{k} {v:,}" for k, v in w["params_by_stage"].items()))
    if d.get("not_saved"):
        lines.append(f"(digest.json not saved: {d['not_saved']})")
    return "\n".join(lines)
