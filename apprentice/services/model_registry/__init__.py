"""Model registry: the Cogment ModelRegistrySP, as the SDK's ``get_model_registry_v2`` expects it.

Stores versioned model data, like the official Go registry (memory cache + file archive):

- ``storage``: the version store (numbering, archived versions, LRU cache of transient ones, watchers);
- ``archive``: archived models and versions on disk, crash-safe;
- ``upload`` / ``data``: version bytes coming in (checked, hashed) and going out (chunked);
- ``service``: the gRPC servicer;
- ``records``, ``lru``, ``errors``: the small pieces they share.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cogment.api import model_registry_pb2_grpc

from apprentice.services.model_registry.service import DEFAULT_CHUNK_SIZE, ModelRegistryServicer
from apprentice.services.model_registry.storage import DEFAULT_CACHE_MAX_VERSIONS, VersionStore

__all__ = ["DEFAULT_CACHE_MAX_VERSIONS", "DEFAULT_CHUNK_SIZE", "ModelRegistry"]


class ModelRegistry:
    """The registry service of ``apprentice.services``: a version store behind a gRPC servicer."""

    def __init__(self, store: VersionStore, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.store = store
        self._servicer = ModelRegistryServicer(store, chunk_size)

    @classmethod
    def create(
        cls,
        data_dir: Path | None,
        *,
        cache_max_versions: int = DEFAULT_CACHE_MAX_VERSIONS,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> ModelRegistry:
        """With ``data_dir``, models and archived versions persist in ``data_dir/models/`` and are
        reloaded here; without it, everything lives in memory.

        ``cache_max_versions`` bounds the transient (non-archived) versions kept, over all models;
        ``chunk_size`` is the size of the data messages sent back (must stay under the SDK's 4 MiB).
        """
        return cls(VersionStore.open(data_dir, cache_max_versions), chunk_size)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        model_registry_pb2_grpc.add_ModelRegistrySPServicer_to_server(self._servicer, server)

    async def close(self) -> None:
        """End the VersionUpdate streams still open and finish pending deletions."""
        await self.store.close()
