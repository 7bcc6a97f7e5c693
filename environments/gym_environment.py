"""A Cogment environment that runs any gymnasium environment, chosen per trial.

The trial's ``EnvironmentConfig`` says which env (``env_id``), how to build it
(``make_kwargs_json``), how to seed it and whether to render frames. One service can therefore run
MountainCar in one trial and a MuJoCo task in the next.

Actors, by class (see ``apprentice.cog_settings``):

* exactly one ``player``: its action is performed unless the teacher takes over; it alone
  receives the reward, as a Cogment reward (it is the one that learns);
* at most one ``teacher``: a value takes over for this tick, a NO-OP (or an action outside the
  action space, or no action at all) leaves the player in control.

Every actor receives the same ``Observation``, which also says what the last step did (the
player's action, a takeover, the reward): the teacher's page shows the score from it, so the
teacher needs no reward message, one message less per tick on the trial's critical path. The
trial ends when gymnasium says terminated or truncated, or when the orchestrator asks
(``max_steps``, terminate request).

With ``EnvironmentConfig.num_envs`` N >= 1 the trial is vectorized (``run_vectorized_trial``): it
steps N copies per tick (``environments.copies``), every array carries a leading axis of N, and
the trial ends once its ``episodes`` have all been played.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import cogment
import gymnasium
import numpy as np
from cogment.environment import EnvironmentSession
from cogment.session import ActorInfo

from apprentice.cog_settings import PLAYER_ACTOR_CLASS, TEACHER_ACTOR_CLASS
from apprentice.protos.data_pb2 import EnvironmentConfig, Observation
from apprentice.spaces import IDLE_EPISODE, parse_make_kwargs, tensor_from_array
from apprentice.teaching import TeacherMode, decide, decide_batch
from environments.copies import EnvironmentCopies

# classic-control renders through pygame, which needs a display unless told otherwise.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

log = logging.getLogger(__name__)


# Rendered frames are JPEG by default: browsers decode it natively and it is small and fast. A
# 600x400 MountainCar frame is 720 kB raw, ~9 kB as JPEG (~1 ms to encode); bench/web_latency.py
# measures JPEG, WebP and PNG end to end (docs/benchmarks.md).
FRAME_FORMATS = {"jpeg": ("JPEG", {"quality": 75}), "webp": ("WEBP", {"quality": 75, "method": 0}), "png": ("PNG", {"compress_level": 1})}


@dataclass(frozen=True)
class Roles:
    """Where the player and the (optional) teacher sit in the trial's actor list."""

    player_index: int
    teacher_index: int | None


@dataclass
class TrialStats:
    """Per-trial counters, logged when the trial ends."""

    steps: int = 0
    teacher_takeovers: int = 0
    invalid_teacher_actions: int = 0


def find_roles(actors: list[ActorInfo]) -> Roles:
    """Check the trial has one player and at most one teacher, and locate them."""
    players = [i for i, a in enumerate(actors) if a.actor_class_name == PLAYER_ACTOR_CLASS]
    teachers = [i for i, a in enumerate(actors) if a.actor_class_name == TEACHER_ACTOR_CLASS]
    if len(players) != 1 or len(teachers) > 1:
        raise ValueError(
            f"a gym trial needs exactly one '{PLAYER_ACTOR_CLASS}' and at most one '{TEACHER_ACTOR_CLASS}', "
            f"got {[(a.actor_name, a.actor_class_name) for a in actors]}"
        )
    (player_index,) = players
    return Roles(player_index, teachers[0] if teachers else None)


def make_env(config: EnvironmentConfig) -> gymnasium.Env:
    """``gymnasium.make`` with the trial's kwargs, rendering to arrays when frames are requested."""
    if not config.env_id:
        raise ValueError("EnvironmentConfig.env_id is empty: the trial must say which gymnasium env to run")
    kwargs = parse_make_kwargs(config.make_kwargs_json)
    if config.render:
        kwargs["render_mode"] = "rgb_array"
    return gymnasium.make(config.env_id, **kwargs)


def frame_format(config: EnvironmentConfig) -> str:
    name = config.frame_format or "jpeg"
    if name not in FRAME_FORMATS:
        raise ValueError(f"EnvironmentConfig.frame_format is {name!r}: use one of {', '.join(FRAME_FORMATS)}")
    return name


def encode_frame(frame: np.ndarray, format_name: str = "jpeg") -> bytes:
    """An RGB ``uint8`` frame of shape (H, W, 3) as image bytes."""
    from PIL import Image  # only needed when rendering

    pil_format, options = FRAME_FORMATS[format_name]
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def make_observation(gym_observation: object, env: gymnasium.Env, frames: str | None) -> Observation:
    """The observation, with the rendered frame encoded as ``frames`` (None: not rendering)."""
    observation = Observation(value=tensor_from_array(gym_observation))
    if frames is not None:
        observation.rendered_frame = encode_frame(env.render(), frames)
    return observation


class GymEnvironment:
    """The environment implementation served by ``apprentice.components`` (one per process)."""

    def __init__(self, cfg: dict, model_registry=None) -> None:
        pass

    async def impl(self, environment_session: EnvironmentSession) -> None:
        await run_trial(environment_session)


async def run_trial(environment_session: EnvironmentSession) -> None:
    """Run one trial: reset, then one ``env.step`` per action set until the episode or trial ends."""
    config: EnvironmentConfig = environment_session.config or EnvironmentConfig()
    if config.num_envs:
        await run_vectorized_trial(environment_session, config)
        return
    roles = find_roles(environment_session.get_active_actors())
    stats = TrialStats()
    mode = TeacherMode(config.teacher_mode or TeacherMode.OVERRIDE.value)
    frames = frame_format(config) if config.render else None  # a bad format fails the trial at once
    env = make_env(config)
    try:
        gym_observation, _info = env.reset(seed=config.seed)
        environment_session.start([("*", make_observation(gym_observation, env, frames))])

        ended = False
        async for event in environment_session.all_events():
            if not event.actions or ended:
                continue  # messages, or the FINAL event
            teacher_action = event.actions[roles.teacher_index].action if roles.teacher_index is not None else None
            step = decide(event.actions[roles.player_index].action, teacher_action, env.action_space, mode)
            stats.teacher_takeovers += step.demonstration
            stats.invalid_teacher_actions += step.invalid_teacher_action
            gym_observation, reward, terminated, truncated, _info = env.step(step.performed_action)
            stats.steps += 1

            observation = make_observation(gym_observation, env, frames)
            player_action = event.actions[roles.player_index].action
            if player_action is not None:
                observation.last_player_action.CopyFrom(player_action)
            observation.last_step_demonstration = step.demonstration
            observation.last_step_reward = float(reward)
            observations = [("*", observation)]
            environment_session.add_reward(value=float(reward), confidence=1.0, to=[f"{PLAYER_ACTOR_CLASS}.*"])
            if terminated or truncated or event.type == cogment.EventType.ENDING:
                observation.final = True
                environment_session.end(observations)
                ended = True
            else:
                environment_session.produce_observations(observations)
    finally:
        env.close()

    log.info(
        "Trial %s (%s): %d steps, teacher took over %d times, %d invalid teacher actions",
        environment_session.get_trial_id(),
        config.env_id,
        stats.steps,
        stats.teacher_takeovers,
        stats.invalid_teacher_actions,
    )


async def run_vectorized_trial(environment_session: EnvironmentSession, config: EnvironmentConfig) -> None:
    """N copies per tick until the trial's episodes are all played (``environments.copies``)."""
    if config.render:
        raise ValueError("EnvironmentConfig.render: a vectorized trial (num_envs >= 1) does not render; the teacher's page uses num_envs=0")
    roles = find_roles(environment_session.get_active_actors())
    mode = TeacherMode(config.teacher_mode or TeacherMode.OVERRIDE.value)
    copies = EnvironmentCopies(lambda: make_env(config), config.num_envs, config.episodes, config.seed)
    stats = TrialStats()
    try:
        environment_session.start([("*", Observation(value=tensor_from_array(copies.reset()), episodes=copies.episodes.tolist()))])
        ended = False
        async for event in environment_session.all_events():
            if not event.actions or ended:
                continue
            teacher_action = event.actions[roles.teacher_index].action if roles.teacher_index is not None else None
            step = decide_batch(event.actions[roles.player_index].action, teacher_action, copies.action_space, config.num_envs, mode)
            playing = copies.episodes != IDLE_EPISODE  # idle copies take no step
            stats.invalid_teacher_actions += step.invalid_teacher_action
            stats.teacher_takeovers += int(step.teacher_performed[playing].sum())
            stats.steps += int(playing.sum())
            result = copies.step(step.performed_actions)
            observation = Observation(
                value=tensor_from_array(result.observations),
                episodes=copies.episodes.tolist(),
                last_rewards=result.rewards.tolist(),
                last_terminated=result.terminated.tolist(),
                last_truncated=result.truncated.tolist(),
                ended_observations=tensor_from_array(result.ended_observations),
            )
            environment_session.add_reward(value=float(result.rewards.sum()), confidence=1.0, to=[f"{PLAYER_ACTOR_CLASS}.*"])
            if copies.done or event.type == cogment.EventType.ENDING:
                observation.final = True
                environment_session.end([("*", observation)])
                ended = True
            else:
                environment_session.produce_observations([("*", observation)])
    finally:
        copies.close()
    log.info(
        "Trial %s (%s, %d copies): %d steps, %d episodes, teacher's action performed %d times, %d invalid teacher actions",
        environment_session.get_trial_id(), config.env_id, config.num_envs, stats.steps, copies.next_episode,
        stats.teacher_takeovers, stats.invalid_teacher_actions,
    )
