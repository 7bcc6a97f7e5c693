"""Whole episodes out of a vectorized trial's samples, as ``apprentice.datasets.Episode``.

The trial datastore keeps one sample per tick: the observation of the N copies and the actions
the player and the teacher answered it with. What a step did (reward, end of episode, the
episode's last observation) arrives with the next tick's observation, so an ``EpisodeAssembler``
keeps each copy's episode open until that news comes. What was performed and what the label is
come from ``apprentice.teaching.decide_batch``, the rule the environment applied to the same
actions. Episodes the trial did not finish (it was ended early) are dropped: episodes are whole.
"""

from __future__ import annotations

import gymnasium
import numpy as np

from apprentice.datasets import Episode
from apprentice.protos.data_pb2 import Observation, PlayerAction
from apprentice.spaces import IDLE_EPISODE, array_from_tensor, is_noop
from apprentice.teaching import TeacherMode, decide_batch

FIRST_CAPACITY = 64  # steps per copy the buffers hold at first; they double as episodes grow


class _CopyBuffers:
    """Every copy's open episode, one row per copy: whole ticks are written with one numpy
    operation per field, never one Python step per copy (a tick of 64 copies costs what one does).

    Row ``c`` holds ``lengths[c]`` steps of copy ``c``'s open episode (and one observation more,
    the one its next action answers); ``numbers[c]`` is that episode's number, IDLE_EPISODE without one.
    """

    def __init__(self, num_envs: int) -> None:
        self.numbers = np.full(num_envs, IDLE_EPISODE, dtype=np.int64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.fields: dict[str, np.ndarray] = {}  # name: (num_envs, capacity, *row shape)

    def write(self, name: str, copies: np.ndarray, positions: np.ndarray, rows: np.ndarray) -> None:
        """``rows[i]`` becomes step ``positions[i]`` of copy ``copies[i]``'s ``name``."""
        buffer = self.fields.get(name)
        needed = int(positions.max(initial=-1)) + 1
        if buffer is None or needed > buffer.shape[1]:
            capacity = max(FIRST_CAPACITY, needed, 2 * (buffer.shape[1] if buffer is not None else 0))
            grown = np.zeros((len(self.numbers), capacity, *rows.shape[1:]), dtype=rows.dtype if buffer is None else buffer.dtype)
            if buffer is not None:
                grown[:, : buffer.shape[1]] = buffer
            self.fields[name] = buffer = grown
        buffer[copies, positions] = rows

    def take(self, name: str, copy: int, length: int) -> np.ndarray:
        return self.fields[name][copy, :length].copy()


class EpisodeAssembler:
    """Feed it every tick of one trial, in order; it returns the episodes each tick completes."""

    def __init__(self, action_space: gymnasium.Space, num_envs: int, mode: TeacherMode, seed: int, trial_id: str) -> None:
        self.action_space = action_space
        self.num_envs = num_envs
        self.mode = mode
        self.seed = seed
        self.trial_id = trial_id
        self._open = _CopyBuffers(num_envs)
        self._acted = np.zeros(0, dtype=np.int64)  # the copies that took a step at the previous tick, in copy order
        self.teacher_performed_steps = 0  # steps the teacher's action was played in (beta mixing, override mode)

    def add_tick(self, observation: Observation, player_action: PlayerAction | None, teacher_action: PlayerAction | None) -> list[Episode]:
        finished = self._close_previous_steps(observation)
        open_ = self._open
        episodes = np.asarray(observation.episodes, dtype=np.int64)
        playing = np.flatnonzero(episodes != IDLE_EPISODE)
        starting = playing[open_.numbers[playing] == IDLE_EPISODE]
        open_.numbers[starting] = episodes[starting]
        positions = open_.lengths[playing]
        open_.write("observations", playing, positions, array_from_tensor(observation.value)[playing])
        if is_noop(player_action) and is_noop(teacher_action):
            self._acted = playing[:0]  # the final observation: nothing was played after it
            return finished
        step = decide_batch(player_action, teacher_action, self.action_space, self.num_envs, self.mode)
        open_.write("actions", playing, positions, step.performed_actions[playing])
        open_.write("labels", playing, positions, step.labels[playing])
        open_.write("demonstrations", playing, positions, step.demonstrations[playing])
        open_.write("asked", playing, positions, step.asked[playing])
        open_.write("answered", playing, positions, step.answered[playing])
        open_.write("uncertainty", playing, positions, step.uncertainty[playing])
        self.teacher_performed_steps += int(np.count_nonzero(step.teacher_performed[playing]))
        open_.lengths[playing] += 1
        self._acted = playing
        return finished

    def _close_previous_steps(self, observation: Observation) -> list[Episode]:
        """The previous tick's steps get their rewards; the episodes they ended are complete."""
        acted = self._acted
        if not len(acted):
            return []
        open_ = self._open
        steps = open_.lengths[acted] - 1
        open_.write("rewards", acted, steps, np.asarray(observation.last_rewards, dtype=np.float32)[acted])
        terminated = np.asarray(observation.last_terminated, dtype=bool)[acted]
        truncated = np.asarray(observation.last_truncated, dtype=bool)[acted]
        ended = np.flatnonzero(terminated | truncated)
        if not len(ended):
            return []
        # The ended episodes' last observations, one row per ended copy, in copy order.
        open_.write("observations", acted[ended], steps[ended] + 1, array_from_tensor(observation.ended_observations))
        return [self._complete(int(acted[index]), bool(terminated[index]), bool(truncated[index])) for index in ended]

    def _complete(self, copy: int, terminated: bool, truncated: bool) -> Episode:
        open_ = self._open
        length, number = int(open_.lengths[copy]), int(open_.numbers[copy])
        open_.numbers[copy], open_.lengths[copy] = IDLE_EPISODE, 0
        return Episode(
            observations=open_.take("observations", copy, length + 1),
            actions=open_.take("actions", copy, length),
            labels=open_.take("labels", copy, length),
            demonstrations=open_.take("demonstrations", copy, length),
            rewards=open_.take("rewards", copy, length),
            asked=open_.take("asked", copy, length),
            answered=open_.take("answered", copy, length),
            uncertainty=open_.take("uncertainty", copy, length),
            terminated=terminated,
            truncated=truncated,
            seed=self.seed + number,
            trial_id=self.trial_id,
            env_copy=copy,
        )

    @property
    def unfinished_episodes(self) -> int:
        """Episodes still open: at the trial's end, those it stopped midway (dropped)."""
        return int(np.count_nonzero(self._open.numbers != IDLE_EPISODE))
