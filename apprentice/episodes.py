"""Whole episodes out of a vectorized trial's samples, as ``apprentice.datasets.Episode``.

The trial datastore keeps one sample per tick: the observation of the N copies and the actions
the player and the teacher answered it with. What a step did (reward, end of episode, the
episode's last observation) arrives with the next tick's observation, so an ``EpisodeAssembler``
keeps each copy's episode open until that news comes. What was performed and what the label is
come from ``apprentice.teaching.decide_batch``, the rule the environment applied to the same
actions. Episodes the trial did not finish (it was ended early) are dropped: episodes are whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium
import numpy as np

from apprentice.datasets import Episode
from apprentice.protos.data_pb2 import Observation, PlayerAction
from apprentice.spaces import array_from_tensor, is_noop
from apprentice.teaching import TeacherMode, decide_batch

IDLE = -1  # the episode number of a copy that has played its share (environments.copies)


@dataclass
class _OpenEpisode:
    number: int
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    demonstrations: list[bool] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)


class EpisodeAssembler:
    """Feed it every tick of one trial, in order; it returns the episodes each tick completes."""

    def __init__(self, action_space: gymnasium.Space, num_envs: int, mode: TeacherMode, seed: int, trial_id: str) -> None:
        self.action_space = action_space
        self.num_envs = num_envs
        self.mode = mode
        self.seed = seed
        self.trial_id = trial_id
        self.open: dict[int, _OpenEpisode] = {}  # by copy
        self.acted_copies: list[int] = []  # the copies that took a step at the previous tick
        self.teacher_performed_steps = 0  # steps the teacher's action was played in (beta mixing, override mode)

    def add_tick(self, observation: Observation, player_action: PlayerAction | None, teacher_action: PlayerAction | None) -> list[Episode]:
        finished = self._close_previous_steps(observation)
        values = array_from_tensor(observation.value)
        playing = [copy for copy, number in enumerate(observation.episodes) if number != IDLE]
        for copy in playing:
            episode = self.open.setdefault(copy, _OpenEpisode(observation.episodes[copy]))
            episode.observations.append(values[copy])
        if is_noop(player_action) and is_noop(teacher_action):
            self.acted_copies = []  # the final observation: nothing was played after it
            return finished
        step = decide_batch(player_action, teacher_action, self.action_space, self.num_envs, self.mode)
        for copy in playing:
            episode = self.open[copy]
            episode.actions.append(step.performed_actions[copy])
            episode.labels.append(step.labels[copy])
            episode.demonstrations.append(bool(step.demonstrations[copy]))
            self.teacher_performed_steps += bool(step.teacher_performed[copy])
        self.acted_copies = playing
        return finished

    def _close_previous_steps(self, observation: Observation) -> list[Episode]:
        """The previous tick's steps get their rewards; the episodes they ended are complete."""
        finished = []
        ended_observations = iter(array_from_tensor(observation.ended_observations)) if self.acted_copies else iter(())
        for copy in self.acted_copies:
            episode = self.open[copy]
            episode.rewards.append(observation.last_rewards[copy])
            terminated, truncated = observation.last_terminated[copy], observation.last_truncated[copy]
            if terminated or truncated:
                episode.observations.append(next(ended_observations))
                finished.append(self._complete(copy, terminated, truncated))
        return finished

    def _complete(self, copy: int, terminated: bool, truncated: bool) -> Episode:
        episode = self.open.pop(copy)
        return Episode(
            observations=np.stack(episode.observations),
            actions=np.stack(episode.actions),
            labels=np.stack(episode.labels),
            demonstrations=np.asarray(episode.demonstrations, dtype=bool),
            rewards=np.asarray(episode.rewards, dtype=np.float32),
            terminated=bool(terminated),
            truncated=bool(truncated),
            seed=self.seed + episode.number,
            trial_id=self.trial_id,
            env_copy=copy,
        )

    @property
    def unfinished_episodes(self) -> int:
        """Episodes still open: at the trial's end, those it stopped midway (dropped)."""
        return len(self.open)
