"""Conversions between numpy / gymnasium and the messages of ``apprentice/protos/data.proto``.

Cogment carries observations and actions as opaque bytes, so every component agrees on these few
messages: ``Tensor`` for arrays, ``Space`` for gymnasium spaces and ``PlayerAction`` for actions.
Only ``Discrete`` (starting at 0) and ``Box`` spaces are supported: they cover the classic-control,
Box2D and MuJoCo environments the project targets.

Actions: ``ActionSpace.create``; a player always sends a value; a teacher sends either a value
(it takes over) or a NO-OP, a ``PlayerAction`` without ``value`` (it approves what the player does).
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium
import numpy as np

from apprentice.protos.data_pb2 import BoxSpace, DiscreteSpace, EnvironmentSpecs, PlayerAction, Space, Tensor

# What a gymnasium action is for the spaces above: an int for Discrete, an array for Box.
GymAction = int | np.ndarray

# ``Observation.episodes`` of a copy that has played its share of a vectorized trial and idles.
IDLE_EPISODE = -1


class InvalidAction(ValueError):
    """An action that does not belong to the environment's action space."""


# --- Arrays ------------------------------------------------------------------------------------


def tensor_from_array(array: Any) -> Tensor:
    """Pack an array (or a scalar) as raw C-order bytes plus dtype and shape: no per-element cost."""
    array = np.asarray(array)  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    if array.dtype.hasobject:
        raise TypeError(f"cannot pack an array of Python objects (dtype {array.dtype})")
    return Tensor(dtype=array.dtype.str, shape=array.shape, data=array.tobytes(order="C"))


def array_from_tensor(tensor: Tensor) -> np.ndarray:
    """Unpack a ``Tensor`` into a new, writable numpy array (torch warns on read-only buffers)."""
    if not tensor.dtype:
        raise ValueError("the Tensor has no dtype: it was never set")
    flat = np.frombuffer(tensor.data, dtype=np.dtype(tensor.dtype))
    return flat.reshape(tuple(tensor.shape)).copy()


# --- Spaces ------------------------------------------------------------------------------------


def space_from_gym(space: gymnasium.Space) -> Space:
    """Describe a gymnasium space, so actors can size their networks without importing the env."""
    if isinstance(space, gymnasium.spaces.Discrete):
        if int(space.start) != 0:
            raise NotImplementedError(f"Discrete spaces must start at 0, got start={space.start}")
        return Space(discrete=DiscreteSpace(n=int(space.n)))
    if isinstance(space, gymnasium.spaces.Box):
        return Space(box=BoxSpace(low=tensor_from_array(space.low), high=tensor_from_array(space.high)))
    raise NotImplementedError(f"unsupported gymnasium space: {space}")


def gym_from_space(space: Space) -> gymnasium.spaces.Discrete | gymnasium.spaces.Box:
    """The gymnasium space a ``Space`` message describes (inverse of ``space_from_gym``)."""
    kind = space.WhichOneof("kind")
    if kind == "discrete":
        return gymnasium.spaces.Discrete(space.discrete.n)
    if kind == "box":
        low = array_from_tensor(space.box.low)
        high = array_from_tensor(space.box.high)
        return gymnasium.spaces.Box(low=low, high=high, dtype=low.dtype)
    raise ValueError(f"the Space message has no kind set: {space}")


def parse_make_kwargs(make_kwargs_json: str) -> dict[str, Any]:
    """``EnvironmentConfig.make_kwargs_json`` as a dict; the empty string means no kwargs."""
    if not make_kwargs_json:
        return {}
    kwargs = json.loads(make_kwargs_json)
    if not isinstance(kwargs, dict):
        raise ValueError(f"make_kwargs_json must be a JSON object, got {make_kwargs_json!r}")
    return kwargs


def environment_specs(env_id: str, make_kwargs: dict[str, Any] | None = None) -> EnvironmentSpecs:
    """Build the env once to read its spaces; the result goes into every ``ActorConfig``."""
    env = gymnasium.make(env_id, **(make_kwargs or {}))
    try:
        return EnvironmentSpecs(
            env_id=env_id,
            observation_space=space_from_gym(env.observation_space),
            action_space=space_from_gym(env.action_space),
        )
    finally:
        env.close()


# --- Actions -----------------------------------------------------------------------------------


class ActionSpace:
    """The actions of one actor class: a gymnasium space, plus the NO-OP for a teacher.

    ``create(value=...)`` builds the ``PlayerAction`` an actor sends: Discrete values become a 0-d
    int64 tensor, Box values an array of the space's dtype and shape. A teacher's space
    (``with_noop=True``) has one more action: ``create()`` without a value, the NO-OP ("I approve
    what the player does"), a ``PlayerAction`` whose ``value`` is not set.
    """

    def __init__(self, gym_space: gymnasium.Space, with_noop: bool = False) -> None:
        if not isinstance(gym_space, (gymnasium.spaces.Discrete, gymnasium.spaces.Box)):
            raise NotImplementedError(f"unsupported gymnasium space: {gym_space}")
        self.gym_space = gym_space
        self.with_noop = with_noop

    @classmethod
    def from_specs(cls, specs: EnvironmentSpecs, with_noop: bool = False) -> ActionSpace:
        return cls(gym_from_space(specs.action_space), with_noop)

    def create(self, value: GymAction | None = None) -> PlayerAction:
        if value is None:
            if not self.with_noop:
                raise ValueError("only a teacher's action space has a NO-OP: give the player's action a value")
            return PlayerAction()
        if isinstance(self.gym_space, gymnasium.spaces.Discrete):
            array = np.asarray(value, dtype=np.int64).reshape(())
        else:
            array = np.asarray(value, dtype=self.gym_space.dtype).reshape(self.gym_space.shape)
        return PlayerAction(value=tensor_from_array(array))

    @staticmethod
    def serialize(action: PlayerAction) -> bytes:
        return action.SerializeToString()

    @staticmethod
    def deserialize(data: bytes) -> PlayerAction:
        return PlayerAction.FromString(data)


def is_noop(action: PlayerAction | None) -> bool:
    """True for a NO-OP; ``None`` (an actor that did not act) counts as NO-OP too."""
    return action is None or not action.HasField("value")


def action_array(action: PlayerAction | None) -> np.ndarray | None:
    """The array an action carries; ``None`` for a NO-OP. Raises ``InvalidAction`` when it cannot be read."""
    if is_noop(action):
        return None
    try:
        return array_from_tensor(action.value)
    except (TypeError, ValueError) as error:
        raise InvalidAction(f"unreadable action tensor: {error}") from error


def gym_action(action: PlayerAction, action_space: gymnasium.Space, clip: bool = False) -> GymAction | None:
    """The gymnasium action carried by ``action``; ``None`` for a NO-OP.

    Raises ``InvalidAction`` when the value is not in ``action_space`` (wrong dtype kind, shape or
    range). ``clip=True`` first clips Box values into the bounds: continuous policies routinely
    overshoot them, which is not a mistake worth failing a trial for.
    """
    array = action_array(action)
    if array is None:
        return None

    if isinstance(action_space, gymnasium.spaces.Discrete):
        if array.size != 1 or not np.issubdtype(array.dtype, np.integer):
            raise InvalidAction(f"expected one integer, got dtype {array.dtype} shape {array.shape}")
        value = int(array.reshape(()))
        if not action_space.start <= value < action_space.start + action_space.n:
            raise InvalidAction(f"{value} is not in {action_space}")
        return value

    if isinstance(action_space, gymnasium.spaces.Box):
        if array.shape != action_space.shape or not np.can_cast(array.dtype, action_space.dtype, "same_kind"):
            raise InvalidAction(
                f"expected {action_space.dtype} of shape {action_space.shape}, "
                f"got {array.dtype} of shape {array.shape}"
            )
        array = array.astype(action_space.dtype, copy=False)
        if clip:
            array = np.clip(array, action_space.low, action_space.high)
        if not action_space.contains(array):
            raise InvalidAction(f"{array} is outside {action_space}")
        return array

    raise NotImplementedError(f"unsupported gymnasium space: {action_space}")


def gym_actions(action: PlayerAction, action_space: gymnasium.Space, num_envs: int, clip: bool = False) -> np.ndarray | None:
    """The ``num_envs`` actions a vectorized trial's ``action`` carries (a leading axis); ``None`` for a NO-OP.

    Discrete: an int64 array of shape (N,), every value in the space. Box: an array of shape
    (N, *space.shape) in the space's dtype, finite; ``clip=True`` clips it into the bounds (what an
    environment performs), ``clip=False`` keeps it as it is (an expert's label may exceed them).
    Raises ``InvalidAction`` otherwise.
    """
    array = action_array(action)
    if array is None:
        return None

    if isinstance(action_space, gymnasium.spaces.Discrete):
        if array.shape != (num_envs,) or not np.issubdtype(array.dtype, np.integer):
            raise InvalidAction(f"expected {num_envs} integers, got dtype {array.dtype} shape {array.shape}")
        if ((array < action_space.start) | (array >= action_space.start + action_space.n)).any():
            raise InvalidAction(f"{array} has values outside {action_space}")
        return array.astype(np.int64, copy=False)

    if isinstance(action_space, gymnasium.spaces.Box):
        expected = (num_envs, *action_space.shape)
        if array.shape != expected or not np.can_cast(array.dtype, action_space.dtype, "same_kind"):
            raise InvalidAction(f"expected {action_space.dtype} of shape {expected}, got {array.dtype} of shape {array.shape}")
        array = array.astype(action_space.dtype, copy=False)
        if not np.isfinite(array).all():
            raise InvalidAction("the actions are not all finite")
        return np.clip(array, action_space.low, action_space.high) if clip else array

    raise NotImplementedError(f"unsupported gymnasium space: {action_space}")
