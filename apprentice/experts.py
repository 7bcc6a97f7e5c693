"""Expert policies for imitation learning: load them safely, check they fit a task, let them act.

The experts are the pickled MuJoCo policies of the Berkeley deep RL course, homework 1 (format and
measured returns in ``../shared/experts/README.md``). A pickle can run any code when it is loaded, so
an expert file is never given to ``pickle.load``: :class:`RestrictedUnpickler` rebuilds only numpy
arrays, dtypes and plain builtin data, and refuses any other global before it is called, so a file
that tries to run code gets an :class:`ExpertFileError` and runs nothing. The policy then acts in
numpy (:meth:`ExpertPolicy.act`), cheaply enough to label every step of every trial.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

# Where users (who have internet) can download the experts; ../shared/experts/README.md lists them.
DOWNLOAD_ADDRESSES = (
    "https://github.com/berkeleydeeprlcourse/homework_fall2023/raw/main/hw1/cs285/policies/experts/<Name>.pkl"
    " (Name: Ant, HalfCheetah, Hopper, Walker2d)",
    "https://github.com/berkeleydeeprlcourse/homework/raw/master/hw1/experts/Reacher-v2.pkl",
)

# The documented layout, quoted in the errors about a file that does not follow it.
EXPERT_FORMAT = (
    "{'nonlin_type': 'tanh'|'lrelu', 'GaussianPolicy': {'obsnorm': {'Standardizer': {'mean_1_D', 'meansq_1_D', ...}}, "
    "'hidden': {'FeedforwardNet': {'layer_0': {'AffineLayer': {'W', 'b'}}, ...}}, 'out': {'AffineLayer': {'W', 'b'}}, ...}}"
)


class ExpertFileError(ValueError):
    """An expert file that is missing, unreadable, unsafe or not an expert policy."""


# --- The restricted unpickler ------------------------------------------------------------------


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What ``_codecs.encode`` does in pickles of bytes at protocols 0-2, limited to that use."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refuses _codecs.encode with encoding {encoding!r}: pickled bytes use only latin1")
    return text.encode("latin1")


# The callables numpy names in its own pickles of arrays and scalars. They are taken from numpy itself,
# so they are right whichever numpy is installed (1.x calls the module numpy.core, 2.x numpy._core).
_NUMPY_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # protocols 0-4: _reconstruct(ndarray, shape, dtype) + state
_NUMPY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5: _frombuffer(buffer, dtype, shape, order)
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # numpy scalars: scalar(dtype, bytes)

_PLAIN_BUILTINS = (bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset, slice, range)

# (module, name) in the pickle -> what it rebuilds. Nothing outside this table is ever imported.
ADMITTED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    **{(f"{core}.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.multiarray", "scalar"): _NUMPY_SCALAR for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.numeric", "_frombuffer"): _NUMPY_FROMBUFFER for core in ("numpy.core", "numpy._core")},
    **{("builtins", kind.__name__): kind for kind in _PLAIN_BUILTINS},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only what :data:`ADMITTED_GLOBALS` lists and refuses every other global."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        # latin1 turns the byte strings of Python 2 pickles back into the bytes numpy arrays were made of.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # the name of builtins in Python 2, and in pickles at protocols 0-2
            module = "builtins"
        admitted = ADMITTED_GLOBALS.get((module, name))
        if admitted is None:
            raise ExpertFileError(
                f"expert file {self._source}: the loader refuses to load global {module}.{name}: an expert file holds only "
                "numpy arrays and builtins; this one may try to run code, so nothing in it was run. "
                "Use an expert from a trusted source (see apprentice.experts.DOWNLOAD_ADDRESSES)."
            )
        return admitted

    def persistent_load(self, pid: Any) -> Any:
        raise ExpertFileError(f"expert file {self._source} refers to an outside object ({pid!r}): an expert file is self-contained")


# --- The policy --------------------------------------------------------------------------------


def _leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.01 * x)  # slope 0.01 below zero, as the README's format says


NONLINEARITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"tanh": np.tanh, "lrelu": _leaky_relu}


@dataclass(frozen=True, eq=False)
class ExpertPolicy:
    """The deterministic action of a Gaussian MLP expert: normalize, hidden layers, affine output.

    Arrays are float64 (as stored) and read-only. ``layers`` holds the hidden layers in order, then
    the output layer, each as ``(W, b)`` with ``W`` of shape ``(inputs, outputs)`` and ``b`` of shape
    ``(outputs,)``; ``nonlinearity`` (a key of :data:`NONLINEARITIES`) follows every hidden layer.
    """

    source: str  # where the expert was loaded from, for messages
    obs_mean: np.ndarray  # (observation_size,)
    obs_std: np.ndarray  # (observation_size,), already including the + 1e-6
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    nonlinearity: str

    @property
    def observation_size(self) -> int:
        return int(self.obs_mean.shape[0])

    @property
    def action_size(self) -> int:
        return int(self.layers[-1][1].shape[0])

    def act(self, observations: np.ndarray) -> np.ndarray:
        """Actions (B, action_size) float32 for observations (B, observation_size); (action_size,) for one."""
        x = np.asarray(observations, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[-1] != self.observation_size:
            raise ValueError(
                f"expert {self.source} acts on observations of shape ({self.observation_size},) or "
                f"(batch, {self.observation_size}), got {x.shape}"
            )
        x = (x - self.obs_mean) / self.obs_std
        nonlinearity = NONLINEARITIES[self.nonlinearity]
        for weights, bias in self.layers[:-1]:
            x = nonlinearity(x @ weights + bias)
        weights, bias = self.layers[-1]
        return (x @ weights + bias).astype(np.float32)


# --- Loading -----------------------------------------------------------------------------------


def _missing_file_message(path: Path) -> str:
    addresses = " or ".join(DOWNLOAD_ADDRESSES)
    return (
        f"expert file {path} does not exist: expert.path should name a pickled expert policy (the Berkeley deep RL course "
        f"homework-1 format, e.g. ../shared/experts/Hopper.pkl); experts can be downloaded from {addresses}"
    )


def load_expert(path: str | Path) -> ExpertPolicy:
    """The expert policy stored at ``path``, rebuilt by :class:`RestrictedUnpickler` and checked against the format."""
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise ExpertFileError(_missing_file_message(path))
    if path.is_dir():
        found = ", ".join(sorted(child.name for child in path.glob("*.pkl"))) or "none"
        raise ExpertFileError(f"expert file {path} is a directory: expert.path should name the .pkl file itself (.pkl files there: {found})")
    try:
        with path.open("rb") as file:
            tree = RestrictedUnpickler(file, path).load()
    except ExpertFileError:
        raise
    except OSError as error:
        raise ExpertFileError(f"expert file {path} cannot be read ({error.strerror or error}): check its permissions") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, MemoryError) as error:
        raise ExpertFileError(f"expert file {path} is not a readable pickle ({type(error).__name__}: {error}): is it an expert .pkl?") from None
    return _policy_from_tree(tree, path)


class _Tree:
    """Walks the nested dicts of an expert file; every missing key or wrong value names its place."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def error(self, trail: tuple[str, ...], problem: str) -> ExpertFileError:
        where = " -> ".join(repr(key) for key in trail) or "the top level"
        return ExpertFileError(f"expert file {self.source} is not an expert policy: {where} {problem}; the format is {EXPERT_FORMAT}")

    def child(self, node: Any, trail: tuple[str, ...], key: str) -> Any:
        if not isinstance(node, dict):
            raise self.error(trail, f"should be a dict, got {type(node).__name__}")
        if key not in node:
            raise self.error((*trail, key), "is missing")
        return node[key]

    def array(self, node: Any, trail: tuple[str, ...], key: str, ndim: int) -> np.ndarray:
        """A float array of ``ndim`` dimensions once leading axes of 1 are dropped (b and the norm vectors have one)."""
        value = self.child(node, trail, key)
        trail = (*trail, key)
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise self.error(trail, f"should be a float numpy array, got {getattr(value, 'dtype', type(value).__name__)}")
        while value.ndim > ndim and value.shape[0] == 1:
            value = value[0]
        if value.ndim != ndim or value.size == 0:
            raise self.error(trail, f"should have {ndim} non-empty dimension(s), got shape {value.shape}")
        if not np.isfinite(value).all():
            raise self.error(trail, "holds NaN or infinite values")
        value = np.array(value, dtype=np.float64)  # a copy of its own, so that read-only means unchanged
        value.setflags(write=False)
        return value

    def affine(self, node: Any, trail: tuple[str, ...], inputs: int) -> tuple[np.ndarray, np.ndarray]:
        layer = self.child(node, trail, "AffineLayer")
        trail = (*trail, "AffineLayer")
        weights, bias = self.array(layer, trail, "W", ndim=2), self.array(layer, trail, "b", ndim=1)
        if weights.shape[0] != inputs or bias.shape != (weights.shape[1],):
            raise self.error(trail, f"should map {inputs} inputs, got W of shape {weights.shape} and b of shape {bias.shape}")
        return weights, bias


def _policy_from_tree(tree: Any, source: Path) -> ExpertPolicy:
    walk = _Tree(source)
    nonlinearity = walk.child(tree, (), "nonlin_type")
    if nonlinearity not in NONLINEARITIES:
        raise walk.error(("nonlin_type",), f"is {nonlinearity!r}, an unknown nonlinearity (known: {', '.join(NONLINEARITIES)})")
    policy = walk.child(tree, (), "GaussianPolicy")
    trail = ("GaussianPolicy",)
    standardizer = walk.child(walk.child(policy, trail, "obsnorm"), (*trail, "obsnorm"), "Standardizer")
    norm_trail = (*trail, "obsnorm", "Standardizer")
    mean = walk.array(standardizer, norm_trail, "mean_1_D", ndim=1)
    mean_square = walk.array(standardizer, norm_trail, "meansq_1_D", ndim=1)
    if mean_square.shape != mean.shape:
        raise walk.error((*norm_trail, "meansq_1_D"), f"should have the shape of mean_1_D {mean.shape}, got {mean_square.shape}")
    std = np.sqrt(np.maximum(0.0, mean_square - np.square(mean))) + 1e-6
    std.setflags(write=False)

    hidden_trail = (*trail, "hidden", "FeedforwardNet")
    hidden = walk.child(walk.child(policy, trail, "hidden"), (*trail, "hidden"), "FeedforwardNet")
    if not isinstance(hidden, dict):
        raise walk.error(hidden_trail, f"should be a dict of layers, got {type(hidden).__name__}")
    layers = []
    inputs = mean.shape[0]
    for name in sorted(hidden):  # "in sorted name order", as the format says
        weights, bias = walk.affine(hidden[name], (*hidden_trail, str(name)), inputs)
        layers.append((weights, bias))
        inputs = weights.shape[1]
    layers.append(walk.affine(walk.child(policy, trail, "out"), (*trail, "out"), inputs))
    return ExpertPolicy(source=str(source), obs_mean=mean, obs_std=std, layers=tuple(layers), nonlinearity=nonlinearity)


# --- Fitting a task ----------------------------------------------------------------------------


def check_expert_fits(expert: ExpertPolicy, observation_space: gymnasium.Space, action_space: gymnasium.Space, env_id: str) -> None:
    """Raise :class:`ExpertFileError` unless ``expert`` reads ``env_id``'s observations and writes its actions."""
    fix = f"set expert.path to the expert trained on {env_id}, or run.env_id to the task this expert was trained on"
    if not isinstance(observation_space, gymnasium.spaces.Box) or observation_space.shape != (expert.observation_size,):
        gives = f"{observation_space.shape[0]} observations" if _is_flat_box(observation_space) else f"observations in {observation_space}"
        hint = " (Ant-v4 gives 111 only when made with use_contact_forces=True)" if expert.observation_size == 111 else ""
        raise ExpertFileError(f"expert {expert.source} expects {expert.observation_size} observations but {env_id} gives {gives}{hint}: {fix}")
    if not isinstance(action_space, gymnasium.spaces.Box) or action_space.shape != (expert.action_size,):
        takes = f"{action_space.shape[0]} actions" if _is_flat_box(action_space) else f"actions in {action_space}"
        raise ExpertFileError(f"expert {expert.source} gives {expert.action_size} continuous actions but {env_id} takes {takes}: {fix}")


def _is_flat_box(space: gymnasium.Space) -> bool:
    return isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1
