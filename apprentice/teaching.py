"""The override rule: which action is performed, and whether the step is a demonstration.

The environment uses it to play the step; the sample producer uses it to label the sample. Both
call this one function, so a sample always says what really happened in the environment.

- ``override`` (human in the loop, behavioral cloning): a teacher action takes over and is a
  demonstration; a NO-OP (or no action, or an action outside the action space) approves the
  player's action, which is performed and is not a demonstration.
- ``label`` (DAgger): the player's action is always performed; the teacher's action, when it gave
  one, is the label of the step, so every labelled step is a demonstration.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import gymnasium

from apprentice.protos.data_pb2 import PlayerAction
from apprentice.spaces import GymAction, InvalidAction, gym_action, is_noop

log = logging.getLogger(__name__)


class TeacherMode(enum.StrEnum):
    OVERRIDE = "override"
    LABEL = "label"


@dataclass(frozen=True)
class Step:
    performed_action: GymAction  # what the environment plays
    label: GymAction  # what the agent should learn to do in this step
    demonstration: bool  # the label comes from the teacher
    invalid_teacher_action: bool  # the teacher sent something outside the action space (counted as NO-OP)


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

    if mode is TeacherMode.LABEL:
        if player_value is None:
            raise InvalidAction("the player did not act: in label mode its action is always performed")
        label = teacher_value if teacher_value is not None else player_value
        return Step(player_value, label, teacher_value is not None, invalid_teacher_action)

    if teacher_value is not None:
        return Step(teacher_value, teacher_value, True, invalid_teacher_action)
    if player_value is None:
        raise InvalidAction("the player did not act and the teacher did not take over: nothing to perform")
    return Step(player_value, player_value, False, invalid_teacher_action)
