"""The version store: models, version numbering, archived and transient versions, change signals.

The semantics are those of the official registry (memory cache in front of a file archive):

* versions of a model are numbered from 1; a new version gets latest + 1, where "latest" counts
  every version ever created, including transient ones already evicted;
* negative numbers count from the end: -1 is the latest, -2 the one before, ...;
* archived versions are kept (on disk when there is a data directory, else in memory for the life
  of the process); transient ones live only in an LRU cache shared by all models and are gone
  once evicted.

All state is owned by the event loop; only disk work runs in threads. Changes that touch the disk
(models, deletions, new versions) are serialized by one lock, which also makes numbering race-free.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from apprentice.services.model_registry.archive import DiskArchive, UploadFile
from apprentice.services.model_registry.data import FileData, MemoryData, VersionData
from apprentice.services.model_registry.errors import InvalidRequest, ShuttingDown, UnknownModel, UnknownVersion
from apprentice.services.model_registry.lru import LruCache
from apprentice.services.model_registry.records import ModelRecord, VersionRecord
from apprentice.services.model_registry.upload import MemorySink, NewVersion, Upload

log = logging.getLogger(__name__)

# What Cogment Verse passes to the official registry (--cache_max_items=100).
DEFAULT_CACHE_MAX_VERSIONS = 100


@dataclass(frozen=True, slots=True)
class StoredVersion:
    record: VersionRecord
    data: VersionData


@dataclass(eq=False)
class _Model:
    record: ModelRecord
    latest: int = 0  # the highest number ever given, evicted transient versions included
    archived: dict[int, StoredVersion] = field(default_factory=dict)
    archived_numbers: list[int] = field(default_factory=list)  # ascending, for paging
    # Set, then replaced, whenever a version is added or the model goes away: watchers wait on it.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def announce(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class VersionStore:
    def __init__(self, archive: DiskArchive | None, cache_max_versions: int = DEFAULT_CACHE_MAX_VERSIONS) -> None:
        self.archive = archive
        self._models: dict[str, _Model] = {}
        self._transient: LruCache[tuple[str, int], StoredVersion] = LruCache(cache_max_versions)
        self._lock = asyncio.Lock()
        self._purges: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def open(cls, data_dir: Path | None, cache_max_versions: int = DEFAULT_CACHE_MAX_VERSIONS) -> VersionStore:
        """A store over ``data_dir/models/`` (reloading what is archived there), or memory only."""
        if data_dir is None:
            return cls(None, cache_max_versions)
        archive = DiskArchive(data_dir / "models")
        store = cls(archive, cache_max_versions)
        for loaded in archive.load():
            model = _Model(loaded.model)
            for record in loaded.versions:
                path = archive.data_path(record.model_id, record.number)
                model.archived[record.number] = StoredVersion(record, FileData(str(path), record.data_size))
                model.archived_numbers.append(record.number)
            model.latest = model.archived_numbers[-1] if model.archived_numbers else 0
            store._models[loaded.model.model_id] = model
        log.info("Model registry: %d models reloaded from %s", len(store._models), archive.root)
        return store

    # Models

    def model(self, model_id: str) -> ModelRecord:
        return self._model(model_id).record

    def models(self) -> list[ModelRecord]:
        """Every model, sorted by id (the order paging relies on)."""
        return [self._models[model_id].record for model_id in sorted(self._models)]

    async def put_model(self, record: ModelRecord) -> None:
        """Create the model, or replace its properties (its versions stay)."""
        if not record.model_id:
            raise InvalidRequest("model_info.model_id is empty: give the model a name.")
        async with self._lock:
            if self.archive is not None:
                await asyncio.to_thread(self.archive.save_model, record)
            model = self._models.get(record.model_id)
            if model is None:
                self._models[record.model_id] = _Model(record)
            else:
                model.record = record

    async def delete_model(self, model_id: str) -> None:
        async with self._lock:
            model = self._model(model_id)
            trash = None
            if self.archive is not None:
                trash = await asyncio.to_thread(self.archive.remove_model, model_id)
            del self._models[model_id]
            for owner, number in self._transient:
                if owner == model_id:
                    self._transient.pop((owner, number))
            model.announce()
        if trash is not None:
            # Removing big files takes time; the model is already gone for everyone.
            task = asyncio.create_task(asyncio.to_thread(DiskArchive.purge, trash))
            self._purges.add(task)
            task.add_done_callback(self._purges.discard)

    # Versions

    async def begin_upload(self, request: NewVersion) -> Upload:
        """Where the data of a new version goes while it is received (the model must exist)."""
        self._model(request.model_id)
        if request.archived and self.archive is not None:
            return Upload(request, await asyncio.to_thread(self.archive.new_upload))
        return Upload(request, MemorySink())

    async def commit(self, upload: Upload) -> VersionRecord:
        """Turn a finished upload into the model's next version and wake its watchers."""
        request = upload.request
        async with self._lock:
            model = self._models.get(request.model_id)
            if model is None:
                raise UnknownModel(request.model_id, " (it was deleted while the version was being uploaded)")
            record = VersionRecord(
                model_id=request.model_id,
                number=model.latest + 1,
                creation_timestamp=request.creation_timestamp or time.time_ns(),
                archived=request.archived,
                data_hash=upload.data_hash,
                data_size=upload.received,
                user_data=request.user_data,
            )
            if isinstance(upload.sink, UploadFile):
                assert self.archive is not None
                path = await asyncio.to_thread(self.archive.install_version, upload.sink, record)
                data: VersionData = FileData(str(path), record.data_size)
            else:
                assert isinstance(upload.sink, MemorySink)
                data = MemoryData(tuple(upload.sink.segments), record.data_size)
            stored = StoredVersion(record, data)
            if record.archived:
                model.archived[record.number] = stored
                model.archived_numbers.append(record.number)
            else:
                for (model_id, number), _ in self._transient.put((model.record.model_id, record.number), stored):
                    log.debug("Transient version %d of model %r evicted from the cache", number, model_id)
            model.latest = record.number
            model.announce()
        return record

    def version(self, model_id: str, number: int) -> StoredVersion:
        """A version by number (negative: from the end); UnknownModel / UnknownVersion otherwise."""
        model = self._model(model_id)
        resolved = self._resolve(model, number)
        stored = model.archived.get(resolved) or self._transient.get((model_id, resolved))
        if stored is None:
            raise UnknownVersion(self._missing_message(model, resolved))
        return stored

    def versions(self, model_id: str, start: int, limit: int) -> list[VersionRecord]:
        """Existing versions numbered ``start`` or more, ascending, at most ``limit`` (0: all)."""
        model = self._model(model_id)
        archived = model.archived_numbers[bisect.bisect_left(model.archived_numbers, start) :]
        transient = sorted(number for owner, number in self._transient if owner == model_id and number >= start)
        numbers = heapq.merge(archived, transient)
        if limit > 0:
            numbers = itertools.islice(numbers, limit)
        return [self._existing(model, number).record for number in numbers]

    async def watch(self, model_id: str) -> AsyncIterator[VersionRecord]:
        """The latest version now (if any), then every newer latest version as it is created.

        Versions created faster than the consumer reads are skipped: only the newest matters.
        Waits on an event, never polls; ends with an error when the model is deleted or the store
        closes, and simply stops when the consumer is cancelled.
        """
        model = self._models.get(model_id)
        if model is None:
            # The official registry answers INVALID_ARGUMENT here, not NOT_FOUND.
            raise InvalidRequest(str(UnknownModel(model_id)))
        last_sent = 0
        while True:
            if self._closed:
                raise ShuttingDown()
            if self._models.get(model_id) is not model:
                raise UnknownModel(model_id, " any more: it was deleted while its versions were watched")
            changed = model.changed
            newest = self._newest(model)
            if newest is not None and newest.number > last_sent:
                last_sent = newest.number
                yield newest
                continue
            await changed.wait()

    async def close(self) -> None:
        """Stop every watcher and finish pending deletions."""
        self._closed = True
        for model in self._models.values():
            model.announce()
        if self._purges:
            await asyncio.gather(*self._purges, return_exceptions=True)

    # Helpers

    def _model(self, model_id: str) -> _Model:
        model = self._models.get(model_id)
        if model is None:
            raise UnknownModel(model_id)
        return model

    def _existing(self, model: _Model, number: int) -> StoredVersion:
        stored = model.archived.get(number) or self._transient.peek((model.record.model_id, number))
        assert stored is not None, "listed numbers come from the archive and the cache"
        return stored

    def _newest(self, model: _Model) -> VersionRecord | None:
        """The existing version with the highest number (the latest one may have been evicted)."""
        model_id = model.record.model_id
        latest = model.archived.get(model.latest) or self._transient.peek((model_id, model.latest))
        if latest is not None:
            return latest.record
        candidates = [number for owner, number in self._transient if owner == model_id]
        candidates += model.archived_numbers[-1:]
        return self._existing(model, max(candidates)).record if candidates else None

    @staticmethod
    def _resolve(model: _Model, number: int) -> int:
        model_id = model.record.model_id
        if number > 0:
            return number
        if number == 0:
            raise UnknownVersion(
                f"There is no version 0 of model {model_id!r}: version numbers start at 1; "
                "use -1 for the latest version, -2 for the one before, ..."
            )
        resolved = model.latest + 1 + number
        if resolved < 1:
            if model.latest == 0:
                raise UnknownVersion(f"Model {model_id!r} has no version yet: create one first (SDK: publish_model).")
            raise UnknownVersion(
                f"Version {number} of model {model_id!r} does not exist: counting from the end reaches "
                f"back only {model.latest} versions (-1 is the latest, -{model.latest} the first)."
            )
        return resolved

    def _missing_message(self, model: _Model, number: int) -> str:
        model_id = model.record.model_id
        if number > model.latest:
            latest = f"its latest version is {model.latest}" if model.latest else "it has no version yet"
            return (
                f"Model {model_id!r} has no version {number}: {latest}. "
                "Use -1 to get the latest version, or list the versions (SDK: list_iterations)."
            )
        return (
            f"Version {number} of model {model_id!r} is no longer available: it was not archived and was "
            f"dropped from the cache that keeps only the {self._transient.max_items} most recently used "
            "transient versions. Archive the versions you need to keep (SDK: store_model rather than "
            "publish_model)."
        )
