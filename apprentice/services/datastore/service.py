"""The gRPC side: DatalogSP (samples in) and TrialDatastoreSP (trials and samples out).

These classes only translate between gRPC and ``TrialStore``: read metadata, check requests,
turn problems into gRPC errors whose message says what is wrong and how to fix it.

Acknowledgements on RunTrialDatalog: none are sent. The Go datastore writes one empty
RunTrialDatalogOutput per received message, the SDK datalog writes none, so an orchestrator has to
cope with both; sending none saves one stream write per tick on the event loop shared with the
orchestrator.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from cogment.api import (
    common_pb2,
    datalog_pb2,
    datalog_pb2_grpc,
    trial_datastore_pb2,
    trial_datastore_pb2_grpc,
)

from apprentice.services.common import (
    InvalidPagingHandle,
    metadata_values,
    parse_paging_handle,
    single_metadata_value,
    status_reply,
    version_info,
)
from apprentice.services.datastore.conversion import ConversionError, SampleConverter
from apprentice.services.datastore.filtering import SampleFilter
from apprentice.services.datastore.trials import DatastoreClosedError, Trial, TrialStore, UnknownTrialError

log = logging.getLogger(__name__)

# Python gRPC clients, the SDK included, refuse messages over 4 MiB. A sample that could not be
# read back is refused on the way in (the reply wrapping a sample adds at most 6 bytes).
SDK_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_SAMPLE_BYTES = SDK_MAX_MESSAGE_BYTES - 16

Context = grpc.aio.ServicerContext
CLOSING_MESSAGE = "The trial datastore is shutting down; retry once it is back"


class DatalogService(datalog_pb2_grpc.DatalogSPServicer):
    def __init__(self, store: TrialStore) -> None:
        self._store = store

    async def RunTrialDatalog(
        self, request_iterator: AsyncIterator[datalog_pb2.RunTrialDatalogInput], context: Context
    ) -> None:
        trial_id = single_metadata_value(context, "trial-id")
        if not trial_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "RunTrialDatalog needs the id of the logged trial in the 'trial-id' metadata",
            )
        user_id = single_metadata_value(context, "user-id") or ""
        trial: Trial | None = None
        try:
            converter: SampleConverter | None = None
            async for request in request_iterator:
                kind = request.WhichOneof("msg")
                if trial is None or converter is None:
                    if kind != "trial_params":
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"Trial {trial_id!r}: the first RunTrialDatalog message must carry the trial_params, "
                            f"got {kind or 'an empty message'}",
                        )
                    trial = self._store.create_or_update(trial_id, user_id, request.trial_params)
                    converter = SampleConverter(trial_id, request.trial_params)
                elif kind == "sample":
                    await self._append(trial, converter, request.sample, context)
                else:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Trial {trial_id!r}: after the trial_params, RunTrialDatalog messages must carry a sample, "
                        f"got {kind or 'an empty message'}; open a new stream to log another trial",
                    )
            if trial is not None:
                # The OK status of the stream means that every sample it carried is on disk.
                await self._store.wait_committed(trial)
        except DatastoreClosedError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, CLOSING_MESSAGE)
        finally:
            if trial is not None:
                # Whatever the reason the stream stops, nobody can add to this trial any more.
                self._store.interrupt(trial)

    async def _append(
        self, trial: Trial, converter: SampleConverter, sample: datalog_pb2.DatalogSample, context: Context
    ) -> None:
        try:
            stored = converter.convert(sample)
        except ConversionError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Trial {trial.trial_id!r}: {error}")
        data = stored.SerializeToString()
        if len(data) > MAX_SAMPLE_BYTES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _too_large(trial.trial_id, stored.tick_id, len(data)))
        self._store.append(trial, data, stored.state)

    async def Version(self, request: common_pb2.VersionRequest, context: Context) -> common_pb2.VersionInfo:
        return version_info()

    async def Status(self, request: common_pb2.StatusRequest, context: Context) -> common_pb2.StatusReply:
        return status_reply(request)


class TrialDatastoreService(trial_datastore_pb2_grpc.TrialDatastoreSPServicer):
    def __init__(self, store: TrialStore) -> None:
        self._store = store

    async def RetrieveTrials(
        self, request: trial_datastore_pb2.RetrieveTrialsRequest, context: Context
    ) -> trial_datastore_pb2.RetrieveTrialsReply:
        start = await _parse_handle(request.trial_handle, context)
        trials = await self._store.retrieve_trials(
            list(request.trial_ids),
            dict(request.properties),
            start,
            request.trials_count,
            request.timeout / 1000,
        )
        reply = trial_datastore_pb2.RetrieveTrialsReply()
        next_seq = start
        size = 0
        for trial in trials:
            info = trial.info()
            size += info.ByteSize() + 8
            if reply.trial_infos and size > SDK_MAX_MESSAGE_BYTES - 1024:
                # The rest comes with the next request (handle), like a page of trials_count.
                log.warning("RetrieveTrials: reply cut after %d trials to stay under 4 MiB", len(reply.trial_infos))
                break
            reply.trial_infos.append(info)
            next_seq = trial.seq + 1
        reply.next_trial_handle = str(next_seq)
        return reply

    async def RetrieveSamples(
        self, request: trial_datastore_pb2.RetrieveSamplesRequest, context: Context
    ) -> AsyncIterator[trial_datastore_pb2.RetrieveSampleReply]:
        try:
            trials = [self._store.get(trial_id) for trial_id in request.trial_ids]
        except UnknownTrialError as error:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Unknown trial id {error.trial_id!r}: it was never logged to this datastore or it was deleted; "
                "list the stored trials with Datastore.get_trials() or all_trials()",
            )
        sample_filter = SampleFilter(request)
        transforms = {trial: sample_filter.for_trial(trial.params) for trial in trials}
        try:
            async with aclosing(self._store.follow_samples(trials)) as samples:
                async for trial, data in samples:
                    reply = trial_datastore_pb2.RetrieveSampleReply()
                    reply.trial_sample.ParseFromString(data)
                    transform = transforms[trial]
                    if transform is not None:
                        reply.trial_sample.CopyFrom(transform(reply.trial_sample))
                    yield reply
        except DatastoreClosedError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, CLOSING_MESSAGE)

    async def AddTrial(
        self, request: trial_datastore_pb2.AddTrialRequest, context: Context
    ) -> trial_datastore_pb2.AddTrialReply:
        trial_id = await _single_trial_id(context, "AddTrial")
        try:
            self._store.create_or_update(trial_id, request.user_id, request.trial_params)
        except DatastoreClosedError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, CLOSING_MESSAGE)
        return trial_datastore_pb2.AddTrialReply()

    async def AddSample(
        self, request_iterator: AsyncIterator[trial_datastore_pb2.AddSampleRequest], context: Context
    ) -> trial_datastore_pb2.AddSamplesReply:
        trial_id = await _single_trial_id(context, "AddSample")
        try:
            trial = self._store.get(trial_id)
        except UnknownTrialError:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Unknown trial id {trial_id!r}: create the trial with AddTrial first"
            )
        try:
            async for request in request_iterator:
                sample = request.trial_sample
                if sample.trial_id and sample.trial_id != trial_id:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Sample of tick {sample.tick_id} has trial_id {sample.trial_id!r} but the 'trial-id' "
                        f"metadata is {trial_id!r}; leave trial_sample.trial_id empty or make them equal",
                    )
                sample.trial_id = trial_id
                data = sample.SerializeToString()
                if len(data) > MAX_SAMPLE_BYTES:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _too_large(trial_id, sample.tick_id, len(data)))
                self._store.append(trial, data, sample.state)
            await self._store.wait_committed(trial)  # the reply means: stored
        except DatastoreClosedError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, CLOSING_MESSAGE)
        return trial_datastore_pb2.AddSamplesReply()

    async def DeleteTrials(
        self, request: trial_datastore_pb2.DeleteTrialsRequest, context: Context
    ) -> trial_datastore_pb2.DeleteTrialsReply:
        try:
            self._store.delete(request.trial_ids)
        except DatastoreClosedError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, CLOSING_MESSAGE)
        return trial_datastore_pb2.DeleteTrialsReply()

    async def Version(self, request: common_pb2.VersionRequest, context: Context) -> common_pb2.VersionInfo:
        return version_info()

    async def Status(self, request: common_pb2.StatusRequest, context: Context) -> common_pb2.StatusReply:
        return status_reply(request)


async def _parse_handle(handle: str, context: Context) -> int:
    """Trial handles are the creation number of the next trial to return, in decimal."""
    try:
        return parse_paging_handle(handle, "trial_handle")
    except InvalidPagingHandle as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        raise AssertionError("unreachable") from None


async def _single_trial_id(context: Context, method: str) -> str:
    trial_ids = metadata_values(context, "trial-id")
    if len(trial_ids) != 1 or not trial_ids[0]:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{method} needs exactly one 'trial-id' metadata entry naming the trial, got {len(trial_ids)}",
        )
    return trial_ids[0]


def _too_large(trial_id: str, tick_id: int, size: int) -> str:
    return (
        f"Trial {trial_id!r}: the sample of tick {tick_id} takes {size} bytes once stored, over the "
        f"{MAX_SAMPLE_BYTES} bytes a Cogment client can receive (4 MiB message limit); make observations "
        "smaller or drop fields with TrialParams.datalog.exclude_fields. The samples before it are kept."
    )
