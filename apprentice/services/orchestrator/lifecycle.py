"""TrialLifecycleSP: start, terminate, inspect and watch trials (what the SDK's Controller calls)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from cogment.api import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc

from apprentice.services.common import metadata_values, status_reply, version_info
from apprentice.services.orchestrator.params import InvalidTrialParams
from apprentice.services.orchestrator.table import Orchestrator


class TrialLifecycleServicer(orchestrator_pb2_grpc.TrialLifecycleSPServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    async def StartTrial(self, request: orchestrator_pb2.TrialStartRequest, context: grpc.aio.ServicerContext):
        if request.WhichOneof("start_data") != "params":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "trial_params is required: this orchestrator has no default parameters and no pre-trial hooks; "
                "call start_trial(trial_params=...) with the full TrialParameters",
            )
        try:
            trial_id = await self.orchestrator.start_trial(request.params, request.user_id, request.trial_id_requested)
        except InvalidTrialParams as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid trial params: {error}")
        return orchestrator_pb2.TrialStartReply(trial_id=trial_id)

    async def TerminateTrial(self, request: orchestrator_pb2.TerminateTrialRequest, context: grpc.aio.ServicerContext):
        trial_ids = metadata_values(context, "trial-id")
        if not trial_ids:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "no trial-id metadata: name at least one trial to terminate"
            )
        terminations = []
        for trial_id in trial_ids:
            trial = self.orchestrator.trials.get(trial_id)
            if trial is None:
                continue  # unknown ids are skipped, as the official orchestrator does
            if request.hard_termination:
                terminations.append(trial.hard_terminate("Externally requested"))
            else:
                trial.request_end()
        # A hard termination returns once the components got END.
        await asyncio.gather(*terminations)
        return orchestrator_pb2.TerminateTrialReply()

    async def GetTrialInfo(self, request: orchestrator_pb2.TrialInfoRequest, context: grpc.aio.ServicerContext):
        trial_ids = metadata_values(context, "trial-id")
        trials = self.orchestrator.trials
        selected = [trials[i] for i in trial_ids if i in trials] if trial_ids else list(trials.values())
        return orchestrator_pb2.TrialInfoReply(
            trial=[trial.info(request.get_latest_observation, request.get_actor_list) for trial in selected]
        )

    async def WatchTrials(
        self, request: orchestrator_pb2.TrialListRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[orchestrator_pb2.TrialListEntry]:
        wanted = set(request.filter)

        def entry(trial, state) -> orchestrator_pb2.TrialListEntry | None:
            if wanted and state not in wanted:
                return None
            if request.full_info:
                info = trial.info()
                info.state = state
                return orchestrator_pb2.TrialListEntry(info=info)
            return orchestrator_pb2.TrialListEntry(trial_id=trial.id, state=state)

        # Subscribe before the snapshot so that no change falls between the two.
        queue = self.orchestrator.watch()
        try:
            for trial in list(self.orchestrator.trials.values()):
                current = entry(trial, trial.state)
                if current is not None:
                    yield current
            while True:
                trial, state = await queue.get()
                change = entry(trial, state)
                if change is not None:
                    yield change
        finally:
            self.orchestrator.unwatch(queue)

    async def Version(self, request: common_pb2.VersionRequest, context: grpc.aio.ServicerContext):
        return version_info()

    async def Status(self, request: common_pb2.StatusRequest, context: grpc.aio.ServicerContext):
        return status_reply(request)
