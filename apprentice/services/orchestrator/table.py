"""The orchestrator's trial table: who runs, who watches, and when finished trials are forgotten."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc
from cogment.api import common_pb2, orchestrator_pb2_grpc

from apprentice.services.common import server_options
from apprentice.services.orchestrator.channels import CHANNEL_IDLE_SECONDS, GrpcChannels
from apprentice.services.orchestrator.params import check_start_names, check_trial_params
from apprentice.services.orchestrator.trial import ENDED, Trial

log = logging.getLogger(__name__)

MAINTENANCE_PERIOD = 1.0


class Orchestrator:
    """Owns every trial started on this service, and the gRPC servicers that expose them.

    Ended trials stay visible (GetTrialInfo, WatchTrials, duplicate-id checks) for
    ``ended_trial_retention`` seconds, so a caller can still read their final state.
    """

    def __init__(
        self,
        environment_init_timeout: float = 30.0,
        ended_trial_retention: float = 60.0,
        channel_idle_seconds: float = CHANNEL_IDLE_SECONDS,
    ) -> None:
        self.trials: dict[str, Trial] = {}
        self.environment_init_timeout = environment_init_timeout
        self.ended_trial_retention = ended_trial_retention
        self.channel_idle_seconds = channel_idle_seconds
        self._watchers: set[asyncio.Queue[Trial]] = set()
        self._channels: GrpcChannels | None = None
        self._maintenance: asyncio.Task | None = None
        self._terminations: set[asyncio.Task] = set()  # stale trials being ended (a reference keeps each alive)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        from apprentice.services.orchestrator.client_actors import ClientActorServicer
        from apprentice.services.orchestrator.lifecycle import TrialLifecycleServicer

        orchestrator_pb2_grpc.add_TrialLifecycleSPServicer_to_server(TrialLifecycleServicer(self), server)
        orchestrator_pb2_grpc.add_ClientActorSPServicer_to_server(ClientActorServicer(self), server)

    # -- trials ------------------------------------------------------------------------------------

    async def start_trial(self, params: common_pb2.TrialParams, user_id: str, trial_id_requested: str) -> str:
        """Start a trial and return its id; "" when the requested id is taken (as the official one does).

        Raises InvalidTrialParams for parameters that can never work.
        """
        check_start_names(trial_id_requested, user_id)
        checked = check_trial_params(params)
        trial_id = trial_id_requested or str(uuid.uuid4())
        if trial_id in self.trials:
            log.warning("Trial id %r is already in use; not starting a second trial with it", trial_id)
            return ""
        self._ensure_started()
        trial = Trial(
            trial_id,
            user_id,
            checked,
            self._channels,
            on_state_change=self._on_state_change,
            environment_init_timeout=self.environment_init_timeout,
        )
        self.trials[trial_id] = trial
        self._on_state_change(trial)  # INITIALIZING
        await trial.open_datalog()
        trial.start()
        return trial_id

    def _on_state_change(self, trial: Trial) -> None:
        state = trial.state
        if state == common_pb2.PENDING:
            actors = ", ".join(f"{a.name}:{a.actor_class}" for a in trial.actors)
            log.info("Trial %s started (environment %s, actors %s)", trial.id, trial.environment.name, actors)
        elif state == ENDED:
            log.info("Trial %s ended after %d ticks: %s", trial.id, trial.tick_id, trial.end_reason)
        for queue in self._watchers:
            queue.put_nowait((trial, state))

    def watch(self) -> asyncio.Queue:
        """A queue of (trial, state) for every state change from now on; call ``unwatch`` when done."""
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue) -> None:
        self._watchers.discard(queue)

    @property
    def open_channels(self) -> int:
        """gRPC channels to components currently open (closed once unused for a while)."""
        return len(self._channels) if self._channels is not None else 0

    # -- maintenance -------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._channels is None:
            self._channels = GrpcChannels(list(server_options()), self.channel_idle_seconds)
        if self._maintenance is None:
            self._maintenance = asyncio.create_task(self._maintain(), name="orchestrator maintenance")

    async def _maintain(self) -> None:
        """Every second: end stale trials (max_inactivity), forget trials ended long enough ago and
        close the channels no trial uses any more."""
        while True:
            await asyncio.sleep(MAINTENANCE_PERIOD)
            self._channels.close_idle()
            # In a method of its own, so that no local variable keeps a forgotten trial alive.
            self._check_trials()

    def _check_trials(self) -> None:
        now = time.monotonic()
        for trial in list(self.trials.values()):
            if trial.state == ENDED:
                if trial.ended_at_ns and time.time_ns() - trial.ended_at_ns > self.ended_trial_retention * 1e9:
                    del self.trials[trial.id]
            elif trial.max_inactivity > 0 and now - trial.last_activity > trial.max_inactivity:
                termination = asyncio.create_task(
                    trial.hard_terminate("The trial was inactive for too long", special_event="Stale trial")
                )
                self._terminations.add(termination)
                termination.add_done_callback(self._terminations.discard)

    async def close(self) -> None:
        """End every running trial (hard), so components are released and datalogs flushed."""
        running = [trial for trial in self.trials.values() if trial.state != ENDED]
        await asyncio.gather(
            *(trial.hard_terminate("Orchestrator shutting down") for trial in running), return_exceptions=True
        )
        await asyncio.gather(*(trial.wait_closed() for trial in self.trials.values()), return_exceptions=True)
        if self._maintenance is not None:
            self._maintenance.cancel()
        if self._channels is not None:
            await self._channels.close()
