"""The acting agent switches to a newly published model iteration during a trial, within 1 s."""

from __future__ import annotations

import asyncio
import json
import time

import cogment
import pytest
import torch

from actors.simple_bc import SimpleBCModel
from apprentice import cog_settings
from apprentice.launcher import start_python
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig
from apprentice.spaces import array_from_tensor, environment_specs

pytestmark = pytest.mark.timeout(120)


def constant_policy(specs, action: int) -> SimpleBCModel:
    """A model that always picks ``action``: zero weights, a large bias on that action's logit."""
    model = SimpleBCModel("switching", specs, [8])
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.zero_()
        model.network.biases[-1][..., action] = 10.0
    return model


async def test_the_player_switches_to_a_new_iteration_within_one_second(services, tmp_path):
    components = start_python(
        "components",
        ["-m", "apprentice.components", "--port", "0", "--model-registry", services.endpoint,
         "--environment", "gym=environments.gym_environment.GymEnvironment", "--actor", "simple_bc=actors.simple_bc.SimpleBCActor"],
        tmp_path / "components.log",
    )
    try:
        context = cogment.Context(user_id="test", cog_settings=cog_settings, prometheus_registry=None)
        registry = await context.get_model_registry_v2(cogment.Endpoint(services.endpoint))
        specs = environment_specs("MountainCar-v0")
        await constant_policy(specs, 0).store(registry)

        params = cogment.TrialParameters(
            cog_settings,
            environment_endpoint=components.endpoint,
            environment_implementation="gym",
            # A long episode, so that the trial outlives the publication by far.
            environment_config=EnvironmentConfig(env_id="MountainCar-v0", make_kwargs_json=json.dumps({"max_episode_steps": 10**6})),
            datalog_endpoint=services.endpoint,
            actors=[
                cogment.ActorParameters(
                    cog_settings, name="player", class_name="player", endpoint=components.endpoint, implementation="simple_bc",
                    config=ActorConfig(environment_specs=specs, model_id="switching", model_iteration=-1),
                )
            ],
        )
        controller = context.get_controller(cogment.Endpoint(services.endpoint))
        trial_id = await controller.start_trial(trial_id_requested="switching-trial", trial_params=params)
        datastore = context.get_datastore(cogment.Endpoint(services.endpoint))
        deadline = time.monotonic() + 30
        while not (infos := await datastore.get_trials([trial_id])):
            assert time.monotonic() < deadline, "the trial never reached the datastore"
            await asyncio.sleep(0.05)

        # Read the trial live: publish once the first iteration has played 150 steps, end the trial
        # once the new one has played 100.
        actions, published_at = [], None
        async for sample in datastore.all_samples(infos):
            player = sample.actors_data["player"]
            if player.action is None or not player.action.HasField("value"):
                continue
            actions.append((sample.timestamp, int(array_from_tensor(player.action.value))))
            if published_at is None and len(actions) == 150:
                published_at = time.time_ns()
                await constant_policy(specs, 2).publish(registry)  # transient: the actor must follow those too
            if published_at is not None and sum(action == 2 for _, action in actions) == 100:
                await controller.terminate_trial([trial_id])
                break
            assert time.monotonic() < deadline, "the player never switched to the new iteration"
    finally:
        components.stop()

    before = [action for timestamp, action in actions if timestamp < published_at]
    after = [(timestamp, action) for timestamp, action in actions if timestamp >= published_at]
    assert len(before) > 100 and set(before) == {0}, "the first iteration pushes left"
    first_switched = next(timestamp for timestamp, action in after if action == 2)
    assert (first_switched - published_at) / 1e9 < 1.0, "switched more than 1 s after the publication"
    assert all(action == 2 for timestamp, action in after if timestamp >= first_switched)
