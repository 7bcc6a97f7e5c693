"""The expert loader: real experts reach their documented returns; unsafe or malformed files get clear errors."""

from __future__ import annotations

import itertools
import os
import pickle
import re
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from conftest import SHARED_DIR

from apprentice.experts import DOWNLOAD_ADDRESSES, ExpertFileError, ExpertPolicy, check_expert_fits, load_expert

EXPERTS_DIR = SHARED_DIR / "experts"

# file, env id, make kwargs, documented mean return (../shared/experts/README.md), allowed distance
EXPERTS = [
    ("Hopper.pkl", "Hopper-v4", {}, 3723.3, 0.05 * 3723.3),
    ("HalfCheetah.pkl", "HalfCheetah-v4", {}, 4098.8, 0.05 * 4098.8),
    ("Walker2d.pkl", "Walker2d-v4", {}, 5391.8, 0.05 * 5391.8),
    ("Ant.pkl", "Ant-v4", {"use_contact_forces": True}, 4695.5, 0.05 * 4695.5),
    ("Reacher.pkl", "Reacher-v4", {}, -3.8, 1.5),  # near 0: an absolute margin
]


@pytest.fixture
def experts_dir() -> Path:
    if not EXPERTS_DIR.is_dir():
        pytest.skip(f"no expert policies at {EXPERTS_DIR} (see DOWNLOAD_ADDRESSES in apprentice/experts.py)")
    return EXPERTS_DIR


def _episode_return(expert: ExpertPolicy, env: gymnasium.Env, seed: int) -> float:
    observation, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        observation, reward, terminated, truncated, _ = env.step(expert.act(observation))
        total += float(reward)
        done = terminated or truncated
    return total


@pytest.mark.parametrize(("file_name", "env_id", "make_kwargs", "documented", "margin"), EXPERTS, ids=[row[1] for row in EXPERTS])
def test_real_expert_gives_its_documented_return(
    experts_dir: Path, file_name: str, env_id: str, make_kwargs: dict[str, Any], documented: float, margin: float
) -> None:
    expert = load_expert(experts_dir / file_name)
    env = gymnasium.make(env_id, **make_kwargs)
    try:
        check_expert_fits(expert, env.observation_space, env.action_space, env_id)
        returns = [_episode_return(expert, env, seed) for seed in (0, 1, 2)]
    finally:
        env.close()
    assert abs(np.mean(returns) - documented) <= margin, f"{env_id}: returns {returns}, documented mean {documented}"


def test_batched_act_equals_row_by_row(experts_dir: Path) -> None:
    expert = load_expert(experts_dir / "Hopper.pkl")
    rng = np.random.default_rng(0)
    observations = (expert.obs_mean + expert.obs_std * rng.normal(size=(64, expert.observation_size))).astype(np.float32)

    batch = expert.act(observations)
    rows = [expert.act(row) for row in observations]

    assert batch.shape == (64, 3) and batch.dtype == np.float32
    assert rows[0].shape == (3,) and rows[0].dtype == np.float32
    np.testing.assert_allclose(batch, np.stack(rows), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(11,\) or \(batch, 11\), got \(4, 17\)"):
        expert.act(np.zeros((4, 17)))


# --- Synthetic expert files --------------------------------------------------------------------


def _expert_tree(nonlinearity: str = "tanh", sizes: tuple[int, ...] = (3, 4, 5, 2), seed: int = 0) -> dict[str, Any]:
    """A dict in the documented layout: ``sizes`` = observations, hidden widths..., actions."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(1, sizes[0]))
    affine = [{"AffineLayer": {"W": rng.normal(size=(n_in, n_out)), "b": rng.normal(size=(1, n_out))}} for n_in, n_out in itertools.pairwise(sizes)]
    return {
        "nonlin_type": nonlinearity,
        "GaussianPolicy": {
            "obsnorm": {"Standardizer": {"mean_1_D": mean, "meansq_1_D": mean**2 + rng.uniform(0.5, 2, size=mean.shape), "count": np.array(10.0)}},
            "hidden": {"FeedforwardNet": {f"layer_{2 * index}": layer for index, layer in enumerate(affine[:-1])}},
            "out": affine[-1],
            "logstdevs_1_Da": np.zeros((1, sizes[-1])),
        },
    }


def _write_pickle(path: Path, value: Any, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    return path


def test_act_follows_the_documented_formula(tmp_path: Path) -> None:
    tree = _expert_tree("lrelu")
    expert = load_expert(_write_pickle(tmp_path / "expert.pkl", tree))
    policy = tree["GaussianPolicy"]
    norm = policy["obsnorm"]["Standardizer"]
    observations = np.random.default_rng(1).normal(size=(7, 3))

    x = (observations - norm["mean_1_D"]) / (np.sqrt(np.maximum(0, norm["meansq_1_D"] - norm["mean_1_D"] ** 2)) + 1e-6)
    for name in sorted(policy["hidden"]["FeedforwardNet"]):
        layer = policy["hidden"]["FeedforwardNet"][name]["AffineLayer"]
        x = x @ layer["W"] + layer["b"]
        x = np.where(x > 0, x, 0.01 * x)
    expected = x @ policy["out"]["AffineLayer"]["W"] + policy["out"]["AffineLayer"]["b"]

    assert (expert.observation_size, expert.action_size, expert.nonlinearity) == (3, 2, "lrelu")
    np.testing.assert_allclose(expert.act(observations), expected, rtol=1e-5, atol=1e-5)


class _RunsCode:
    """Pickles as a call of ``function(*args)``: what a malicious pickle does on load."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.call = (function, args)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval"])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path: Path, payload: str, protocol: int) -> None:
    marker = tmp_path / "ran"
    command = f"touch {marker}"
    if payload == "os.system":
        attack, refused = _RunsCode(os.system, command), f"{os.system.__module__}.system"  # posix.system on Linux
    else:
        attack, refused = _RunsCode(eval, f"__import__('os').system({command!r})"), "builtins.eval"
    tree = _expert_tree()
    tree["GaussianPolicy"]["obsnorm"]["Standardizer"]["count"] = attack  # hidden inside an otherwise valid expert
    path = _write_pickle(tmp_path / "Hopper.pkl", tree, protocol)

    with pytest.raises(ExpertFileError, match=f"{re.escape(str(path))}.*refuses to load global {refused}") as caught:
        load_expert(path)
    assert "nothing in it was run" in str(caught.value)
    assert not marker.exists()

    pickle.loads(path.read_bytes())  # the control: a plain unpickler does run it
    assert marker.exists()


def test_a_missing_file_names_its_absolute_path_and_where_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExpertFileError) as caught:
        load_expert("Hopper.pkl")
    message = str(caught.value)
    assert f"expert file {tmp_path / 'Hopper.pkl'} does not exist" in message
    assert "expert.path" in message
    assert all(address in message for address in DOWNLOAD_ADDRESSES)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    _write_pickle(tmp_path / "Walker2d.pkl", _expert_tree())
    with pytest.raises(ExpertFileError, match=f"expert file {re.escape(str(tmp_path))} is a directory: .*Walker2d.pkl"):
        load_expert(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = _write_pickle(tmp_path / "Hopper.pkl", _expert_tree())
    path.chmod(0)
    with pytest.raises(ExpertFileError, match=f"expert file {re.escape(str(path))} cannot be read"):
        load_expert(path)


def _without_out(tree: dict[str, Any]) -> dict[str, Any]:
    del tree["GaussianPolicy"]["out"]
    return tree


def _wrong_width(tree: dict[str, Any]) -> dict[str, Any]:
    tree["GaussianPolicy"]["out"]["AffineLayer"]["W"] = np.zeros((7, 2))
    return tree


def _integer_mean(tree: dict[str, Any]) -> dict[str, Any]:
    tree["GaussianPolicy"]["obsnorm"]["Standardizer"]["mean_1_D"] = np.zeros((1, 3), dtype=np.int64)
    return tree


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ([1, 2, 3], "the top level should be a dict, got list"),
        ({"GaussianPolicy": {}}, "'nonlin_type' is missing"),
        (_expert_tree("relu"), "'nonlin_type' is 'relu', an unknown nonlinearity"),
        (_without_out(_expert_tree()), "'GaussianPolicy' -> 'out' is missing"),
        (_wrong_width(_expert_tree()), "'GaussianPolicy' -> 'out' -> 'AffineLayer' should map 5 inputs, got W of shape"),
        (_integer_mean(_expert_tree()), "'GaussianPolicy' -> 'obsnorm' -> 'Standardizer' -> 'mean_1_D' should be a float numpy array, got int64"),
    ],
    ids=["not-a-dict", "no-nonlinearity", "unknown-nonlinearity", "no-output-layer", "wrong-width", "integer-array"],
)
def test_a_file_of_the_wrong_structure_says_what_is_wrong(tmp_path: Path, content: Any, problem: str) -> None:
    path = _write_pickle(tmp_path / "expert.pkl", content)
    with pytest.raises(ExpertFileError) as caught:
        load_expert(path)
    assert str(caught.value).startswith(f"expert file {path} is not an expert policy: {problem}")


def test_a_file_that_is_not_a_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "Hopper.pkl"
    path.write_text("<html>404: Not Found</html>")  # what a failed download leaves
    with pytest.raises(ExpertFileError, match=f"expert file {re.escape(str(path))} is not a readable pickle"):
        load_expert(path)


@pytest.mark.parametrize(
    ("env_id", "make_kwargs", "problem"),
    [
        ("HalfCheetah-v4", {}, "expects 11 observations but HalfCheetah-v4 gives 17 observations"),
        ("Reacher-v4", {}, "gives 3 continuous actions but Reacher-v4 takes 2 actions"),
        ("MountainCar-v0", {}, "expects 11 observations but MountainCar-v0 gives 2 observations"),
    ],
)
def test_check_expert_fits_refuses_the_wrong_task(experts_dir: Path, env_id: str, make_kwargs: dict[str, Any], problem: str) -> None:
    expert = load_expert(experts_dir / "Hopper.pkl")
    env = gymnasium.make(env_id, **make_kwargs)
    try:
        with pytest.raises(ExpertFileError) as caught:
            check_expert_fits(expert, env.observation_space, env.action_space, env_id)
    finally:
        env.close()
    message = str(caught.value)
    assert message.startswith(f"expert {experts_dir / 'Hopper.pkl'} {problem}")
    assert "expert.path" in message and "run.env_id" in message


def test_check_expert_fits_says_ant_needs_contact_forces(experts_dir: Path) -> None:
    expert = load_expert(experts_dir / "Ant.pkl")
    env = gymnasium.make("Ant-v4")
    try:
        with pytest.raises(ExpertFileError, match=r"expects 111 observations but Ant-v4 gives 27 .*use_contact_forces=True"):
            check_expert_fits(expert, env.observation_space, env.action_space, "Ant-v4")
    finally:
        env.close()
