"""An expert policy in the teacher's seat (``teacher=expert``): it plays or labels every step.

The trial's ``ActorConfig`` says which expert file to act with (``expert_path``, loaded through
``apprentice.experts``' safe unpickler and kept per process) and how its action is used:

- ``override`` (behavioral cloning's roll-outs): its action takes over, the expert plays;
- ``label`` (DAgger): the player's action is performed and the expert's is the label, except in
  the copies where DAgger's beta coin (``apprentice.teaching.TakeOverCoins``) says that the
  expert's action is performed instead.

The expert acts in numpy on the whole batch of a vectorized trial at once. Its actions are sent as
it computed them (labels are kept as they are); the environment clips what it performs.
"""

from __future__ import annotations

import cogment
import numpy as np
from cogment.actor import ActorSession

from apprentice.experts import ExpertPolicy, load_expert
from apprentice.protos.data_pb2 import ActorConfig, PlayerAction
from apprentice.spaces import array_from_tensor, tensor_from_array
from apprentice.teaching import BetaPer, TakeOverCoins, TeacherMode


class ExpertTeacher:
    """The ``teacher`` implementation served by ``apprentice.components``."""

    def __init__(self, cfg: dict, model_registry=None) -> None:
        self._experts: dict[str, ExpertPolicy] = {}  # by path: a file is loaded once per process

    def get_actor_classes(self) -> list[str]:
        return ["teacher"]

    def expert(self, path: str) -> ExpertPolicy:
        if path not in self._experts:
            self._experts[path] = load_expert(path)
        return self._experts[path]

    async def impl(self, actor_session: ActorSession) -> None:
        config: ActorConfig = actor_session.config or ActorConfig()
        if not config.expert_path:
            raise ValueError("ActorConfig.expert_path is empty: the expert teacher needs the path of an expert policy file")
        expert = self.expert(config.expert_path)
        await answer_like_an_expert(actor_session, config, expert.act)


async def answer_like_an_expert(actor_session: ActorSession, config: ActorConfig, act) -> None:
    """Answer every observation with ``act(observations)``, plus the beta coins in label mode."""
    coins = take_over_coins(config)
    actor_session.start()
    async for event in actor_session.all_events():
        if event.observation is not None and event.type == cogment.EventType.ACTIVE:
            actor_session.do_action(expert_action(event.observation.observation, act, coins))


def take_over_coins(config: ActorConfig) -> TakeOverCoins | None:
    """The beta coins of a teacher in label mode (None in override mode, where it always plays)."""
    if TeacherMode(config.teacher_mode or TeacherMode.OVERRIDE.value) is not TeacherMode.LABEL:
        return None
    return TakeOverCoins(config.beta, BetaPer(config.beta_per or BetaPer.STEP.value), config.seed)


def expert_action(observation, act, coins: TakeOverCoins | None) -> PlayerAction:
    """The expert's answer to one observation (a batch of N in a vectorized trial)."""
    actions = np.asarray(act(array_from_tensor(observation.value)))
    action = PlayerAction(value=tensor_from_array(actions))
    if coins is not None and observation.episodes:
        action.take_over.extend(coins.draw(np.asarray(observation.episodes)))
    return action
