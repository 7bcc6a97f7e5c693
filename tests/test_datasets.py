"""Datasets: episodes in memory, and their round trips through .npz and Minari."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import minari
import numpy as np
import pytest
from minari.dataset._storages.hdf5_storage import HDF5Storage

from apprentice.datasets import (
    Dataset,
    Episode,
    load_dataset,
    load_minari,
    load_npz,
    save_minari,
    save_npz,
)


@pytest.fixture(autouse=True)
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's Minari datasets go to its own temp dir, never ~/.minari."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def episode(steps: int, seed: int, *, continuous: bool, terminated: bool, truncated: bool, trial_id: str = "", env_copy: int = 0) -> Episode:
    """An episode of made-up numbers; the teacher labelled every other step, with a label unlike the action."""
    generator = np.random.default_rng(seed)
    if continuous:  # Hopper-v4: 11 float64 observations, 3 float32 actions
        observations = generator.normal(size=(steps + 1, 11))
        actions = generator.uniform(-1, 1, size=(steps, 3)).astype(np.float32)
        labels = actions.copy()
        labels[::2] = generator.uniform(-1, 1, size=labels[::2].shape)
    else:  # MountainCar-v0: 2 float32 observations, actions 0, 1 or 2
        observations = generator.uniform(-0.07, 0.07, size=(steps + 1, 2)).astype(np.float32)
        actions = generator.integers(3, size=steps)
        labels = actions.copy()
        labels[::2] = (actions[::2] + 1) % 3
    demonstrations = np.zeros(steps, dtype=bool)
    demonstrations[::2] = True
    return Episode(
        observations=observations,
        actions=actions,
        labels=labels,
        demonstrations=demonstrations,
        rewards=generator.normal(size=steps),
        terminated=terminated,
        truncated=truncated,
        seed=seed,
        trial_id=trial_id,
        env_copy=env_copy,
    )


def hopper_dataset() -> Dataset:
    return Dataset(
        env_id="Hopper-v4",
        make_kwargs={},
        episodes=[
            episode(7, 11, continuous=True, terminated=True, truncated=False, trial_id="trial-a", env_copy=0),
            episode(12, 12, continuous=True, terminated=False, truncated=True, trial_id="trial-a", env_copy=1),
            episode(1, 13, continuous=True, terminated=False, truncated=False, trial_id="trial-b", env_copy=0),
        ],
    )


def mountain_car_dataset() -> Dataset:
    dataset = Dataset(
        env_id="MountainCar-v0",
        make_kwargs={"max_episode_steps": 50},
        episodes=[
            episode(5, 21, continuous=False, terminated=True, truncated=False),
            episode(9, 22, continuous=False, terminated=False, truncated=True),
        ],
    )
    dataset.episodes[1].seed = None  # data whose reset seed is not known
    return dataset


def assert_same(loaded: Dataset, expected: Dataset) -> None:
    assert loaded.env_id == expected.env_id
    assert loaded.make_kwargs == expected.make_kwargs
    assert loaded.num_episodes == expected.num_episodes
    for got, want in zip(loaded.episodes, expected.episodes):
        for name in ("observations", "actions", "labels", "demonstrations", "rewards"):
            got_array, want_array = getattr(got, name), getattr(want, name)
            assert got_array.dtype == want_array.dtype, name
            np.testing.assert_array_equal(got_array, want_array, err_msg=name)
        assert (got.terminated, got.truncated, got.seed, got.trial_id, got.env_copy) == (
            want.terminated,
            want.truncated,
            want.seed,
            want.trial_id,
            want.env_copy,
        )


def test_counts_and_transitions_concatenate_the_steps_in_episode_order():
    dataset = hopper_dataset()
    assert (dataset.num_episodes, dataset.num_steps, dataset.num_demonstrations) == (3, 20, 4 + 6 + 1)
    transitions = dataset.transitions()
    assert transitions.observations.shape == (20, 11) and transitions.labels.shape == (20, 3) and transitions.demonstrations.shape == (20,)
    second = dataset.episodes[1]
    np.testing.assert_array_equal(transitions.observations[7:19], second.observations[:-1])  # the final observation is no transition
    np.testing.assert_array_equal(transitions.labels[7:19], second.labels)
    np.testing.assert_array_equal(transitions.demonstrations[7:19], second.demonstrations)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"observations": np.zeros((5, 11))}, "Episode.observations has shape (5, 11)"),
        ({"labels": np.zeros((5, 2))}, "Episode.labels has shape (5, 2)"),
        ({"demonstrations": np.zeros(5)}, "Episode.demonstrations is float64"),
        ({"rewards": np.zeros(4)}, "Episode.rewards is float64 of shape (4,)"),
        ({"actions": np.zeros((0, 3)), "labels": np.zeros((0, 3)), "observations": np.zeros((1, 11))}, "at least one step"),
        ({"seed": -3}, "Episode.seed is -3"),
    ],
)
def test_an_inconsistent_episode_is_refused_with_the_field_named(change, message):
    fields = {
        "observations": np.zeros((6, 11)),
        "actions": np.zeros((5, 3)),
        "labels": np.zeros((5, 3)),
        "demonstrations": np.zeros(5, dtype=bool),
        "rewards": np.zeros(5),
        "terminated": True,
        "truncated": False,
        "seed": 0,
    }
    Episode(**fields)  # the unchanged fields make an episode
    with pytest.raises(ValueError, match=re.escape(message)):
        Episode(**(fields | change))


def test_episodes_of_different_shapes_make_no_dataset():
    hopper = hopper_dataset().episodes[0]
    car = mountain_car_dataset().episodes[0]
    with pytest.raises(ValueError, match="episode 1 has observations float32 of shape"):
        Dataset(env_id="Hopper-v4", make_kwargs={}, episodes=[hopper, car])


@pytest.mark.parametrize("make", [hopper_dataset, mountain_car_dataset])
def test_npz_round_trip(tmp_path: Path, make):
    dataset = make()
    path = save_npz(dataset, tmp_path / "run.npz")
    assert_same(load_npz(path), dataset)
    assert_same(load_dataset(str(path)), dataset)
    with np.load(path, allow_pickle=False) as archive:  # the documented keys, readable without Apprentice
        np.testing.assert_array_equal(archive["episode_lengths"], [e.num_steps for e in dataset.episodes])
        assert archive["observations"].shape[0] == dataset.num_steps == archive["labels"].shape[0]
        assert archive["final_observations"].shape[0] == dataset.num_episodes
        assert json.loads(archive["make_kwargs_json"].item()) == dataset.make_kwargs


def test_npz_writes_only_npz_paths_and_never_an_empty_dataset(tmp_path: Path):
    with pytest.raises(ValueError, match=r"ends in \.npz"):
        save_npz(hopper_dataset(), tmp_path / "run.data")
    with pytest.raises(ValueError, match="has no episodes"):
        save_npz(Dataset(env_id="Hopper-v4"), tmp_path / "empty.npz")
    assert list(tmp_path.iterdir()) == []


def rewrite(path: Path, **changes) -> None:
    """Rewrite the archive at ``path`` with some keys replaced (None drops the key)."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    with open(path, "wb") as file:
        np.savez(file, **arrays)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": None}, "key 'labels' is missing"),
        ({"labels": np.zeros((19, 3), dtype=np.float32)}, "key 'labels' has 19 rows"),
        ({"seeds": np.zeros(2, dtype=np.int64)}, "key 'seeds' has 2 rows"),
        ({"episode_lengths": np.array([7, 12, 0])}, "key 'episode_lengths'"),
        ({"format_version": np.array(2)}, "key 'format_version' is 2"),
        ({"make_kwargs_json": np.array("[1]")}, "key 'make_kwargs_json' holds list"),
    ],
)
def test_a_broken_npz_file_gets_an_error_naming_the_file_and_the_key(tmp_path: Path, changes, message):
    path = save_npz(hopper_dataset(), tmp_path / "run.npz")
    rewrite(path, **changes)
    with pytest.raises(ValueError, match=message) as raised:
        load_npz(path)
    assert str(path) in str(raised.value)


def test_a_pickle_in_an_npz_file_is_refused_and_not_run(tmp_path: Path):
    path = save_npz(hopper_dataset(), tmp_path / "run.npz")
    marker = tmp_path / "ran"
    rewrite(path, trial_ids=np.array([_Marker(marker)], dtype=object))  # np.savez pickles object arrays
    with pytest.raises(ValueError, match=r"key 'trial_ids' cannot be read .*never pickles"):
        load_npz(path)
    assert not marker.exists()


class _Marker:
    """Unpickling this touches a file: proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_file_that_is_not_npz_gets_a_clear_error(tmp_path: Path):
    path = tmp_path / "run.npz"
    marker = tmp_path / "ran"
    path.write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(ValueError, match=re.escape("is not an .npz archive")) as raised:
        load_npz(path)
    assert str(path) in str(raised.value) and not marker.exists()
    np.save(path.with_suffix(".npy"), np.zeros(3))
    path.with_suffix(".npy").rename(path)
    with pytest.raises(ValueError, match=re.escape("is one .npy array, not an .npz archive")):
        load_npz(path)
    path.write_text("observations,actions\n")
    with pytest.raises(ValueError, match=re.escape("is not an .npz archive")):
        load_npz(path)


def test_minari_round_trip_of_a_hopper_dataset():
    dataset = hopper_dataset()
    save_minari(dataset, "apprentice/hopper-test-v0", author="tests")
    assert_same(load_minari("apprentice/hopper-test-v0"), dataset)
    assert_same(load_dataset("apprentice/hopper-test-v0"), dataset)

    # What anyone who loads it with minari alone sees.
    loaded = minari.load_dataset("apprentice/hopper-test-v0")
    assert (loaded.total_episodes, loaded.total_steps) == (3, 20)
    assert loaded.storage.metadata["algorithm_name"] == "apprentice"
    first = loaded[0]
    np.testing.assert_array_equal(first.actions, dataset.episodes[0].actions)
    assert first.terminations.tolist() == [False] * 6 + [True] and not first.truncations.any()
    assert loaded[1].truncations.tolist() == [False] * 11 + [True] and not loaded[1].terminations.any()
    assert not loaded[2].terminations.any() and not loaded[2].truncations.any()
    np.testing.assert_array_equal(first.infos["label"][:-1], dataset.episodes[0].labels)
    env = loaded.recover_environment()
    try:
        assert env.spec.id == "Hopper-v4"
        assert env.observation_space.shape == (11,) and env.action_space.shape == (3,)
    finally:
        env.close()


def test_minari_round_trip_of_discrete_actions_keeps_the_make_kwargs():
    dataset = mountain_car_dataset()
    save_minari(dataset, "apprentice/mountain-car-test-v0")
    assert_same(load_minari("apprentice/mountain-car-test-v0"), dataset)
    env = minari.load_dataset("apprentice/mountain-car-test-v0").recover_environment()
    try:
        assert env.spec.id == "MountainCar-v0" and env.spec.max_episode_steps == 50
    finally:
        env.close()


def test_minari_make_kwargs_come_back_for_ant():
    dataset = Dataset(
        env_id="Ant-v4",
        make_kwargs={"use_contact_forces": True},
        episodes=[
            Episode(
                observations=np.zeros((3, 111)),
                actions=np.zeros((2, 8), dtype=np.float32),
                labels=np.ones((2, 8), dtype=np.float32),
                demonstrations=np.array([True, True]),
                rewards=np.array([1.0, 2.0]),
                terminated=False,
                truncated=True,
                seed=None,
            )
        ],
    )
    save_minari(dataset, "ant-test-v0")  # no namespace: minari allows it
    assert_same(load_minari("ant-test-v0"), dataset)


def test_a_third_party_minari_dataset_is_all_demonstrations():
    """A Minari dataset without Apprentice's infos: the expert performed every action."""
    dataset = hopper_dataset()
    buffers = [
        minari.data_collector.EpisodeBuffer(
            observations=e.observations, actions=e.actions, rewards=e.rewards, terminations=[False] * e.num_steps, truncations=[False] * e.num_steps
        )
        for e in dataset.episodes
    ]
    minari.create_dataset_from_buffers(
        "others/hopper-expert-v0",
        buffers,
        env="Hopper-v4",
        eval_env="Hopper-v4",
        algorithm_name="expert",
        author="someone",
        author_email="someone@example.org",
        code_permalink="https://example.org/expert",
        description="made-up expert data",
    )
    loaded = load_minari("others/hopper-expert-v0")
    assert loaded.num_steps == loaded.num_demonstrations == 20
    for got, want in zip(loaded.episodes, dataset.episodes):
        np.testing.assert_array_equal(got.labels, want.actions)
        assert got.seed is None and got.trial_id == ""


def test_minari_refuses_bad_ids_and_existing_datasets(minari_root: Path):
    for bad in ("hopper", "apprentice/hopper", "apprentice/hop per-v0", "../hopper-v0"):
        with pytest.raises(ValueError, match="is not a Minari dataset id: ids look like 'namespace/name-v0'"):
            save_minari(hopper_dataset(), bad)
    save_minari(hopper_dataset(), "apprentice/hopper-twice-v0")
    with pytest.raises(ValueError, match="already exists"):
        save_minari(hopper_dataset(), "apprentice/hopper-twice-v0")


def test_a_dataset_that_does_not_fit_its_environment_is_not_written(minari_root: Path):
    dataset = mountain_car_dataset()
    dataset.env_id = "Hopper-v4"
    dataset.make_kwargs = {}
    with pytest.raises(ValueError, match=r"observations have shape \(2,\) but Hopper-v4's space"):
        save_minari(dataset, "apprentice/wrong-env-v0")
    assert not (minari_root / "apprentice" / "wrong-env-v0").exists()
    dataset.env_id = "NoSuchEnv-v0"
    with pytest.raises(ValueError, match=re.escape("Dataset.env_id 'NoSuchEnv-v0'")):
        save_minari(dataset, "apprentice/wrong-env-v0")


def test_a_missing_dataset_names_it_and_both_accepted_forms(tmp_path: Path):
    missing_file = tmp_path / "nothing.npz"
    for source, error in (
        (str(missing_file), FileNotFoundError),
        ("apprentice/nothing-v0", FileNotFoundError),
        ("nothing.csv", ValueError),
    ):
        with pytest.raises(error) as raised:
            load_dataset(source)
        message = str(raised.value)
        assert source in message and ".npz" in message and "Minari dataset id" in message, message
    with pytest.raises(FileNotFoundError, match="minari download apprentice/nothing-v0"):
        load_minari("apprentice/nothing-v0")


def test_a_minari_write_that_fails_midway_leaves_no_dataset_behind(minari_root: Path, monkeypatch: pytest.MonkeyPatch):
    """An export that fails (a full disk, here simulated) must not leave a half dataset that blocks its id."""

    def full_disk(self, episodes):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(HDF5Storage, "update_episodes", full_disk)
        with pytest.raises(OSError, match="No space left"):
            save_minari(hopper_dataset(), "apprentice/hopper-retry-v0")
    assert not (minari_root / "apprentice" / "hopper-retry-v0").exists()
    save_minari(hopper_dataset(), "apprentice/hopper-retry-v0")
    assert_same(load_minari("apprentice/hopper-retry-v0"), hopper_dataset())
