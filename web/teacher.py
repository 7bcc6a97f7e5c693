"""The ``teacher`` actor that the person in the browser plays, in the web server's process.

For each observation it shows the frame in the tabs, waits for the pace (a person needs the
trial to go at a human speed: ``steps_per_second``), waits while the teacher has paused, then
acts with the key the teacher holds: that action takes over, the approve key is an explicit
approval (``PlayerAction.approve``, performed like a NO-OP), and no key (or no teacher tab at all)
is NO-OP, which approves the agent's action implicitly.

When the agent asks for help (``help_request``), the trial goes at ``help_steps_per_second`` until
the teacher answers, the agent stops asking, or ``help_timeout`` seconds pass.

A change of the teacher's input ends the wait at once: a key pressed just after a step would
otherwise wait up to a whole step period (33 ms at 30 steps/s) before it acts, and a person feels
that lag. The next step then comes a full period later, so the pace holds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re

import cogment
import gymnasium

from apprentice.cog_settings import TEACHER_ACTOR_CLASS
from apprentice.protos.data_pb2 import ActorConfig, Observation
from apprentice.spaces import ActionSpace, gym_from_space
from web.help_request import HelpRequest
from web.hub import Hub
from web.keymaps import KeyMap, key_map_for

log = logging.getLogger(__name__)

TRIAL_INDEX = re.compile(r"-trial-(\d+)$")


def trial_number(trial_id: str) -> int | None:
    """``<run_id>-trial-<index>`` is trial number index + 1 on the page (people count from 1)."""
    match = TRIAL_INDEX.search(trial_id)
    return int(match[1]) + 1 if match else None


class Pacer:
    """Spaces each action ``period`` seconds after the previous one (the period may change from one
    step to the next: the help pace); after a pause or a stall it does not rush."""

    def __init__(self) -> None:
        self._last: float | None = None  # when the previous step was due (loop clock)

    async def wait(self, period: float, interrupt: asyncio.Event, not_after: float = math.inf) -> None:
        """Until the next step is due (at ``not_after`` at the latest), or until ``interrupt`` is set
        (then the pace restarts from now)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        # The first step, or one after a pause or a stall, is due now: no rush to catch up.
        behind = self._last is None or self._last + period < now - period
        due = now if behind else min(self._last + period, max(not_after, now))
        delay = due - now
        if delay > 0:
            try:
                await asyncio.wait_for(interrupt.wait(), delay)
                due = loop.time()
            except TimeoutError:
                pass
        self._last = due

    def restart(self) -> None:
        self._last = None


class WebTeacher:
    """One instance plays the teacher of every trial the watcher joins."""

    def __init__(self, hub: Hub, key_maps: dict[str, KeyMap]) -> None:
        self.hub = hub  # it holds the paces and the help timeout, which the page shows too
        self.period = period_of(hub.steps_per_second)
        self.help_period = period_of(hub.help_steps_per_second)
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
        pacer = Pacer()
        request = HelpRequest(self.hub.help_timeout)
        loop = asyncio.get_running_loop()
        acted = False  # this teacher took over or approved at the previous step
        actor_session.start()
        try:
            async for event in actor_session.all_events():
                if event.observation is None:
                    continue
                observation: Observation = event.observation.observation
                last_action = observation.last_player_action
                known = observation.HasField("last_player_action") or observation.last_step_demonstration
                # The first moment anyone can know that the agent asked: the observation after its step.
                asked = bool(last_action.ask_for_help) and last_action.ask_for_help[0]
                request.observe(asked, acted, loop.time())
                self.hub.observation(
                    trial_id,
                    event.observation.tick_id,
                    observation.last_step_demonstration if known else None,
                    observation.rendered_frame or None,
                    reward=observation.last_step_reward,
                    model_iteration=last_action.model_iteration if last_action.HasField("model_iteration") else None,
                    asked=asked,
                    teacher_acted=acted,
                    request=request.state,
                )
                if event.type != cogment.EventType.ACTIVE:
                    continue  # the trial is ending: no action is expected
                if request.waiting():
                    await pacer.wait(self.help_period, self.hub.input_changed, not_after=request.deadline)
                else:
                    await pacer.wait(self.period, self.hub.input_changed)
                if not self.hub.is_running():
                    paused_at = loop.time()
                    await self.hub.wait_until_resumed()
                    request.postpone(loop.time() - paused_at)
                    pacer.restart()
                action, approving = self.hub.take_action()  # the action is always None in a trial without discrete actions
                acted = action is not None or approving
                if not acted and request.expire(loop.time()):
                    self.hub.request_timed_out(trial_id)  # the agent's action plays, as a NO-OP would
                teacher_action = teacher_actions.create(value=action)  # None: NO-OP
                teacher_action.approve = approving
                actor_session.do_action(teacher_action)
        finally:
            self.hub.trial_ended(trial_id)


def period_of(steps_per_second: float) -> float:
    """Seconds between two steps; 0 (as fast as the trial goes) for a pace of 0."""
    return 1.0 / steps_per_second if steps_per_second > 0 else 0.0
