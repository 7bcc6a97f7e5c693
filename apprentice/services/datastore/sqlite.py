"""SQLite backend: trials and samples in ``DATA_DIR/trials.sqlite3``, so demonstrations survive a crash.

Writes never block the event loop: each call queues an operation for one writer thread, which
commits in batches (at most ``COMMIT_INTERVAL`` after the first queued operation, at once for a
sample with state ENDED, and at close). Committed data survives a crash of the process or of the
machine (WAL journal, ``synchronous=FULL``); a crash loses at most the last ~50 ms of samples,
none of which any reader has seen: after each commit the writer thread tells the event loop how
many samples of each trial are committed, and only those are served. Readers query SQLite from a
small thread pool.

Operations are applied in the order they were queued (one queue, one thread), so a trial is
always inserted before its samples and a deletion comes after them.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

from cogment.api import common_pb2

from apprentice.services.datastore.storage import READ_BATCH_BYTES, Storage, TrialRow

log = logging.getLogger(__name__)

COMMIT_INTERVAL = 0.05  # seconds between the first uncommitted write and its commit
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    seq INTEGER PRIMARY KEY,              -- creation order, never reused while the trial exists
    trial_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    params BLOB NOT NULL,                 -- serialized cogmentAPI.TrialParams
    last_state INTEGER NOT NULL DEFAULT 0,
    samples_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS samples (
    trial_seq INTEGER NOT NULL,
    sample_index INTEGER NOT NULL,        -- 0, 1, 2... in arrival order
    data BLOB NOT NULL,                   -- serialized cogmentAPI.StoredTrialSample
    PRIMARY KEY (trial_seq, sample_index)
);
"""

# Queued operations are tuples whose first item is one of these.
_SAVE_TRIAL, _SAMPLE, _DELETE, _STOP = range(4)


class SqliteStorage(Storage):
    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_data_file(path)
        try:
            with closing(_connect(path)) as connection:
                _create_schema(connection, path)
        except sqlite3.DatabaseError as error:
            self._lock_file.close()
            raise OSError(
                f"Cannot open the trial datastore {path}: {error}. Move the file away (it may be damaged) "
                "or use another --data-dir"
            ) from error
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._urgent = threading.Event()  # commit now instead of waiting for COMMIT_INTERVAL
        self._loop: asyncio.AbstractEventLoop | None = None  # where commits are reported
        self._writer = threading.Thread(target=self._write_loop, name="datastore-sqlite-writer", daemon=True)
        self._writer.start()
        self._reader_connections: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="datastore-sqlite-reader")
        self._closed = False

    # -- Storage interface (event loop side) ----------------------------------------------------

    def load_trials(self) -> list[TrialRow]:
        with closing(_connect(self._path)) as connection:
            rows = connection.execute(
                "SELECT seq, trial_id, user_id, params, last_state, samples_count FROM trials ORDER BY seq"
            ).fetchall()
        return [TrialRow(*row) for row in rows]

    def save_trial(self, trial: TrialRow) -> None:
        self._queue.put((_SAVE_TRIAL, trial.seq, trial.trial_id, trial.user_id, trial.params))

    def append_sample(self, seq: int, index: int, data: bytes, state: int) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._queue.put((_SAMPLE, seq, index, data, state))
        if state == common_pb2.TrialState.ENDED:
            self._urgent.set()

    async def read_samples(self, seq: int, start: int, stop: int) -> list[bytes]:
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._read_committed, seq, start, stop)

    def delete_trial(self, seq: int) -> None:
        self._queue.put((_DELETE, seq))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put((_STOP,))
        self._urgent.set()
        await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._readers.shutdown, True)
        for connection in self._reader_connections:
            connection.close()
        self._lock_file.close()

    # -- reader threads --------------------------------------------------------------------------

    def _read_committed(self, seq: int, start: int, stop: int) -> list[bytes]:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = _connect(self._path, check_same_thread=False)
            connection.execute("PRAGMA query_only = 1")
            self._reader_connections.append(connection)
        cursor = connection.execute(
            "SELECT data FROM samples WHERE trial_seq = ? AND sample_index >= ? AND sample_index < ? "
            "ORDER BY sample_index",
            (seq, start, stop),
        )
        try:
            batch: list[bytes] = []
            size = 0
            for (data,) in cursor:
                if batch and size + len(data) > READ_BATCH_BYTES:
                    break
                batch.append(data)
                size += len(data)
            return batch
        finally:
            cursor.close()  # ends the read transaction, so checkpoints are not held back

    # -- writer thread ---------------------------------------------------------------------------

    def _write_loop(self) -> None:
        connection = _connect(self._path)
        connection.execute("PRAGMA synchronous = FULL")
        try:
            stopping = False
            while not stopping:
                operations = [self._queue.get()]
                self._urgent.wait(COMMIT_INTERVAL)
                self._urgent.clear()
                operations += _drain(self._queue)
                stopping = any(operation[0] == _STOP for operation in operations)
                self._commit_with_retry(connection, operations, stopping)
        finally:
            connection.close()

    def _commit_with_retry(self, connection: sqlite3.Connection, operations: list[tuple], stopping: bool) -> None:
        """Commit; on failure (disk full...) keep the operations and retry, so nothing is dropped.

        Readers wait meanwhile: they are served committed samples only.
        """
        attempts = 0
        while True:
            try:
                committed = _commit(connection, operations)
                break
            except sqlite3.Error:
                attempts += 1
                if stopping and attempts >= 3:
                    log.exception("Giving up writing %d operations to %s at shutdown", len(operations), self._path)
                    return
                log.exception("Cannot write to %s; retrying in 1 s", self._path)
                time.sleep(1.0)
                operations += _drain(self._queue)
                stopping = stopping or any(operation[0] == _STOP for operation in operations)
        if committed and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._on_committed, committed)
            except RuntimeError:  # the loop is closed: nobody is left to read them
                pass


def _commit(connection: sqlite3.Connection, operations: list[tuple]) -> dict[int, tuple[int, int]]:
    """Apply ``operations`` in one transaction; returns per trial (samples committed, last state)."""
    committed: dict[int, int] = {}
    last_state: dict[int, int] = {}
    samples: list[tuple[int, int, bytes]] = []

    def flush_samples() -> None:
        if samples:
            connection.executemany(
                "INSERT OR REPLACE INTO samples (trial_seq, sample_index, data) VALUES (?, ?, ?)", samples
            )
            samples.clear()

    connection.execute("BEGIN")
    try:
        for operation in operations:
            kind = operation[0]
            if kind == _SAMPLE:
                _, seq, index, data, state = operation
                samples.append((seq, index, data))
                committed[seq] = index + 1
                last_state[seq] = state
                continue
            flush_samples()
            if kind == _SAVE_TRIAL:
                _, seq, trial_id, user_id, params = operation
                connection.execute(
                    "INSERT INTO trials (seq, trial_id, user_id, params) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (seq) DO UPDATE SET user_id = excluded.user_id, params = excluded.params",
                    (seq, trial_id, user_id, params),
                )
            elif kind == _DELETE:
                (_, seq) = operation
                connection.execute("DELETE FROM samples WHERE trial_seq = ?", (seq,))
                connection.execute("DELETE FROM trials WHERE seq = ?", (seq,))
        flush_samples()
        connection.executemany(
            "UPDATE trials SET samples_count = ?, last_state = ? WHERE seq = ?",
            [(count, last_state[seq], seq) for seq, count in committed.items()],
        )
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return {seq: (count, last_state[seq]) for seq, count in committed.items()}


def _drain(operations: queue.SimpleQueue) -> list[tuple]:
    drained = []
    while True:
        try:
            drained.append(operations.get_nowait())
        except queue.Empty:
            return drained


def _connect(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (BEGIN/COMMIT) where they matter.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread, timeout=30)
    connection.execute("PRAGMA journal_mode = WAL")
    return connection


def _create_schema(connection: sqlite3.Connection, path: Path) -> None:
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise OSError(
            f"{path} was written by a newer Apprentice (schema {version}, this one knows {SCHEMA_VERSION}); "
            "upgrade Apprentice or use another --data-dir"
        )
    connection.executescript(SCHEMA)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _lock_data_file(path: Path):
    """One process per database: the trial list is kept in memory and would go stale otherwise.

    The lock disappears with the process, even on SIGKILL.
    """
    lock_file = open(f"{path}.lock", "a")  # noqa: SIM115 - held for the life of the storage
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise OSError(
            f"{path} is used by another running Apprentice services process (pid in {path}.lock); "
            "stop it or use another --data-dir"
        ) from None
    lock_file.truncate(0)
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file
