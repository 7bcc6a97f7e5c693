"""Round trips between numpy / gymnasium and the project's protobuf messages."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from apprentice.protos.data_pb2 import PlayerAction, Space, Tensor
from apprentice.spaces import (
    ActionSpace,
    InvalidAction,
    array_from_tensor,
    environment_specs,
    gym_action,
    gym_from_space,
    is_noop,
    parse_make_kwargs,
    space_from_gym,
    tensor_from_array,
)


@pytest.mark.parametrize(
    "array",
    [
        np.array([0.5, -0.07], dtype=np.float32),
        np.arange(24, dtype=np.uint8).reshape(2, 4, 3),
        np.array(2, dtype=np.int64),
        np.array([True, False]),
        np.zeros((0, 3), dtype=np.float64),
        np.arange(6, dtype=">i4").reshape(2, 3),  # non-native byte order survives too
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
    ],
)
def test_tensor_round_trip(array):
    tensor = Tensor.FromString(tensor_from_array(array).SerializeToString())
    result = array_from_tensor(tensor)
    assert result.dtype == array.dtype
    assert result.shape == array.shape
    np.testing.assert_array_equal(result, array)
    assert result.flags.writeable


def test_tensor_from_python_scalar():
    assert array_from_tensor(tensor_from_array(3)).item() == 3


def test_unset_tensor_is_an_error():
    with pytest.raises(ValueError):
        array_from_tensor(Tensor())


@pytest.mark.parametrize(
    "space",
    [
        gymnasium.spaces.Discrete(3),
        gymnasium.spaces.Box(low=-1.0, high=1.0, shape=(3,), dtype=np.float32),
        gymnasium.spaces.Box(low=np.array([-1.2, -0.07]), high=np.array([0.6, 0.07]), dtype=np.float64),
        gymnasium.spaces.Box(low=-np.inf, high=np.inf, shape=(2, 2), dtype=np.float32),
        gymnasium.spaces.Box(low=0, high=255, shape=(4, 4, 3), dtype=np.uint8),
    ],
)
def test_space_round_trip(space):
    message = Space.FromString(space_from_gym(space).SerializeToString())
    assert gym_from_space(message) == space


def test_unsupported_spaces():
    with pytest.raises(NotImplementedError):
        space_from_gym(gymnasium.spaces.Discrete(3, start=1))
    with pytest.raises(NotImplementedError):
        space_from_gym(gymnasium.spaces.MultiBinary(4))
    with pytest.raises(ValueError):
        gym_from_space(Space())


def test_environment_specs_discrete_actions():
    specs = environment_specs("MountainCar-v0")
    assert specs.env_id == "MountainCar-v0"
    assert gym_from_space(specs.action_space) == gymnasium.spaces.Discrete(3)
    observation_space = gym_from_space(specs.observation_space)
    assert observation_space.shape == (2,)
    assert observation_space.dtype == np.float32


def test_environment_specs_box_actions():
    specs = environment_specs("Pendulum-v1", {"g": 9.81})
    action_space = gym_from_space(specs.action_space)
    assert isinstance(action_space, gymnasium.spaces.Box)
    assert action_space.shape == (1,)
    np.testing.assert_array_equal(action_space.high, [2.0])


def test_parse_make_kwargs():
    assert parse_make_kwargs("") == {}
    assert parse_make_kwargs('{"max_episode_steps": 50}') == {"max_episode_steps": 50}
    with pytest.raises(ValueError):
        parse_make_kwargs("[1, 2]")


# --- Actions -------------------------------------------------------------------------------------

DISCRETE = gymnasium.spaces.Discrete(3)
BOX = gymnasium.spaces.Box(low=np.array([-1, 0], np.float32), high=np.array([1, 2], np.float32), dtype=np.float32)


def wire(action: PlayerAction) -> PlayerAction:
    """What the receiver sees after Cogment carried the bytes."""
    return ActionSpace.deserialize(ActionSpace.serialize(action))


def player_action(value, space) -> PlayerAction:
    return ActionSpace(space).create(value=value)


@pytest.mark.parametrize("value", [0, 1, 2, np.int64(2)])
def test_discrete_action_round_trip(value):
    action = wire(player_action(value, DISCRETE))
    assert not is_noop(action)
    result = gym_action(action, DISCRETE)
    assert result == int(value) and isinstance(result, int)
    assert DISCRETE.contains(result)


def test_box_action_round_trip():
    value = np.array([0.25, 1.5], dtype=np.float32)
    result = gym_action(wire(player_action(value, BOX)), BOX)
    np.testing.assert_array_equal(result, value)
    assert result.dtype == np.float32
    assert BOX.contains(result)


def test_box_action_from_a_list_is_cast_to_the_space_dtype():
    result = gym_action(wire(player_action([0.5, 0.5], BOX)), BOX)
    assert result.dtype == np.float32


def test_noop():
    action = wire(ActionSpace(DISCRETE, with_noop=True).create())
    assert is_noop(action)
    assert is_noop(None)
    assert action.SerializeToString() == b""
    assert gym_action(action, DISCRETE) is None
    assert gym_action(action, BOX) is None


@pytest.mark.parametrize(
    "action",
    [
        player_action(3, gymnasium.spaces.Discrete(5)),  # out of range for Discrete(3)
        PlayerAction(value=tensor_from_array(np.array(-1))),
        PlayerAction(value=tensor_from_array(np.array(1.0))),  # not an integer
        PlayerAction(value=tensor_from_array(np.array([1, 2]))),  # not one value
        PlayerAction(value=Tensor(dtype="<i8", shape=[], data=b"\x01")),  # truncated bytes
    ],
)
def test_invalid_discrete_actions(action):
    with pytest.raises(InvalidAction):
        gym_action(wire(action), DISCRETE)


def test_invalid_box_actions():
    with pytest.raises(InvalidAction):  # wrong shape
        gym_action(PlayerAction(value=tensor_from_array(np.zeros(3, dtype=np.float32))), BOX)
    with pytest.raises(InvalidAction):  # out of bounds
        gym_action(player_action([5.0, 0.0], BOX), BOX)
    with pytest.raises(InvalidAction):  # NaN cannot be clipped into the bounds
        gym_action(player_action([np.nan, 0.0], BOX), BOX, clip=True)


def test_box_clip():
    result = gym_action(player_action([5.0, -3.0], BOX), BOX, clip=True)
    np.testing.assert_array_equal(result, [1.0, 0.0])


def test_only_a_teachers_space_has_a_noop():
    with pytest.raises(ValueError, match="NO-OP"):
        ActionSpace(DISCRETE).create()
    assert not is_noop(ActionSpace(DISCRETE, with_noop=True).create(value=2))
