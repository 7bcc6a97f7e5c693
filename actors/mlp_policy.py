"""A ``player`` actor driven by a small torch MLP, acting greedily.

For now its weights come from ``ActorConfig.seed`` (same seed, same network); loading them from the
model registry (``ActorConfig.model_id`` / ``model_iteration``) comes with behavioral cloning.

Network: observation features -> 64 -> 64 -> one output per action (Discrete: logits, the action is
the argmax) or per action dimension (Box: tanh, rescaled into the bounds when they are finite).

Training uses the torch module (``MlpPolicy``); acting uses ``GreedyPolicy``, a numpy snapshot of
its weights. Why: in a Cogment process, busy with gRPC between two calls, a torch forward pass of
this tiny network costs ~150 us of CPU (torch's per-operation overhead, on a cold cache), numpy
~30 us, and all the components of a trial have about 1 ms of CPU per tick to share.
"""

from __future__ import annotations

from collections.abc import Callable

import cogment
import gymnasium
import numpy as np
import torch
from cogment.actor import ActorSession
from torch import nn

from apprentice.protos.data_pb2 import ActorConfig, EnvironmentSpecs
from apprentice.spaces import GymAction, array_from_tensor, gym_from_space, player_action

# Tiny networks gain nothing from intra-op threads; by default torch starts one per core in
# every process, and they fight the gRPC threads of all Cogment services on the same machine.
torch.set_num_threads(1)

IMPLEMENTATION_NAME = "mlp_policy"
HIDDEN_SIZE = 64


def flat_size(space: gymnasium.Space) -> int:
    """Network input size for an observation space, output size for an action space."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return int(space.n)  # one-hot inputs, one logit per action
    return int(np.prod(space.shape))


def observation_features(observation: np.ndarray, space: gymnasium.Space) -> np.ndarray:
    """The network's input: one-hot for Discrete observations, flattened float32 for Box ones."""
    if isinstance(space, gymnasium.spaces.Discrete):
        features = np.zeros(int(space.n), dtype=np.float32)
        features[int(observation)] = 1.0
        return features
    return np.asarray(observation, dtype=np.float32).reshape(-1)


def greedy_action(output: np.ndarray, action_space: gymnasium.Space) -> GymAction:
    """The action a network output stands for: argmax (Discrete), or tanh rescaled into the bounds (Box)."""
    if isinstance(action_space, gymnasium.spaces.Discrete):
        return int(np.argmax(output))
    action = np.tanh(output).reshape(action_space.shape)
    low, high = action_space.low, action_space.high
    if np.all(np.isfinite(low)) and np.all(np.isfinite(high)):
        action = low + (action + 1.0) * 0.5 * (high - low)
    return action.astype(action_space.dtype)


class MlpPolicy(nn.Module):
    """The trainable network, for a Discrete or Box action space."""

    def __init__(self, observation_space: gymnasium.Space, action_space: gymnasium.Space, seed: int = 0):
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        # Layer initialisation draws from torch's global generator: seed it without disturbing others.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = nn.Sequential(
                nn.Linear(flat_size(observation_space), HIDDEN_SIZE),
                nn.Tanh(),
                nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE),
                nn.Tanh(),
                nn.Linear(HIDDEN_SIZE, flat_size(action_space)),
            )

    @classmethod
    def from_specs(cls, specs: EnvironmentSpecs, seed: int = 0) -> MlpPolicy:
        return cls(gym_from_space(specs.observation_space), gym_from_space(specs.action_space), seed)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (Discrete) or pre-tanh outputs (Box) for a batch of feature vectors."""
        return self.network(features)


# Activations GreedyPolicy knows how to run in numpy.
NUMPY_ACTIVATIONS: dict[type[nn.Module], Callable[[np.ndarray], np.ndarray]] = {
    nn.Tanh: np.tanh,
    nn.ReLU: lambda x: np.maximum(x, 0.0),
}


class GreedyPolicy:
    """Acts greedily with a numpy copy of an ``MlpPolicy``'s weights, taken at construction.

    Changing the torch weights afterwards (training, a new model version) does not change this
    copy: build a new ``GreedyPolicy`` then.
    """

    def __init__(self, policy: MlpPolicy):
        self.observation_space = policy.observation_space
        self.action_space = policy.action_space
        # Each step is either (weight transposed, bias) of a Linear layer, or an activation function.
        self.steps: list[tuple[np.ndarray, np.ndarray] | Callable[[np.ndarray], np.ndarray]] = []
        for module in policy.network:
            if isinstance(module, nn.Linear):
                self.steps.append((module.weight.detach().numpy().T.copy(), module.bias.detach().numpy().copy()))
            elif type(module) in NUMPY_ACTIVATIONS:
                self.steps.append(NUMPY_ACTIVATIONS[type(module)])
            else:
                raise NotImplementedError(f"no numpy version of {module}")

    def act(self, observation: np.ndarray) -> GymAction:
        """The greedy action for one observation, in gymnasium form (int or array)."""
        x = observation_features(observation, self.observation_space)
        for step in self.steps:
            x = step(x) if callable(step) else x @ step[0] + step[1]
        return greedy_action(x, self.action_space)


async def impl(actor_session: ActorSession) -> None:
    """Answer every observation with the policy's greedy action."""
    config: ActorConfig = actor_session.config or ActorConfig()
    if not config.HasField("environment_specs"):
        raise ValueError("ActorConfig.environment_specs is required to build the policy network")
    policy = GreedyPolicy(MlpPolicy.from_specs(config.environment_specs, seed=config.seed))
    action_space = policy.action_space

    actor_session.start()
    async for event in actor_session.all_events():
        if event.observation is not None and event.type == cogment.EventType.ACTIVE:
            observation = array_from_tensor(event.observation.observation.value)
            actor_session.do_action(player_action(policy.act(observation), action_space))
