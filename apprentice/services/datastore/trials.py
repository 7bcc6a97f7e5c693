"""The datastore's state: the trials, their counters, and waiting for new trials and samples.

Everything here runs on the service's event loop, so no locks are needed. The list of trials lives
in memory (it is small: ids, params, counters); samples go to a ``Storage`` backend.

When is a trial over, so that live readers stop waiting for more samples?

* its last sample has state ENDED (the orchestrator's final sample), or
* the datalog stream that fed it closed without an ENDED sample (the orchestrator died or the
  connection was cut: nobody can add to it any more), or
* it was loaded from disk at start without an ENDED sample (a previous process stopped or crashed
  during the trial).

Such an unfinished trial keeps its stored samples and its last state (e.g. RUNNING); it is
"interrupted". Sending TrialParams again for the same id (a new datalog stream, or AddTrial)
reopens it for new samples.

Counters and states that readers see (``samples_count``, ``last_state``) are those of committed
samples (see ``storage.py``): a sample appended but not yet durable is invisible to them.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from cogment.api import common_pb2, trial_datastore_pb2

from apprentice.services.datastore.storage import Storage, TrialRow

log = logging.getLogger(__name__)

ENDED = common_pb2.TrialState.ENDED


class UnknownTrialError(LookupError):
    def __init__(self, trial_id: str) -> None:
        super().__init__(trial_id)
        self.trial_id = trial_id


class DatastoreClosedError(RuntimeError):
    """The datastore is shutting down."""


class Notifier:
    """Wakes every coroutine waiting on it. Costs nothing when nobody waits (the per-sample case).

    Every stored trial has one for the life of the process, so the set of waiters exists only
    while someone waits (an empty set is 216 bytes).
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] | None = None

    def add(self, waiter: asyncio.Future[None]) -> None:
        if self._waiters is None:
            self._waiters = set()
        self._waiters.add(waiter)

    def discard(self, waiter: asyncio.Future[None]) -> None:
        if self._waiters is not None:
            self._waiters.discard(waiter)
            if not self._waiters:
                self._waiters = None

    def notify(self) -> None:
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters = None


async def wait_any(notifiers: Iterable[Notifier], timeout: float | None = None) -> None:
    """Return at the next notification of any of ``notifiers``, or after ``timeout`` seconds."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    notifiers = list(notifiers)
    for notifier in notifiers:
        notifier.add(waiter)
    try:
        if timeout is None:
            await waiter
        else:
            await asyncio.wait({waiter}, timeout=timeout)
    finally:
        for notifier in notifiers:
            notifier.discard(waiter)
        waiter.cancel()


@dataclass(eq=False, slots=True)
class Trial:
    """One stored trial, in memory for the life of the process: kept small (about a kilobyte).

    The params are kept serialized: a parsed TrialParams costs ~2.5 KB of native protobuf memory
    for a two-actor trial, against ~450 bytes serialized. Only the properties, which every
    filtered RetrieveTrials reads, are kept parsed.
    """

    seq: int  # creation order; also what trial handles count in
    trial_id: str
    user_id: str
    params_data: bytes  # serialized TrialParams
    properties: Mapping[str, str]
    last_state: int = common_pb2.TrialState.UNKNOWN  # of the last committed sample
    samples_count: int = 0  # committed, so served to readers
    appended: int = 0  # accepted; the ones after samples_count are on their way to the disk
    interrupted: bool = False  # nobody can add samples any more (see module docstring)
    deleted: bool = False
    changed: Notifier = field(default_factory=Notifier)  # new sample, interruption, deletion

    @property
    def ended(self) -> bool:
        return self.last_state == ENDED

    @property
    def finished(self) -> bool:
        """No sample will be added or committed: live readers stop after the stored ones."""
        return self.deleted or ((self.ended or self.interrupted) and self.samples_count >= self.appended)

    @property
    def params(self) -> common_pb2.TrialParams:
        return common_pb2.TrialParams.FromString(self.params_data)

    def set_params(self, params: common_pb2.TrialParams) -> None:
        self.params_data = params.SerializeToString()
        self.properties = _shared_strings(params.properties)

    def info(self) -> trial_datastore_pb2.StoredTrialInfo:
        info = trial_datastore_pb2.StoredTrialInfo(
            trial_id=self.trial_id,
            last_state=self.last_state,
            user_id=self.user_id,
            samples_count=self.samples_count,
        )
        info.params.MergeFromString(self.params_data)
        return info

    def row(self) -> TrialRow:
        return TrialRow(self.seq, self.trial_id, self.user_id, self.params_data, self.last_state, self.samples_count)


def _shared_strings(properties: Mapping[str, str]) -> dict[str, str]:
    """The properties, with one copy of each name and value for all trials (a run id repeats)."""
    return {sys.intern(key): sys.intern(value) for key, value in properties.items()}


def new_trial(seq: int, trial_id: str, user_id: str, params: common_pb2.TrialParams) -> Trial:
    trial = Trial(seq, trial_id, sys.intern(user_id), b"", {})
    trial.set_params(params)
    return trial


class TrialStore:
    """Trials in creation order, samples through the backend, and the waits of live readers."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._by_id: dict[str, Trial] = {}
        self._by_seq: dict[int, Trial] = {}
        self._ordered: list[Trial] = []  # by seq, deleted trials removed
        self._trials_changed = Notifier()
        self._closed = Notifier()
        self.closing = False
        for row in storage.load_trials():
            trial = new_trial(row.seq, row.trial_id, row.user_id, common_pb2.TrialParams.FromString(row.params))
            trial.last_state = row.last_state
            trial.samples_count = trial.appended = row.samples_count
            trial.interrupted = not trial.ended  # from a previous process: see module docstring
            self._add(trial)
        self._next_seq = self._ordered[-1].seq + 1 if self._ordered else 0
        storage.listen(self._committed)

    def _add(self, trial: Trial) -> None:
        self._by_id[trial.trial_id] = trial
        self._by_seq[trial.seq] = trial
        self._ordered.append(trial)

    # -- writing ---------------------------------------------------------------------------------

    def create_or_update(self, trial_id: str, user_id: str, params: common_pb2.TrialParams) -> Trial:
        """A new trial, or new params and user id for an existing one (its samples are kept)."""
        self._check_open()
        trial = self._by_id.get(trial_id)
        if trial is None:
            trial = new_trial(self._next_seq, trial_id, user_id, params)
            self._next_seq += 1
            self._add(trial)
        else:
            trial.user_id = sys.intern(user_id)
            trial.set_params(params)
            trial.interrupted = False
        self._storage.save_trial(trial.row())
        self._trials_changed.notify()
        return trial

    def append(self, trial: Trial, sample: bytes, state: int) -> None:
        """Store a serialized StoredTrialSample; the hot path, once per tick of every trial.

        Readers get it once the backend reports it committed (``_committed``).
        """
        self._check_open()
        if trial.deleted:
            return  # deleted by a user while still being logged: the user asked for it to go
        index = trial.appended
        trial.appended += 1
        self._storage.append_sample(trial.seq, index, sample, state)

    def _committed(self, counts: Mapping[int, tuple[int, int]]) -> None:
        """The backend made samples durable: serve them."""
        for seq, (count, state) in counts.items():
            trial = self._by_seq.get(seq)
            if trial is None or count <= trial.samples_count:
                continue  # deleted meanwhile, or already known
            trial.samples_count = count
            trial.last_state = state
            trial.changed.notify()

    async def wait_committed(self, trial: Trial) -> None:
        """Until every sample appended to ``trial`` so far is durable (or the trial is deleted)."""
        target = trial.appended
        while trial.samples_count < target and not trial.deleted:
            self._check_open()
            await wait_any([trial.changed, self._closed])

    def interrupt(self, trial: Trial) -> None:
        """The only writer of ``trial`` is gone; if it did not end, readers must stop waiting."""
        if not trial.ended and not trial.interrupted:
            trial.interrupted = True
            trial.changed.notify()

    def delete(self, trial_ids: Iterable[str]) -> None:
        self._check_open()
        for trial_id in trial_ids:
            trial = self._by_id.pop(trial_id, None)
            if trial is None:
                continue
            trial.deleted = True
            del self._by_seq[trial.seq]
            self._ordered.remove(trial)
            self._storage.delete_trial(trial.seq)
            trial.changed.notify()

    # -- reading ---------------------------------------------------------------------------------

    def get(self, trial_id: str) -> Trial:
        trial = self._by_id.get(trial_id)
        if trial is None:
            raise UnknownTrialError(trial_id)
        return trial

    def select(self, trial_ids: Iterable[str], properties: Mapping[str, str], start_seq: int) -> Iterator[Trial]:
        """Trials from ``start_seq`` on, in creation order, with these ids (if any) and properties."""
        trial_ids = list(trial_ids)
        if trial_ids:
            candidates = sorted(
                {self._by_id[trial_id] for trial_id in trial_ids if trial_id in self._by_id},
                key=lambda trial: trial.seq,
            )
        else:
            start = bisect.bisect_left(self._ordered, start_seq, key=lambda trial: trial.seq)
            candidates = self._ordered[start:]
        for trial in candidates:
            if trial.seq >= start_seq and all(
                trial.properties.get(key) == value for key, value in properties.items()
            ):
                yield trial

    async def retrieve_trials(
        self,
        trial_ids: list[str],
        properties: Mapping[str, str],
        start_seq: int,
        count: int,
        timeout: float,
    ) -> list[Trial]:
        """Up to ``count`` (0 = all) matching trials; with a timeout, wait for trials yet to come.

        The wait ends as soon as ``count`` trials (or every requested id) are there; on expiry
        whatever was found is returned. ``count = 0`` without ids waits the full timeout.
        """
        wanted = count
        if trial_ids:
            distinct = len(set(trial_ids))
            wanted = min(count, distinct) if count else distinct
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = list(itertools.islice(self.select(trial_ids, properties, start_seq), count or None))
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or (wanted and len(found) >= wanted) or self.closing:
                return found
            await wait_any([self._trials_changed, self._closed], remaining)

    async def follow_samples(self, trials: list[Trial]) -> AsyncIterator[tuple[Trial, bytes]]:
        """Every sample of ``trials`` from the first, then the new ones until each trial is finished.

        Trials are served round-robin, a batch at a time. Raises DatastoreClosedError if the
        datastore shuts down before the trials are finished.
        """
        cursors = {trial: 0 for trial in trials}
        while cursors:
            self._check_open()
            idle: list[Trial] = []
            for trial, cursor in list(cursors.items()):
                if trial.deleted:
                    del cursors[trial]
                elif cursor < trial.samples_count:
                    self._check_open()  # the backend's readers stop at close
                    batch = await self._storage.read_samples(trial.seq, cursor, trial.samples_count)
                    if not batch and not trial.deleted:
                        raise RuntimeError(f"samples {cursor}.. of trial {trial.trial_id!r} are missing")
                    cursors[trial] = cursor + len(batch)
                    for sample in batch:
                        yield trial, sample
                elif trial.finished:
                    del cursors[trial]
                else:
                    idle.append(trial)
            # Wait only if no trial had anything: then no await happened since they were checked.
            if cursors and len(idle) == len(cursors):
                await wait_any([trial.changed for trial in idle] + [self._closed])

    # -- lifecycle -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closing:
            raise DatastoreClosedError()

    async def close(self) -> None:
        """Wake every waiting reader (they end with UNAVAILABLE), then flush the backend."""
        if self.closing:
            return
        self.closing = True
        self._closed.notify()
        await self._storage.close()
