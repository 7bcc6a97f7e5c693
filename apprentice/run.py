"""Runs: a learning algorithm that starts trials and learns from their samples.

A run implementation is a class with ``async impl(run_session)``. It publishes its first model,
builds trial parameters, and iterates ``run_session.start_and_await_trials(...)``, which starts the
trials and, for each one, runs the implementation's ``sample_producer(sample_producer_session)``
over the trial's samples *while the trial runs* (they are read live from the trial datastore).
Whatever the producer passes to ``produce_sample`` comes out of the iteration, in order.

Every step of every trial is in the trial datastore first, so a crash of the run loses nothing:
``stored_samples`` replays the samples of earlier trials of the same run (``resume``). A run class
that can go on from them says so with ``RESUMABLE = True``; main refuses ``resume=`` for the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cogment
import grpc
from cogment.datastore import DatastoreSample, DatastoreTrialInfo

from apprentice import cog_settings
from apprentice.launcher import wait_until_reachable

log = logging.getLogger(__name__)

RUN_ID_PROPERTY = "apprentice_run_id"
CLIENT_IMPLEMENTATION = "client"  # an actor played by a client (the web page) instead of a service
TRIAL_INFO_TIMEOUT = 10.0
COMPONENTS_TIMEOUT = 60.0  # a crashed actor service being started again
TEACHER_NOTICE_SECONDS = 1.5  # a trial still PENDING after this waits for its teacher's tab


@dataclass(frozen=True)
class Endpoints:
    orchestrator: str
    datastore: str
    model_registry: str
    # The environment and the service actors: one components process or more. Trial k of a run
    # runs on components[k % len(components)] (``on_components``), spreading the trials' work over cores.
    components: tuple[str, ...]
    web_page: str | None = None  # http://HOST:PORT of the teacher's page, when a person teaches


class SampleProducerSession:
    """What a sample producer gets for one trial: its samples in, the run's samples out."""

    def __init__(self, trial_info: DatastoreTrialInfo, trial_index: int, datastore, output: asyncio.Queue) -> None:
        self.trial_info = trial_info
        self.trial_id = trial_info.trial_id
        self.trial_index = trial_index
        self.trial_parameters: cogment.TrialParameters = trial_info.parameters
        self._datastore = datastore
        self._output = output

    async def all_trial_samples(self) -> AsyncIterator[DatastoreSample]:
        """The trial's samples, one per tick, as they are logged; ends when the trial ends."""
        async for sample in self._datastore.all_samples([self.trial_info]):
            yield sample

    def produce_sample(self, sample: Any) -> None:
        self._output.put_nowait((self.trial_id, self.trial_index, sample))


SampleProducer = Callable[[SampleProducerSession], Awaitable[None]]
_TRIAL_DONE = object()


def on_components(params: cogment.TrialParameters, first: str, components: str) -> cogment.TrialParameters:
    """``params`` with what runs on the ``first`` components process moved to ``components``.

    Trial parameters are built with the first components endpoint (``RunSession.actor_parameters``,
    ``trial_parameters``); each trial is then placed on one process of the pool as it starts. The
    caller's parameters are not changed.
    """
    if components == first:
        return params
    moved = cogment.TrialParameters(cog_settings)
    moved.deserialize(params.serialize())
    if moved.environment_endpoint == first:
        moved.environment_endpoint = components
    for actor in moved.actors:
        if actor.endpoint == first:
            actor.endpoint = components
    return moved


class ServicesUnavailable(RuntimeError):
    """The run's Cogment services stopped answering: no trial can start and no sample be read, so
    the run stops (rather than failing every remaining trial)."""

    @classmethod
    def from_error(cls, error: BaseException) -> ServicesUnavailable | None:
        """The run-ending form of ``error`` when it says the services cannot be reached, else None."""
        if isinstance(error, ServicesUnavailable):
            return error
        if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE:
            return cls(f"The Cogment services stopped answering ({error.details()})")
        return None


class RunSession:
    """What a run implementation gets: config, model registry, metrics, trials and their samples."""

    def __init__(self, run_id: str, config: Any, endpoints: Endpoints, context: cogment.Context, metrics) -> None:
        self.run_id = run_id
        self.config = config
        self.endpoints = endpoints
        self.context = context
        self.metrics = metrics
        self.controller = context.get_controller(cogment.Endpoint(endpoints.orchestrator))
        self.datastore = context.get_datastore(cogment.Endpoint(endpoints.datastore))
        self.model_registry = None  # set by ``open`` (the SDK creates it asynchronously)

    async def open(self) -> RunSession:
        self.model_registry = await self.context.get_model_registry_v2(cogment.Endpoint(self.endpoints.model_registry))
        return self

    # -- metrics -----------------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        self.metrics.log_params(params)

    def log_metrics(self, step: int, **metrics: float) -> None:
        for key, value in metrics.items():
            self.metrics.log_metric(key, float(value), step)

    # -- trial parameters --------------------------------------------------------------------------

    def actor_parameters(self, name: str, actor_class: str, implementation: str, config, **extra) -> cogment.ActorParameters:
        """An actor served by the components, or played by a client when ``implementation`` is "client"."""
        endpoint = "cogment://client" if implementation == CLIENT_IMPLEMENTATION else self.endpoints.components[0]
        return cogment.ActorParameters(
            cog_settings,
            name=name,
            class_name=actor_class,
            endpoint=endpoint,
            implementation="" if implementation == CLIENT_IMPLEMENTATION else implementation,
            config=config,
            **extra,
        )

    def trial_parameters(self, environment_config, actors: list[cogment.ActorParameters], **extra) -> cogment.TrialParameters:
        """The components' environment, every step logged in the datastore, tagged with this run."""
        return cogment.TrialParameters(
            cog_settings,
            environment_name="env",
            environment_endpoint=self.endpoints.components[0],
            environment_implementation="gym",
            environment_config=environment_config,
            datalog_endpoint=self.endpoints.datastore,
            actors=actors,
            properties={RUN_ID_PROPERTY: self.run_id},
            **extra,
        )

    # -- trials and samples ------------------------------------------------------------------------

    async def start_and_await_trials(
        self,
        trials: list[tuple[str, cogment.TrialParameters]],
        sample_producer: SampleProducer,
        num_parallel_trials: int = 1,
    ) -> AsyncIterator[tuple[int, str, int, Any]]:
        """Start ``trials`` (``num_parallel_trials`` at a time) and yield ``(step, trial_id, trial_index, sample)``.

        The ``trial_index`` is the position in ``trials``; ``step`` counts every sample of the run.
        """
        output: asyncio.Queue = asyncio.Queue()
        pending = list(enumerate(trials))
        running: set[asyncio.Task] = set()
        trials_done, step = 0, 0

        def start_next() -> None:
            trial_index, (trial_id, params) = pending.pop(0)
            task = asyncio.create_task(self._run_trial(trial_id, params, trial_index, sample_producer, output))
            running.add(task)
            task.add_done_callback(running.discard)

        try:
            while pending and len(running) < num_parallel_trials:
                start_next()
            while trials_done < len(trials):
                trial_id, trial_index, sample = await output.get()
                if isinstance(sample, ServicesUnavailable):
                    raise sample
                if sample is _TRIAL_DONE:
                    trials_done += 1
                    if pending:
                        start_next()
                    continue
                yield step, trial_id, trial_index, sample
                step += 1
        finally:
            for task in running:
                task.cancel()

    async def _run_trial(self, trial_id: str, params, trial_index: int, sample_producer: SampleProducer, output: asyncio.Queue) -> None:
        try:
            components = self.endpoints.components[trial_index % len(self.endpoints.components)]
            params = on_components(params, self.endpoints.components[0], components)
            await wait_until_reachable(components, COMPONENTS_TIMEOUT)
            started = await self.controller.start_trial(trial_id_requested=trial_id, trial_params=params)
            if not started:
                raise RuntimeError(f"trial id {trial_id!r} is already in use: choose another run id")
            notice = asyncio.create_task(self._say_if_waiting_for_teacher(trial_id)) if self.endpoints.web_page else None
            try:
                trial_info = await self._trial_info(trial_id)
                await sample_producer(SampleProducerSession(trial_info, trial_index, self.datastore, output))
            finally:
                if notice is not None:
                    notice.cancel()
        except Exception as error:
            lost = ServicesUnavailable.from_error(error)
            if lost is not None:
                output.put_nowait((trial_id, trial_index, lost))  # ends the run, with one message
            else:
                log.exception("Trial %s failed; going on with the next one", trial_id)
        finally:
            output.put_nowait((trial_id, trial_index, _TRIAL_DONE))

    async def _say_if_waiting_for_teacher(self, trial_id: str) -> None:
        """A trial still PENDING a moment after its start waits for its teacher's tab: say where to open it."""
        await asyncio.sleep(TEACHER_NOTICE_SECONDS)
        try:
            infos = await self.controller.get_trial_info([trial_id])
        except Exception as error:  # noqa: BLE001 - only a notice: the trial reports its own failures
            log.debug("State of trial %s: %s", trial_id, error)
            return
        if infos and infos[0].state == cogment.TrialState.PENDING:
            print(f"Trial {trial_id} is waiting for its teacher: open {self.endpoints.web_page}", flush=True)

    async def _trial_info(self, trial_id: str) -> DatastoreTrialInfo:
        """The datastore learns of a trial from the orchestrator's datalog, a moment after it starts."""
        deadline = asyncio.get_running_loop().time() + TRIAL_INFO_TIMEOUT
        while True:
            infos = await self.datastore.get_trials([trial_id])
            if infos:
                return infos[0]
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"trial {trial_id} never reached the datastore at {self.endpoints.datastore}")
            await asyncio.sleep(0.05)

    async def stored_samples(self, sample_producer: SampleProducer) -> AsyncIterator[tuple[str, int, Any]]:
        """Replay the samples of every stored trial of this run through ``sample_producer`` (resume)."""
        infos = [info async for info in self.datastore.all_trials(bundle_size=100, properties={RUN_ID_PROPERTY: self.run_id})]
        output: asyncio.Queue = asyncio.Queue()
        for trial_index, info in enumerate(infos):
            await sample_producer(SampleProducerSession(info, trial_index, self.datastore, output))
            while not output.empty():
                yield output.get_nowait()
