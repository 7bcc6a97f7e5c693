"""The ``teacher`` actor that the person in the browser plays, in the web server's process.

For each observation it shows the frame in the tabs, waits for the pace (a person needs the
trial to go at a human speed: ``steps_per_second``), waits while the teacher has paused, then
acts with the key the teacher holds: that action takes over, and no key (or no teacher tab at
all) is NO-OP, which approves the agent's action.

A change of the teacher's input ends the wait at once: a key pressed just after a step would
otherwise wait up to a whole step period (33 ms at 30 steps/s) before it acts, and a person feels
that lag. The next step then comes a full period later, so the pace holds.
"""

from __future__ import annotations

import asyncio
import logging
import re

import cogment
import gymnasium

from apprentice.cog_settings import TEACHER_ACTOR_CLASS
from apprentice.protos.data_pb2 import ActorConfig, Observation
from apprentice.spaces import ActionSpace, gym_from_space
from web.hub import Hub
from web.keymaps import KeyMap, key_map_for

log = logging.getLogger(__name__)

TRIAL_INDEX = re.compile(r"-trial-(\d+)$")


def trial_number(trial_id: str) -> int | None:
    """``<run_id>-trial-<index>`` is trial number index + 1 on the page (people count from 1)."""
    match = TRIAL_INDEX.search(trial_id)
    return int(match[1]) + 1 if match else None


class Pacer:
    """Spaces the actions ``period`` seconds apart; after a pause or a stall it does not rush."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._next: float | None = None

    async def wait(self, interrupt: asyncio.Event) -> None:
        """Until the next step is due, or until ``interrupt`` is set (then the pace restarts from now)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next is None or self._next < now - self.period:
            self._next = now
        delay = self._next - now
        if delay > 0:
            try:
                await asyncio.wait_for(interrupt.wait(), delay)
                self._next = loop.time()
            except TimeoutError:
                pass
        self._next += self.period

    def restart(self) -> None:
        self._next = None


class WebTeacher:
    """One instance plays the teacher of every trial the watcher joins."""

    def __init__(self, hub: Hub, steps_per_second: float, key_maps: dict[str, KeyMap]) -> None:
        self.hub = hub
        self.period = 1.0 / steps_per_second if steps_per_second > 0 else 0.0
        self.key_maps = key_maps

    def get_actor_classes(self) -> list[str]:
        return [TEACHER_ACTOR_CLASS]

    async def impl(self, actor_session) -> None:
        trial_id = actor_session.get_trial_id()
        config: ActorConfig = actor_session.config or ActorConfig()
        specs = config.environment_specs
        action_space = gym_from_space(specs.action_space) if specs.HasField("action_space") else None
        # The page plays discrete actions only; in a trial with another space it only approves (NO-OP).
        num_actions = int(action_space.n) if isinstance(action_space, gymnasium.spaces.Discrete) else 0
        # Without a declared action space, the teacher's only action is the NO-OP.
        teacher_actions = ActionSpace(action_space or gymnasium.spaces.Discrete(1), with_noop=True)
        key_map = key_map_for(specs.env_id, num_actions, self.key_maps)
        self.hub.trial_started(trial_id, trial_number(trial_id), specs.env_id, num_actions, key_map)
        pacer = Pacer(self.period)
        actor_session.start()
        try:
            async for event in actor_session.all_events():
                if event.observation is None:
                    continue
                observation: Observation = event.observation.observation
                last_action = observation.last_player_action
                known = observation.HasField("last_player_action") or observation.last_step_demonstration
                self.hub.observation(
                    trial_id,
                    event.observation.tick_id,
                    observation.last_step_demonstration if known else None,
                    observation.rendered_frame or None,
                    reward=observation.last_step_reward,
                    model_iteration=last_action.model_iteration if last_action.HasField("model_iteration") else None,
                )
                if event.type != cogment.EventType.ACTIVE:
                    continue  # the trial is ending: no action is expected
                await pacer.wait(interrupt=self.hub.input_changed)
                if not self.hub.is_running():
                    await self.hub.wait_until_resumed()
                    pacer.restart()
                action = self.hub.take_action()  # always None in a trial without discrete actions
                actor_session.do_action(teacher_actions.create(value=action))  # None: NO-OP
        finally:
            self.hub.trial_ended(trial_id)
