"""Vectorized trials with an expert in the teacher's seat, and BC and DAgger runs, end to end.

Real processes: the Cogment services and the components (the gym environment, the imitation
player, the expert and the scripted teacher), the real cogment SDK, real MuJoCo. What a sample
says was performed is checked against the environment itself: replaying an episode's actions from
its seed must give back its observations and rewards.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cogment
import gymnasium
import mlflow
import numpy as np
import pytest
from conftest import SHARED_DIR, start_services_process
from omegaconf import OmegaConf

from actors.bc import ImitationModel
from actors.scripted_teacher import expert_pushes
from apprentice import cog_settings
from apprentice.datasets import Episode
from apprentice.experts import load_expert
from apprentice.launcher import PROJECT_ROOT, free_port, start_python
from apprentice.metrics import MlflowStore
from apprentice.rollouts import RolloutPlan, TeacherSeat, collect_episodes
from apprentice.run import Endpoints, RunSession, on_components
from apprentice.spaces import environment_specs
from apprentice.teaching import BetaPer, TeacherMode

pytestmark = pytest.mark.timeout(300)
EXPERTS = SHARED_DIR / "experts"
if not EXPERTS.is_dir():
    pytest.skip(f"the experts are not in {EXPERTS}", allow_module_level=True)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory) -> Iterator[Endpoints]:
    directory = tmp_path_factory.mktemp("imitation")
    services = start_services_process(directory / "data", directory / "services.log")
    components = None
    try:
        components = start_python(
            "components",
            ["-m", "apprentice.components", "--port", "0", "--model-registry", services.endpoint,
             "--environment", "gym=environments.gym_environment.GymEnvironment", "--actor", "imitation=actors.bc.ImitationPlayer",
             "--actor", "expert=actors.expert.ExpertTeacher", "--actor", "scripted_teacher=actors.scripted_teacher.ScriptedTeacher"],
            directory / "components.log",
        )  # fmt: skip
        yield Endpoints(services.endpoint, services.endpoint, services.endpoint, (components.endpoint,))
    finally:
        if components is not None:
            components.stop()
        services.stop()


async def roll_out(endpoints: Endpoints, run_id: str, env_id: str, plan: RolloutPlan, teacher: TeacherSeat, make_kwargs=None):
    """``collect_episodes`` with an untrained learner in the player's seat; returns its policy and the result."""
    specs = environment_specs(env_id, make_kwargs)
    context = cogment.Context(user_id="test", cog_settings=cog_settings)
    session = await RunSession(run_id, OmegaConf.create({}), endpoints, context, metrics=None).open()
    model = ImitationModel(run_id, specs, [16])
    await model.store(session.model_registry)
    result = await collect_episodes(session, "rollouts", env_id, make_kwargs or {}, specs, plan, teacher, "imitation", model.iteration)
    return model.policy(), result


def replay(env_id: str, episode: Episode) -> tuple[np.ndarray, np.ndarray]:
    """The observations and rewards the environment gives for the episode's performed actions, from its seed."""
    env = gymnasium.make(env_id)
    observations = [env.reset(seed=episode.seed)[0]]
    rewards = []
    for performed in episode.actions:
        observation, reward, _terminated, _truncated, _info = env.step(performed)
        observations.append(observation)
        rewards.append(reward)
    env.close()
    return np.array(observations), np.array(rewards)


async def test_label_mode_performs_the_learner_labels_with_the_expert_and_mixes_by_beta(endpoints):
    expert = load_expert(EXPERTS / "Hopper.pkl")
    plan = RolloutPlan(episodes=3, envs_per_trial=2, parallel_trials=1, seed=7)
    teacher = TeacherSeat("expert", TeacherMode.LABEL, str(EXPERTS / "Hopper.pkl"), beta=0.5, beta_per=BetaPer.STEP)
    learner, result = await roll_out(endpoints, "label-mode", "Hopper-v4", plan, teacher)

    assert sorted(episode.seed for episode in result.episodes) == [7, 8, 9] and result.unfinished_episodes == 0
    learner_steps = expert_steps = 0
    for episode in result.episodes:
        assert episode.terminated or episode.truncated
        observations, rewards = replay("Hopper-v4", episode)
        assert np.allclose(observations, episode.observations) and np.allclose(rewards, episode.rewards, atol=1e-5)
        assert np.allclose(episode.labels, expert.act(episode.observations[:-1]), atol=1e-5)  # the expert's, unclipped
        assert episode.demonstrations.all()
        by_expert = np.isclose(episode.actions, np.clip(episode.labels, -1, 1), atol=1e-6).all(axis=1)
        by_learner = np.isclose(episode.actions, learner.act(episode.observations[:-1]), atol=1e-6).all(axis=1)
        assert (by_expert | by_learner).all()
        learner_steps, expert_steps = learner_steps + by_learner.sum(), expert_steps + by_expert.sum()
    assert learner_steps > 0 and expert_steps > 0  # beta = 0.5: both played
    assert result.teacher_performed_steps == pytest.approx(expert_steps, abs=3)  # a step where both agree counts as either


async def test_vectorized_override_trials_play_whole_episodes_of_the_expert(endpoints):
    """Reacher: 50-step episodes; 5 episodes over 2 trials of up to 2 copies, each reset on its own seed."""
    plan = RolloutPlan(episodes=5, envs_per_trial=2, parallel_trials=2, seed=30)
    _learner, result = await roll_out(endpoints, "override", "Reacher-v4", plan, TeacherSeat("expert", TeacherMode.OVERRIDE, str(EXPERTS / "Reacher.pkl")))

    assert [episode.seed for episode in result.episodes] == [30, 31, 32, 33, 34]
    assert {episode.env_copy for episode in result.episodes} == {0, 1}
    assert len({episode.trial_id for episode in result.episodes}) == 2
    for episode in result.episodes:
        assert len(episode.actions) == 50 and episode.truncated and not episode.terminated
        assert np.array_equal(episode.labels, episode.actions) or np.allclose(np.clip(episode.labels, -1, 1), episode.actions)
        observations, rewards = replay("Reacher-v4", episode)
        assert np.allclose(observations, episode.observations) and np.allclose(rewards, episode.rewards, atol=1e-5)
    assert np.mean([episode.rewards.sum() for episode in result.episodes]) > -10  # the expert's -3.8; a random policy's about -43


async def test_the_scripted_teacher_labels_discrete_actions_in_label_mode(endpoints):
    plan = RolloutPlan(episodes=2, envs_per_trial=2, parallel_trials=1, seed=3)
    learner, result = await roll_out(endpoints, "scripted-labels", "MountainCar-v0", plan, TeacherSeat("scripted_teacher", TeacherMode.LABEL))
    for episode in result.episodes:
        assert np.array_equal(episode.labels, expert_pushes(episode.observations[:-1]))
        assert np.array_equal(episode.actions, learner.act(episode.observations[:-1]))  # beta = 0: the learner played every step
        observations, _rewards = replay("MountainCar-v0", episode)
        assert np.allclose(observations, episode.observations)


# --- The runs, through main ----------------------------------------------------------------------


def run_main(tmp_path: Path, experiment: str, *overrides: str) -> mlflow.entities.Run:
    """``python -m main +experiment=...`` with free ports; returns its MLflow run (the local store in the data dir)."""
    command = [
        sys.executable, "-m", "main", f"+experiment={experiment}", f"expert.dir={EXPERTS}", f"data_dir={tmp_path / 'data'}",
        f"services.port={free_port()}", f"services.components_port={free_port()}", f"mlflow.port={free_port()}",
        f"hydra.run.dir={tmp_path / 'outputs'}", "run_id=test-run", *overrides,
    ]  # fmt: skip
    finished = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    client = mlflow.tracking.MlflowClient(MlflowStore.in_data_dir(tmp_path / "data").backend_uri)
    (run,) = client.search_runs(client.get_experiment_by_name("apprentice").experiment_id, "attributes.run_name = 'test-run'")
    return run


def metric_history(run: mlflow.entities.Run, tmp_path: Path, key: str) -> list[float]:
    client = mlflow.tracking.MlflowClient(MlflowStore.in_data_dir(tmp_path / "data").backend_uri)
    return [metric.value for metric in sorted(client.get_metric_history(run.info.run_id, key), key=lambda metric: metric.step)]


def random_return(task: str, make_kwargs=None, episodes: int = 10) -> float:
    env = gymnasium.make(task, **(make_kwargs or {}))
    env.action_space.seed(0)
    returns = []
    for episode in range(episodes):
        env.reset(seed=100_000 + episode)
        total, done = 0.0, False
        while not done:
            _observation, reward, terminated, truncated, _info = env.step(env.action_space.sample())
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


@pytest.mark.parametrize(
    ("task", "env_id", "overrides", "margin"),
    [("hopper", "Hopper-v4", ["run.rollouts=2", "run.epochs=8"], 300.0), ("reacher", "Reacher-v4", ["run.rollouts=20", "run.epochs=20"], 10.0)],
)
def test_a_short_bc_run_beats_a_random_policy_and_its_validation_loss_falls(tmp_path, task, env_id, overrides, margin):
    run = run_main(tmp_path, f"bc/{task}", "run.envs_per_trial=4", *overrides)
    assert run.data.metrics["eval_return_mean"] > random_return(env_id) + margin
    # The two trials of the roll-outs ran on the two components processes of the imitation experiments.
    for log_name in ("components.log", "components-1.log"):
        assert "Trial test-run-expert-" in (tmp_path / "outputs" / log_name).read_text()
    validation = metric_history(run, tmp_path, "validation_loss")
    assert len(validation) >= 8 and validation[-1] < validation[0]


@pytest.mark.parametrize(("task", "env_id", "margin"), [("hopper", "Hopper-v4", 300.0), ("reacher", "Reacher-v4", 10.0)])
def test_a_short_dagger_run_labels_the_learners_steps_and_beats_a_random_policy(tmp_path, task, env_id, margin):
    run = run_main(tmp_path, f"dagger/{task}", "run.rollouts=2", "run.rounds=2", "run.rollouts_per_round=2", "run.epochs=5", "run.envs_per_trial=4")
    labels = metric_history(run, tmp_path, "expert_labels")
    assert len(labels) == 3 and labels[0] < labels[1] < labels[2]  # every round adds the learner's steps, labelled
    assert run.data.metrics["eval_return_mean"] > random_return(env_id) + margin
    validation = metric_history(run, tmp_path, "validation_loss")
    assert validation[-1] < validation[0]


def test_gated_dagger_asks_for_few_labels_and_still_beats_a_random_policy(tmp_path):
    """Robot-gated DAgger on Hopper: the learner (an ensemble of 5) asks within a budget of 10% of its steps."""
    budget = ("run.rollouts=2", "run.rounds=2", "run.rollouts_per_round=2", "run.epochs=5", "run.envs_per_trial=4", "run.hidden_sizes=[64,64]")
    plain = run_main(tmp_path / "plain", "dagger/hopper", *budget)
    gated = run_main(tmp_path / "gated", "dagger/hopper", *budget, "run.ensemble_size=5", "run.help.mode=ask", "run.help.budget=0.1")
    plain_labels = metric_history(plain, tmp_path / "plain", "expert_labels")
    gated_labels = metric_history(gated, tmp_path / "gated", "expert_labels")
    assert plain_labels[0] == gated_labels[0]  # round 0: the same 2 expert roll-outs
    learner_labels = gated_labels[-1] - gated_labels[0]
    assert 0 < learner_labels < 0.5 * (plain_labels[-1] - plain_labels[0])
    asked = metric_history(gated, tmp_path / "gated", "asked_rate")
    assert len(asked) == 2 and all(0.02 < rate < 0.3 for rate in asked), asked
    assert metric_history(gated, tmp_path / "gated", "answered_rate") == [1.0, 1.0]  # an expert always answers
    assert all(high >= low for low, high in zip(metric_history(gated, tmp_path / "gated", "uncertainty_q50"),
                                                  metric_history(gated, tmp_path / "gated", "uncertainty_q90")))
    assert gated.data.metrics["eval_return_mean"] > random_return("Hopper-v4") + 300.0


def main_error(tmp_path: Path, *overrides: str) -> str:
    """What main says on stderr when it refuses to start (exit code 1)."""
    command = [sys.executable, "-m", "main", f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'outputs'}", *overrides]
    finished = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 1, finished.stdout[-2000:] + finished.stderr[-2000:]
    return finished.stderr


def test_a_wrong_task_or_expert_stops_main_before_anything_starts(tmp_path):
    wrong_expert = main_error(tmp_path, "+experiment=bc/hopper", f"expert.path={EXPERTS / 'HalfCheetah.pkl'}")
    assert "expert.path" in wrong_expert and "Hopper-v4" in wrong_expert
    missing = main_error(tmp_path, "+experiment=bc/hopper", f"expert.path={tmp_path / 'nowhere.pkl'}")
    assert "nowhere.pkl" in missing and "github.com/berkeleydeeprlcourse" in missing
    assert "bc/hopper" in main_error(tmp_path, "+experiment=bc/hoper")  # the available experiments are listed
    too_many = main_error(tmp_path, "+experiment=dagger/hopper", f"expert.dir={EXPERTS}", "run.epochs=5", "run.average_epochs=6")
    assert "run.average_epochs=6" in too_many and "run.epochs=5" in too_many
    assert "cannot be resumed" in main_error(tmp_path, "+experiment=dagger/hopper", f"expert.dir={EXPERTS}", "resume=some-run")


def test_trials_are_moved_onto_a_components_process_without_changing_the_callers_parameters():
    first, other = "grpc://127.0.0.1:1", "grpc://127.0.0.1:2"
    actors = [cogment.ActorParameters(cog_settings, name="player", class_name="player", endpoint=first, implementation="imitation"),
              cogment.ActorParameters(cog_settings, name="teacher", class_name="teacher", endpoint="cogment://client")]
    params = cogment.TrialParameters(cog_settings, environment_endpoint=first, environment_implementation="gym", actors=actors)
    moved = on_components(params, first, other)
    assert moved.environment_endpoint == other
    assert [actor.endpoint for actor in moved.actors] == [other, "cogment://client"]
    assert params.environment_endpoint == first and params.actors[0].endpoint == first
    assert on_components(params, first, first) is params
