"""Worker processes that start, report and stop cleanly: the search's trial workers and the staged search's
job pool both run on ``Workers``.

Why not ``multiprocessing.Pool``: a SIGTERM to the process group (``timeout``, ``docker stop``, a job
scheduler) kills its workers while they hold the pool's queue locks, and the parent's ``terminate`` then
waits on those locks forever. Here each worker has its own pipe and no shared lock or semaphore; the
parent waits on pipes and process sentinels with a timeout, so a dead worker is seen, never waited for.

Stopping: every process runs ``errors.install_stop_handlers`` (the first SIGINT/SIGTERM raises
``KeyboardInterrupt``, a second is ignored, a third exits at once). A worker marks itself in a shared byte
array when its first signal lands, and the parent signals only the workers not marked, so a worker that got
the process group's signal is not signalled again while it records its trial; workers get ``STOP_WAIT``
seconds to finish that, then are killed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from mnist_challenge import UserError
from mnist_challenge.common.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    STOP_SIGNALS,
    InternalError,
    check_interrupted,
    install_stop_handlers,
    record_internal_error,
    set_crash_log,
    stopping,
)

STOP_WAIT = 60.0  # seconds a stopping worker gets to record its trial before it is killed
POLL = 1.0  # seconds between the parent's looks at its workers (and at its own stop flag)


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent is gone (killed with SIGKILL, say) stops too, instead of running on unseen;
    its trial then goes stale and the next run retries it (heartbeat)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _entry(target: Callable[..., None], args: tuple, flags: Any, index: int, parent: int, log: Path) -> None:
    """A worker process: the same exit-code contract as the command (2 bad input, 3 internal, 130)."""
    from tqdm.auto import tqdm

    _exit_with_parent(parent)
    tqdm.set_lock(threading.RLock())  # tqdm's default lock is a semaphore, which a worker killed with -9 leaks
    install_stop_handlers(lambda: flags.__setitem__(index, 1))
    set_crash_log(log)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a signal held since start-up lands here
        target(*args)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if stopping():  # what fails after a stop signal is the stop's doing (see cli.run_cli)
            record_internal_error(exc)
            sys.exit(EXIT_INTERRUPTED)
        if isinstance(exc, UserError):
            print(f"error: worker {index}: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        print(f"worker {index}: {record_internal_error(exc)}", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)


class Workers:
    """Spawned processes, one per ``(target, args)``; ``log`` takes their internal errors' tracebacks."""

    def __init__(self, targets: Sequence[tuple[Callable[..., None], tuple]], log: Path) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch thread pools
        self.log = log
        self.flags = ctx.RawArray("b", len(targets))  # 1: that worker is stopping (no lock, nothing to leak)
        self.procs = [
            ctx.Process(target=_entry, args=(fn, args, self.flags, i, os.getpid(), log), daemon=False)
            for i, (fn, args) in enumerate(targets)
        ]
        # Started with the stop signals blocked, which the children inherit: a signal during their start-up
        # (seconds of imports) waits until their handlers are set, instead of killing them or printing a
        # traceback; the parent's own signal is held for those milliseconds, not lost.
        # multiprocessing starts its resource tracker on the first start() and unblocks these signals after
        # it: started here first, it cannot undo the block.
        resource_tracker.ensure_running()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for p in self.procs:
                p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def stop(self) -> None:
        """Signal each live worker that is not stopping yet, give them ``STOP_WAIT`` s, then kill the rest."""
        for i, p in enumerate(self.procs):
            if p.is_alive() and not self.flags[i]:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_WAIT
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()

    def raise_for_failures(self) -> None:
        """After the workers ended: the worst of their exit codes as the command's error."""
        failed = [p.exitcode for p in self.procs if p.exitcode]
        if EXIT_INTERNAL in failed:
            raise InternalError(
                f"{failed.count(EXIT_INTERNAL)} worker(s) hit an internal error (a bug in the kit; traceback in "
                f"{self.log}); finished work is kept"
            )
        if EXIT_BAD_INPUT in failed:  # the others may have been stopped because of it (130): this is the cause
            raise UserError(
                f"{len(failed)} worker(s) exited with an error (exit codes {failed}); finished work is kept"
            )
        killed = sorted({-code for code in failed if code < 0 and -code not in STOP_SIGNALS})
        if killed:  # SIGKILL from the OOM killer, say: nothing the worker could record
            raise UserError(
                f"{len(failed)} worker(s) were killed (signal {', '.join(map(str, killed))}; out of memory?); "
                "finished work is kept, and the next run retries what they were training"
            )
        if failed:  # stopped by SIGINT/SIGTERM sent to a worker alone: the command stops too
            raise KeyboardInterrupt


def watch(workers: Workers, tick: Callable[[], None]) -> None:
    """Wait for every worker to end, calling ``tick`` every ``POLL`` s; a stop signal stops them all."""
    try:
        while workers.alive():
            check_interrupted()
            tick()
            wait([p.sentinel for p in workers.procs if p.exitcode is None], timeout=POLL)
    except KeyboardInterrupt:
        workers.stop()
        raise
    for p in workers.procs:
        p.join()
    workers.raise_for_failures()


# --- a job pool on top: each worker takes the next job as soon as it has sent back the last one ----------
def _serve(conn: Connection, fn: Callable[[Any], Any], init: Callable[..., None], initargs: tuple) -> None:
    init(*initargs)
    while (job := conn.recv()) is not None:
        conn.send(fn(job))


def run_pool(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    workers: int,
    init: Callable[..., None],
    initargs: tuple,
    on_result: Callable[[Any], None],
    log: Path,
    tick: Callable[[], None] | None = None,
) -> None:
    """``fn(job)`` for every job in ``workers`` processes (each set up once by ``init``), ``on_result`` on each
    result as it comes back, ``tick`` every ``POLL`` s (a progress bar). A worker that fails stops the pool
    with its exit code's error."""
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(min(workers, len(jobs)))]
    pool = Workers([(_serve, (child, fn, init, initargs)) for _, child in pipes], log)
    for _, child in pipes:
        child.close()  # the workers hold these ends now: a worker's death is then an EOF on ours
    queue = list(reversed(jobs))
    busy: dict[Connection, bool] = {}
    lost = vanished = False
    for conn, _ in pipes:
        busy[conn] = bool(queue)
        conn.send(queue.pop() if queue else None)
    try:
        while any(busy.values()):
            check_interrupted()
            if tick is not None:
                tick()
            waiting = [c for c, b in busy.items() if b]
            ready = wait(waiting + [p.sentinel for p in pool.procs if p.exitcode is None], timeout=POLL)
            for conn in (r for r in ready if isinstance(r, Connection)):
                try:
                    result = conn.recv()
                except EOFError:  # the worker died with its job unfinished; its exit code says why
                    dead = pool.procs[[c for c, _ in pipes].index(conn)]
                    dead.join(STOP_WAIT)
                    busy[conn] = False
                    lost = True
                    vanished = vanished or dead.exitcode == 0
                    continue
                on_result(result)
                busy[conn] = bool(queue)
                conn.send(queue.pop() if queue else None)
            if lost or any(p.exitcode not in (None, 0) for p in pool.procs):
                break
    except KeyboardInterrupt:
        pool.stop()
        raise
    if lost or any(p.exitcode not in (None, 0) for p in pool.procs):
        pool.stop()
    for p in pool.procs:
        p.join()
    if vanished:  # a worker that ended "successfully" in the middle of a job: the others were stopped for it
        raise InternalError(f"a worker ended before returning its job's result; see {log}")
    pool.raise_for_failures()
