"""The actor's numpy policy acts exactly as the torch network it was taken from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.simple_bc import SimpleBCModel
from apprentice.spaces import environment_specs


def network_action(model: SimpleBCModel, observation: np.ndarray):
    with torch.no_grad():
        output = model.network(model.observation_tensor(observation)).numpy()
    if model.discrete:
        return int(output.argmax())
    return np.clip(output.reshape(model.action_space.shape), model.action_space.low, model.action_space.high)


@pytest.mark.parametrize("env_id", ["MountainCar-v0", "Pendulum-v1"])  # Discrete actions, Box actions
def test_the_greedy_policy_acts_like_the_network(env_id):
    torch.manual_seed(0)
    model = SimpleBCModel("m", environment_specs(env_id), [64, 64])
    policy = model.greedy_policy()
    space = model.observation_space
    space.seed(0)
    for _ in range(300):
        observation = space.sample()
        expected = network_action(model, observation)
        if model.discrete:
            assert policy.act(observation) == expected
        else:
            np.testing.assert_allclose(policy.act(observation), expected, rtol=1e-5, atol=1e-5)


def test_the_greedy_policy_is_a_snapshot_of_the_weights_it_was_taken_from():
    torch.manual_seed(0)
    model = SimpleBCModel("m", environment_specs("MountainCar-v0"), [16])
    policy = model.greedy_policy()
    observation = np.array([-0.5, 0.01], dtype=np.float32)
    before = policy.act(observation)
    with torch.no_grad():
        final = model.network[-1]
        final.bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
        final.bias[(before + 1) % 3] = 1e6  # the network now prefers another action
    assert policy.act(observation) == before
    assert model.greedy_policy().act(observation) == (before + 1) % 3
