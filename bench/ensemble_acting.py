"""What acting with an ensemble costs: the numpy policy of K = 5 networks against one, per step.

    .venv/bin/python bench/ensemble_acting.py [--rounds 7] [--calls 2000]

Two cases, each timed in this process with untrained networks (acting costs the same trained or not):

- **one observation** (the teacher's page: MountainCar, 2x64 hidden units), the reference being
  one network's forward pass written as the player had it before ensembles (a plain numpy loop over
  2-D weight matrices, what ``GreedyPolicy`` was), then ``EnsemblePolicy.decide`` with 1 and 5
  members, and 5 members plus the help gate (``HelpGate.ask``, budget 0.1, window 1,000);
- **a vectorized trial's batch** (64 Hopper observations, 2x256, the imitation learners' default):
  one member, then 5, then 5 plus the gate.

Each measurement is the best of ``--calls`` calls' mean time over a round, the rounds alternate the
variants (this VM's speed drifts within minutes), and what is reported is the median over rounds of
each variant's time divided by the reference's time in the same round. The issue's goal: 5 members
cost at most 2x today's per-step time. A step of a trial costs more than acting (the environment,
the runtime's messages): ``bench/rollout_throughput.py --ensemble-size 5 --ask`` measures that.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from actors.bc import ImitationModel  # noqa: E402
from actors.simple_bc import SimpleBCModel  # noqa: E402
from apprentice.ensemble import EnsemblePolicy  # noqa: E402
from apprentice.help import HelpGate, HelpMode, HelpSettings  # noqa: E402
from apprentice.spaces import environment_specs  # noqa: E402


def single_network_forward(policy: EnsemblePolicy) -> Callable[[np.ndarray], int]:
    """The player's forward pass before ensembles: 2-D weights, one observation, the greedy action."""
    layers = [(weight[0], bias[0, 0]) for weight, bias in policy.layers]
    offset, scale = policy.observation_offset, policy.observation_scale

    def act(observation: np.ndarray) -> int:
        values = (np.asarray(observation, dtype=np.float32).reshape(-1) - offset) / scale
        *hidden, (last_weight, last_bias) = layers
        for weight, bias in hidden:
            values = np.maximum(values @ weight + bias, 0.0)
        return int((values @ last_weight + last_bias).argmax())

    return act


def gated(policy: EnsemblePolicy) -> Callable[[np.ndarray], np.ndarray]:
    gate = HelpGate(HelpSettings(HelpMode.ASK, budget=0.1))
    return lambda observations: gate.ask(policy.decide(observations).uncertainty)


def seconds_per_call(function: Callable, argument: np.ndarray, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function(argument)
    return (time.perf_counter() - started) / calls


def compare(title: str, variants: dict[str, Callable], argument: np.ndarray, rounds: int, calls: int) -> None:
    """Median over rounds of each variant's time / the first variant's, and the first's time per call."""
    names = list(variants)
    for function in variants.values():
        seconds_per_call(function, argument, calls // 10)  # warm-up
    times = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(seconds_per_call(variants[name], argument, calls))
    reference = names[0]
    print(f"\n{title} ({rounds} rounds of {calls} calls):")
    print(f"  {'variant':38s} {'µs per call (median)':>22s} {'/ ' + reference:>24s}")
    for name in names:
        ratios = [value / base for value, base in zip(times[name], times[reference])]
        print(f"  {name:38s} {1e6 * float(np.median(times[name])):22.1f} {float(np.median(ratios)):24.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)

    mountain_car = environment_specs("MountainCar-v0")
    one = SimpleBCModel("bench", mountain_car, [64, 64], ensemble_size=1).policy()
    five = SimpleBCModel("bench", mountain_car, [64, 64], ensemble_size=5).policy()
    observation = np.array([[-0.5, 0.01]], dtype=np.float32)
    before = single_network_forward(one)
    compare("one MountainCar observation, 2x64", {
        "one network, 2-D forward (before)": lambda batch: before(batch[0]),
        "EnsemblePolicy.decide, 1 member": one.decide,
        "EnsemblePolicy.decide, 5 members": five.decide,
        "5 members + HelpGate.ask": gated(five),
    }, observation, args.rounds, args.calls)  # fmt: skip

    hopper = environment_specs("Hopper-v4")
    one = ImitationModel("bench", hopper, [256, 256], ensemble_size=1).policy()
    five = ImitationModel("bench", hopper, [256, 256], ensemble_size=5).policy()
    batch = np.random.default_rng(0).normal(size=(64, 11)).astype(np.float32)
    compare("a batch of 64 Hopper observations, 2x256", {
        "EnsemblePolicy.decide, 1 member": one.decide,
        "EnsemblePolicy.decide, 5 members": five.decide,
        "5 members + HelpGate.ask": gated(five),
    }, batch, args.rounds, max(1, args.calls // 10))  # fmt: skip


if __name__ == "__main__":
    main()
