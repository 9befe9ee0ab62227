"""What optuna-dashboard shows beside the numbers: every trained run's files as Optuna artifacts.

Each trained trial gets its run's ``curves.png``, ``epochs.csv`` and ``summary.txt`` (the layer table with
shapes, parameters and receptive fields), uploaded by the worker as the trial ends. Optuna refuses writes
to a finished trial, so what is trained later for the same design in a staged search (``--budget``: the
longer rungs and the confirmation seeds) goes onto the study, named by trial, e.g.
``trial_0012-e15-seed0-curves.png``, as does the winner's spec. The store is a folder of the study,
``logs/search/<study>/artifacts/``, so the study and its artifacts travel together:

    optuna-dashboard sqlite:///logs/search/<study>/study.db --artifact-dir logs/search/<study>/artifacts

Uploading is idempotent (a file already uploaded under its name is skipped), so a resumed search or
``--export-only`` fills in whatever is missing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.trial import Trial

ARTIFACT_DIR = "artifacts"
RUN_FILES = ("curves.png", "epochs.csv", "summary.txt")  # a trial's own run
RUNG_FILES = ("curves.png", "epochs.csv")  # later runs of the same design: the layer table is not repeated


def store_of(study_dir: Path) -> FileSystemArtifactStore:
    folder = Path(study_dir) / ARTIFACT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def upload_files(
    store: FileSystemArtifactStore,
    owner: Trial | optuna.Study,
    files: list[tuple[Path, str]],
) -> int:
    """Upload each (path, name) whose name the owner does not have yet; missing paths are skipped."""
    have = {meta.filename for meta in get_all_artifact_meta(owner)}
    uploaded = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path, name in files:
            if name in have or not path.is_file():
                continue
            named = Path(tmp) / name  # the artifact takes its file name from the path
            shutil.copyfile(path, named)
            upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=owner)
            uploaded += 1
    return uploaded


def upload_run(store: FileSystemArtifactStore, trial: Trial, run_dir: Path) -> int:
    """A running trial's own run files onto the trial."""
    return upload_files(store, trial, [(Path(run_dir) / name, name) for name in RUN_FILES])


def sync_study(study: optuna.Study, study_dir: Path, best_trial: int | None) -> int:
    """The staged runs of every design and the best spec (of ``best_trial``) onto the study; returns how
    many files were uploaded."""
    files = []
    # rungs/e<E>/trial_<N>-seed<S>/ and confirm/trial_<N>-seed<S>/: later runs of trial N's design.
    for run_dir in sorted([*Path(study_dir).glob("rungs/e*/trial_*"), *Path(study_dir).glob("confirm/trial_*")]):
        if not (run_dir / "verdict.json").is_file():
            continue  # unfinished: uploaded once it is done (a name is uploaded once)
        trial, _, seed = run_dir.name.partition("-seed")
        stage = run_dir.parent.name if run_dir.parent.parent.name == "rungs" else "confirm"
        files += [(run_dir / name, f"{trial}-{stage}-seed{seed}-{name}") for name in RUNG_FILES]
    if best_trial is not None:
        files.append((Path(study_dir) / "best_spec.json", f"best_spec-trial_{best_trial}.json"))
    return upload_files(store_of(study_dir), study, files) if files else 0
