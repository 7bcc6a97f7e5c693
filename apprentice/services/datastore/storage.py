"""Where trials and samples are kept: the backend interface and the in-memory backend.

The datastore keeps the list of trials (ids, params, counters) in memory in every case
(``trials.TrialStore``); a backend only has to persist it and to hold the samples. Samples are
stored as serialized ``StoredTrialSample`` bytes, converted once on the way in, so serving them
costs a read and no conversion.

Backend methods other than ``read_samples`` and ``close`` are called on the event loop for every
sample and must not block: a persistent backend queues the work (see ``sqlite.py``).

A sample is served to readers only once it is durable: the backend reports, through the listener
given to ``listen``, how many samples of each trial are committed, and the datastore serves those.
What a reader (a trainer) has seen is then always on disk, whatever crashes afterwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# A RetrieveSamples read returns at most this many bytes of samples at once (but always at least
# one sample), so that a reader catching up on a long trial does not load it all in memory.
READ_BATCH_BYTES = 4 * 1024 * 1024


@dataclass
class TrialRow:
    """A trial as a backend persists it. ``seq`` orders trials by creation and never changes."""

    seq: int
    trial_id: str
    user_id: str
    params: bytes  # serialized TrialParams
    last_state: int = 0  # TrialState of the last sample
    samples_count: int = 0


# Called on the event loop with, per trial ``seq``, (samples committed, state of the last one).
CommitListener = Callable[[Mapping[int, tuple[int, int]]], None]


class Storage(ABC):
    """Persistence of trials and their samples, addressed by the trial's ``seq``."""

    _on_committed: CommitListener = staticmethod(lambda counts: None)

    def listen(self, on_committed: CommitListener) -> None:
        """Report committed samples to ``on_committed``, on the event loop (see the module docstring)."""
        self._on_committed = on_committed

    @abstractmethod
    def load_trials(self) -> list[TrialRow]:
        """Trials stored by a previous run, in creation order (called once, at start)."""

    @abstractmethod
    def save_trial(self, trial: TrialRow) -> None:
        """Create the trial, or replace its user id and params (samples are kept)."""

    @abstractmethod
    def append_sample(self, seq: int, index: int, data: bytes, state: int) -> None:
        """Store sample number ``index`` (0, 1, 2... per trial, in order) of trial ``seq``.

        Its commit is reported to the listener later (or at once, for a backend without a disk).
        """

    @abstractmethod
    async def read_samples(self, seq: int, start: int, stop: int) -> list[bytes]:
        """Committed samples ``start`` to at most ``stop - 1`` of trial ``seq``: one at least if start < stop."""

    @abstractmethod
    def delete_trial(self, seq: int) -> None:
        """Forget the trial and its samples."""

    @abstractmethod
    async def close(self) -> None:
        """Make everything durable and release resources."""


class MemoryStorage(Storage):
    """Everything in memory, lost at exit: for tests and throw-away runs (no ``--data-dir``)."""

    def __init__(self) -> None:
        self._samples: dict[int, list[bytes]] = {}

    def load_trials(self) -> list[TrialRow]:
        return []

    def save_trial(self, trial: TrialRow) -> None:
        self._samples.setdefault(trial.seq, [])

    def append_sample(self, seq: int, index: int, data: bytes, state: int) -> None:
        self._samples[seq].append(data)
        self._on_committed({seq: (index + 1, state)})  # as durable as this backend gets

    async def read_samples(self, seq: int, start: int, stop: int) -> list[bytes]:
        return take_batch(self._samples.get(seq, []), start, stop)

    def delete_trial(self, seq: int) -> None:
        self._samples.pop(seq, None)

    async def close(self) -> None:
        pass


def take_batch(samples: list[bytes], start: int, stop: int) -> list[bytes]:
    """``samples[start:stop]`` cut to about READ_BATCH_BYTES (never empty if there is a sample)."""
    batch: list[bytes] = []
    size = 0
    for index in range(start, min(stop, len(samples))):
        data = samples[index]
        if batch and size + len(data) > READ_BATCH_BYTES:
            break
        batch.append(data)
        size += len(data)
    return batch
