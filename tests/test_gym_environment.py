"""The gym environment and the actors, run through the real services (orchestrator + datastore).

The services run as a subprocess (the ``services`` fixture of conftest.py), and so do the
components (``python -m apprentice.components`` serving ``GymEnvironment``, ``SimpleBCActor``,
``ScriptedTeacher`` and a test-only teacher defined here). Each test publishes an untrained
``SimpleBCModel`` in the services' model registry, runs a short trial with the datalog on, reads
the samples back from the datastore and replays the episode with plain gymnasium to check what the
environment and the actors did.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import cogment
import cogment.context
import gymnasium
import numpy as np
import pytest
import torch
from cogment.datastore import DatastoreSample

from actors.scripted_teacher import teacher_decision
from actors.simple_bc import SimpleBCModel
from apprentice import cog_settings
from apprentice.help import HelpMode, HelpSettings
from apprentice.launcher import ChildServer, start_python
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig, EnvironmentSpecs
from apprentice.spaces import ActionSpace, InvalidAction, array_from_tensor, environment_specs, gym_action, is_noop

pytestmark = pytest.mark.timeout(60)

PLAYER = "player"
TEACHER = "teacher"
MOUNTAIN_CAR = "MountainCar-v0"
PENDULUM = "Pendulum-v1"
HIDDEN_SIZES = [64, 64]
INVALID_TEACHER_VALUE = 7  # outside MountainCar's Discrete(3)


class InvalidTeacher:
    """A test-only teacher that always answers 7, outside MountainCar's Discrete(3)."""

    def __init__(self, cfg: dict, model_registry=None) -> None:
        pass

    def get_actor_classes(self) -> list[str]:
        return [cog_settings.TEACHER_ACTOR_CLASS]

    async def impl(self, actor_session) -> None:
        action = ActionSpace(gymnasium.spaces.Discrete(INVALID_TEACHER_VALUE + 1)).create(value=INVALID_TEACHER_VALUE)
        actor_session.start()
        async for event in actor_session.all_events():
            if event.observation is not None and event.type == cogment.EventType.ACTIVE:
                actor_session.do_action(action)


# What ``python -m apprentice.components`` serves: the app's implementations, plus a test-only teacher.
COMPONENTS = [
    "--environment", "gym=environments.gym_environment.GymEnvironment",
    "--actor", "simple_bc=actors.simple_bc.SimpleBCActor",
    "--actor", "scripted_teacher=actors.scripted_teacher.ScriptedTeacher",
    "--actor", "invalid_teacher=tests.test_gym_environment.InvalidTeacher",
]  # fmt: skip


@dataclass
class Stack:
    services: str  # orchestrator, datastore and model registry
    components: str  # environment and actors
    components_log: Path
    context: cogment.Context
    registry: object  # the SDK's model registry client

    async def publish_untrained(self, model_id: str, env_id: str, torch_seed: int) -> SimpleBCModel:
        """Store an untrained model (its first iteration) and return it as the actor will retrieve it."""
        torch.manual_seed(torch_seed)
        model = SimpleBCModel(model_id, environment_specs(env_id), HIDDEN_SIZES)
        await model.store(self.registry)
        retrieved = await SimpleBCModel.retrieve_model(self.registry, model_id, -1)
        for name, weights in model.network.state_dict().items():
            assert torch.equal(retrieved.network.state_dict()[name], weights), name
        return retrieved

    async def components_log_line(self, text: str, timeout: float = 10.0) -> str:
        """The first line of the components' log that contains ``text`` (waits for it)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            lines = [line for line in self.components_log.read_text().splitlines() if text in line]
            if lines:
                return lines[0]
            assert asyncio.get_running_loop().time() < deadline, f"{text!r} not in {self.components_log}"
            await asyncio.sleep(0.05)


@pytest.fixture
def components(services, tmp_path) -> Iterator[ChildServer]:
    """``python -m apprentice.components`` on a free port, using the services' model registry.

    A subprocess, as the main job runs it (the test-only teacher is loaded by its class path),
    rather than ``serve_components`` in this process: the SDK offers no clean way to stop serving,
    and gRPC threads left busy here would outlive the test.
    """
    args = ["-m", "apprentice.components", "--port", "0", "--model-registry", services.endpoint, *COMPONENTS]
    child = start_python("components", args, tmp_path / "components.log")
    try:
        yield child
    finally:
        child.stop()


@pytest.fixture
async def stack(services, components, tmp_path, monkeypatch) -> AsyncIterator[Stack]:
    """The endpoints, a client context and the model registry; closes every channel it opened.

    The SDK gives no way to close its channels; recording them here lets each test leave no gRPC
    activity behind (each test has its own event loop).
    """
    channels = []
    make_client_channel = cogment.context._make_client_channel

    def recording_channel(endpoint):
        channels.append(make_client_channel(endpoint))
        return channels[-1]

    monkeypatch.setattr(cogment.context, "_make_client_channel", recording_channel)
    try:
        context = cogment.Context(user_id="test", cog_settings=cog_settings, prometheus_registry=None)
        registry = await context.get_model_registry_v2(cogment.Endpoint(services.endpoint))
        yield Stack(services.endpoint, components.endpoint, tmp_path / "components.log", context, registry)
    finally:
        for channel in channels:
            await channel.close()


def actor(
    stack: Stack, name: str, implementation: str, specs: EnvironmentSpecs, model_id: str = "", model_iteration: int = -1, **config
) -> cogment.ActorParameters:
    return cogment.ActorParameters(
        cog_settings,
        name=name,
        class_name=name,  # the player plays "player", the teacher "teacher"
        endpoint=stack.components,
        implementation=implementation,
        config=ActorConfig(environment_specs=specs, seed=0, model_id=model_id, model_iteration=model_iteration, **config),
    )


def env_config(env_id: str, seed: int, max_episode_steps: int | None = None, render: bool = False) -> EnvironmentConfig:
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    return EnvironmentConfig(env_id=env_id, seed=seed, render=render, make_kwargs_json=json.dumps(kwargs))


async def run_trial(stack: Stack, actors: list, config: EnvironmentConfig, **params) -> list[DatastoreSample]:
    """Run a trial to its end and return its datastore samples, in tick order."""
    controller = stack.context.get_controller(cogment.Endpoint(stack.services))
    datastore = stack.context.get_datastore(cogment.Endpoint(stack.services))
    trial_params = cogment.TrialParameters(
        cog_settings,
        environment_endpoint=stack.components,
        environment_implementation="gym",
        environment_config=config,
        datalog_endpoint=stack.services,
        actors=actors,
        **params,
    )
    trial_id = await controller.start_trial(trial_params=trial_params)
    assert trial_id
    trial_infos = []
    for _ in range(100):  # the datalog reaches the datastore a moment after StartTrial returns
        trial_infos = await datastore.get_trials([trial_id])
        if trial_infos:
            break
        await asyncio.sleep(0.05)
    assert trial_infos, f"trial {trial_id} never reached the datastore"
    # all_samples follows the trial live and returns once it has ended.
    samples = [sample async for sample in datastore.all_samples(trial_infos)]
    assert [sample.tick_id for sample in samples] == list(range(len(samples)))
    assert samples[-1].trial_state == cogment.TrialState.ENDED
    return samples


def observation_of(sample: DatastoreSample, actor_name: str) -> np.ndarray:
    return array_from_tensor(sample.actors_data[actor_name].observation.value)


def check_last_step_fields(samples: list[DatastoreSample], teacher: str | None, action_space: gymnasium.Space) -> None:
    """Each observation's ``last_player_action``, ``last_step_demonstration`` and ``last_step_reward``
    match the previous sample.

    A step is a demonstration when the teacher sent a valid action (not a NO-OP, not garbage).
    """
    first = samples[0].actors_data[PLAYER].observation
    assert not first.HasField("last_player_action") and not first.last_step_demonstration
    for previous, sample in itertools.pairwise(samples):
        observation = sample.actors_data[PLAYER].observation
        assert observation.last_player_action == previous.actors_data[PLAYER].action
        assert observation.last_step_reward == pytest.approx(previous.actors_data[PLAYER].reward)
        demonstration = False
        if teacher is not None:
            with contextlib.suppress(InvalidAction):  # garbage counts as NO-OP
                demonstration = gym_action(previous.actors_data[teacher].action, action_space) is not None
        assert observation.last_step_demonstration == demonstration


async def test_teacher_takes_over_and_approves(stack):
    """SimpleBCActor acts greedily with the published model; ScriptedTeacher reacts to its last action."""
    specs = environment_specs(MOUNTAIN_CAR)
    # This untrained network pushes left or not at all, depending on the state: the teacher has
    # both to take over and to approve.
    model = await stack.publish_untrained("mountain-car", MOUNTAIN_CAR, torch_seed=3)
    actors = [
        actor(stack, PLAYER, "simple_bc", specs, "mountain-car", model_iteration=-1),
        actor(stack, TEACHER, "scripted_teacher", specs),
    ]
    samples = await run_trial(stack, actors, env_config(MOUNTAIN_CAR, seed=3, max_episode_steps=100))
    assert len(samples) == 101  # observations of ticks 0..100: 100 steps, then truncation

    # Replay: the performed action is the teacher's unless it approves (NO-OP), else the player's.
    env = gymnasium.make(MOUNTAIN_CAR, max_episode_steps=100)
    observation, _ = env.reset(seed=3)
    last_player_action = None
    takeovers = approvals = 0
    player_actions = set()
    for step, sample in enumerate(samples[:-1]):
        np.testing.assert_array_equal(observation_of(sample, PLAYER), observation)
        assert sample.actors_data[TEACHER].observation == sample.actors_data[PLAYER].observation

        player = gym_action(sample.actors_data[PLAYER].action, env.action_space)
        assert player == model.policy().act_one(observation)  # greedy, from the published iteration
        player_actions.add(player)
        teacher = gym_action(sample.actors_data[TEACHER].action, env.action_space)
        assert teacher == teacher_decision(observation, last_player_action), f"step {step}"
        if teacher is None:
            approvals += last_player_action is not None  # the first step has nothing to approve
        else:
            takeovers += 1
        performed = player if teacher is None else teacher
        observation, reward, terminated, truncated, _ = env.step(performed)
        last_player_action = player
        assert sample.actors_data[PLAYER].reward == reward
        assert not list(sample.actors_data[TEACHER].all_received_rewards())  # only the player is rewarded
        assert (terminated, truncated) == (False, step == 99)
    np.testing.assert_array_equal(observation_of(samples[-1], PLAYER), observation)
    assert is_noop(samples[-1].actors_data[PLAYER].action)  # the final observation is not acted on
    assert takeovers >= 10 and approvals >= 10, (takeovers, approvals)
    assert len(player_actions) > 1
    check_last_step_fields(samples, TEACHER, env.action_space)


async def test_player_only_box_actions_and_rendered_frames(stack):
    from PIL import Image

    specs = environment_specs(PENDULUM)
    model = await stack.publish_untrained("pendulum", PENDULUM, torch_seed=0)
    # Pinned to that iteration rather than following the latest.
    player_only = [actor(stack, PLAYER, "simple_bc", specs, "pendulum", model_iteration=model.iteration)]
    samples = await run_trial(stack, player_only, env_config(PENDULUM, seed=5, max_episode_steps=5, render=True))
    assert len(samples) == 6

    env = gymnasium.make(PENDULUM, max_episode_steps=5, render_mode="rgb_array")
    observation, _ = env.reset(seed=5)
    frames = [env.render()]
    for sample in samples[:-1]:
        np.testing.assert_array_equal(observation_of(sample, PLAYER), observation)
        action = gym_action(sample.actors_data[PLAYER].action, env.action_space)
        assert action.dtype == np.float32 and action.shape == (1,)
        np.testing.assert_array_equal(action, model.policy().act_one(observation))
        observation, reward, _terminated, _truncated, _ = env.step(action)
        frames.append(env.render())
        assert sample.actors_data[PLAYER].reward == pytest.approx(reward)
    np.testing.assert_array_equal(observation_of(samples[-1], PLAYER), observation)
    check_last_step_fields(samples, None, env.action_space)

    for sample, expected in zip(samples, frames, strict=True):
        frame = sample.actors_data[PLAYER].observation.rendered_frame
        assert frame[:2] == b"\xff\xd8"  # JPEG
        image = Image.open(io.BytesIO(frame))
        assert image.format == "JPEG" and image.mode == "RGB"
        decoded = np.asarray(image, dtype=np.float32)
        assert decoded.shape == expected.shape
        # The same picture as the replay's, up to JPEG's loss.
        assert np.abs(decoded - expected).mean() < 3.0


async def test_invalid_teacher_actions_count_as_noop(stack):
    specs = environment_specs(MOUNTAIN_CAR)
    model = await stack.publish_untrained("mountain-car", MOUNTAIN_CAR, torch_seed=0)
    actors = [
        actor(stack, PLAYER, "simple_bc", specs, "mountain-car"),
        actor(stack, TEACHER, "invalid_teacher", specs),
    ]
    samples = await run_trial(stack, actors, env_config(MOUNTAIN_CAR, seed=0, max_episode_steps=10))
    assert len(samples) == 11

    env = gymnasium.make(MOUNTAIN_CAR)
    observation, _ = env.reset(seed=0)
    for sample in samples[:-1]:
        with pytest.raises(InvalidAction):
            gym_action(sample.actors_data[TEACHER].action, env.action_space)
        player = gym_action(sample.actors_data[PLAYER].action, env.action_space)
        assert player == model.policy().act_one(observation)
        observation, *_ = env.step(player)  # the player's action is performed
    np.testing.assert_array_equal(observation_of(samples[-1], PLAYER), observation)
    check_last_step_fields(samples, TEACHER, env.action_space)
    assert not any(sample.actors_data[PLAYER].observation.last_step_demonstration for sample in samples)
    line = await stack.components_log_line("environments.gym_environment: Trial ")
    assert line.endswith("(MountainCar-v0): 10 steps, teacher took over 0 times, 10 invalid teacher actions"), line


async def test_trial_ended_by_the_orchestrator(stack):
    specs = environment_specs(MOUNTAIN_CAR)
    model = await stack.publish_untrained("mountain-car", MOUNTAIN_CAR, torch_seed=0)
    actors = [actor(stack, PLAYER, "simple_bc", specs, "mountain-car")]
    samples = await run_trial(stack, actors, env_config(MOUNTAIN_CAR, seed=0), max_steps=5)
    # Well before MountainCar's own 200-step limit: the orchestrator asks the environment to end
    # with the action set of tick 5, which the environment still plays before it ends.
    assert len(samples) == 7

    env = gymnasium.make(MOUNTAIN_CAR)
    observation, _ = env.reset(seed=0)
    for sample in samples[:-1]:
        player = gym_action(sample.actors_data[PLAYER].action, env.action_space)
        assert player == model.policy().act_one(observation)
        observation, _reward, terminated, truncated, _ = env.step(player)
        assert not (terminated or truncated)
    np.testing.assert_array_equal(observation_of(samples[-1], PLAYER), observation)



async def test_a_teacher_that_answers_only_when_asked_acts_just_after_each_request(stack):
    """The scripted teacher with ``only_when_asked`` does not watch: it acts (takes over or approves)
    at exactly the steps that follow one where the agent, an ensemble of 5, asked for help."""
    specs = environment_specs(MOUNTAIN_CAR)
    torch.manual_seed(0)
    model = SimpleBCModel("asking", specs, HIDDEN_SIZES, ensemble_size=5)
    await model.store(stack.registry)
    help_settings = HelpSettings(HelpMode.ASK, budget=0.2, window=50).message()
    actors = [actor(stack, PLAYER, "simple_bc", specs, "asking", help=help_settings),
              actor(stack, TEACHER, "scripted_teacher", specs, only_when_asked=True)]
    samples = await run_trial(stack, actors, env_config(MOUNTAIN_CAR, seed=3, max_episode_steps=100))
    asked_at_previous_step, requests, takeovers, approvals = False, 0, 0, 0
    for sample in samples[:-1]:
        player_action, teacher_action = sample.actors_data[PLAYER].action, sample.actors_data[TEACHER].action
        assert len(player_action.ask_for_help) == 1 and len(player_action.uncertainty) == 1 and player_action.uncertainty[0] >= 0
        teacher_acted = not is_noop(teacher_action) or teacher_action.approve
        assert teacher_acted == asked_at_previous_step
        takeovers += not is_noop(teacher_action)
        approvals += teacher_action.approve
        asked_at_previous_step = player_action.ask_for_help[0]
        requests += asked_at_previous_step
    assert 8 <= requests <= 40, requests  # about 20% of 100 steps
    assert takeovers + approvals == requests - asked_at_previous_step
