"""ModelRegistrySP over gRPC: turns requests into VersionStore calls and answers into protos.

Nothing here decides semantics (that is ``storage.VersionStore``); this layer only parses the
messages (headers, paging handles), streams data out in chunks that fit the SDK's 4 MiB message
limit, and maps registry errors to gRPC status codes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from cogment.api import common_pb2, model_registry_pb2, model_registry_pb2_grpc

from apprentice.services.common import InvalidPagingHandle, parse_paging_handle, status_reply, version_info
from apprentice.services.model_registry.errors import InvalidRequest, RegistryError
from apprentice.services.model_registry.records import ModelRecord
from apprentice.services.model_registry.storage import VersionStore
from apprentice.services.model_registry.upload import NewVersion

log = logging.getLogger(__name__)

# What the official registry sends, and what the SDK uploads.
DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024
# The SDK cannot receive messages over 4 MiB; keep room for the protobuf framing.
MAX_CHUNK_SIZE = 4 * 1024 * 1024 - 1024


@contextlib.asynccontextmanager
async def _reporting_errors(context: grpc.aio.ServicerContext, action: str) -> AsyncIterator[None]:
    """Answer registry errors with their status code, and disk failures with INTERNAL."""
    try:
        yield
    except RegistryError as error:
        await context.abort(error.code, str(error))
    except OSError as error:
        log.exception("Model registry: disk error while trying to %s", action)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"The model registry could not {action} because of a disk error: {error}. "
            "Check the free space and the permissions of its data directory.",
        )


def _parse_handle(handle: str, field_name: str) -> int:
    """Paging handles are decimal offsets/numbers; empty means "from the start"."""
    try:
        return parse_paging_handle(handle, field_name)
    except InvalidPagingHandle as error:
        raise InvalidRequest(str(error)) from None


class ModelRegistryServicer(model_registry_pb2_grpc.ModelRegistrySPServicer):
    def __init__(self, store: VersionStore, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE} bytes, got {chunk_size}")
        self._store = store
        self._chunk_size = chunk_size

    async def Version(self, request: common_pb2.VersionRequest, context: grpc.aio.ServicerContext) -> common_pb2.VersionInfo:
        return version_info()

    async def Status(self, request: common_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> common_pb2.StatusReply:
        return status_reply(request)

    async def CreateOrUpdateModel(
        self, request: model_registry_pb2.CreateOrUpdateModelRequest, context: grpc.aio.ServicerContext
    ) -> model_registry_pb2.CreateOrUpdateModelReply:
        info = request.model_info
        async with _reporting_errors(context, f"save model {info.model_id!r}"):
            await self._store.put_model(ModelRecord(info.model_id, dict(info.user_data)))
        return model_registry_pb2.CreateOrUpdateModelReply()

    async def DeleteModel(
        self, request: model_registry_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> model_registry_pb2.DeleteModelReply:
        async with _reporting_errors(context, f"delete model {request.model_id!r}"):
            await self._store.delete_model(request.model_id)
            log.info("Model %r deleted", request.model_id)
        return model_registry_pb2.DeleteModelReply()

    async def RetrieveModels(
        self, request: model_registry_pb2.RetrieveModelsRequest, context: grpc.aio.ServicerContext
    ) -> model_registry_pb2.RetrieveModelsReply:
        async with _reporting_errors(context, "list models"):
            offset = _parse_handle(request.model_handle, "model_handle")
            end = offset + request.models_count if request.models_count else None
            if request.model_ids:
                # Requested ids come back in request order; any unknown one is an error (NOT_FOUND).
                models = [self._store.model(model_id) for model_id in request.model_ids[offset:end]]
            else:
                models = self._store.models()[offset:end]
        return model_registry_pb2.RetrieveModelsReply(
            model_infos=[model.to_proto() for model in models],
            next_model_handle=str(offset + len(models)),
        )

    async def CreateVersion(
        self,
        request_iterator: AsyncIterator[model_registry_pb2.CreateVersionRequestChunk],
        context: grpc.aio.ServicerContext,
    ) -> model_registry_pb2.CreateVersionReply:
        async with _reporting_errors(context, "store a new version"):
            chunks = aiter(request_iterator)
            first = await anext(chunks, None)
            if first is None or first.WhichOneof("msg") != "header":
                raise InvalidRequest(
                    "The first CreateVersion chunk must be a header with version_info (model_id, data_size, "
                    "archived, ...); the data then follows in body chunks."
                )
            header = first.header.version_info
            upload = await self._store.begin_upload(
                NewVersion(
                    model_id=header.model_id,
                    archived=header.archived,
                    data_size=header.data_size,
                    data_hash=header.data_hash,
                    creation_timestamp=header.creation_timestamp,
                    user_data=dict(header.user_data),
                )
            )
            try:
                async for chunk in chunks:
                    if chunk.WhichOneof("msg") != "body":
                        raise InvalidRequest(
                            "Only the first CreateVersion chunk may be a header: send the data in body chunks."
                        )
                    await upload.write(chunk.body.data_chunk)
                await upload.finish()
                record = await self._store.commit(upload)
            except BaseException:
                # Failed, rejected or cancelled: leave no partial data behind.
                upload.discard()
                raise
        log.debug("Model %r: version %d created (%d bytes)", record.model_id, record.number, record.data_size)
        return model_registry_pb2.CreateVersionReply(version_info=record.to_proto())

    async def RetrieveVersionInfos(
        self, request: model_registry_pb2.RetrieveVersionInfosRequest, context: grpc.aio.ServicerContext
    ) -> model_registry_pb2.RetrieveVersionInfosReply:
        async with _reporting_errors(context, f"list the versions of model {request.model_id!r}"):
            handle = _parse_handle(request.version_handle, "version_handle")
            if request.version_numbers:
                # Explicit numbers: the handle is an offset in that list, like RetrieveModels' ids.
                end = handle + request.versions_count if request.versions_count else None
                numbers = request.version_numbers[handle:end]
                records = [self._store.version(request.model_id, number).record for number in numbers]
                next_handle = handle + len(records)
            else:
                # All versions: the handle is the first version number to return.
                start = max(handle, 1)
                records = self._store.versions(request.model_id, start, request.versions_count)
                next_handle = records[-1].number + 1 if records else start
        return model_registry_pb2.RetrieveVersionInfosReply(
            version_infos=[record.to_proto() for record in records],
            next_version_handle=str(next_handle),
        )

    async def RetrieveVersionData(
        self, request: model_registry_pb2.RetrieveVersionDataRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_registry_pb2.RetrieveVersionDataReplyChunk]:
        action = f"read version {request.version_number} of model {request.model_id!r}"
        async with _reporting_errors(context, action):
            stored = self._store.version(request.model_id, request.version_number)
            sent = False
            async with contextlib.aclosing(stored.data.chunks(self._chunk_size)) as pieces:
                async for piece in pieces:
                    yield model_registry_pb2.RetrieveVersionDataReplyChunk(data_chunk=piece)
                    sent = True
            if not sent:
                # Empty data is one empty chunk, so that the client sees a version, not an empty stream.
                yield model_registry_pb2.RetrieveVersionDataReplyChunk()

    async def VersionUpdate(
        self, request: model_registry_pb2.VersionUpdateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_registry_pb2.VersionUpdateReply]:
        async with (
            _reporting_errors(context, f"watch model {request.model_id!r}"),
            contextlib.aclosing(self._store.watch(request.model_id)) as updates,
        ):
            async for record in updates:
                yield model_registry_pb2.VersionUpdateReply(version_info=record.to_proto())
