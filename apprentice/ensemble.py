"""A policy made of K networks: it acts with their consensus and knows how much they disagree.

Members of an ensemble trained on the same data from different random starts (and, for K > 1, on
bootstrapped batches of it) agree where the data is dense and drift apart where it is thin; that
disagreement is the learner's uncertainty about a state, which the help gate (``apprentice.help``)
turns into a request for the teacher. With K = 1 the ensemble is a plain MLP and its uncertainty
is 0.

- ``EnsembleMLP``: the K networks in torch, evaluated together in one batched matrix product per
  layer (``torch.baddbmm``), so that training K members costs one forward and one backward pass.
- ``EnsemblePolicy``: the same weights in numpy, to act: the actors act at every step of every
  trial, and torch's per-call overhead dominates such small networks (timed inside the components
  process during bench/trial_throughput.py, one torch forward of a 64x64 MLP took ~350 µs against
  ~80 µs in numpy). ``decide`` gives the actions and the uncertainty of a batch at once.

Uncertainty, for a batch of observations (one number per observation):
- Box actions: the variance of the members' actions, averaged over the action's dimensions (as
  ThriftyDAgger measures novelty), taken before the actions are clipped into the bounds: far from
  the data the members' outputs run past the bounds in different directions, and clipped they
  would all agree on the bound.
- Discrete actions: the variance of the members' action probabilities (softmax of their logits),
  summed over the actions. The share of members that vote against the majority would say the same
  thing, but it takes only K + 1 values: a quantile threshold over such a measure cannot ask at a
  chosen rate (ties), while the probabilities' variance is continuous and is 0 only when every
  member gives the same distribution.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
from torch import nn


def use_small_network_settings() -> None:
    """Set torch, process-wide, for training and acting with small networks on the CPU.

    - One intra-op thread: a 256x256 MLP at batch 32 gains nothing from more, and they would fight
      the gRPC threads and the other processes of a run.
    - Denormal floats flushed to zero: as training goes on, some gradients and Adam moments fall
      below float32's normal range, where the CPU's arithmetic is many times slower. On 250 Ant
      roll-outs, training runs 1.46x faster with them flushed (bench/training_kernels.py), and
      without, it slows down as it goes. Values under 1e-38 change nothing in what is learned.
    """
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


class EnsembleMLP(nn.Module):
    """``members`` MLPs of layer sizes ``sizes`` (ReLU between layers), as stacked weights.

    ``forward`` takes a batch shared by every member, shape (B, in), or one batch per member,
    shape (K, B, in) (bootstrapped training batches), and returns (K, B, out).
    """

    def __init__(self, sizes: list[int], members: int) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble has at least one member, not {members}")
        self.members = members
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for size_in, size_out in itertools.pairwise(sizes):
            # nn.Linear's initialisation, member by member and in its order (weight, then bias): one
            # member starts from exactly the weights an nn.Sequential of nn.Linear would.
            bound = 1.0 / math.sqrt(size_in)
            drawn = [(torch.empty(size_out, size_in).uniform_(-bound, bound), torch.empty(size_out).uniform_(-bound, bound))
                     for _member in range(members)]
            self.weights.append(nn.Parameter(torch.stack([weight.T for weight, _bias in drawn]).contiguous()))
            self.biases.append(nn.Parameter(torch.stack([bias for _weight, bias in drawn]).unsqueeze(1)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        if self.members == 1:
            # One network: plain matrix products of views of the weights, as nn.Linear computes them
            # (a batched product of one matrix, or indexing the weights, trains 10-25% slower here).
            values = inputs.squeeze(0) if inputs.dim() == 3 else inputs
            for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
                values = torch.addmm(bias.view(-1), values, weight.squeeze(0))
                if index < last:
                    values = torch.relu(values)
            return values.unsqueeze(0)
        values = inputs if inputs.dim() == 3 else inputs.unsqueeze(0).expand(self.members, *inputs.shape)
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            values = torch.baddbmm(bias, values, weight)
            if index < last:
                values = torch.relu(values)
        return values

    def adam(self, learning_rate: float) -> torch.optim.Adam:
        """Adam over these weights, with torch's fused CPU kernel: the same update as the default
        per-tensor loop, at 1.31x (one member) and 2.06x (five) its training samples/s for a
        256x256 learner at batch 32 (bench/training_kernels.py): at that size the optimizer's
        per-tensor overhead is much of each step."""
        return torch.optim.Adam(self.parameters(), lr=learning_rate, fused=True)

    def numpy_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """A copy of (weights (K, in, out), biases (K, 1, out)) per layer, for ``EnsemblePolicy``."""
        return [(weight.detach().numpy().copy(), bias.detach().numpy().copy()) for weight, bias in zip(self.weights, self.biases)]


class WeightAverage:
    """The running mean of a network's weights, taken after each of the training steps it is told of.

    Stochastic weight averaging at a constant learning rate (``run.average_epochs``): the weights
    keep wandering around a minimum from step to step, and their mean sits nearer its middle. It is
    an in-place ``lerp_`` per tensor rather than torch's ``AveragedModel``, whose update on the CPU
    computes a new tensor per parameter and copies it: with it a 256x256 learner trained at 0.72x
    (one network) and 0.39x (five) the samples/s of plain steps, with this at 0.96x and 0.94x
    (bench/training_kernels.py).
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.means = [parameter.detach().clone() for parameter in network.parameters()]
        self.steps = 0  # weights averaged so far; the clone above is replaced by the first

    @torch.no_grad()
    def update(self) -> None:
        """Add the network's current weights to the mean."""
        self.steps += 1
        for mean, parameter in zip(self.means, self.network.parameters()):
            mean.lerp_(parameter, 1.0 / self.steps)

    @torch.no_grad()
    def load_into_network(self) -> None:
        """Give the network the mean weights (its optimizer's moments stay as they are)."""
        if self.steps == 0:
            raise RuntimeError("no weights were averaged: call update() after each training step first")
        for mean, parameter in zip(self.means, self.network.parameters()):
            parameter.copy_(mean)


def member_batches(count: int, members: int, generator: torch.Generator) -> torch.Tensor:
    """The order in which each member sees ``count`` training items in an epoch, shape (K, count).

    One member sees every item once (a plain epoch); several members each draw ``count`` items with
    replacement (a bootstrap resample, anew each epoch), so that they differ where the data is thin.
    """
    if members == 1:
        return torch.randperm(count, generator=generator).unsqueeze(0)
    return torch.randint(count, (members, count), generator=generator)


@dataclass(frozen=True)
class Decision:
    """What a policy does for a batch of N observations."""

    actions: np.ndarray  # (N,) ints or (N, *action_shape) within the bounds
    uncertainty: np.ndarray  # (N,) float32, >= 0: the members' disagreement (0 for one member)


@dataclass(frozen=True)
class EnsemblePolicy:
    """An ``EnsembleMLP``'s forward pass in numpy on a batch (N, obs), with its inputs' normalization.

    It acts with the members' mean action, clipped into the bounds (Box), or their majority vote (Discrete, ties going to the
    action of highest mean probability).
    """

    layers: list[tuple[np.ndarray, np.ndarray]]  # (weights (K, in, out), biases (K, 1, out)) per layer
    observation_offset: np.ndarray  # inputs are (observation - offset) / scale
    observation_scale: np.ndarray
    action_space: gymnasium.spaces.Discrete | gymnasium.spaces.Box
    iteration: int

    @property
    def members(self) -> int:
        return len(self.layers[0][0])

    def decide(self, observations: np.ndarray) -> Decision:
        """Actions and uncertainty for observations of shape (N, *observation_shape)."""
        count = len(observations)
        values = (np.asarray(observations, dtype=np.float32).reshape(count, -1) - self.observation_offset) / self.observation_scale
        values = values[np.newaxis]  # (1, N, in), broadcast over the members
        *hidden, (last_weight, last_bias) = self.layers
        for weight, bias in hidden:
            values = np.matmul(values, weight)
            values += bias
            np.maximum(values, 0.0, out=values)
        outputs = np.matmul(values, last_weight)
        outputs += last_bias  # (K, N, out)
        if isinstance(self.action_space, gymnasium.spaces.Discrete):
            return self._discrete(outputs)
        # (sums rather than np.mean and np.var: their Python overhead is most of the cost for one observation)
        mean = outputs.sum(axis=0) / self.members
        uncertainty = np.square(outputs - mean).sum(axis=(0, 2)) / (self.members * outputs.shape[2]) if self.members > 1 else np.zeros(count, dtype=np.float32)
        mean = np.clip(mean, self.action_space.low.reshape(-1), self.action_space.high.reshape(-1))
        return Decision(mean.reshape(count, *self.action_space.shape).astype(self.action_space.dtype), uncertainty.astype(np.float32))

    def _discrete(self, logits: np.ndarray) -> Decision:
        count, num_actions = logits.shape[1], logits.shape[2]
        if self.members == 1:
            return Decision(logits[0].argmax(axis=1), np.zeros(count, dtype=np.float32))
        shifted = np.exp(logits - logits.max(axis=2, keepdims=True))
        probabilities = shifted / shifted.sum(axis=2, keepdims=True)  # (K, N, actions)
        mean = probabilities.sum(axis=0) / self.members
        uncertainty = np.square(probabilities - mean).sum(axis=(0, 2)) / self.members
        votes = (logits.argmax(axis=2)[:, :, np.newaxis] == np.arange(num_actions)).sum(axis=0)  # (N, actions)
        # Ties between equally voted actions go to the one of highest mean probability.
        return Decision((votes + 1e-3 * mean).argmax(axis=1), uncertainty.astype(np.float32))

    def act(self, observations: np.ndarray) -> np.ndarray:
        """The actions alone (``decide(observations).actions``)."""
        return self.decide(observations).actions

    def act_one(self, observation: np.ndarray):
        """The action for one observation without a batch axis, as gymnasium takes it (an int for Discrete)."""
        action = self.act(np.asarray(observation)[np.newaxis])[0]
        return int(action) if isinstance(self.action_space, gymnasium.spaces.Discrete) else action
