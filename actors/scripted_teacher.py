"""A scripted ``teacher`` for MountainCar: a stand-in for a human supervisor.

The expert move in MountainCar is to push in the direction the car is already moving: it pumps
energy into the swing until the car climbs the hill. The teacher cannot see what the player did
(Cogment does not show one actor's action to another), so it decides from the observation alone:

* near a turning point (``|velocity| < CRITICAL_SPEED``, where the push direction has to flip and a
  wrong push costs the most) it always takes over with the expert push;
* elsewhere it approves (NO-OP) with probability ``NOOP_PROBABILITY`` and takes over otherwise.

The random draws come from a generator seeded with ``ActorConfig.seed``, so a trial with the same
seeds (actor and environment) replays exactly.
"""

from __future__ import annotations

import cogment
import gymnasium
import numpy as np
from cogment.actor import ActorSession

from apprentice.protos.data_pb2 import ActorConfig
from apprentice.spaces import array_from_tensor, gym_from_space, noop_action, player_action

IMPLEMENTATION_NAME = "scripted_teacher"
SUPPORTED_ENV_IDS = ("MountainCar-v0",)

PUSH_LEFT, NO_PUSH, PUSH_RIGHT = 0, 1, 2
CRITICAL_SPEED = 0.01  # MountainCar speeds are within +-0.07
NOOP_PROBABILITY = 0.5


class MountainCarTeacher:
    """Observation in, expert push or ``None`` (NO-OP) out."""

    def __init__(self, seed: int = 0, noop_probability: float = NOOP_PROBABILITY):
        self.rng = np.random.default_rng(seed)
        self.noop_probability = noop_probability

    @staticmethod
    def expert_action(observation: np.ndarray) -> int:
        _position, velocity = observation
        return PUSH_RIGHT if velocity >= 0 else PUSH_LEFT

    def decide(self, observation: np.ndarray) -> int | None:
        """The push to impose, or ``None`` to let the player's action through."""
        _position, velocity = observation
        if abs(velocity) < CRITICAL_SPEED:
            return self.expert_action(observation)
        if self.rng.random() < self.noop_probability:
            return None
        return self.expert_action(observation)


async def impl(actor_session: ActorSession) -> None:
    """Answer every observation with an expert push or a NO-OP."""
    config: ActorConfig = actor_session.config or ActorConfig()
    env_id = config.environment_specs.env_id
    if env_id not in SUPPORTED_ENV_IDS:
        raise ValueError(f"the scripted teacher only knows {SUPPORTED_ENV_IDS}, not {env_id!r}")
    action_space = gym_from_space(config.environment_specs.action_space)
    if action_space != gymnasium.spaces.Discrete(3):
        raise ValueError(f"expected MountainCar's Discrete(3) actions, got {action_space}")
    teacher = MountainCarTeacher(seed=config.seed)

    actor_session.start()
    async for event in actor_session.all_events():
        if event.observation is not None and event.type == cogment.EventType.ACTIVE:
            observation = array_from_tensor(event.observation.observation.value)
            decision = teacher.decide(observation)
            actor_session.do_action(noop_action() if decision is None else player_action(decision, action_space))
