"""The learner's ensemble: its numpy policy acts as the torch networks do, and it knows where it is unsure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actors.bc import ImitationModel, split_validation, train_epochs
from actors.simple_bc import SimpleBCModel
from apprentice.ensemble import member_batches
from apprentice.spaces import environment_specs


def network_decision(model: SimpleBCModel, observation: np.ndarray):
    """The action the torch members give together: their vote (Discrete) or their mean action, clipped (Box)."""
    with torch.no_grad():
        outputs = model.network(model.observation_tensor(observation).unsqueeze(0))[:, 0].numpy()  # (K, out)
    if model.discrete:
        return int(np.bincount(outputs.argmax(axis=1), minlength=outputs.shape[1]).argmax()), outputs
    return np.clip(outputs.mean(axis=0), model.action_space.low, model.action_space.high).reshape(model.action_space.shape), outputs


@pytest.mark.parametrize("ensemble_size", [1, 5])
@pytest.mark.parametrize("env_id", ["MountainCar-v0", "Pendulum-v1"])  # Discrete actions, Box actions
def test_the_numpy_policy_acts_like_the_torch_networks(env_id, ensemble_size):
    torch.manual_seed(0)
    model = SimpleBCModel("m", environment_specs(env_id), [64, 64], ensemble_size=ensemble_size)
    policy = model.policy()
    space = model.observation_space
    space.seed(0)
    observations = np.stack([space.sample() for _ in range(300)])
    decision = policy.decide(observations)
    for observation, action, uncertainty in zip(observations, decision.actions, decision.uncertainty):
        expected, outputs = network_decision(model, observation)
        if model.discrete:
            votes = np.bincount(outputs.argmax(axis=1), minlength=outputs.shape[1])
            if (votes == votes.max()).sum() == 1:  # no tie between the members' votes
                assert action == expected
        else:
            np.testing.assert_allclose(action, expected, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(uncertainty, outputs.var(axis=0).mean(), rtol=1e-4, atol=1e-7)
        if ensemble_size == 1:
            assert uncertainty == 0.0
    assert policy.act_one(observations[0]) == pytest.approx(decision.actions[0])


def test_the_policy_is_a_snapshot_of_the_weights_it_was_taken_from():
    torch.manual_seed(0)
    model = SimpleBCModel("m", environment_specs("MountainCar-v0"), [16])
    policy = model.policy()
    observation = np.array([-0.5, 0.01], dtype=np.float32)
    before = policy.act_one(observation)
    with torch.no_grad():
        model.network.biases[-1].zero_()
        model.network.biases[-1][..., (before + 1) % 3] = 1e6  # the network now prefers another action
    assert policy.act_one(observation) == before
    assert model.policy().act_one(observation) == (before + 1) % 3


def test_one_member_sees_every_item_once_an_epoch_and_several_draw_bootstrap_samples():
    generator = torch.Generator().manual_seed(0)
    assert sorted(member_batches(10, 1, generator)[0].tolist()) == list(range(10))
    several = member_batches(1000, 3, generator)
    assert several.shape == (3, 1000)
    assert all(len(set(row.tolist())) < 800 for row in several)  # with replacement: ~632 distinct of 1000
    assert not torch.equal(several[0], several[1])


def trained_ensemble(members: int) -> tuple[ImitationModel, torch.Tensor]:
    """An ensemble trained to map observations in [-1, 1]^3 to their sum, the action of a Box task."""
    torch.manual_seed(0)
    specs = environment_specs("Hopper-v4")  # 11 observations, 3 actions
    model = ImitationModel("ensemble", specs, [64, 64], ensemble_size=members)
    generator = torch.Generator().manual_seed(0)
    observations = torch.rand(2000, 11, generator=generator) * 2 - 1
    labels = torch.tanh(observations[:, :3] + observations[:, 3:6])
    model.fit_normalization(observations)
    optimizer = torch.optim.Adam(model.network.parameters(), lr=1e-3)
    _train, validation = split_validation(len(observations), 0.1, generator)
    history = train_epochs(model, optimizer, observations, labels, validation, 15, 32, generator)
    assert history[-1].validation < 0.5 * history[0].validation  # it learned
    return model, observations


def test_the_ensemble_disagrees_more_far_from_its_training_data_than_on_it():
    model, observations = trained_ensemble(5)
    policy = model.policy()
    on_data = policy.decide(observations.numpy()[:500]).uncertainty
    far = policy.decide(observations.numpy()[:500] * 4.0 + 6.0).uncertainty  # every feature far outside [-1, 1]
    assert np.median(far) > 5 * np.median(on_data)
    assert (on_data >= 0).all()


def test_the_learners_train_with_fused_adam_and_without_denormals():
    """actors.bc and actors.simple_bc set torch up as bench/training_kernels.py measured it (imported above)."""
    assert torch.get_num_threads() == 1
    assert torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item() == 0.0  # a denormal is flushed to zero
    model = ImitationModel("m", environment_specs("Pendulum-v1"), [8])
    optimizer = model.network.adam(1e-3)
    assert optimizer.defaults["fused"] is True and optimizer.defaults["lr"] == 1e-3


class RecordingAdam(torch.optim.Adam):
    """Adam that keeps a copy of the weights after each of its steps."""

    def __init__(self, parameters, lr: float) -> None:
        super().__init__(parameters, lr=lr)
        self.snapshots: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        loss = super().step(closure)
        self.snapshots.append([parameter.detach().clone() for group in self.param_groups for parameter in group["params"]])
        return loss


@pytest.mark.parametrize("members", [1, 3])
def test_training_ends_with_the_weights_averaged_over_its_last_epochs(members):
    torch.manual_seed(0)
    model = ImitationModel("averaged", environment_specs("Hopper-v4"), [16], ensemble_size=members)
    generator = torch.Generator().manual_seed(0)
    observations = torch.rand(100, 11, generator=generator)
    labels = observations[:, :3] * 2
    model.fit_normalization(observations)
    optimizer = RecordingAdam(model.network.parameters(), lr=1e-2)
    _train, validation = split_validation(len(observations), 0.1, generator)
    train_epochs(model, optimizer, observations, labels, validation, 5, 32, generator, average_epochs=2)
    steps_per_epoch = math.ceil(90 / 32)
    averaged_steps = optimizer.snapshots[-2 * steps_per_epoch :]
    for index, parameter in enumerate(model.network.parameters()):
        expected = torch.stack([snapshot[index] for snapshot in averaged_steps]).mean(dim=0)
        torch.testing.assert_close(parameter.detach(), expected)
        assert not torch.equal(parameter.detach(), optimizer.snapshots[-1][index])  # not merely the last step's weights
