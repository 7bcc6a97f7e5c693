"""The gym environment and the actors, run through the real services (orchestrator + datastore).

The components are served in this test's process; the services run as a subprocess (the
``services`` fixture of conftest.py). Each test runs a short trial with the datalog on, reads the
samples back from the datastore and replays the episode with plain gymnasium to check what the
environment did.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging

import cogment
import gymnasium
import numpy as np
import pytest
import torch
from cogment.datastore import DatastoreSample

from actors.mlp_policy import GreedyPolicy, MlpPolicy, observation_features
from apprentice import cog_settings
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig, EnvironmentSpecs
from apprentice.spaces import array_from_tensor, environment_specs, gym_action, is_noop, player_action
from environments.serve import register_components, serve_components

pytestmark = pytest.mark.timeout(120)

PLAYER = "player"
TEACHER = "teacher"


async def invalid_teacher(actor_session):
    """A teacher that always answers 7, outside MountainCar's Discrete(3)."""
    action = player_action(7, gymnasium.spaces.Discrete(8))
    actor_session.start()
    async for event in actor_session.all_events():
        if event.observation is not None and event.type == cogment.EventType.ACTIVE:
            actor_session.do_action(action)


def register_with_test_actors(context: cogment.Context) -> None:
    register_components(context)
    context.register_actor(invalid_teacher, "invalid_teacher", [cog_settings.TEACHER_ACTOR_CLASS])


@pytest.fixture
async def components():
    """``grpc://`` endpoint of the environment and actors, served in this process."""
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_components(0, on_ready=ready.set_result, register=register_with_test_actors))
    port = await asyncio.wait_for(ready, 30)
    yield f"grpc://127.0.0.1:{port}"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def actor(name: str, actor_class: str, implementation: str, endpoint: str, specs: EnvironmentSpecs, seed: int):
    return cogment.ActorParameters(
        cog_settings,
        name=name,
        class_name=actor_class,
        endpoint=endpoint,
        implementation=implementation,
        config=ActorConfig(environment_specs=specs, seed=seed),
    )


def env_config(env_id: str, seed: int, max_episode_steps: int | None = None, render: bool = False):
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    return EnvironmentConfig(env_id=env_id, seed=seed, render=render, make_kwargs_json=json.dumps(kwargs))


async def run_trial(
    services_endpoint: str, components: str, actors: list, config: EnvironmentConfig, **params
) -> list[DatastoreSample]:
    """Run a trial to its end and return its datastore samples, in tick order."""
    context = cogment.Context(user_id="test", cog_settings=cog_settings)
    controller = context.get_controller(cogment.Endpoint(services_endpoint))
    datastore = context.get_datastore(cogment.Endpoint(services_endpoint))
    trial_params = cogment.TrialParameters(
        cog_settings,
        environment_endpoint=components,
        environment_implementation="gym",
        environment_config=config,
        datalog_endpoint=services_endpoint,
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


def observation_of(sample, actor_name: str) -> np.ndarray:
    return array_from_tensor(sample.actors_data[actor_name].observation.value)


async def test_teacher_takes_over_and_noop_lets_the_player_act(services, components):
    specs = environment_specs("MountainCar-v0")
    actors = [
        actor(PLAYER, "player", "mlp_policy", components, specs, seed=1),
        actor(TEACHER, "teacher", "scripted_teacher", components, specs, seed=2),
    ]
    config = env_config("MountainCar-v0", seed=3, max_episode_steps=40)
    samples = await run_trial(services.endpoint, components, actors, config)
    assert len(samples) == 41  # observations of ticks 0..40: 40 steps, then truncation

    # Replay with gymnasium: performed action = the teacher's unless NO-OP, else the player's.
    env = gymnasium.make("MountainCar-v0", max_episode_steps=40)
    observation, _ = env.reset(seed=3)
    network = MlpPolicy.from_specs(specs, seed=1)
    policy = GreedyPolicy(network)
    takeovers = 0
    for sample, next_sample in zip(samples, samples[1:]):
        np.testing.assert_array_equal(observation_of(sample, PLAYER), observation)
        np.testing.assert_array_equal(observation_of(sample, TEACHER), observation)
        player = gym_action(sample.actors_data[PLAYER].action, env.action_space)
        # Greedy, from the seeded network; the actor's numpy copy agrees with the torch module.
        assert player == policy.act(observation)
        features = torch.as_tensor(observation_features(observation, env.observation_space))
        assert player == int(network(features).argmax())
        teacher_action = sample.actors_data[TEACHER].action
        performed = player if is_noop(teacher_action) else gym_action(teacher_action, env.action_space)
        takeovers += not is_noop(teacher_action)
        observation, reward, _terminated, _truncated, _ = env.step(performed)
        assert sample.actors_data[PLAYER].reward == reward
        np.testing.assert_array_equal(observation_of(next_sample, PLAYER), observation)
    assert 0 < takeovers < 40  # the scripted teacher both takes over and approves


async def test_player_only_box_actions_and_rendered_frames(services, components):
    from PIL import Image

    specs = environment_specs("Pendulum-v1")
    player_only = [actor(PLAYER, "player", "mlp_policy", components, specs, seed=4)]
    config = env_config("Pendulum-v1", seed=5, max_episode_steps=5, render=True)
    samples = await run_trial(services.endpoint, components, player_only, config)
    assert len(samples) == 6

    env = gymnasium.make("Pendulum-v1", max_episode_steps=5)
    observation, _ = env.reset(seed=5)
    for sample, next_sample in zip(samples, samples[1:]):
        action = gym_action(sample.actors_data[PLAYER].action, env.action_space)
        assert env.action_space.contains(action)
        observation, reward, _terminated, _truncated, _ = env.step(action)
        assert sample.actors_data[PLAYER].reward == pytest.approx(reward)
        np.testing.assert_array_equal(observation_of(next_sample, PLAYER), observation)

    for sample in samples:
        frame = sample.actors_data[PLAYER].observation.rendered_frame
        assert frame[:2] == b"\xff\xd8"  # JPEG
        image = Image.open(io.BytesIO(frame))
        assert image.format == "JPEG" and image.mode == "RGB"


async def test_invalid_teacher_actions_count_as_noop(services, components, caplog):
    caplog.set_level(logging.INFO, logger="environments.gym_environment")
    specs = environment_specs("MountainCar-v0")
    actors = [
        actor(PLAYER, "player", "mlp_policy", components, specs, seed=0),
        actor(TEACHER, "teacher", "invalid_teacher", components, specs, seed=0),
    ]
    config = env_config("MountainCar-v0", seed=0, max_episode_steps=10)
    samples = await run_trial(services.endpoint, components, actors, config)

    env = gymnasium.make("MountainCar-v0")
    observation, _ = env.reset(seed=0)
    for sample, next_sample in zip(samples, samples[1:]):
        observation, *_ = env.step(gym_action(sample.actors_data[PLAYER].action, env.action_space))
        np.testing.assert_array_equal(observation_of(next_sample, PLAYER), observation)
    assert any("10 steps, teacher took over 0 times, 10 invalid teacher actions" in m for m in caplog.messages)


async def test_trial_ended_by_the_orchestrator(services, components):
    specs = environment_specs("MountainCar-v0")
    actors = [actor(PLAYER, "player", "mlp_policy", components, specs, seed=0)]
    config = env_config("MountainCar-v0", seed=0)
    samples = await run_trial(services.endpoint, components, actors, config, max_steps=5)
    # Well before MountainCar's own 200-step limit: the environment ended on the orchestrator's request.
    assert len(samples) <= 7
