"""Trial datastore: DatalogSP (trial samples in) and TrialDatastoreSP (trial samples out).

Both gRPC services are served on the same server, as the official datastore does, so the same
``grpc://HOST:PORT`` is both a trial's ``datalog.endpoint`` and the SDK's datastore endpoint.

Walkthrough, in the order data flows:

- ``service.py``: the gRPC servicers; requests in, errors out.
- ``conversion.py``: DatalogSample → StoredTrialSample (done once, when a sample arrives).
- ``trials.py``: the trials, their counters and the waits of live readers.
- ``storage.py`` / ``sqlite.py``: where samples are kept (memory, or SQLite that survives crashes).
- ``filtering.py``: actor/field selection of RetrieveSamples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from cogment.api import datalog_pb2_grpc, trial_datastore_pb2_grpc

from apprentice.services.datastore.service import DatalogService, TrialDatastoreService
from apprentice.services.datastore.sqlite import SqliteStorage
from apprentice.services.datastore.storage import MemoryStorage, Storage
from apprentice.services.datastore.trials import TrialStore

__all__ = ["TrialDatastore"]

log = logging.getLogger(__name__)

DATABASE_FILE = "trials.sqlite3"


class TrialDatastore:
    def __init__(self, storage: Storage) -> None:
        self._store = TrialStore(storage)

    @classmethod
    def create(cls, data_dir: Path | None) -> TrialDatastore:
        """SQLite in ``data_dir/trials.sqlite3`` (trials of earlier runs included), or memory if None."""
        if data_dir is None:
            return cls(MemoryStorage())
        path = data_dir / DATABASE_FILE
        datastore = cls(SqliteStorage(path))
        log.info("Trial datastore in %s", path)
        return datastore

    def add_to_server(self, server: grpc.aio.Server) -> None:
        datalog_pb2_grpc.add_DatalogSPServicer_to_server(DatalogService(self._store), server)
        trial_datastore_pb2_grpc.add_TrialDatastoreSPServicer_to_server(TrialDatastoreService(self._store), server)

    async def close(self) -> None:
        """End live readers (UNAVAILABLE), commit everything to disk, stop the backend's threads."""
        await self._store.close()
