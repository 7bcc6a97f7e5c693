"""Roll-outs through Cogment trials: N copies of an environment per trial, several trials at once.

Behavioral cloning and DAgger both gather whole episodes this way: the learner in the player's
seat, an expert (or the scripted teacher) in the teacher's seat, playing (``override``) or labelling
(``label``). Every tick goes to the trial datastore first; ``apprentice.episodes`` turns the stored
ticks back into episodes, with what was performed and what was labelled decided by the same rule
the environment applied.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import cogment
from tqdm import tqdm

from apprentice.datasets import Episode
from apprentice.episodes import EpisodeAssembler
from apprentice.help import HelpSettings
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig, EnvironmentSpecs
from apprentice.run import RunSession, SampleProducerSession
from apprentice.spaces import gym_from_space
from apprentice.teaching import BetaPer, TeacherMode


@dataclass(frozen=True)
class TeacherSeat:
    """Who sits in the teacher's seat of the roll-outs, and how its actions are used."""

    implementation: str  # an actor implementation of the components, e.g. "expert" or "scripted_teacher"
    mode: TeacherMode
    expert_path: str = ""
    beta: float = 0.0  # label mode: the probability that the teacher's action is performed instead
    beta_per: BetaPer = BetaPer.STEP


@dataclass(frozen=True)
class RolloutPlan:
    """``episodes`` whole episodes, at most ``envs_per_trial`` copies per trial, ``parallel_trials`` at a time.

    Episode k of the plan is reset with seed ``seed + k``, however the episodes are split into trials.
    """

    episodes: int
    envs_per_trial: int
    parallel_trials: int
    seed: int

    def trials(self) -> list[tuple[int, int]]:
        """``(first episode, episode count)`` of each trial: the episodes spread evenly over the parallel trials."""
        per_trial = math.ceil(self.episodes / max(1, min(self.parallel_trials, self.episodes)))
        return [(first, min(per_trial, self.episodes - first)) for first in range(0, self.episodes, per_trial)]


@dataclass
class RolloutResult:
    episodes: list[Episode] = field(default_factory=list)
    unfinished_episodes: int = 0  # episodes a trial stopped midway (dropped)
    teacher_performed_steps: int = 0  # steps in which the teacher's action was played
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return sum(len(episode.actions) for episode in self.episodes)


@dataclass(frozen=True)
class _TrialEnd:
    unfinished_episodes: int
    teacher_performed_steps: int


async def collect_episodes(
    run_session: RunSession,
    name: str,
    env_id: str,
    make_kwargs: dict,
    specs: EnvironmentSpecs,
    plan: RolloutPlan,
    teacher: TeacherSeat | None,
    player_implementation: str,
    model_iteration: int = -1,
    help_settings: HelpSettings | None = None,
) -> RolloutResult:
    """Play ``plan`` through trials named ``{run_id}-{name}-{k}`` and return their whole episodes, in episode order.

    ``help_settings`` tell the player when to ask for help (``apprentice.help``; None: it never asks).
    """
    mode = teacher.mode if teacher else TeacherMode.OVERRIDE
    action_space = gym_from_space(specs.action_space)
    layout = plan.trials()
    trials = [
        (f"{run_session.run_id}-{name}-{index}", trial_parameters(run_session, env_id, make_kwargs, specs, plan, first, count, teacher,
                                                                  player_implementation, model_iteration, help_settings))
        for index, (first, count) in enumerate(layout)
    ]

    async def sample_producer(session: SampleProducerSession) -> None:
        first, count = layout[session.trial_index]
        assembler = EpisodeAssembler(action_space, min(plan.envs_per_trial, count), mode, plan.seed + first, session.trial_id)
        async for sample in session.all_trial_samples():
            player = sample.actors_data["player"]
            teacher_data = sample.actors_data.get("teacher")
            if player.observation is None:
                continue
            for episode in assembler.add_tick(player.observation, player.action, teacher_data.action if teacher_data else None):
                session.produce_sample(episode)
        session.produce_sample(_TrialEnd(assembler.unfinished_episodes, assembler.teacher_performed_steps))

    result = RolloutResult()
    started = time.perf_counter()
    with tqdm(total=plan.episodes, desc=f"{name} episodes", unit="ep", leave=False) as progress:
        async for _step, _trial_id, _index, sample in run_session.start_and_await_trials(trials, sample_producer, plan.parallel_trials):
            if isinstance(sample, _TrialEnd):
                result.unfinished_episodes += sample.unfinished_episodes
                result.teacher_performed_steps += sample.teacher_performed_steps
            else:
                result.episodes.append(sample)
                progress.update()
    result.seconds = time.perf_counter() - started
    result.episodes.sort(key=lambda episode: episode.seed)
    return result


def trial_parameters(
    run_session: RunSession,
    env_id: str,
    make_kwargs: dict,
    specs: EnvironmentSpecs,
    plan: RolloutPlan,
    first_episode: int,
    episodes: int,
    teacher: TeacherSeat | None,
    player_implementation: str,
    model_iteration: int,
    help_settings: HelpSettings | None,
) -> cogment.TrialParameters:
    seed = plan.seed + first_episode
    player_config = ActorConfig(environment_specs=specs, seed=seed, model_id=run_session.run_id, model_iteration=model_iteration,
                                help=(help_settings or HelpSettings()).message())
    actors = [run_session.actor_parameters("player", "player", player_implementation, player_config)]
    if teacher is not None:
        teacher_config = ActorConfig(
            environment_specs=specs, seed=seed, teacher_mode=teacher.mode.value, beta=teacher.beta,
            beta_per=teacher.beta_per.value, expert_path=teacher.expert_path,
        )
        actors.append(run_session.actor_parameters("teacher", "teacher", teacher.implementation, teacher_config))
    environment_config = EnvironmentConfig(
        env_id=env_id, seed=seed, make_kwargs_json=json.dumps(make_kwargs), teacher_mode=(teacher.mode if teacher else TeacherMode.OVERRIDE).value,
        num_envs=min(plan.envs_per_trial, episodes), episodes=episodes,
    )
    return run_session.trial_parameters(environment_config, actors)
