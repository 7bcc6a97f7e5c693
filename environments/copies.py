"""N copies of one gymnasium environment that play a trial's episodes between them.

A vectorized trial steps every copy once per tick, so the runtime's cost per tick is shared by N
environment steps. Episode ``k`` of the trial is reset with ``seed + k`` whichever copy plays it,
so a trial's episodes do not depend on N. A copy whose episode ends starts the next unplayed
episode at once (its own reset, independent of the others); when none is left it idles (episode
-1, its last observation repeated) until every copy is done and the trial ends. Episodes are
therefore whole: the trial never stops one midway, unless the orchestrator ends the trial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium
import numpy as np

from apprentice.spaces import IDLE_EPISODE


@dataclass(frozen=True)
class CopiesStep:
    """What one tick did, per copy (idle copies: reward 0, neither terminated nor truncated)."""

    observations: np.ndarray  # (N, *obs_shape): each copy's observation now (a new episode's first, if its episode ended)
    rewards: np.ndarray  # (N,) float
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    ended_observations: np.ndarray  # (copies whose episode ended, *obs_shape): their episodes' last observations


class EnvironmentCopies:
    def __init__(self, make_env: Callable[[], gymnasium.Env], num_envs: int, episodes: int, seed: int) -> None:
        if num_envs < 1 or episodes < 1:
            raise ValueError(f"a vectorized trial needs num_envs >= 1 and episodes >= 1, got {num_envs} and {episodes}")
        self.envs = [make_env() for _ in range(num_envs)]
        self.action_space = self.envs[0].action_space
        self.seed = seed
        self.total_episodes = episodes
        self.next_episode = 0
        self.episodes = np.full(num_envs, IDLE_EPISODE, dtype=np.int32)
        self.observations: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """Start the first episodes (one per copy, while there are episodes to play)."""
        first = [self._start_episode(copy) for copy in range(len(self.envs))]
        shape = next(observation for observation in first if observation is not None).shape
        self.observations = np.stack([obs if obs is not None else np.zeros(shape) for obs in first])
        return self.observations.copy()

    def step(self, actions: np.ndarray) -> CopiesStep:
        """Step every playing copy with its row of ``actions``; ended episodes make way for the next ones."""
        count = len(self.envs)
        rewards = np.zeros(count, dtype=np.float32)
        terminated = np.zeros(count, dtype=bool)
        truncated = np.zeros(count, dtype=bool)
        ended = []
        for copy in np.flatnonzero(self.episodes != IDLE_EPISODE):
            observation, reward, terminated[copy], truncated[copy], _info = self.envs[copy].step(actions[copy])
            rewards[copy] = reward
            if terminated[copy] or truncated[copy]:
                ended.append(observation)
                observation = self._start_episode(copy)
            if observation is not None:
                self.observations[copy] = observation
        ended_observations = np.stack(ended) if ended else np.zeros((0, *self.observations.shape[1:]), self.observations.dtype)
        return CopiesStep(self.observations.copy(), rewards, terminated, truncated, ended_observations)

    @property
    def done(self) -> bool:
        """Every episode of the trial has been played."""
        return bool((self.episodes == IDLE_EPISODE).all())

    def _start_episode(self, copy: int) -> np.ndarray | None:
        if self.next_episode >= self.total_episodes:
            self.episodes[copy] = IDLE_EPISODE
            return None
        observation, _info = self.envs[copy].reset(seed=self.seed + self.next_episode)
        self.episodes[copy] = self.next_episode
        self.next_episode += 1
        return observation

    def close(self) -> None:
        for env in self.envs:
            env.close()
