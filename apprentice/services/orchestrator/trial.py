"""One trial: its state machine and its tick loop.

States follow Cogment's: INITIALIZING -> PENDING -> RUNNING -> TERMINATING -> ENDED (a trial that is
hard-terminated while PENDING goes straight to ENDED). The tick loop is event driven: every message
read from a component stream calls one of the ``_on_*`` handlers below, in order, on the event loop.
Handlers never await, so the trial's state never changes under their feet, and a slow component
only delays its own stream. The only long-running coroutines are the start-up (connecting to the
actors, then to the environment) and the end handshake.

A tick: the environment sends an ObservationSet -> each engaged actor gets its pending rewards and
its observation -> once every engaged actor has acted (or its response timeout expired) the
ActionSet goes to the environment, which answers with the next ObservationSet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from cogment.api import (
    agent_pb2_grpc,
    common_pb2,
    datalog_pb2,
    datalog_pb2_grpc,
    environment_pb2,
    environment_pb2_grpc,
    orchestrator_pb2,
)

from apprentice.services.orchestrator.channels import GrpcChannels
from apprentice.services.orchestrator.components import ActorSlot, ActorStatus, EnvironmentSlot
from apprentice.services.orchestrator.datalog import TrialDatalog
from apprentice.services.orchestrator.params import CheckedParams
from apprentice.services.orchestrator.streams import Connection, StreamClosed

log = logging.getLogger(__name__)

NORMAL = common_pb2.NORMAL
HEARTBEAT = common_pb2.HEARTBEAT
LAST = common_pb2.LAST
LAST_ACK = common_pb2.LAST_ACK
END = common_pb2.END

INITIALIZING = common_pb2.INITIALIZING
PENDING = common_pb2.PENDING
RUNNING = common_pb2.RUNNING
TERMINATING = common_pb2.TERMINATING
ENDED = common_pb2.ENDED

ALLOWED_TRANSITIONS = {
    INITIALIZING: {PENDING, ENDED},
    PENDING: {RUNNING, ENDED},
    RUNNING: {TERMINATING},
    TERMINATING: {ENDED},
    ENDED: set(),
}

# The SDK never raises gRPC's default 4 MiB receive limit: a bigger observation would kill the
# actor's stream with a transport error, so the trial ends with a message that says why instead.
SDK_MAX_MESSAGE_BYTES = 4 * 1024 * 1024 - 1024
ENVIRONMENT_LAST_ACK_TIMEOUT = 60.0
ACTOR_LAST_ACK_TIMEOUT = 30.0


class Trial:
    def __init__(
        self,
        trial_id: str,
        user_id: str,
        checked: CheckedParams,
        channels: GrpcChannels,
        on_state_change: Callable[[Trial], None],
        environment_init_timeout: float,
    ) -> None:
        self.id = trial_id
        self.user_id = user_id
        self.params = checked.params
        self.checked = checked
        self._channels = channels
        self._held_targets: list[str] = []  # channels acquired, released when the trial ends
        self._on_state_change = on_state_change
        self._environment_init_timeout = environment_init_timeout

        self.state = INITIALIZING
        self.tick_id = 0
        self.created_at_ns = time.time_ns()
        self.ended_at_ns: int | None = None
        self.last_activity = time.monotonic()
        self.end_reason = ""
        self.ended = asyncio.Event()
        self.latest_observation: environment_pb2.ObservationSet | None = None

        self.environment = EnvironmentSlot(self.params.environment, checked.environment_endpoint)
        self.actors = [
            ActorSlot(index, actor_params, endpoint)
            for index, (actor_params, endpoint) in enumerate(zip(self.params.actors, checked.actor_endpoints))
        ]
        self.datalog = TrialDatalog(len(self.actors), checked.nb_buffered_ticks, list(self.params.datalog.exclude_fields))

        # Per tick: the action received from each actor, and which actors ran out of time.
        self._tick_actions: list[common_pb2.Action | None] = [None] * len(self.actors)
        self._timed_out: list[bool] = [False] * len(self.actors)
        self._timers: list[asyncio.TimerHandle] = []
        self._actions_sent_for_tick = True  # nothing to gather before the first observation
        self._end_requested = False
        self._final_observation_expected = False  # LAST was seen on the environment stream
        self._final_observation_received = False
        self._tasks: set[asyncio.Task] = set()
        self._startup: asyncio.Task | None = None
        self._soft_end: asyncio.Task | None = None

    # -- state -------------------------------------------------------------------------------------

    def set_state(self, state: int) -> None:
        if state not in ALLOWED_TRANSITIONS[self.state]:
            return
        self.state = state
        if state == ENDED:
            self.ended_at_ns = time.time_ns()
        self._on_state_change(self)

    @property
    def max_inactivity(self) -> int:
        return self.params.max_inactivity

    def duration_ns(self) -> int:
        return (self.ended_at_ns or time.time_ns()) - self.created_at_ns

    # -- start-up ----------------------------------------------------------------------------------

    async def open_datalog(self) -> None:
        """Open the DatalogSP stream and write the TrialParams before StartTrial replies."""
        endpoint = self.checked.datalog_endpoint
        if endpoint is None:
            return
        stub = datalog_pb2_grpc.DatalogSPStub(self._channel(endpoint.grpc_target))
        call = stub.RunTrialDatalog(metadata=(("trial-id", self.id), ("user-id", self.user_id)))
        try:
            await call.write(datalog_pb2.RunTrialDatalogInput(trial_params=self.params))
        except Exception as error:  # noqa: BLE001
            call.cancel()
            self._spawn(self.hard_terminate(f"Datalog at {self.params.datalog.endpoint} unavailable: {error}"))
            return
        connection = Connection(call, f"datalog of trial {self.id}")
        self.datalog.connection = connection
        connection.start_reading(on_message=lambda _ack: None, on_closed=self._on_datalog_closed)

    def start(self) -> None:
        self.set_state(PENDING)
        self._startup = self._spawn(self._start_components())

    async def _start_components(self) -> None:
        problems = await asyncio.gather(*(self._initialize_actor(actor) for actor in self.actors))
        failed = [(actor, problem) for actor, problem in zip(self.actors, problems) if problem]
        required = [actor.name for actor, _ in failed if not actor.params.optional]
        if failed:
            # One line per trial, however many actors it has.
            outcome = "ending the trial" if required else "continuing without them (optional)"
            details = [f"{actor.name!r} {problem}" for actor, problem in failed]
            log.warning("Trial %s: %d actors unavailable, %s: %s", self.id, len(failed), outcome, _listed(details))
        if required:
            await self.hard_terminate(f"Failed to initialize all actors [{_listed(required)}]")
            return
        for actor, _ in failed:
            actor.status = ActorStatus.DISENGAGED
        for actor in self.actors:
            if actor.engaged:
                actor.connection.start_reading(
                    lambda message, actor=actor: self._on_actor_message(actor, message),
                    lambda reason, actor=actor: self.actor_disconnected(actor, reason),
                )
        try:
            await asyncio.wait_for(self._initialize_environment(), self._environment_init_timeout)
        except (TimeoutError, StreamClosed, ProtocolError) as error:
            reason = str(error) or f"no answer within {self._environment_init_timeout:g} s"
            await self.hard_terminate(f"Failed to initialize environment: {reason}")
            return
        self.environment.connection.start_reading(self._on_environment_message, self._on_environment_closed)

    async def _initialize_actor(self, actor: ActorSlot) -> str:
        """What went wrong, or "" once the actor is engaged."""
        timeout = actor.params.initial_connection_timeout or None  # 0 means wait forever
        try:
            await asyncio.wait_for(self._connect_actor(actor), timeout)
        except TimeoutError:
            return f"did not connect within {timeout:g} s"
        except (StreamClosed, ProtocolError) as error:
            if actor.connection is not None:
                actor.connection.abort()  # broken: nothing more to send on it, not even END
            return f"failed to initialize ({error})"
        actor.status = ActorStatus.ENGAGED
        return ""

    async def _connect_actor(self, actor: ActorSlot) -> None:
        if actor.endpoint.is_client:
            # The ClientActorSP handler did the handshake; it resolves this future when a client joins.
            actor.connection = await asyncio.shield(actor.joined)
            return
        stub = agent_pb2_grpc.ServiceActorSPStub(self._channel(actor.endpoint.grpc_target))
        connection = Connection(stub.RunTrial(metadata=(("trial-id", self.id),)), f"actor {actor.name!r}")
        actor.connection = connection
        connection.send(common_pb2.ActorRunTrialInput(state=NORMAL, init_input=actor.init_input(self.environment.name)))
        await _await_init_output(connection, common_pb2.ActorRunTrialInput(state=HEARTBEAT))

    async def _initialize_environment(self) -> None:
        environment = self.environment
        stub = environment_pb2_grpc.EnvironmentSPStub(self._channel(environment.endpoint.grpc_target))
        connection = Connection(stub.RunTrial(metadata=(("trial-id", self.id),)), f"environment {environment.name!r}")
        environment.connection = connection
        connection.send(
            environment_pb2.EnvRunTrialInput(state=NORMAL, init_input=environment.init_input(self.tick_id, self.actors))
        )
        await _await_init_output(connection, environment_pb2.EnvRunTrialInput(state=HEARTBEAT))

    # -- client actors -----------------------------------------------------------------------------

    def find_client_slot(self, actor_name: str, actor_class: str) -> ActorSlot:
        """The slot a joining client takes; raises JoinRefused (with the reason) when there is none."""
        if self.state != PENDING:
            raise JoinRefused(
                "FAILED_PRECONDITION",
                f"trial {self.id} is {common_pb2.TrialState.Name(self.state)}: client actors can only join a PENDING trial",
            )
        if actor_name:
            slot = next((actor for actor in self.actors if actor.name == actor_name), None)
            if slot is None:
                raise JoinRefused("NOT_FOUND", f"trial {self.id} has no actor named {actor_name!r}")
            if not slot.endpoint.is_client:
                raise JoinRefused(
                    "FAILED_PRECONDITION",
                    f"actor {actor_name!r} of trial {self.id} is a service actor; its endpoint must be cogment://client to join",
                )
            if actor_class and slot.actor_class != actor_class:
                raise JoinRefused(
                    "INVALID_ARGUMENT", f"actor {actor_name!r} is of class {slot.actor_class!r}, not {actor_class!r}"
                )
            if slot.joined.done() or slot.status is not ActorStatus.WAITING:
                raise JoinRefused("ALREADY_EXISTS", f"actor {actor_name!r} of trial {self.id} has already joined")
            return slot
        free = [
            actor
            for actor in self.actors
            if actor.actor_class == actor_class and actor.endpoint.is_client and not actor.joined.done()
            and actor.status is ActorStatus.WAITING
        ]
        if not free:
            raise JoinRefused(
                "NOT_FOUND", f"trial {self.id} has no free client actor slot of class {actor_class!r}"
            )
        return free[0]

    # -- tick loop: environment --------------------------------------------------------------------

    def _on_environment_message(self, message: environment_pb2.EnvRunTrialOutput) -> None:
        state = message.state
        if state == NORMAL:
            kind = message.WhichOneof("data")
            if kind == "observation_set":
                self._on_observation_set(message.observation_set)
            elif kind == "reward":
                self._on_reward(message.reward, self.environment.name)
            elif kind == "message":
                self._on_message(message.message, self.environment.name)
        elif state == HEARTBEAT:
            self.environment.send(environment_pb2.EnvRunTrialInput(state=HEARTBEAT))
        elif state == LAST:
            self._final_observation_expected = True
        elif state == LAST_ACK:
            self.environment.last_ack.set()
        elif state == END:
            self._spawn(self.hard_terminate(f"Environment ended the trial: {message.details or 'no details'}"))

    def _on_environment_closed(self, reason: str) -> None:
        if self.state in (PENDING, RUNNING):
            self._spawn(self.hard_terminate(f"Environment disconnected ({reason})"))
        elif self.state == TERMINATING and not self.environment.last_ack.is_set():
            self.environment.last_ack.set()  # nothing more will come; do not wait 60 s for it

    def _on_observation_set(self, observation_set: environment_pb2.ObservationSet) -> None:
        if self.state not in (PENDING, RUNNING, TERMINATING) or self._final_observation_received or self.end_reason:
            return
        self.last_activity = time.monotonic()
        now = time.time_ns()
        if self.state == PENDING:
            self.set_state(RUNNING)
            sample = self.datalog.current
            sample.info.timestamp = now
        else:
            self.datalog.current.info.state = self.state
            self.tick_id += 1
            sample = self.datalog.new_sample(self.tick_id, now)

        problem = self._check_observation_set(observation_set)
        if problem:
            self._spawn(self.hard_terminate(problem))
            return
        sample.observations.CopyFrom(observation_set)
        self.latest_observation = observation_set

        if self._final_observation_expected:
            self._final_observation_received = True
            if self.state == RUNNING:
                sample.info.special_events.append("Evironment ended trial")  # (sic) the official wording
                self.set_state(TERMINATING)
            self._soft_end = self._spawn(self._end_softly(observation_set))
            return

        self._tick_actions = [None] * len(self.actors)
        self._timed_out = [False] * len(self.actors)
        self._actions_sent_for_tick = False
        loop = asyncio.get_running_loop()
        for actor in self.actors:
            if not actor.engaged:
                continue
            actor.send_pending_rewards()
            actor.send(self._observation_for(actor, observation_set))
            if actor.params.response_timeout > 0:
                self._timers.append(
                    loop.call_later(actor.params.response_timeout, self._on_response_timeout, actor, self.tick_id)
                )
        self._maybe_send_actions()

    def _check_observation_set(self, observation_set: environment_pb2.ObservationSet) -> str:
        if observation_set.tick_id not in (-1, self.tick_id):
            return f"Environment sent observations for tick {observation_set.tick_id} at tick {self.tick_id}"
        count = len(observation_set.observations)
        if len(observation_set.actors_map) != len(self.actors) or any(
            not 0 <= index < count for index in observation_set.actors_map
        ):
            return (
                f"Environment sent an observation set whose actors_map {list(observation_set.actors_map)} does not "
                f"give one of its {count} observations to each of the {len(self.actors)} actors"
            )
        for observation in observation_set.observations:
            if len(observation) > SDK_MAX_MESSAGE_BYTES:
                return (
                    f"Environment sent an observation of {len(observation)} bytes; Cogment SDK actors cannot "
                    f"receive messages over 4 MiB: send smaller observations (e.g. compress rendered frames)"
                )
        return ""

    def _observation_for(self, actor: ActorSlot, observation_set: environment_pb2.ObservationSet) -> common_pb2.ActorRunTrialInput:
        content = observation_set.observations[observation_set.actors_map[actor.index]]
        return common_pb2.ActorRunTrialInput(
            state=NORMAL,
            observation=common_pb2.Observation(tick_id=self.tick_id, timestamp=observation_set.timestamp, content=content),
        )

    # -- tick loop: actors ---------------------------------------------------------------------------

    def _on_actor_message(self, actor: ActorSlot, message: common_pb2.ActorRunTrialOutput) -> None:
        state = message.state
        if state == NORMAL:
            kind = message.WhichOneof("data")
            if kind == "action":
                self._on_action(actor, message.action)
            elif kind == "reward":
                self._on_reward(message.reward, actor.name)
            elif kind == "message":
                self._on_message(message.message, actor.name)
        elif state == HEARTBEAT:
            actor.send(common_pb2.ActorRunTrialInput(state=HEARTBEAT))
        elif state == LAST_ACK:
            actor.last_ack.set()
        elif state == END:
            self.actor_disconnected(actor, f"actor {actor.name!r} sent END: {message.details or 'no details'}")
        elif state == LAST:
            log.error("Trial %s: actor %r sent LAST, which only the orchestrator and environment may send", self.id, actor.name)

    def _on_action(self, actor: ActorSlot, action: common_pb2.Action) -> None:
        if self.state != RUNNING or self._actions_sent_for_tick or not actor.engaged:
            return
        if action.tick_id not in (-1, self.tick_id) or self._tick_actions[actor.index] is not None:
            log.debug("Trial %s: dropped action of %r for tick %d at tick %d", self.id, actor.name, action.tick_id, self.tick_id)
            return
        self.last_activity = time.monotonic()
        self._tick_actions[actor.index] = action
        self._maybe_send_actions()

    def _on_response_timeout(self, actor: ActorSlot, tick_id: int) -> None:
        if tick_id == self.tick_id and not self._actions_sent_for_tick and self._tick_actions[actor.index] is None:
            self._timed_out[actor.index] = True
            self._maybe_send_actions()

    def actor_disconnected(self, actor: ActorSlot, reason: str) -> None:
        """An actor left. Optional ones are replaced by their default action; required ones end the trial."""
        if self.state == TERMINATING:
            actor.last_ack.set()  # nothing more will come from it; do not wait for it
            return
        if actor.status is not ActorStatus.ENGAGED or self.state not in (PENDING, RUNNING):
            return
        actor.status = ActorStatus.DISENGAGED
        if actor.connection is not None:
            actor.connection.abort()
        actor.released.set()
        log.warning("Trial %s: actor %r disconnected: %s", self.id, actor.name, reason)
        if not actor.params.optional:
            self._spawn(self.hard_terminate(f"Required actor {actor.name!r} disconnected ({reason})"))
            return
        self._tick_actions[actor.index] = None
        self._maybe_send_actions()

    def _maybe_send_actions(self) -> None:
        """Build and send this tick's ActionSet once every engaged actor acted or timed out."""
        if self._actions_sent_for_tick or self.state != RUNNING or self._final_observation_expected:
            return
        for actor in self.actors:
            if actor.engaged and self._tick_actions[actor.index] is None and not self._timed_out[actor.index]:
                return
        self._actions_sent_for_tick = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

        sample = self.datalog.current
        action_set = environment_pb2.ActionSet(tick_id=self.tick_id, timestamp=time.time_ns())
        missing_required = []
        for actor, action in zip(self.actors, self._tick_actions):
            if action is not None:
                action_set.actions.append(action.content)
                sample.actions[actor.index].CopyFrom(action)
                continue
            if actor.has_default_action:
                action_set.actions.append(actor.params.default_action.content)
                sample.default_actors.append(actor.index)
            else:
                action_set.actions.append(b"")
                action_set.unavailable_actors.append(actor.index)
                sample.unavailable_actors.append(actor.index)
            if not actor.params.optional:
                missing_required.append(actor.name)
        if missing_required:
            details = (
                f"Action processing requirement failure [Required actors [{', '.join(missing_required)}] "
                f"unavailable at tick [{self.tick_id}]]"
            )
            self._spawn(self.hard_terminate(details))
            return

        if action_set.ByteSize() > SDK_MAX_MESSAGE_BYTES:
            self._spawn(
                self.hard_terminate(
                    f"The actions of tick {self.tick_id} add up to {action_set.ByteSize()} bytes; a Cogment SDK "
                    f"environment cannot receive messages over 4 MiB: make the actions smaller"
                )
            )
            return

        max_steps = self.params.max_steps
        if (max_steps > 0 and self.tick_id >= max_steps) or self._end_requested:
            sample.info.special_events.append("End requested" if self._end_requested else "Maximum number of steps reached")
            self.set_state(TERMINATING)
            self._final_observation_expected = True
            self.environment.send(environment_pb2.EnvRunTrialInput(state=LAST))
        self.environment.send(environment_pb2.EnvRunTrialInput(state=NORMAL, action_set=action_set))
        # Samples go to the datalog now, while the environment computes its step: earlier, their
        # writes would delay the observations on their way to the actors.
        self.datalog.balance()

    # -- rewards and messages -----------------------------------------------------------------------

    def _receivers(self, pattern: str) -> list[ActorSlot]:
        """Actors matched by a receiver name: ``name``, ``*``, ``class.*`` or ``class.name``."""
        if pattern == "*":
            return list(self.actors)
        exact = [actor for actor in self.actors if actor.name == pattern]
        if exact:
            return exact
        actor_class, dot, name = pattern.partition(".")
        if not dot:
            return []
        if name == "*":
            return [actor for actor in self.actors if actor.actor_class == actor_class]
        return [actor for actor in self.actors if actor.actor_class == actor_class and actor.name == name]

    def _on_reward(self, reward: common_pb2.Reward, sender: str) -> None:
        if self.state in (INITIALIZING, ENDED):
            return
        tick_id = reward.tick_id
        if tick_id == -1:
            tick_id = self.tick_id
        if tick_id > self.tick_id or tick_id < 0:
            log.warning("Trial %s: dropped reward from %r for tick %d (current tick %d)", self.id, sender, reward.tick_id, self.tick_id)
            return
        for source in reward.sources:
            source.sender_name = sender
        if tick_id == self.tick_id:
            receivers = self._receivers(reward.receiver_name)
            if not receivers:
                log.warning("Trial %s: reward from %r to unknown receiver %r", self.id, sender, reward.receiver_name)
            for actor in receivers:
                if actor.engaged:
                    actor.pending_rewards[tick_id].extend(reward.sources)
        self.datalog.add_reward(reward, tick_id)

    def _on_message(self, message: common_pb2.Message, sender: str) -> None:
        if self.state in (INITIALIZING, ENDED):
            return
        if message.tick_id not in (-1, self.tick_id):
            log.warning("Trial %s: dropped message from %r for tick %d (current tick %d)", self.id, sender, message.tick_id, self.tick_id)
            return
        message.sender_name = sender
        self.datalog.current.messages.append(message)
        receiver = message.receiver_name

        def delivered(to: str) -> common_pb2.Message:
            return common_pb2.Message(tick_id=self.tick_id, sender_name=sender, receiver_name=to, payload=message.payload)

        if receiver == self.environment.name:
            self.environment.send(environment_pb2.EnvRunTrialInput(state=NORMAL, message=delivered(receiver)))
            return
        receivers = self._receivers(receiver)
        if not receivers:
            log.warning("Trial %s: message from %r to unknown receiver %r", self.id, sender, receiver)
        for actor in receivers:
            if actor.engaged:
                actor.send(common_pb2.ActorRunTrialInput(state=NORMAL, message=delivered(actor.name)))

    # -- ending ------------------------------------------------------------------------------------

    def request_end(self) -> None:
        """Soft termination: the environment gets LAST with the next ActionSet."""
        if self.state in (PENDING, RUNNING):
            self._end_requested = True
            self._maybe_send_actions()

    async def _end_softly(self, final_observations: environment_pb2.ObservationSet) -> None:
        engaged = [actor for actor in self.actors if actor.engaged]
        for actor in engaged:
            actor.send_pending_rewards()
            actor.send(common_pb2.ActorRunTrialInput(state=LAST))
            actor.send(self._observation_for(actor, final_observations))
        details = ""
        try:
            await asyncio.wait_for(self.environment.last_ack.wait(), ENVIRONMENT_LAST_ACK_TIMEOUT)
        except TimeoutError:
            details = "Environment failed to end properly"

        async def wait_for_actor(actor: ActorSlot) -> None:
            try:
                await asyncio.wait_for(actor.last_ack.wait(), ACTOR_LAST_ACK_TIMEOUT)
            except TimeoutError:
                log.warning("Trial %s: actor %r did not acknowledge the end of the trial", self.id, actor.name)

        await asyncio.gather(*(wait_for_actor(actor) for actor in engaged))
        self._close_components(details)
        await self._finish(details or "normal end")

    async def hard_terminate(self, details: str, special_event: str | None = None) -> None:
        """End now: END to every connected component, no LAST handshake."""
        if self.state == ENDED or self.end_reason:
            return
        self.end_reason = details
        for task in (self._startup, self._soft_end):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        for timer in self._timers:
            timer.cancel()
        if self.datalog.samples:
            events = self.datalog.current.info.special_events
            if special_event:
                events.append(special_event)
            events.append(f"Forced termination: {details}")
        self.set_state(TERMINATING)
        self._close_components(details)
        await self._finish(details)

    def _close_components(self, details: str) -> None:
        """END to every connected component; their streams finish in the background."""
        end_for_environment = environment_pb2.EnvRunTrialInput(state=END, details=details) if details else environment_pb2.EnvRunTrialInput(state=END)
        end_for_actor = common_pb2.ActorRunTrialInput(state=END, details=details) if details else common_pb2.ActorRunTrialInput(state=END)
        if self.environment.connection is not None:
            self.environment.send(end_for_environment)
            self._spawn(self.environment.connection.finish())
        for actor in self.actors:
            if actor.joined is not None and not actor.joined.done():
                actor.joined.cancel()
            if actor.connection is not None and actor.status is not ActorStatus.DISENGAGED:
                actor.send(end_for_actor)
                self._spawn(self._release_after_finish(actor))
            else:
                actor.released.set()

    async def _release_after_finish(self, actor: ActorSlot) -> None:
        await actor.connection.finish()
        actor.released.set()

    async def wait_closed(self) -> None:
        """Wait until every stream of this trial is finished (used at shutdown)."""
        await self.ended.wait()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _finish(self, reason: str) -> None:
        if self.state == ENDED:
            return
        self.end_reason = self.end_reason or reason
        self.set_state(ENDED)
        self.datalog.flush()
        self.ended.set()
        self._release_channels()
        if self.datalog.connection is not None:
            await self.datalog.connection.finish()
        if not self._tasks:
            self._drop_streams()

    def _on_datalog_closed(self, reason: str) -> None:
        if self.state != ENDED:
            # Keep running without a datalog would silently lose samples: stop the trial instead.
            self._spawn(self.hard_terminate(f"Datalog stream failed ({reason}): samples can no longer be stored"))

    # -- helpers -----------------------------------------------------------------------------------

    def _channel(self, target: str) -> grpc.aio.Channel:
        self._held_targets.append(target)
        return self._channels.acquire(target)

    def _release_channels(self) -> None:
        # Streams still finishing keep working: a released channel is only closed after a while.
        for target in self._held_targets:
            self._channels.release(target)
        self._held_targets.clear()

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if self.state == ENDED and not self._tasks:
            self._drop_streams()

    def _drop_streams(self) -> None:
        """Once ended and every stream finished: let go of the streams. An ended trial stays in the
        table for a while (GetTrialInfo, WatchTrials), and its finished gRPC calls held ~130 KB of
        native memory each trial until then."""
        self.environment.connection = None
        for actor in self.actors:
            actor.connection = None
        self.datalog.connection = None

    def info(self, with_observation: bool = False, with_actors: bool = False) -> orchestrator_pb2.TrialInfo:
        info = orchestrator_pb2.TrialInfo(
            trial_id=self.id,
            state=self.state,
            env_name=self.environment.name,
            tick_id=self.tick_id,
            trial_duration=self.duration_ns(),
            properties=dict(self.params.properties),
        )
        if with_actors and self.state >= PENDING:
            info.actors_in_trial.extend(common_pb2.TrialActor(name=a.name, actor_class=a.actor_class) for a in self.actors)
        if with_observation and self.latest_observation is not None:
            info.latest_observation.CopyFrom(self.latest_observation)
        return info


def _listed(items: list[str], limit: int = 5) -> str:
    """``a, b, c and 7 more``: keeps log lines and end reasons short for trials with many actors."""
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


async def _await_init_output(connection: Connection, heartbeat_reply) -> None:
    """Read until the component's init_output, answering its heartbeats; anything else is an error."""
    while True:
        message = await connection.receive()
        if message.state == HEARTBEAT:
            connection.send(heartbeat_reply)
        elif message.state == NORMAL and message.HasField("init_output"):
            return
        else:
            raise ProtocolError(f"expected init_output, got {common_pb2.CommunicationState.Name(message.state)}")


class ProtocolError(Exception):
    """A component sent something the Cogment protocol does not allow at that point."""


class JoinRefused(Exception):
    def __init__(self, code_name: str, message: str) -> None:
        super().__init__(message)
        self.code = getattr(grpc.StatusCode, code_name)
