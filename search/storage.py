"""Where the study lives: one SQLite file by default, any Optuna RDB URL (PostgreSQL) to share it.

Why SQLite with these settings, and not the bare default: several worker processes writing one SQLite
file hit Optuna's known "database is locked" error when a writer waits longer than SQLite's default
5 s busy timeout. Our writes are tiny and rare (a trial start, one value per epoch, a heartbeat a
minute), so a 120 s busy timeout makes waiting writers queue instead of failing; that holds for the
few workers one machine runs (tested with two). For many machines use PostgreSQL: the same command
with ``--storage postgresql://user:pass@host/db`` on every machine.

Heartbeats: every running trial records a heartbeat; a trial whose worker died (killed, machine lost)
stops beating, and the next worker to ask for a trial marks it FAIL and re-enqueues its params
(``RetryHeartbeatStaleTrialCallback``), so no trial stays RUNNING forever and none is lost.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from mnist_challenge import UserError
from mnist_challenge.common.validate import make_dir

SUPPORTED = ("sqlite", "postgresql", "mysql")

MAX_RETRIES = 2  # how often a lost trial is queued again with its parameters


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a failed trial again with its parameters: for trials whose heartbeat went stale (the storage
    calls this), and for trials stopped by Ctrl-C / SIGTERM (``retry_interrupted``)."""
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)


def taken_over(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised while handling) is Optuna saying that another process finished
    this worker's trial: at a write to it (``UpdateFinishedTrialError``), or at the final tell ("Cannot
    tell a FAIL trial.", which Optuna 5 may follow with an internal assertion)."""
    while exc is not None:
        if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError) or str(exc).startswith("Cannot tell a "):
            return True
        exc = exc.__context__
    return False


def retry_interrupted(study: optuna.Study, number: int) -> None:
    """Queue a stopped trial again with the same parameters, as a heartbeat-stale one would be, so
    that the next run retries it instead of losing it; ``failed_trial`` names the original."""
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is not None and frozen.state == TrialState.FAIL:
        retry_trial(study, frozen)


def default_storage_url(study_dir: Path) -> str:
    """The study's SQLite file as a URL, quoted: a ``?`` or ``%41`` in a folder name stays part of the path
    (unquoted, ``?`` would start the URL's query and put the database outside ``--logs``)."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(study_dir / "study.db")).render_as_string(hide_password=False)


def parse_storage_url(url: str):
    """The parsed URL of a supported database; ``UserError`` for anything else (checked before any work)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a malformed host or port
        raise UserError(
            f"--storage {url!r} is not a database URL (expected e.g. sqlite:///logs/study.db or "
            f"postgresql://user:pw@host/db)"
        ) from None
    dialect = parsed.get_backend_name()
    if dialect not in SUPPORTED:
        raise UserError(f"--storage: unsupported database {dialect!r}; use one of {SUPPORTED}")
    if dialect == "sqlite" and (not parsed.database or parsed.database == ":memory:"):
        raise UserError("--storage sqlite:// needs a file path: in-memory SQLite cannot be shared or resumed")
    return parsed


def make_storage(
    url: str, heartbeat_interval: int = 60, grace_period: int = 180, read_only: bool = False
) -> RDBStorage:
    """An RDBStorage for ``url`` with heartbeats and retries; ``UserError`` if it is unusable. ``read_only``: an
    existing SQLite file opened for reading alone (a study on read-only media, for the commands that only read)."""
    parsed = parse_storage_url(url)
    dialect = parsed.get_backend_name()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat API
    engine_kwargs: dict = {}
    if dialect == "sqlite" and read_only:
        import sqlite3
        from urllib.parse import quote

        uri = f"file:{quote(str(Path(parsed.database).resolve()))}?mode=ro"
        engine_kwargs["creator"] = lambda: sqlite3.connect(uri, uri=True, timeout=120, check_same_thread=False)
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot read storage {parsed.database}: {first}") from None
    if dialect == "sqlite":
        make_dir(Path(parsed.database).parent, "--storage folder")
        # pysqlite's own transaction handling off (it would BEGIN only before a write, after the reads):
        # serialized_transactions() then begins every transaction itself.
        engine_kwargs["connect_args"] = {"timeout": 120, "isolation_level": None}
    elif dialect == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with _creation_lock(Path(parsed.database).parent) if dialect == "sqlite" else contextlib.nullcontext():
                storage = RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=retry_trial,
                )
            if dialect == "sqlite":
                serialized_transactions(storage.engine)
            return storage
        except ImportError as exc:
            raise UserError(f"--storage {dialect}: the database driver is not installed ({exc})") from None
        except Exception as exc:  # unreachable server, bad credentials, unwritable file, or the creation race
            if _creation_race(exc) and attempt + 1 < CREATE_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot open storage {parsed.render_as_string(hide_password=True)}: {first}") from None
    raise AssertionError("unreachable")


def serialized_transactions(engine) -> None:
    """Every SQLite transaction starts with ``BEGIN IMMEDIATE``, taking the write lock before its first read.

    Why: Optuna hands a WAITING (enqueued or retried) trial to a worker by reading its state, then setting
    it RUNNING, in one transaction, and relies on ``SELECT ... FOR UPDATE`` to keep that atomic. SQLite has
    no row locks, and pysqlite began the transaction only at the write, so two commands could both read
    WAITING and both run the same trial into the same run directory (seen in the suite, once the run
    directory lock made it visible). With the write lock taken first, the second one waits (the 120 s busy
    timeout), then reads RUNNING and draws a new trial. The writes are tiny, so the queue is short."""
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


CREATE_ATTEMPTS = 8
# What two processes creating a fresh database's tables at once run into, depending on who is where in
# SQLAlchemy's check-then-create and Alembic's version stamp: a unique key violation, a table that
# "already exists", or (SQLite) a lock held by the other creator.
_RACE_SIGNS = ("already exists", "duplicate key", "unique constraint", "database is locked", "integrityerror")


def _creation_race(exc: BaseException) -> bool:
    from sqlalchemy.exc import IntegrityError

    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, IntegrityError) or any(sign in text for sign in _RACE_SIGNS)


@contextlib.contextmanager
def _creation_lock(folder: Path) -> Iterator[None]:
    """Processes of one machine open (and so maybe create) one SQLite file one at a time: an exclusive
    ``flock`` on its folder, held only while the storage object is built."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def shown_url(url: str) -> str:
    """``url`` as it may be printed: with its password masked."""
    return parse_storage_url(url).render_as_string(hide_password=True)


def open_existing_study(url: str, name: str) -> optuna.Study:
    """A study that must already exist (outputs, reproduce, digest): an SQLite file that is not there is
    an error, not a new empty database."""
    parsed = parse_storage_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and not Path(parsed.database).is_file():
        raise UserError(f"no study storage at {parsed.database}; run the search first or pass its --storage")
    # A study on read-only media (a mounted archive, a read-only share) is still read: reproduce and digest
    # only read it.
    read_only = sqlite and (not os.access(Path(parsed.database).parent, os.W_OK) or _read_only_mount(parsed.database))
    return load_study(make_storage(url, read_only=read_only), name)


def _read_only_mount(database: str | None) -> bool:
    """Whether the file system holding ``database`` is mounted read-only (root may write anything else)."""
    if not database:
        return False
    try:
        return bool(os.statvfs(Path(database).parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def load_study(storage: RDBStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(
            f"no study named {name!r} in that storage; existing: {optuna.get_all_study_names(storage)}"
        ) from None
