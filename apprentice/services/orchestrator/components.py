"""What the orchestrator keeps about each component of a trial: its stream and its per-trial state."""

from __future__ import annotations

import asyncio
import enum
from collections import defaultdict

from cogment.api import common_pb2, environment_pb2

from apprentice.services.orchestrator.params import Endpoint
from apprentice.services.orchestrator.streams import Connection


class ActorStatus(enum.Enum):
    """An actor slot's life: WAITING until its init handshake ends, then ENGAGED until it leaves."""

    WAITING = "waiting"
    ENGAGED = "engaged"
    DISENGAGED = "disengaged"  # left (or never came); optional actors get their default action


class ActorSlot:
    """One entry of ``TrialParams.actors``; its index is its position there."""

    def __init__(self, index: int, params: common_pb2.ActorParams, endpoint: Endpoint) -> None:
        self.index = index
        self.params = params
        self.name = params.name
        self.actor_class = params.actor_class
        self.endpoint = endpoint
        self.status = ActorStatus.WAITING
        self.connection: Connection | None = None
        # A client actor's join hands its connection over through this future.
        self.joined: asyncio.Future[Connection] | None = (
            asyncio.get_running_loop().create_future() if endpoint.is_client else None
        )
        # For the ClientActorSP handler: set when the orchestrator is done with the stream.
        self.released = asyncio.Event()
        self.last_ack = asyncio.Event()
        # Reward sources per tick, delivered (aggregated) just before the next observation.
        self.pending_rewards: defaultdict[int, list[common_pb2.RewardSource]] = defaultdict(list)

    @property
    def engaged(self) -> bool:
        return self.status is ActorStatus.ENGAGED

    @property
    def has_default_action(self) -> bool:
        return self.params.HasField("default_action")

    def init_input(self, environment_name: str) -> common_pb2.ActorInitialInput:
        init = common_pb2.ActorInitialInput(
            actor_name=self.name,
            actor_class=self.actor_class,
            impl_name=self.params.implementation,
            env_name=environment_name,
        )
        if self.params.HasField("config"):
            init.config.CopyFrom(self.params.config)
        return init

    def send(self, message: common_pb2.ActorRunTrialInput) -> None:
        if self.connection is not None:
            self.connection.send(message)

    def send_pending_rewards(self) -> None:
        """One aggregated Reward per tick, oldest tick first, as the official orchestrator does."""
        for tick_id in sorted(self.pending_rewards):
            sources = self.pending_rewards[tick_id]
            reward = common_pb2.Reward(
                tick_id=tick_id,
                receiver_name=self.name,
                value=aggregate_reward(sources),
                sources=sources,
            )
            self.send(common_pb2.ActorRunTrialInput(state=common_pb2.NORMAL, reward=reward))
        self.pending_rewards.clear()


class EnvironmentSlot:
    def __init__(self, params: common_pb2.EnvironmentParams, endpoint: Endpoint) -> None:
        self.params = params
        self.name = params.name
        self.endpoint = endpoint
        self.connection: Connection | None = None
        self.last_ack = asyncio.Event()

    def init_input(self, tick_id: int, actors: list[ActorSlot]) -> environment_pb2.EnvInitialInput:
        init = environment_pb2.EnvInitialInput(
            name=self.name,
            impl_name=self.params.implementation,
            tick_id=tick_id,
            actors_in_trial=[common_pb2.TrialActor(name=a.name, actor_class=a.actor_class) for a in actors],
        )
        if self.params.HasField("config"):
            init.config.CopyFrom(self.params.config)
        return init

    def send(self, message: environment_pb2.EnvRunTrialInput) -> None:
        if self.connection is not None:
            self.connection.send(message)


def aggregate_reward(sources: list[common_pb2.RewardSource]) -> float:
    """Confidence-weighted mean of the sources with positive confidence; 0 when there are none."""
    total_confidence = sum(source.confidence for source in sources if source.confidence > 0)
    if total_confidence <= 0:
        return 0.0
    weighted = sum(source.value * source.confidence for source in sources if source.confidence > 0)
    return weighted / total_confidence
