"""The tutorial's four steps (``actors/tutorial``), each run end to end by the real main job.

Each test runs ``python -m main +experiment=simple_bc/mountain_car teacher=scripted`` with the
step's run and player classes: two MountainCar trials through real services and components
processes on free ports, the datastore and the model registry in a temp data dir, MLflow in a temp
SQLite store (``MLFLOW_TRACKING_URI``). What the step must show is then checked against what really
happened: the environment's own per-trial log line (steps, teacher takeovers), the steps stored in
the trial datastore and the models in the registry (read back by restarting the services on the
data dir, through the SDK), and the params and metrics in MLflow.

Five runs (step 4 with and without ``train_only_from_demonstration``) take about two minutes on
two cores: each is 15-30 s, mostly process start-up.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import cogment
import numpy as np
import pytest
from conftest import start_services_process

from apprentice import cog_settings
from apprentice.launcher import PROJECT_ROOT, free_port
from apprentice.protos.data_pb2 import PlayerAction
from apprentice.spaces import array_from_tensor, environment_specs, gym_action, gym_from_space, is_noop
from apprentice.teaching import decide

STEP_TIMEOUT = 120.0  # s for one run of the main job
NUM_TRIALS = 2
ENV_ID = "MountainCar-v0"
ACTION_SPACE = gym_from_space(environment_specs(ENV_ID).action_space)
PUSH_LEFT, PUSH_RIGHT = 0, 2

ENV_TRIAL_LINE = re.compile(r"Trial (\S+) \(MountainCar-v0\): (\d+) steps, teacher took over (\d+) times")


@dataclass
class StepRun:
    """One finished run of the main job with a tutorial step."""

    run_id: str
    data_dir: Path
    log_dir: Path
    tracking_uri: str
    output: str  # stdout and stderr of the main job (the run's prints and its Python logging)

    @property
    def trial_ids(self) -> list[str]:
        return [f"{self.run_id}-trial-{index}" for index in range(NUM_TRIALS)]

    def components_log(self) -> str:
        return (self.log_dir / "components.log").read_text()

    def environment_trials(self) -> dict[str, tuple[int, int]]:
        """What the environment itself logged: trial id -> (steps, teacher takeovers)."""
        return {trial_id: (int(steps), int(takeovers)) for trial_id, steps, takeovers in ENV_TRIAL_LINE.findall(self.components_log())}


def run_step(step: int, tmp_path: Path, *overrides: str) -> StepRun:
    """``python -m main`` with tutorial step ``step``; fails the test unless it ends cleanly in time."""
    module = f"actors.tutorial.tutorial_{step}"
    run = StepRun(
        run_id=f"tutorial-{step}-test",
        data_dir=tmp_path / "data",
        log_dir=tmp_path / "outputs",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        output="",
    )
    command = [
        sys.executable,
        "-m",
        "main",
        "+experiment=simple_bc/mountain_car",
        "teacher=scripted",
        f"run.num_trials={NUM_TRIALS}",
        f"run.class_name={module}.SimpleBCTraining",
        f"services.actors.simple_bc.class_name={module}.SimpleBCActor",
        f"services.port={free_port()}",
        f"services.components_port={free_port()}",
        f"data_dir={run.data_dir}",
        f"mlflow.port={free_port()}",  # nothing listens there; MLFLOW_TRACKING_URI wins anyway
        f"run_id={run.run_id}",
        f"hydra.run.dir={run.log_dir}",  # the child servers' logs, and no outputs/ in the project
        *overrides,
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": run.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        run.output, _ = process.communicate(timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # main stops its services and components on the way out
        try:
            run.output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only what this test started
            run.output, _ = process.communicate()
        pytest.fail(f"tutorial step {step} did not finish within {STEP_TIMEOUT:g} s:\n{tail(run.output)}")
    assert process.returncode == 0, f"tutorial step {step} exited with {process.returncode}:\n{tail(run.output)}"
    for text, where in ((run.output, "the main job's output"), (run.components_log(), "components.log")):
        assert "Traceback" not in text, f"an error in {where}:\n{tail(text, 60)}"
    assert "failed; going on" not in run.output  # a trial that failed is only logged by the run
    environment_trials = run.environment_trials()
    assert sorted(environment_trials) == run.trial_ids, f"the environment did not play both trials:\n{run.components_log()}"
    assert all(steps > 0 for steps, _ in environment_trials.values())
    return run


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# -- reading back what a run left ----------------------------------------------------------------


@dataclass
class StoredStep:
    """One step of a trial as the datastore holds it."""

    observation: np.ndarray
    player: PlayerAction
    teacher: PlayerAction | None  # None in a trial without a teacher; a NO-OP has no value

    @property
    def player_action(self) -> int:
        return gym_action(self.player, ACTION_SPACE)

    @property
    def performed_action(self) -> int:
        return decide(self.player, self.teacher, ACTION_SPACE).performed_action


@contextlib.asynccontextmanager
async def stored(run: StepRun, tmp_path: Path) -> AsyncIterator[tuple[object, object]]:
    """The run's datastore and model registry: the services restarted on its data dir (SDK clients)."""
    services = start_services_process(run.data_dir, tmp_path / "services-after.log")
    try:
        context = cogment.Context(user_id="tutorial-tests", cog_settings=cog_settings, prometheus_registry=None)
        endpoint = cogment.Endpoint(services.endpoint)
        yield context.get_datastore(endpoint), await context.get_model_registry_v2(endpoint)
    finally:
        services.stop()


async def stored_steps(datastore, trial_id: str) -> list[StoredStep]:
    """The trial's steps as the datastore holds them (the final observation, with no action, left out)."""
    infos = await datastore.get_trials([trial_id])
    assert len(infos) == 1, f"trial {trial_id} is not in the datastore"
    steps = []
    async for sample in datastore.all_samples(infos):
        player, teacher = sample.actors_data["player"], sample.actors_data.get("teacher")
        if is_noop(player.action):
            continue
        steps.append(StoredStep(array_from_tensor(player.observation.value), player.action, teacher.action if teacher else None))
    return steps


def mlflow_run(run: StepRun):
    from mlflow.tracking import MlflowClient  # ~2 s to import: only where needed

    client = MlflowClient(run.tracking_uri)
    experiment = client.get_experiment_by_name("apprentice")
    assert experiment is not None, "no MLflow experiment 'apprentice' in the run's store"
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run.run_id}'")
    assert len(runs) == 1, f"expected one MLflow run named {run.run_id}, found {len(runs)}"
    return client, runs[0]


# -- the steps ---------------------------------------------------------------------------------------


async def test_step_1_random_player_and_one_log_line_per_sample(tmp_path: Path) -> None:
    run = run_step(1, tmp_path)
    environment_trials = run.environment_trials()

    for trial_id in run.trial_ids:
        steps, _ = environment_trials[trial_id]
        # One datastore sample per tick: one per step, plus the final observation.
        ticks = [int(tick) for tick in re.findall(rf"trial {re.escape(trial_id)}: sample of tick (\d+) received", run.output)]
        assert ticks == list(range(steps + 1))
        assert f"trial {trial_id}: ended, {steps + 1} samples received" in run.output
    assert f"run {run.run_id}: {NUM_TRIALS} trials done" in run.output

    # Tracking is set up: the run's params are in MLflow.
    _client, mlflow_run_info = mlflow_run(run)
    params = mlflow_run_info.data.params
    assert params["env_id"] == ENV_ID
    assert params["num_trials"] == str(NUM_TRIALS)
    assert params["teacher"] == "scripted_teacher"

    # The player acts at random: every action, about as often, whatever the observation.
    async with stored(run, tmp_path) as (datastore, _registry):
        for trial_id in run.trial_ids:
            actions = [step.player_action for step in await stored_steps(datastore, trial_id)]
            assert len(actions) == environment_trials[trial_id][0]
            shares = np.bincount(actions, minlength=ACTION_SPACE.n) / len(actions)
            assert shares.min() > 0.15, f"the player's actions are not random: shares {shares}"


SAMPLE_LINE = re.compile(r"sample (\d+) \(trial (\d+)\): demonstration=(True|False) observation=\[([^\]]*)\] action=(\d+)")


async def test_step_2_samples_carry_the_teachers_demonstrations(tmp_path: Path) -> None:
    run = run_step(2, tmp_path)
    environment_trials = run.environment_trials()

    # The producer's demonstrations are exactly the environment's teacher takeovers, trial by trial.
    for trial_id in run.trial_ids:
        steps, takeovers = environment_trials[trial_id]
        assert f"trial {trial_id}: ended, {steps} samples produced, {takeovers} demonstrations" in run.output

    # The run receives every sample, in order, and each one is consistent.
    samples = SAMPLE_LINE.findall(run.output)
    assert [int(step) for step, *_ in samples] == list(range(sum(steps for steps, _ in environment_trials.values())))
    for index, trial_id in enumerate(run.trial_ids):
        flags = [flag for _, trial, flag, _, _ in samples if int(trial) == index]
        assert len(flags) == environment_trials[trial_id][0]
        assert flags.count("True") == environment_trials[trial_id][1]
    assert {flag for _, _, flag, _, _ in samples} == {"True", "False"}
    for _step, _trial, flag, observation, action in samples:
        _position, velocity = (float(value) for value in observation.split(","))
        assert int(action) in range(ACTION_SPACE.n)
        if flag == "True":
            # The scripted teacher only ever takes over with the expert push: along the velocity.
            assert int(action) == (PUSH_RIGHT if velocity >= 0 else PUSH_LEFT), (observation, action)


async def test_step_3_the_player_plays_the_model_stored_by_the_run(tmp_path: Path) -> None:
    from actors.tutorial.tutorial_3 import SimpleBCModel

    run = run_step(3, tmp_path, "run.hidden_sizes=[16,8]")
    assert f"run {run.run_id}: model {run.run_id} iteration 1 stored in the model registry" in run.output
    for trial_id in run.trial_ids:
        assert f"trial {trial_id}: playing model {run.run_id} iteration 1" in run.components_log()

    async with stored(run, tmp_path) as (datastore, registry):
        iterations = await registry.list_iterations(run.run_id)
        assert [info.iteration for info in iterations] == [1]
        assert iterations[0].properties["hidden_sizes"] == "16,8"
        model = await SimpleBCModel.retrieve_model(registry, run.run_id, -1)
        # The configured sizes: observation (2) -> 16 -> 8 -> one logit per action (3).
        shapes = [tuple(layer.weight.shape) for layer in model.network if hasattr(layer, "weight")]
        assert shapes == [(16, 2), (8, 16), (3, 8)]

        # Every action the player took is the stored network's choice for that observation.
        for trial_id in run.trial_ids:
            steps = await stored_steps(datastore, trial_id)
            assert len(steps) == run.environment_trials()[trial_id][0]
            assert [step.player_action for step in steps] == [model.act(step.observation) for step in steps]

    # The samples still come with their demonstration flags (step 2).
    assert re.search(r"demonstration=True", run.output) and re.search(r"demonstration=False", run.output)


@pytest.mark.parametrize("only_demonstrations", [False, True], ids=["all-samples", "only-demonstrations"])
async def test_step_4_trains_online_and_stores_iterations(tmp_path: Path, only_demonstrations: bool) -> None:
    import torch

    from actors.tutorial.tutorial_4 import SimpleBCModel

    batch_size, publish_every = 32, 100
    run = run_step(
        4,
        tmp_path,
        f"run.batch_size={batch_size}",
        f"run.publish_every={publish_every}",
        f"run.train_only_from_demonstration={only_demonstrations}",
    )
    async with stored(run, tmp_path) as (datastore, registry):
        steps = [step for trial_id in run.trial_ids for step in await stored_steps(datastore, trial_id)]
        iterations = [info.iteration for info in await registry.list_iterations(run.run_id)]
        first = await SimpleBCModel.retrieve_model(registry, run.run_id, 1)
        last = await SimpleBCModel.retrieve_model(registry, run.run_id, -1)
    assert len(steps) == sum(steps for steps, _ in run.environment_trials().values())

    # What the run should have done with these samples, in this order: once a batch of usable samples
    # is there, one training step per usable sample; a stored iteration every publish_every steps
    # and one more at the end for the steps after the last one.
    demonstrations = [decide(step.player, step.teacher, ACTION_SPACE).demonstration for step in steps]
    usable = [step for step, demonstration in zip(steps, demonstrations) if demonstration or not only_demonstrations]
    samples_at_step = []  # total samples received when each training step ran
    usable_so_far = 0
    for received, demonstration in enumerate(demonstrations, start=1):
        if demonstration or not only_demonstrations:
            usable_so_far += 1
            if usable_so_far >= batch_size:
                samples_at_step.append(received)
    training_steps = len(samples_at_step)
    assert training_steps >= publish_every, f"too few usable samples ({len(usable)}) to test publication"
    published_at = [*range(publish_every, training_steps + 1, publish_every)]
    if training_steps % publish_every:
        published_at.append(training_steps)

    # The registry: the untrained iteration 1, then one per publication.
    assert iterations == list(range(1, len(published_at) + 2))

    # MLflow: the three metrics at each publication, and the training settings as params.
    client, mlflow_run_info = mlflow_run(run)
    params = mlflow_run_info.data.params
    assert (params["batch_size"], params["publish_every"]) == (str(batch_size), str(publish_every))
    assert params["train_only_from_demonstration"] == str(only_demonstrations)

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((metric.step, metric.value) for metric in client.get_metric_history(mlflow_run_info.info.run_id, key))

    assert history("model_iteration") == [(step, float(iteration)) for step, iteration in zip(published_at, iterations[1:])]
    # Samples received by then; the iteration stored at the end counts every sample of the run.
    expected_samples = [samples_at_step[step - 1] if step % publish_every == 0 else len(steps) for step in published_at]
    assert history("total_samples") == [(step, float(samples)) for step, samples in zip(published_at, expected_samples)]
    losses = history("loss")
    assert [step for step, _ in losses] == published_at
    assert all(math.isfinite(loss) and loss > 0 for _, loss in losses)
    assert f"run {run.run_id}: {NUM_TRIALS} trials done, model {run.run_id} iteration {iterations[-1]}" in run.output

    # Training learnt what it was given: the last iteration fits the usable samples (observation,
    # performed action) much better than the untrained first one.
    observations = torch.as_tensor(np.stack([step.observation for step in usable]), dtype=torch.float32)
    actions = torch.as_tensor([step.performed_action for step in usable])
    with torch.no_grad():
        first_loss = torch.nn.functional.cross_entropy(first.logits(observations), actions).item()
        last_loss = torch.nn.functional.cross_entropy(last.logits(observations), actions).item()
    assert last_loss < 0.8 * first_loss, (first_loss, last_loss)
