"""The rule of vectorized trials (``decide_batch``), DAgger's beta coins and the environment copies, in-process."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from actors.dagger import beta_for_round
from apprentice.protos.data_pb2 import PlayerAction
from apprentice.spaces import IDLE_EPISODE, tensor_from_array
from apprentice.teaching import BetaPer, TakeOverCoins, TeacherMode, decide_batch
from environments.copies import EnvironmentCopies

BOX = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)


def action(values, take_over=()) -> PlayerAction:
    message = PlayerAction(value=tensor_from_array(np.asarray(values)))
    message.take_over.extend(take_over)
    return message


def test_override_mode_plays_the_teacher_clipped_and_keeps_its_labels_as_given():
    player = action(np.zeros((3, 2), np.float32))
    teacher = action(np.array([[2.0, -0.5], [0.1, 0.2], [-3.0, 0.0]], np.float32))
    step = decide_batch(player, teacher, BOX, 3, TeacherMode.OVERRIDE)
    assert np.allclose(step.performed_actions, [[1.0, -0.5], [0.1, 0.2], [-1.0, 0.0]])
    assert np.allclose(step.labels, [[2.0, -0.5], [0.1, 0.2], [-3.0, 0.0]])  # an expert's label is kept as it is
    assert step.demonstrations.all() and step.teacher_performed.all()


def test_label_mode_plays_the_player_except_where_the_teacher_takes_over():
    player = action(np.array([[0.5, 0.5], [5.0, 5.0], [0.0, 0.0]], np.float32))
    teacher = action(np.array([[-0.5, -0.5], [0.3, 0.3], [1.5, 1.5]], np.float32), take_over=[False, False, True])
    step = decide_batch(player, teacher, BOX, 3, TeacherMode.LABEL)
    assert np.array_equal(step.performed_actions, [[0.5, 0.5], [1.0, 1.0], [1.0, 1.0]])  # the player's clipped; the teacher's clipped
    assert np.allclose(step.labels, [[-0.5, -0.5], [0.3, 0.3], [1.5, 1.5]])
    assert step.demonstrations.all()
    assert step.teacher_performed.tolist() == [False, False, True]


def test_a_teacher_that_says_nothing_leaves_the_player_and_its_own_labels():
    player = action(np.array([2, 0], np.int64))
    step = decide_batch(player, PlayerAction(), gymnasium.spaces.Discrete(3), 2, TeacherMode.LABEL)
    assert step.performed_actions.tolist() == [2, 0] and step.labels.tolist() == [2, 0]
    assert not step.demonstrations.any()


@pytest.mark.parametrize(
    "teacher",
    [action(np.zeros((2, 2), np.float32)), action(np.zeros((3, 3), np.float32), take_over=[True] * 3),
     action(np.full((3, 2), np.nan, np.float32)), action(np.zeros((3, 2), np.float32), take_over=[True])],
    ids=["wrong batch", "wrong shape", "not finite", "take_over of the wrong length"],
)
def test_an_unusable_teacher_action_counts_as_no_op(teacher):
    player = action(np.zeros((3, 2), np.float32))
    step = decide_batch(player, teacher, BOX, 3, TeacherMode.LABEL)
    assert step.invalid_teacher_action
    assert not step.demonstrations.any() and not step.teacher_performed.any()


def test_the_coins_fall_at_betas_rate_per_step_and_stay_for_an_episode():
    coins = TakeOverCoins(0.3, BetaPer.STEP, seed=0)
    draws = np.array([coins.draw(np.arange(8)) for _ in range(2000)])
    assert abs(draws.mean() - 0.3) < 0.02

    per_episode = TakeOverCoins(0.5, BetaPer.EPISODE, seed=0)
    first = per_episode.draw(np.arange(200))
    assert per_episode.draw(np.arange(200)) == first  # the same episodes keep their coins
    assert abs(np.mean(first) - 0.5) < 0.1
    assert TakeOverCoins(0.0, BetaPer.STEP, seed=0).draw(np.arange(5)) == [False] * 5
    with pytest.raises(ValueError, match=r"beta=1\.5"):
        TakeOverCoins(1.5, BetaPer.STEP, seed=0)


def test_copies_play_whole_episodes_each_reset_on_its_own():
    """CartPole pushed right: episodes of different lengths, so the copies reset at different ticks."""
    copies = EnvironmentCopies(lambda: gymnasium.make("CartPole-v1"), num_envs=3, episodes=7, seed=40)
    observations = copies.reset()
    assert copies.episodes.tolist() == [0, 1, 2]
    expected_first = [gymnasium.make("CartPole-v1").reset(seed=40 + k)[0] for k in range(3)]
    assert np.allclose(observations, expected_first)

    lengths: dict[int, int] = {}
    started_at: dict[int, int] = {}
    tick = 0
    while not copies.done:
        playing = copies.episodes.copy()
        for number in playing[playing != IDLE_EPISODE]:
            started_at.setdefault(int(number), tick)
        result = copies.step(np.ones(3, np.int64))  # always push right: episodes end at different ticks
        tick += 1
        ended = result.terminated | result.truncated
        assert len(result.ended_observations) == ended.sum()
        for copy in np.flatnonzero(ended):
            lengths[int(playing[copy])] = tick - started_at[int(playing[copy])]
    assert sorted(lengths) == list(range(7))  # every episode played, whole
    # Episode k is the seed's episode whichever copy played it: the same length as alone.
    for number, length in lengths.items():
        env = gymnasium.make("CartPole-v1")
        env.reset(seed=40 + number)
        alone = next(step for step in range(1, 600) if any(env.step(1)[2:4]))
        assert length == alone


def test_the_beta_schedules():
    assert [beta_for_round("constant", r, 0.3, 5, 0.5) for r in (1, 4)] == [0.3, 0.3]
    assert [beta_for_round("linear", r, 0.0, 4, 0.5) for r in (1, 2, 4, 6)] == [0.75, 0.5, 0.0, 0.0]
    assert [beta_for_round("exponential", r, 0.0, 4, 0.5) for r in (1, 2, 3)] == [0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match=r"run\.beta\.schedule"):
        beta_for_round("cosine", 1, 0.0, 4, 0.5)
