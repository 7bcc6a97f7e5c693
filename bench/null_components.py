"""Do-nothing components for ``bench/trial_throughput.py``: the cost of the runtime alone.

They exchange the same messages per tick as the MountainCar trial (the environment sends one reward
to the player and one observation set, each actor answers with one action) but compute nothing: no
gymnasium, no torch, empty messages. A trial of them measures what the official SDK and
Apprentice's services cost per tick, which no application code can go below.
"""

from __future__ import annotations

import cogment

from apprentice.cog_settings import PLAYER_ACTOR_CLASS, TEACHER_ACTOR_CLASS
from apprentice.protos.data_pb2 import Observation, PlayerAction


class NullEnvironment:
    def __init__(self, cfg: dict, model_registry=None) -> None:
        pass

    async def impl(self, environment_session) -> None:
        environment_session.start([("*", Observation())])
        async for event in environment_session.all_events():
            if not event.actions:
                continue
            environment_session.add_reward(value=0.0, confidence=1.0, to=[f"{PLAYER_ACTOR_CLASS}.*"])
            if event.type == cogment.EventType.ENDING:
                environment_session.end([("*", Observation())])
            else:
                environment_session.produce_observations([("*", Observation())])


class NullActor:
    def __init__(self, cfg: dict, model_registry=None) -> None:
        pass

    def get_actor_classes(self) -> list[str]:
        return [PLAYER_ACTOR_CLASS, TEACHER_ACTOR_CLASS]

    async def impl(self, actor_session) -> None:
        actor_session.start()
        async for event in actor_session.all_events():
            if event.observation is not None and event.type == cogment.EventType.ACTIVE:
                actor_session.do_action(PlayerAction())
