"""Progress at the grain a user waits on: one bar of epochs trained out of the stage's planned epochs, across
all workers, with the stage's name and tqdm's ETA; a line per finished run is written above it by whoever
finishes the run.

The bar reads what the workers leave behind, so it needs nothing from them: a trial records its epochs in the
study (``epochs_run``, set after every epoch), a stage job appends rows to its run's ``epochs.csv``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import optuna
from tqdm.auto import tqdm

from .workers import POLL


class EpochBar:
    """``planned`` epochs for ``stage``; ``show(done, planned)`` moves the bar (and shrinks the plan when a run
    ends early: a rejected draw trains no epoch, a stuck one stops at epoch 2)."""

    def __init__(self, stage: str, planned: int) -> None:
        # disable=None: on a terminal only (a log file gets the per-run lines, not a redrawn bar).
        self.bar = tqdm(total=planned, desc=stage, unit="epoch", dynamic_ncols=True, disable=None)
        self.lock = threading.Lock()

    def show(self, done: int, planned: int | None = None) -> None:
        with self.lock:
            if planned is not None and planned != self.bar.total:
                self.bar.total = max(planned, done)
            if done != self.bar.n:
                self.bar.update(done - self.bar.n)

    def close(self) -> None:
        with self.lock:
            self.bar.close()


def trial_epochs(trials: Iterable[optuna.trial.FrozenTrial], before: set[int], epochs: int) -> tuple[int, int]:
    """Epochs trained and epochs planned by the trials that are not in ``before`` (those a command adds), given
    that each plans ``epochs``: a finished trial's plan is what it ran."""
    done = planned_less = 0
    for t in trials:
        if t.number in before:
            continue
        ran = int(t.user_attrs.get("epochs_run", 0) or 0)
        done += ran
        if t.state.is_finished():
            planned_less += max(0, epochs - ran)
    return done, planned_less


def rows_in(run_dir: str | Path) -> int:
    """Epochs a run has logged so far (data rows of its epochs.csv; 0 before its first epoch)."""
    try:
        with open(Path(run_dir) / "epochs.csv", "rb") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


class Ticker:
    """Calls ``tick`` every ``POLL`` seconds on a thread until stopped: the bar of a stage that runs in this
    process (one worker), where no parent loop polls."""

    def __init__(self, tick: Callable[[], None]) -> None:
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(tick,), daemon=True)
        self.thread.start()

    def _run(self, tick: Callable[[], None]) -> None:
        while not self.stopped.wait(POLL):
            try:
                tick()
            except Exception:  # a progress bar never ends a search (a run folder removed meanwhile, say)
                pass

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
