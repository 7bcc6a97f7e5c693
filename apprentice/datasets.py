"""A run's episodes in memory, and the two files they leave and enter by: ``.npz`` and Minari.

An :class:`Episode` keeps what imitation learning needs of one played episode: every observation
(the final one included), what the environment performed, what the learner should have done (the
label) and whether that label came from the teacher. A :class:`Dataset` is the episodes of one
environment. Training reads them through :meth:`Dataset.transitions`.

The ``.npz`` file (``save_npz``/``load_npz``) is one ``numpy.savez`` archive, read without pickles.
S is the number of steps of all episodes, E the number of episodes; the steps of episode ``e``
are the ``episode_lengths[e]`` rows after those of the episodes before it.

==================== ============ =========================================================
key                  shape        content
==================== ============ =========================================================
format_version       ()           int, ``NPZ_FORMAT_VERSION``
env_id               ()           str, the gymnasium id (``Hopper-v4``)
make_kwargs_json     ()           str, JSON object of the ``gymnasium.make`` keyword arguments
observations         (S, *obs)    the observation each step was taken in
final_observations   (E, *obs)    the observation each episode ended in
actions              (S, *act)    what the environment performed
labels               (S, *act)    what the learner should do (the teacher's action, else ``actions``)
demonstrations       (S,)         bool, the label came from the teacher
rewards              (S,)         float64
episode_lengths      (E,)         int64, steps per episode (each >= 1)
terminations         (E,)         bool, the episode ended in a terminal state
truncations          (E,)         bool, the episode ended on a time limit
seeds                (E,)         int64, reset seed of the episode; -1 when unknown
env_copies           (E,)         int64, which copy of the environment in its trial
trial_ids            (E,)         str, the trial the episode was played in ("" when unknown)
asked                (S,)         bool, the learner asked for help (apprentice.help)
answered             (S,)         bool, it asked and the label is the teacher's
uncertainty          (S,)         float32, the learner's uncertainty (0 when it measured none)
==================== ============ =========================================================

The last three keys are optional when reading (files written before them load with nothing asked).

The Minari dataset (``save_minari``/``load_minari``) is written in Minari's default HDF5 format
under Minari's root (the ``MINARI_DATASETS_PATH`` environment variable, else ~/.minari/datasets),
one Minari episode per episode: observations (T + 1 rows), actions = what was performed, rewards,
per-step terminations/truncations (only the last step of a terminated/truncated episode True),
and per-observation ``infos`` (T + 1 rows, as Minari's infos are): ``label`` (row t labels
``observations[t]``), ``demonstration``, ``asked``, ``answered`` and ``uncertainty``; row T, the final observation, has no step and is
padded with zeros and False. The episode metadata keeps ``seed``, ``trial_id`` and ``env_copy``.
A Minari dataset without those infos (a third party's expert data) loads with labels = actions,
every step a demonstration.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage.datasets_root_dir import get_dataset_path  # Minari's root rule, as load_dataset applies it

NPZ_FORMAT_VERSION = 1
NPZ_SUFFIX = ".npz"
UNKNOWN_SEED = -1  # how the .npz file writes an episode whose reset seed is not known
MINARI_ALGORITHM_NAME = "apprentice"
# The per-observation infos of a Minari episode that keep what Minari has no field for.
LABEL_INFO = "label"
DEMONSTRATION_INFO = "demonstration"

ACCEPTED_SOURCES = (
    "a dataset is either a path to an Apprentice .npz file (PATH.npz, as `python -m apprentice.export RUN_ID --format npz` writes) "
    "or a Minari dataset id (namespace/name-v0) under Minari's root "
    "(the MINARI_DATASETS_PATH environment variable, else ~/.minari/datasets)"
)


@dataclass(eq=False)  # arrays do not compare to one bool
class Episode:
    """One whole episode: T steps, T + 1 observations."""

    observations: np.ndarray  # (T + 1, *obs_shape): every observation, the final one included
    actions: np.ndarray  # (T, *act_shape): what the environment performed
    labels: np.ndarray  # (T, *act_shape): what the learner should do (the teacher's action when it gave one, else the performed action)
    demonstrations: np.ndarray  # (T,) bool: the label came from the teacher
    rewards: np.ndarray  # (T,) float64
    terminated: bool  # the episode ended in a terminal state
    truncated: bool  # it ended on a time limit
    seed: int | None  # the reset seed of the episode (None when unknown: third-party data)
    trial_id: str = ""  # where it was played ("" when unknown)
    env_copy: int = 0  # which copy of the environment in its trial
    # The learner's help requests (apprentice.help), (T,) each; None: it never asked (all False, zero uncertainty).
    asked: np.ndarray | None = None  # bool: the learner asked for help at this step
    answered: np.ndarray | None = None  # bool: it asked and the teacher's action is the label
    uncertainty: np.ndarray | None = None  # float32: the learner's uncertainty

    def __post_init__(self) -> None:
        self.observations = np.asarray(self.observations)
        self.actions = np.asarray(self.actions)
        self.labels = np.asarray(self.labels)
        self.demonstrations = np.asarray(self.demonstrations)
        self.rewards = np.asarray(self.rewards)
        steps = len(self.actions) if self.actions.ndim > 0 else 0
        if steps < 1:
            raise ValueError(f"Episode.actions has shape {self.actions.shape}: an episode has at least one step")
        if self.observations.ndim == 0 or len(self.observations) != steps + 1:
            raise ValueError(
                f"Episode.observations has shape {self.observations.shape} but an episode of {steps} actions has "
                f"{steps + 1} observations (every observation, the final one included)"
            )
        if self.labels.shape != self.actions.shape:
            raise ValueError(f"Episode.labels has shape {self.labels.shape}, Episode.actions {self.actions.shape}: they must agree")
        if self.demonstrations.shape != (steps,) or self.demonstrations.dtype != np.bool_:
            raise ValueError(
                f"Episode.demonstrations is {self.demonstrations.dtype} of shape {self.demonstrations.shape}; it must be bool of shape ({steps},)"
            )
        if self.rewards.shape != (steps,) or not np.issubdtype(self.rewards.dtype, np.number):
            raise ValueError(f"Episode.rewards is {self.rewards.dtype} of shape {self.rewards.shape}; it must be numbers of shape ({steps},)")
        self.rewards = self.rewards.astype(np.float64, copy=False)
        self.terminated = bool(self.terminated)
        self.truncated = bool(self.truncated)
        if self.seed is not None:
            if int(self.seed) < 0:
                raise ValueError(f"Episode.seed is {self.seed}: reset seeds are >= 0 (None when unknown)")
            self.seed = int(self.seed)
        self.trial_id = str(self.trial_id)
        self.env_copy = int(self.env_copy)
        self.asked = _step_flags(self.asked, steps, "asked")
        self.answered = _step_flags(self.answered, steps, "answered")
        self.uncertainty = np.zeros(steps, dtype=np.float32) if self.uncertainty is None else np.asarray(self.uncertainty, dtype=np.float32)
        if self.uncertainty.shape != (steps,):
            raise ValueError(f"Episode.uncertainty has shape {self.uncertainty.shape}; it must be ({steps},)")

    @property
    def num_steps(self) -> int:
        return len(self.actions)


def _step_flags(flags: np.ndarray | None, steps: int, name: str) -> np.ndarray:
    flags = np.zeros(steps, dtype=np.bool_) if flags is None else np.asarray(flags)
    if flags.shape != (steps,) or flags.dtype != np.bool_:
        raise ValueError(f"Episode.{name} is {flags.dtype} of shape {flags.shape}; it must be bool of shape ({steps},)")
    return flags


class Transitions(NamedTuple):
    """The steps of all episodes, concatenated in episode order: what training reads."""

    observations: np.ndarray  # (S, *obs_shape): the observation each step was taken in
    labels: np.ndarray  # (S, *act_shape)
    demonstrations: np.ndarray  # (S,) bool


@dataclass(eq=False)
class Dataset:
    """The episodes of one environment, all with the same observation and action shapes and dtypes."""

    env_id: str
    make_kwargs: dict[str, Any] = field(default_factory=dict)  # gymnasium.make keyword arguments (e.g. {"use_contact_forces": True} for Ant-v4)
    episodes: list[Episode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise a ValueError naming the first episode whose shapes or dtypes differ from the first episode's."""
        if not self.episodes:
            return
        first = self.episodes[0]
        for index, episode in enumerate(self.episodes[1:], start=1):
            for name in ("observations", "actions", "labels"):
                expected, found = getattr(first, name), getattr(episode, name)
                if found.shape[1:] != expected.shape[1:] or found.dtype != expected.dtype:
                    raise ValueError(
                        f"episode {index} has {name} {found.dtype} of shape {found.shape[1:]} per row, episode 0 {expected.dtype} of "
                        f"shape {expected.shape[1:]}: every episode of a dataset has the same shapes and dtypes"
                    )

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return sum(episode.num_steps for episode in self.episodes)

    @property
    def num_demonstrations(self) -> int:
        """The steps whose label came from the teacher."""
        return sum(int(episode.demonstrations.sum()) for episode in self.episodes)

    def transitions(self) -> Transitions:
        self._require_episodes("take transitions from")
        return Transitions(
            observations=np.concatenate([episode.observations[:-1] for episode in self.episodes]),
            labels=np.concatenate([episode.labels for episode in self.episodes]),
            demonstrations=np.concatenate([episode.demonstrations for episode in self.episodes]),
        )

    def _require_episodes(self, doing: str) -> None:
        self.check()
        if not self.episodes:
            raise ValueError(f"the dataset of {self.env_id} has no episodes: nothing to {doing}")


# --- .npz -----------------------------------------------------------------------------------

_STEP_KEYS = ("observations", "actions", "labels", "demonstrations", "rewards")
_EPISODE_KEYS = ("final_observations", "episode_lengths", "terminations", "truncations", "seeds", "env_copies", "trial_ids")
_NPZ_KEYS = ("format_version", "env_id", "make_kwargs_json", *_STEP_KEYS, *_EPISODE_KEYS)
_HELP_KEYS = ("asked", "answered", "uncertainty")  # optional step keys


def save_npz(dataset: Dataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` to ``path`` (which ends in .npz) with the keys of the module docstring; returns the path.

    The file is written beside its destination then renamed, so an interrupted export leaves no half file.
    """
    path = Path(path)
    if path.suffix != NPZ_SUFFIX:
        raise ValueError(f"{path}: an Apprentice dataset file ends in {NPZ_SUFFIX}")
    dataset._require_episodes("save")
    episodes = dataset.episodes
    arrays = {
        "format_version": np.array(NPZ_FORMAT_VERSION, dtype=np.int64),
        "env_id": np.array(dataset.env_id),
        "make_kwargs_json": np.array(_make_kwargs_json(dataset)),
        "observations": np.concatenate([episode.observations[:-1] for episode in episodes]),
        "actions": np.concatenate([episode.actions for episode in episodes]),
        "labels": np.concatenate([episode.labels for episode in episodes]),
        "demonstrations": np.concatenate([episode.demonstrations for episode in episodes]),
        "rewards": np.concatenate([episode.rewards for episode in episodes]),
        "final_observations": np.stack([episode.observations[-1] for episode in episodes]),
        "episode_lengths": np.array([episode.num_steps for episode in episodes], dtype=np.int64),
        "terminations": np.array([episode.terminated for episode in episodes], dtype=np.bool_),
        "truncations": np.array([episode.truncated for episode in episodes], dtype=np.bool_),
        "seeds": np.array([UNKNOWN_SEED if episode.seed is None else episode.seed for episode in episodes], dtype=np.int64),
        "env_copies": np.array([episode.env_copy for episode in episodes], dtype=np.int64),
        "trial_ids": np.array([episode.trial_id for episode in episodes], dtype=np.str_),
        **{key: np.concatenate([getattr(episode, key) for episode in episodes]) for key in _HELP_KEYS},
    }
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        np.savez(file, **arrays)
    os.replace(partial, path)
    return path


def load_npz(path: str | os.PathLike) -> Dataset:
    """Read a file ``save_npz`` wrote. Pickled content is refused, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # ValueError: a pickle, refused
        raise ValueError(f"{path} is not an .npz archive: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a lone .npy array
        raise ValueError(f"{path} is one .npy array, not an .npz archive of the keys {', '.join(_NPZ_KEYS)}")
    with archive:
        missing = [key for key in _NPZ_KEYS if key not in archive.files]
        if missing:
            raise ValueError(
                f"{path}: key {missing[0]!r} is missing (missing: {', '.join(missing)}); an Apprentice dataset file has the keys "
                f"{', '.join(_NPZ_KEYS)} (see apprentice/datasets.py)"
            )
        arrays = {key: _read_key(archive, path, key) for key in (*_NPZ_KEYS, *_HELP_KEYS) if key in archive.files}
    return _dataset_from_arrays(path, arrays)


def _read_key(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # numpy refuses object arrays when allow_pickle=False
        raise ValueError(f"{path}: key {key!r} cannot be read ({error}); Apprentice dataset files hold plain arrays, never pickles") from error


def _dataset_from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Dataset:
    version = arrays["format_version"]
    if version.shape != () or version.item() != NPZ_FORMAT_VERSION:
        raise ValueError(f"{path}: key 'format_version' is {version.tolist()!r}; this Apprentice reads format_version {NPZ_FORMAT_VERSION}")
    env_id = _scalar_string(path, arrays, "env_id")
    try:
        make_kwargs = json.loads(_scalar_string(path, arrays, "make_kwargs_json"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: key 'make_kwargs_json' is not JSON: {error}") from error
    if not isinstance(make_kwargs, dict):
        raise ValueError(f"{path}: key 'make_kwargs_json' holds {type(make_kwargs).__name__}, not a JSON object")

    lengths = arrays["episode_lengths"]
    if lengths.ndim != 1 or len(lengths) == 0 or not np.issubdtype(lengths.dtype, np.integer) or (lengths < 1).any():
        raise ValueError(f"{path}: key 'episode_lengths' is {lengths.dtype} of shape {lengths.shape}; it must be integers >= 1, one per episode")
    num_episodes, num_steps = len(lengths), int(lengths.sum())
    step_keys = [key for key in (*_STEP_KEYS, *_HELP_KEYS) if key in arrays]
    for key in step_keys:
        _check_rows(path, key, arrays[key], num_steps, "sum of episode_lengths")
    for key in _EPISODE_KEYS:
        _check_rows(path, key, arrays[key], num_episodes, "number of episode_lengths")

    boundaries = np.cumsum(lengths)[:-1]
    steps = {key: np.split(arrays[key], boundaries) for key in step_keys}
    episodes = []
    for index in range(num_episodes):
        seed = int(arrays["seeds"][index])
        try:
            episodes.append(
                Episode(
                    observations=np.concatenate([steps["observations"][index], arrays["final_observations"][index : index + 1]]),
                    actions=steps["actions"][index],
                    labels=steps["labels"][index],
                    demonstrations=steps["demonstrations"][index],
                    rewards=steps["rewards"][index],
                    terminated=bool(arrays["terminations"][index]),
                    truncated=bool(arrays["truncations"][index]),
                    seed=None if seed == UNKNOWN_SEED else seed,
                    trial_id=str(arrays["trial_ids"][index]),
                    env_copy=int(arrays["env_copies"][index]),
                    **{key: steps[key][index] for key in _HELP_KEYS if key in steps},
                )
            )
        except ValueError as error:
            raise ValueError(f"{path}: episode {index}: {error}") from error
    try:
        return Dataset(env_id=env_id, make_kwargs=make_kwargs, episodes=episodes)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _scalar_string(path: Path, arrays: dict[str, np.ndarray], key: str) -> str:
    value = arrays[key]
    if value.shape != () or value.dtype.kind != "U":
        raise ValueError(f"{path}: key {key!r} is {value.dtype} of shape {value.shape}; it must be one string")
    return str(value.item())


def _check_rows(path: Path, key: str, array: np.ndarray, expected: int, what: str) -> None:
    rows = len(array) if array.ndim > 0 else None
    if rows != expected:
        raise ValueError(f"{path}: key {key!r} has {rows} rows (shape {array.shape}) but the {what} is {expected}")


def _make_kwargs_json(dataset: Dataset) -> str:
    try:
        return json.dumps(dataset.make_kwargs, sort_keys=True)
    except TypeError as error:
        raise ValueError(f"Dataset.make_kwargs {dataset.make_kwargs!r} must be JSON (numbers, strings, bools, lists, dicts): {error}") from error


# --- Minari ---------------------------------------------------------------------------------


def check_minari_id(dataset_id: str) -> None:
    """Raise a ValueError unless ``dataset_id`` is a Minari dataset id: ``(namespace/)name-vN``."""
    try:
        _namespace, _name, version = parse_dataset_id(dataset_id)
    except (ValueError, TypeError):  # TypeError: minari's parser fails so on an id without -vN
        version = None
    if version is None:
        raise ValueError(
            f"{dataset_id!r} is not a Minari dataset id: ids look like 'namespace/name-v0' (letters, digits, '-' and '_'; "
            "the namespace is optional, the version is not)"
        )


def save_minari(
    dataset: Dataset,
    dataset_id: str,
    *,
    author: str | None = None,
    author_email: str | None = None,
    code_permalink: str | None = None,
    description: str | None = None,
) -> minari.MinariDataset:
    """Write ``dataset`` as the Minari dataset ``dataset_id`` under Minari's root (see the module docstring)."""
    check_minari_id(dataset_id)
    dataset._require_episodes("save")
    directory = get_dataset_path(dataset_id)
    if directory.exists():
        raise ValueError(
            f"the Minari dataset {dataset_id!r} already exists at {directory}: choose another name or version, "
            f"or delete it with `minari delete {dataset_id}`"
        )
    env = _make_env(dataset)
    try:
        _check_spaces(dataset, env)
        if description is None:
            description = (
                f"{dataset.num_episodes} episodes ({dataset.num_steps} steps, {dataset.num_demonstrations} labelled by the teacher) "
                f"recorded by Apprentice on {dataset.env_id}"
            )
        with warnings.catch_warnings():
            # Minari asks for an author, e-mail, code link and evaluation env; here they are optional.
            warnings.filterwarnings("ignore", message=r"`\w+` is set to None", category=UserWarning)
            written = minari.create_dataset_from_buffers(
                dataset_id,
                [_episode_buffer(index, episode) for index, episode in enumerate(dataset.episodes)],
                env=env,
                algorithm_name=MINARI_ALGORITHM_NAME,
                author=author,
                author_email=author_email,
                code_permalink=code_permalink,
                description=description,
                jpeg_encoding=False,  # image observations stay exact
            )
        written.storage.update_episode_metadata(
            [{"trial_id": episode.trial_id, "env_copy": episode.env_copy} for episode in dataset.episodes],
            range(dataset.num_episodes),
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # no half-written dataset blocks the id
        raise
    finally:
        env.close()
    return written


def _make_env(dataset: Dataset) -> gym.Env:
    try:
        return gym.make(dataset.env_id, **dataset.make_kwargs)
    except (gym.error.Error, TypeError) as error:
        raise ValueError(
            f"Dataset.env_id {dataset.env_id!r} with make_kwargs {dataset.make_kwargs!r} cannot be made by gymnasium: {error}"
        ) from error


def _check_spaces(dataset: Dataset, env: gym.Env) -> None:
    first = dataset.episodes[0]
    for name, rows, space in (
        ("observations", first.observations, env.observation_space),
        ("actions", first.actions, env.action_space),
    ):
        if rows.shape[1:] != space.shape:
            raise ValueError(f"the dataset's {name} have shape {rows.shape[1:]} but {dataset.env_id}'s space is {space}")


def _episode_buffer(index: int, episode: Episode) -> EpisodeBuffer:
    last_step = np.arange(episode.num_steps) == episode.num_steps - 1
    return EpisodeBuffer(
        id=index,
        seed=episode.seed,
        observations=episode.observations,
        actions=episode.actions,
        rewards=episode.rewards,
        terminations=last_step & episode.terminated,
        truncations=last_step & episode.truncated,
        infos={
            LABEL_INFO: np.concatenate([episode.labels, np.zeros_like(episode.labels[:1])]),
            DEMONSTRATION_INFO: np.append(episode.demonstrations, False),
            **{key: np.append(getattr(episode, key), np.zeros(1, dtype=getattr(episode, key).dtype)) for key in _HELP_KEYS},
        },
    )


def load_minari(dataset_id: str) -> Dataset:
    """Read the Minari dataset ``dataset_id`` from Minari's root (nothing is downloaded)."""
    check_minari_id(dataset_id)
    try:
        source = minari.load_dataset(dataset_id)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"no Minari dataset {dataset_id!r} at {get_dataset_path(dataset_id)} (Minari's root is the MINARI_DATASETS_PATH "
            f"environment variable, else ~/.minari/datasets); a published one is fetched with `minari download {dataset_id}`"
        ) from error
    if source.env_spec is None:
        raise ValueError(f"the Minari dataset {dataset_id!r} names no environment (its env_spec is None)")
    for name, space in (("observation", source.observation_space), ("action", source.action_space)):
        if space.shape is None:
            raise ValueError(f"the Minari dataset {dataset_id!r} has the {name} space {space}; Apprentice datasets hold arrays")
    episodes = []
    metadatas = list(source.storage.get_episode_metadata(source.episode_indices))
    for data, metadata in zip(source.iterate_episodes(), metadatas):
        steps = len(data)
        infos = data.infos or {}
        if LABEL_INFO in infos and DEMONSTRATION_INFO in infos:
            labels, demonstrations = infos[LABEL_INFO][:steps], infos[DEMONSTRATION_INFO][:steps].astype(np.bool_)
        else:  # a third party's data: every step is the expert's
            labels, demonstrations = np.array(data.actions), np.ones(steps, dtype=np.bool_)
        try:
            episode = Episode(
                observations=data.observations,
                actions=data.actions,
                labels=labels,
                demonstrations=demonstrations,
                rewards=data.rewards,
                terminated=bool(data.terminations[-1]),
                truncated=bool(data.truncations[-1]),
                seed=metadata.get("seed"),
                trial_id=metadata.get("trial_id", ""),
                **{key: np.asarray(infos[key][:steps]) for key in _HELP_KEYS if key in infos},
                env_copy=metadata.get("env_copy", 0),
            )
        except ValueError as error:
            raise ValueError(f"the Minari dataset {dataset_id!r}, episode {data.id}: {error}") from error
        episodes.append(episode)
    env_id, make_kwargs = _make_arguments(source.env_spec)
    return Dataset(env_id=env_id, make_kwargs=make_kwargs, episodes=episodes)


_ABSENT = object()  # a registered keyword argument that is not there


def _make_arguments(spec: gym.envs.registration.EnvSpec) -> tuple[str, dict[str, Any]]:
    """The id and the ``gymnasium.make`` keyword arguments that give ``spec``: those that differ from the registered ones."""
    try:
        registered = gym.spec(spec.id)
    except gym.error.Error:  # not registered in this process: keep every argument the spec has
        return spec.id, dict(spec.kwargs)
    make_kwargs = {key: value for key, value in spec.kwargs.items() if registered.kwargs.get(key, _ABSENT) != value}
    if spec.max_episode_steps != registered.max_episode_steps:
        make_kwargs["max_episode_steps"] = spec.max_episode_steps
    return spec.id, make_kwargs


# --- either ---------------------------------------------------------------------------------


def load_dataset(source: str | os.PathLike) -> Dataset:
    """Load ``source``: a path ending in .npz is an Apprentice file, anything else a Minari dataset id."""
    text = os.fspath(source)
    if text.endswith(NPZ_SUFFIX):
        if not Path(text).is_file():
            raise FileNotFoundError(f"dataset {text!r}: no such file; {ACCEPTED_SOURCES}")
        return load_npz(text)
    try:
        check_minari_id(text)
    except ValueError as error:
        raise ValueError(f"dataset {text!r} is neither a .npz path nor a Minari dataset id; {ACCEPTED_SOURCES}") from error
    try:
        return load_minari(text)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"dataset {text!r}: {error}; {ACCEPTED_SOURCES}") from error
