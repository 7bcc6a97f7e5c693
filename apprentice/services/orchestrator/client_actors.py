"""ClientActorSP: actors that connect to the orchestrator themselves (a browser, a script, a notebook).

The trial reserves a slot for every actor whose endpoint is ``cogment://client``. A client opens
RunTrial with the ``trial-id`` metadata and its first message names the slot, by actor name or by
actor class. Once the slot is granted the stream works like a service actor's, in the other direction.
"""

from __future__ import annotations

import grpc
from cogment.api import common_pb2, orchestrator_pb2_grpc

from apprentice.services.common import single_metadata_value, status_reply, version_info
from apprentice.services.orchestrator.streams import Connection, StreamClosed
from apprentice.services.orchestrator.table import Orchestrator
from apprentice.services.orchestrator.trial import JoinRefused


class ClientActorServicer(orchestrator_pb2_grpc.ClientActorSPServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    async def RunTrial(self, request_iterator, context: grpc.aio.ServicerContext):
        trial_id = single_metadata_value(context, "trial-id")
        connection = Connection(context, f"client actor of trial {trial_id}")
        # Read the client's first message before refusing anything: aborting while the SDK is
        # still sending it would turn our clear error into a transport-level INTERNAL.
        try:
            selection = await self._read_slot_selection(connection)
        except (StreamClosed, ValueError) as error:
            connection.abort()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if not trial_id:
            connection.abort()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no trial-id metadata: say which trial to join")
        trial = self.orchestrator.trials.get(trial_id)
        if trial is None:
            connection.abort()
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown trial {trial_id!r}: start it before joining")
        try:
            slot = trial.find_client_slot(selection.actor_name, selection.actor_class)
        except JoinRefused as refused:
            connection.abort()
            await context.abort(refused.code, str(refused))

        connection.description = f"client actor {slot.name!r} of trial {trial_id}"
        connection.send(common_pb2.ActorRunTrialInput(state=common_pb2.NORMAL, init_input=slot.init_input(trial.environment.name)))
        slot.joined.set_result(connection)
        try:
            # The trial reads and writes this stream from now on; returning ends the RPC.
            await slot.released.wait()
        finally:
            if not slot.released.is_set():
                # The client went away (the RPC was cancelled): the trial treats it as a disconnection.
                trial.actor_disconnected(slot, "the client cancelled its call")
            connection.abort()

    @staticmethod
    async def _read_slot_selection(connection: Connection) -> common_pb2.ActorInitialOutput:
        while True:
            message = await connection.receive()
            if message.state == common_pb2.HEARTBEAT:
                connection.send(common_pb2.ActorRunTrialInput(state=common_pb2.HEARTBEAT))
                continue
            if message.state == common_pb2.NORMAL and message.HasField("init_output"):
                selection = message.init_output
                if not selection.actor_name and not selection.actor_class:
                    raise ValueError("init_output names no slot: set actor_name or actor_class to join")
                return selection
            raise ValueError("the first message of a client actor must be init_output (slot selection)")

    async def Version(self, request: common_pb2.VersionRequest, context: grpc.aio.ServicerContext):
        return version_info()

    async def Status(self, request: common_pb2.StatusRequest, context: grpc.aio.ServicerContext):
        return status_reply(request)
