"""A scripted ``teacher`` for MountainCar that behaves like an attentive person.

The expert move in MountainCar is to push in the direction the car is moving: it pumps energy into
the swing until the car climbs the hill. A person watching the screen sees what the agent did on
the previous step (``Observation.last_player_action``): when the agent pushed against the car's
velocity (or did not push), the teacher takes over with the expert push; otherwise it approves
(NO-OP). Like a person, it reacts one step late.

With ``ActorConfig.only_when_asked`` it does not watch: it acts only when the agent asked for help
at the previous step (``PlayerAction.ask_for_help`` in ``last_player_action``), taking over if the
agent's last push was wrong and approving it explicitly (``PlayerAction.approve``) if it was right.

In a vectorized trial (no person could watch N copies) it acts as an expert instead, like
``actors.expert``: the expert push for every copy, performed in ``override`` mode, the label in
``label`` mode (DAgger with the scripted teacher as labeller).
"""

from __future__ import annotations

import cogment
import gymnasium
import numpy as np
from cogment.actor import ActorSession

from actors.expert import expert_action, take_over_coins
from apprentice.protos.data_pb2 import ActorConfig
from apprentice.spaces import ActionSpace, array_from_tensor, gym_action, gym_from_space

SUPPORTED_ENV_IDS = ("MountainCar-v0",)
PUSH_LEFT, NO_PUSH, PUSH_RIGHT = 0, 1, 2


def expert_push(observation: np.ndarray) -> int:
    _position, velocity = observation
    return PUSH_RIGHT if velocity >= 0 else PUSH_LEFT


def expert_pushes(observations: np.ndarray) -> np.ndarray:
    """``expert_push`` for a batch of observations (N, 2)."""
    return np.where(observations[:, 1] >= 0, PUSH_RIGHT, PUSH_LEFT).astype(np.int64)


def teacher_decision(observation: np.ndarray, last_player_action: int | None) -> int | None:
    """The push to impose, or ``None`` (NO-OP) when the agent's last action was already right."""
    if last_player_action is None or last_player_action == expert_push(observation):
        return None
    return expert_push(observation)


class ScriptedTeacher:
    """The ``teacher`` implementation served by ``apprentice.components``."""

    def __init__(self, cfg: dict, model_registry=None) -> None:
        pass

    def get_actor_classes(self) -> list[str]:
        return ["teacher"]

    async def impl(self, actor_session: ActorSession) -> None:
        """Answer every observation with an expert push or a NO-OP."""
        config: ActorConfig = actor_session.config or ActorConfig()
        env_id = config.environment_specs.env_id
        if env_id not in SUPPORTED_ENV_IDS:
            raise ValueError(f"the scripted teacher only knows {SUPPORTED_ENV_IDS}, not {env_id!r}")
        action_space = gym_from_space(config.environment_specs.action_space)
        if action_space != gymnasium.spaces.Discrete(3):
            raise ValueError(f"expected MountainCar's Discrete(3) actions, got {action_space}")

        teacher_actions = ActionSpace(action_space, with_noop=True)
        coins = take_over_coins(config)
        actor_session.start()
        async for event in actor_session.all_events():
            if event.observation is not None and event.type == cogment.EventType.ACTIVE:
                observation = event.observation.observation
                if observation.episodes:  # a vectorized trial
                    actor_session.do_action(expert_action(observation, expert_pushes, coins))
                    continue
                last = observation.last_player_action if observation.HasField("last_player_action") else None
                if config.only_when_asked and not (last is not None and any(last.ask_for_help)):
                    actor_session.do_action(teacher_actions.create())  # not asked: it does not watch
                    continue
                last_player_action = gym_action(last, action_space) if last is not None else None
                decision = teacher_decision(array_from_tensor(observation.value), last_player_action)
                action = teacher_actions.create(value=decision)  # None: NO-OP
                action.approve = decision is None and config.only_when_asked  # asked, and the agent was right
                actor_session.do_action(action)
