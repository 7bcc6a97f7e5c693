"""``python -m apprentice.export``: a BC run's samples out of the trial datastore, and back in through ``run.dataset``.

One short BC run on Hopper (real main, services, components, expert and MuJoCo) is exported once
as .npz and once as Minari, shared by the tests of this module. Nothing is lost or reordered if
re-stepping Hopper-v4 from each exported episode's seed with its exported actions gives back its
observations and rewards: the environment is deterministic given the seed and the actions.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import gymnasium
import minari
import numpy as np
import pytest
from cogment.api import common_pb2, trial_datastore_pb2, trial_datastore_pb2_grpc
from conftest import SHARED_DIR, ServicesProcess
from test_simple_bc import main_command, run_main

from apprentice.datasets import Dataset, load_minari, load_npz
from apprentice.launcher import PROJECT_ROOT
from apprentice.protos.data_pb2 import EnvironmentConfig
from apprentice.run import RUN_ID_PROPERTY

pytestmark = pytest.mark.timeout(300)
EXPERTS = SHARED_DIR / "experts"
if not EXPERTS.is_dir():
    pytest.skip(f"the experts are not in {EXPERTS}", allow_module_level=True)

RUN_ID = "export-bc"
MINARI_ID = "apprentice/export-bc-v0"
ROLLOUTS_LINE = re.compile(r"(\d+) expert roll-outs, (\d+) steps")
SUMMARY_LINE = re.compile(rf"run {RUN_ID}: (\d+) episodes, (\d+) steps, (\d+) demonstrations of Hopper-v4")
HOPPER_OBSERVATION_SHAPE = (11,)


@dataclass(frozen=True)
class ExportedRun:
    directory: Path
    episodes: int  # what the run said it played
    steps: int
    npz: Path
    npz_summary: str  # the export's output line
    minari_root: Path
    minari_summary: str


def export(*args: str, minari_root: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **({"MINARI_DATASETS_PATH": str(minari_root)} if minari_root else {})}
    return subprocess.run([sys.executable, "-m", "apprentice.export", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env=environment)  # fmt: skip


def exported(*args: str, minari_root: Path | None = None) -> str:
    finished = export(*args, minari_root=minari_root)
    assert finished.returncode == 0, finished.stdout + finished.stderr[-3000:]
    return finished.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> ExportedRun:
    """A BC run of 4 expert roll-outs on Hopper, 2 copies per trial, 2 trials; exported as .npz and as Minari."""
    directory = tmp_path_factory.mktemp("export")
    output = run_main(directory, f"expert.dir={EXPERTS}", f"run_id={RUN_ID}", "run.rollouts=4", "run.epochs=1", "run.envs_per_trial=2",
                      "run.parallel_trials=2", "run.eval_episodes=1", experiment="bc/hopper", teacher="expert")  # fmt: skip
    rollouts = ROLLOUTS_LINE.search(output)
    assert rollouts, output
    data_dir, npz, minari_root = str(directory / "data"), directory / "run.npz", directory / "minari"
    npz_summary = exported(RUN_ID, "--format", "npz", str(npz), "--data-dir", data_dir)
    minari_summary = exported(RUN_ID, "--format", "minari", MINARI_ID, "--data-dir", data_dir, minari_root=minari_root)
    return ExportedRun(directory, int(rollouts[1]), int(rollouts[2]), npz, npz_summary, minari_root, minari_summary)


def test_the_npz_export_holds_the_runs_expert_episodes(run):
    dataset = load_npz(run.npz)
    assert (dataset.env_id, dataset.make_kwargs) == ("Hopper-v4", {})
    assert (dataset.num_episodes, dataset.num_steps) == (run.episodes, run.steps) == (4, run.steps)
    assert all(episode.num_steps == 1000 or episode.terminated for episode in dataset.episodes)  # the expert rarely falls
    assert [episode.seed for episode in dataset.episodes] == [0, 1, 2, 3]  # episode k of the run: seed + k
    assert sorted({episode.trial_id for episode in dataset.episodes}) == [f"{RUN_ID}-expert-0", f"{RUN_ID}-expert-1"]
    space = gymnasium.make("Hopper-v4").action_space
    for episode in dataset.episodes:
        assert episode.observations.shape[1:] == HOPPER_OBSERVATION_SHAPE
        assert episode.demonstrations.all()  # override mode: every label is the expert's
        # ... and the expert played: what was performed is its action, clipped to the bounds (the label is kept as it is).
        np.testing.assert_array_equal(episode.actions, np.clip(episode.labels, space.low, space.high))
    summary = SUMMARY_LINE.search(run.npz_summary)
    assert summary and summary.groups() == (str(run.episodes), str(run.steps), str(run.steps)), run.npz_summary
    assert str(run.npz) in run.npz_summary


def test_every_exported_episode_is_what_re_stepping_hopper_from_its_seed_gives(run):
    env = gymnasium.make("Hopper-v4")
    try:
        for episode in load_npz(run.npz).episodes:
            observation, _info = env.reset(seed=episode.seed)
            observations, rewards = [observation], []
            for action in episode.actions:
                observation, reward, terminated, truncated, _info = env.step(action)
                observations.append(observation)
                rewards.append(reward)
            np.testing.assert_allclose(episode.observations, np.stack(observations), rtol=0, atol=1e-9)
            np.testing.assert_allclose(episode.rewards, rewards, rtol=1e-6)  # rewards travel as float32
            assert (episode.terminated, episode.truncated) == (terminated, truncated)
    finally:
        env.close()


def test_the_minari_export_loads_in_minari_and_equals_the_npz_export(run, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(run.minari_root))
    assert f"written to the Minari dataset {MINARI_ID}" in run.minari_summary
    source = minari.load_dataset(MINARI_ID)
    assert (source.total_episodes, source.total_steps) == (run.episodes, run.steps)
    assert_same_episodes(load_minari(MINARI_ID), load_npz(run.npz))


def assert_same_episodes(found: Dataset, expected: Dataset) -> None:
    assert found.env_id == expected.env_id and found.num_episodes == expected.num_episodes
    for mine, theirs in zip(found.episodes, expected.episodes):
        for name in ("observations", "actions", "labels", "demonstrations", "rewards"):
            np.testing.assert_array_equal(getattr(mine, name), getattr(theirs, name), err_msg=name)
        assert (mine.seed, mine.terminated, mine.truncated) == (theirs.seed, theirs.terminated, theirs.truncated)


def test_a_bc_run_trains_from_the_exported_file_instead_of_new_rollouts(run, tmp_path):
    output = run_main(tmp_path, f"expert.dir={EXPERTS}", f"run.dataset={run.npz}", "run.epochs=1", "run.eval_episodes=1",
                      experiment="bc/hopper", teacher="expert")  # fmt: skip
    assert f"{run.episodes} episodes from {run.npz}" in output, output
    assert not ROLLOUTS_LINE.search(output), output
    assert "BC return alone" in output, output


@pytest.mark.parametrize("experiment", ["bc/hopper", "bc/reacher"])
def test_a_missing_or_wrong_dataset_stops_main_before_anything_starts(run, tmp_path, experiment):
    dataset = tmp_path / "nowhere.npz" if experiment == "bc/hopper" else run.npz  # Reacher's run, Hopper's episodes
    command = main_command(tmp_path, f"expert.dir={EXPERTS}", f"run.dataset={dataset}", experiment=experiment, teacher="expert")
    finished = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 1, finished.stdout + finished.stderr
    assert f"Bad run config: run.dataset={dataset}" in finished.stderr, finished.stderr
    assert ("no such file" if experiment == "bc/hopper" else "Hopper-v4") in finished.stderr, finished.stderr
    assert not (tmp_path / "data").exists()  # nothing started: not even the data dir was made


def test_an_unknown_run_id_is_named_and_the_stored_runs_are_listed(run):
    finished = export("no-such-run", "--format", "npz", str(run.directory / "never.npz"), "--data-dir", str(run.directory / "data"))
    assert finished.returncode == 1
    assert "'no-such-run'" in finished.stderr and RUN_ID in finished.stderr, finished.stderr
    assert not (run.directory / "never.npz").exists()


async def test_a_run_without_vectorized_trials_is_refused(services: ServicesProcess, tmp_path):
    """The teacher's-page trials of simple_bc runs (num_envs = 0), stored as the orchestrator would, through --datastore."""
    config = EnvironmentConfig(env_id="MountainCar-v0", num_envs=0)
    params = common_pb2.TrialParams(
        environment=common_pb2.EnvironmentParams(name="env", config=common_pb2.SerializedMessage(content=config.SerializeToString())),
        actors=[common_pb2.ActorParams(name="player", actor_class="player", implementation="simple_bc")],
    )
    params.properties[RUN_ID_PROPERTY] = "teaching-run"
    async with grpc.aio.insecure_channel(services.endpoint.removeprefix("grpc://")) as channel:
        stub = trial_datastore_pb2_grpc.TrialDatastoreSPStub(channel)
        await stub.AddTrial(trial_datastore_pb2.AddTrialRequest(trial_params=params), metadata=[("trial-id", "teaching-run-0")])
    finished = export("teaching-run", "--format", "npz", str(tmp_path / "out.npz"), "--datastore", services.endpoint)
    assert finished.returncode == 1
    assert "'teaching-run'" in finished.stderr and "none is vectorized" in finished.stderr, finished.stderr
