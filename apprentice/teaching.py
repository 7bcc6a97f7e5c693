"""The override rule: which action is performed, and whether the step is a demonstration.

The environment uses it to play the step; the sample producer uses it to label the sample. Both
call this one function, so a sample always says what really happened in the environment.

- ``override`` (human in the loop, behavioral cloning): a teacher action takes over and is a
  demonstration; a NO-OP (or no action, or an action outside the action space) approves the
  player's action, which is performed and is not a demonstration.
- ``label`` (DAgger): the player's action is performed; the teacher's action, when it gave one, is
  the label of the step, so every labelled step is a demonstration. In a vectorized trial the
  teacher may also say in which copies its own action is performed instead (DAgger's beta
  mixing, ``PlayerAction.take_over``; ``TakeOverCoins`` draws them).

A player that may ask for help (``apprentice.help``) says in its action where it asks. In ``label``
mode its request gates the label: the teacher's action labels only the steps the player asked
about (and those the teacher performed), the others keep the player's own action and are not
demonstrations; that is how an expert is queried only where the learner asks (the expert, a
program, answers every step of the tick at once, before anyone knows where the player asks; its
other answers are not used). In ``override`` mode a request changes nothing in the rule: a teacher
can always take over. Every step says whether help was asked, whether the teacher answered (took
over, labelled, or explicitly approved with ``PlayerAction.approve``) and the player's uncertainty.

``decide`` is the rule for one environment (the teacher's page), ``decide_batch`` for the N copies
of a vectorized trial, where a teacher's labels are kept as it gave them (an expert's actions may
exceed the action space's bounds) and what is performed is clipped into the bounds.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import gymnasium
import numpy as np

from apprentice.protos.data_pb2 import PlayerAction
from apprentice.spaces import GymAction, InvalidAction, gym_action, gym_actions, is_noop

log = logging.getLogger(__name__)


class TeacherMode(enum.StrEnum):
    OVERRIDE = "override"
    LABEL = "label"


class BetaPer(enum.StrEnum):
    """How often DAgger's beta coin is drawn: for every step, or once per episode."""

    STEP = "step"
    EPISODE = "episode"


@dataclass(frozen=True)
class Step:
    performed_action: GymAction  # what the environment plays
    label: GymAction  # what the agent should learn to do in this step
    demonstration: bool  # the label comes from the teacher
    invalid_teacher_action: bool  # the teacher sent something outside the action space (counted as NO-OP)
    approved: bool = False  # the teacher explicitly approved the player's action (not a mere NO-OP)
    asked: bool = False  # the player asked for help at this step
    answered: bool = False  # it asked, and the teacher took over, labelled or approved
    uncertainty: float = 0.0  # the player's uncertainty (0 when it does not measure one)


def help_request(player_action: PlayerAction | None, num_envs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Where the player asks for help and its uncertainty, (N,) each; None when it never asks."""
    if player_action is None or not player_action.ask_for_help:
        return None
    if len(player_action.ask_for_help) != num_envs or len(player_action.uncertainty) != num_envs:
        raise InvalidAction(f"the player's help request has {len(player_action.ask_for_help)} entries and "
                            f"{len(player_action.uncertainty)} uncertainties for {num_envs} copies")
    return np.asarray(player_action.ask_for_help, dtype=bool), np.asarray(player_action.uncertainty, dtype=np.float32)


def decide(
    player_action: PlayerAction | None,
    teacher_action: PlayerAction | None,
    action_space: gymnasium.Space,
    mode: TeacherMode = TeacherMode.OVERRIDE,
) -> Step:
    """Apply the rule to one step. Raises InvalidAction when the player's action is unusable."""
    teacher_value = None
    invalid_teacher_action = False
    if not is_noop(teacher_action):
        try:
            teacher_value = gym_action(teacher_action, action_space)
        except InvalidAction as error:
            # A teacher (possibly a person in a browser) sending garbage must not end the trial.
            invalid_teacher_action = True
            log.debug("Teacher action ignored (counted as NO-OP): %s", error)

    player_value = None
    if not is_noop(player_action):
        # Continuous policies overshoot their bounds routinely: clip rather than fail the trial.
        player_value = gym_action(player_action, action_space, clip=True)

    request = help_request(player_action, 1)
    asked, uncertainty = (bool(request[0][0]), float(request[1][0])) if request is not None else (False, 0.0)
    approved = teacher_value is None and teacher_action is not None and teacher_action.approve

    if mode is TeacherMode.LABEL:
        if player_value is None:
            raise InvalidAction("the player did not act: in label mode its action is always performed")
        labelled = teacher_value is not None and (request is None or asked)
        label = teacher_value if labelled else player_value
        return Step(player_value, label, labelled, invalid_teacher_action, approved, asked, asked and (labelled or approved), uncertainty)

    if teacher_value is not None:
        return Step(teacher_value, teacher_value, True, invalid_teacher_action, False, asked, asked, uncertainty)
    if player_value is None:
        raise InvalidAction("the player did not act and the teacher did not take over: nothing to perform")
    return Step(player_value, player_value, False, invalid_teacher_action, approved, asked, asked and approved, uncertainty)


@dataclass(frozen=True)
class BatchStep:
    """The rule applied to one tick of a vectorized trial: one row per copy of the environment."""

    performed_actions: np.ndarray  # (N, ...) what the environments play, within the action space
    labels: np.ndarray  # (N, ...) what the agent should learn to do
    demonstrations: np.ndarray  # (N,) bool: the label is the teacher's
    teacher_performed: np.ndarray  # (N,) bool: the teacher's action was played
    invalid_teacher_action: bool  # the teacher sent something unusable (counted as NO-OP)
    asked: np.ndarray  # (N,) bool: the player asked for help
    answered: np.ndarray  # (N,) bool: it asked and the teacher's action is the label
    uncertainty: np.ndarray  # (N,) float32: the player's uncertainty (zeros when it does not measure one)


def decide_batch(
    player_action: PlayerAction | None,
    teacher_action: PlayerAction | None,
    action_space: gymnasium.Space,
    num_envs: int,
    mode: TeacherMode = TeacherMode.OVERRIDE,
) -> BatchStep:
    """Apply the rule to the N copies of one tick. Raises InvalidAction when the player's actions are unusable."""
    labels = performed = None
    invalid_teacher_action = False
    take_over = np.zeros(num_envs, dtype=bool)
    if not is_noop(teacher_action):
        try:
            labels = gym_actions(teacher_action, action_space, num_envs)
            if mode is TeacherMode.OVERRIDE:
                take_over[:] = True
            elif teacher_action.take_over:
                if len(teacher_action.take_over) != num_envs:
                    raise InvalidAction(f"take_over has {len(teacher_action.take_over)} entries for {num_envs} copies")
                take_over = np.asarray(teacher_action.take_over, dtype=bool)
        except InvalidAction as error:
            labels, invalid_teacher_action = None, True
            take_over[:] = False
            log.debug("Teacher action ignored (counted as NO-OP): %s", error)

    if labels is not None and take_over.all():
        performed = clipped(labels, action_space)
    else:
        player_values = gym_actions(player_action, action_space, num_envs, clip=True)
        if player_values is None:
            raise InvalidAction("the player did not act and the teacher did not take over: nothing to perform")
        performed = player_values
        if labels is not None and take_over.any():
            performed = np.where(take_over.reshape(-1, *[1] * (performed.ndim - 1)), clipped(labels, action_space), performed)
    request = help_request(player_action, num_envs)
    asked, uncertainty = request if request is not None else (np.zeros(num_envs, dtype=bool), np.zeros(num_envs, dtype=np.float32))
    demonstrations = np.full(num_envs, labels is not None)
    if labels is not None and mode is TeacherMode.LABEL and request is not None:
        demonstrations = asked | take_over  # the teacher labels where the player asked (and where it played)
        labels = np.where(demonstrations.reshape(-1, *[1] * (performed.ndim - 1)), labels, performed)
    return BatchStep(performed, labels if labels is not None else performed, demonstrations, take_over, invalid_teacher_action,
                     asked, asked & demonstrations, uncertainty)


def clipped(actions: np.ndarray, action_space: gymnasium.Space) -> np.ndarray:
    """Actions as an environment may perform them: Box values clipped into the bounds."""
    if isinstance(action_space, gymnasium.spaces.Box):
        return np.clip(actions, action_space.low, action_space.high)
    return actions


class TakeOverCoins:
    """DAgger's beta coins, drawn by a teacher in label mode: in which copies its action is performed.

    ``per=STEP`` draws a coin for every copy at every step; ``per=EPISODE`` draws one when a copy
    starts an episode and keeps it for the episode (the whole episode is the teacher's or the player's).
    """

    def __init__(self, beta: float, per: BetaPer, seed: int) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta={beta}: it is a probability, give one in [0, 1]")
        self.beta = beta
        self.per = per
        self._rng = np.random.default_rng(seed)
        self._episode_coins: dict[int, bool] = {}

    def draw(self, episodes: np.ndarray) -> list[bool]:
        """One coin per copy; ``episodes`` is the episode each copy's observation belongs to."""
        if self.beta == 0.0:
            return [False] * len(episodes)
        if self.per is BetaPer.STEP:
            return (self._rng.random(len(episodes)) < self.beta).tolist()
        live = set(episodes.tolist())
        self._episode_coins = {episode: coin for episode, coin in self._episode_coins.items() if episode in live}
        for episode in sorted(live - self._episode_coins.keys()):  # sorted: the same draws every run
            self._episode_coins[episode] = bool(self._rng.random() < self.beta)
        return [self._episode_coins[episode] for episode in episodes.tolist()]
