"""Benchmark: what two torch settings of ``apprentice.ensemble`` are worth to the learners' training, and
what the weight averaging of ``run.average_epochs`` costs it.

    .venv/bin/python bench/training_kernels.py [--repeats 3] [--dataset RUN.npz]

Both are measured as ratios within this one process, interleaved (the order alternates from one
repeat to the next), one torch thread, the learners' default network (2x256 ReLU), batch 32:

1. **Fused Adam** (``EnsembleMLP.adam``: ``torch.optim.Adam(fused=True)``) against torch's default
   per-tensor Adam, for one network and for an ensemble of 5, on 20,000 random Hopper-shaped
   transitions (11 inputs, 3 outputs): training samples/s of each.
2. **Denormals flushed to zero** (``torch.set_flush_denormal``, set by ``use_small_network_settings``):
   training samples/s with and without, over ``--samples`` samples drawn from 250,000 transitions:
   random Ant-shaped ones (111 inputs, 8 outputs) by default, or an exported run's
   (``python -m apprentice.export RUN_ID --format npz RUN.npz``; e.g. the 250 Ant roll-outs of
   ``+experiment=bc/ant``). The slowdown grows as training goes on, so the speed of the last
   window of 32,000 samples is printed besides the whole run's.
3. **Weight averaging** (``actors.bc.train_epochs`` with ``run.average_epochs``:
   ``apprentice.ensemble.WeightAverage.update`` after each step of the averaged epochs) against plain steps,
   for one network and for an ensemble of 5, on the data of 1.: training samples/s of each. Only
   the last ``average_epochs`` epochs of a training pay it (by default 1 of BC's 100 or 50, or of a
   DAgger round's 40 or 20).

It prints numbers and checks nothing; docs/benchmarks.md has the results.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from apprentice.ensemble import EnsembleMLP, WeightAverage, use_small_network_settings

HIDDEN = [256, 256]
BATCH_SIZE = 32
WINDOW = 32_000  # samples per speed reading


def train_speed(inputs: torch.Tensor, targets: torch.Tensor, members: int, fused: bool, samples: int, seed: int,
                averaged: bool = False) -> tuple[float, float]:
    """(samples/s over the whole run, samples/s over its last window) of Adam on MSE, batches drawn at random;
    ``averaged``: each step also updates a running average of the weights, as ``train_epochs`` does in its averaged epochs."""
    torch.manual_seed(seed)
    network = EnsembleMLP([inputs.shape[1], *HIDDEN, targets.shape[1]], members)
    optimizer = network.adam(1e-3) if fused else torch.optim.Adam(network.parameters(), lr=1e-3)
    average = WeightAverage(network) if averaged else None
    generator = torch.Generator().manual_seed(seed)
    started = window_started = time.perf_counter()
    last_window = float("nan")
    for done in range(0, samples, BATCH_SIZE):
        batch = torch.randint(len(inputs), (members, BATCH_SIZE), generator=generator)
        loss = torch.nn.functional.mse_loss(network(inputs[batch]), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update()
        if (done + BATCH_SIZE) % WINDOW == 0:
            now = time.perf_counter()
            last_window, window_started = WINDOW / (now - window_started), now
    return samples / (time.perf_counter() - started), last_window


def compare_settings(repeats: int, names: tuple[str, str], speed) -> None:
    """Print the samples/s ratio of ``speed(members, True, seed)`` to ``speed(members, False, seed)`` for 1 and 5 members,
    ``repeats`` times, alternating which runs first; ``names`` are the two settings' (off, on)."""
    off, on = names
    for members in (1, 5):
        ratios = []
        for repeat in range(repeats):
            speeds = {}
            for setting in (repeat % 2 == 0, repeat % 2 == 1):
                speeds[setting], _ = speed(members, setting, repeat)
            ratios.append(speeds[True] / speeds[False])
            print(f"   {members} member(s), repeat {repeat + 1}: {off} {speeds[False]:8.0f}  {on} {speeds[True]:8.0f}  {on} / {off} {ratios[-1]:.2f}")
        print(f"   {members} member(s): median {on} / {off} {statistics.median(ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256_000, help="training samples per denormals measurement")
    parser.add_argument("--dataset", help="an .npz of apprentice.export to measure denormals on instead of random data")
    args = parser.parse_args()
    use_small_network_settings()
    generator = torch.Generator().manual_seed(0)

    hopper_inputs, hopper_targets = torch.randn(20_000, 11, generator=generator), torch.randn(20_000, 3, generator=generator)
    print("1. Adam: default (per-tensor loop) against fused, samples/s")
    compare_settings(args.repeats, ("default", "fused"),
                     lambda members, fused, seed: train_speed(hopper_inputs, hopper_targets, members, fused, 20_000, seed))

    if args.dataset:
        arrays = np.load(args.dataset)
        inputs = torch.as_tensor(arrays["observations"].reshape(len(arrays["observations"]), -1), dtype=torch.float32)
        targets = torch.as_tensor(arrays["labels"].reshape(len(inputs), -1), dtype=torch.float32)
        inputs = (inputs - inputs.mean(dim=0)) / inputs.std(dim=0).clamp_min(1e-6)  # as the learner sees them
        source = f"{len(inputs):,} transitions of {args.dataset}"
    else:
        inputs, targets = torch.randn(250_000, 111, generator=generator), torch.randn(250_000, 8, generator=generator)
        source = "250,000 random Ant-shaped transitions"
    print(f"2. Denormals, {args.samples:,} samples from {source}: samples/s (whole run / last {WINDOW:,})")
    ratios, last_ratios = [], []
    for repeat in range(args.repeats):
        speeds = {}
        for flush in (repeat % 2 == 1, repeat % 2 == 0):
            torch.set_flush_denormal(flush)
            speeds[flush] = train_speed(inputs, targets, 1, True, args.samples, repeat)
        torch.set_flush_denormal(True)
        ratios.append(speeds[True][0] / speeds[False][0])
        last_ratios.append(speeds[True][1] / speeds[False][1])
        print(f"   repeat {repeat + 1}: kept {speeds[False][0]:8.0f} / {speeds[False][1]:8.0f}  flushed {speeds[True][0]:8.0f} / "
              f"{speeds[True][1]:8.0f}  flushed / kept {ratios[-1]:.2f} / {last_ratios[-1]:.2f}")
    print(f"   median flushed / kept: {statistics.median(ratios):.2f} over the run, {statistics.median(last_ratios):.2f} in its last window")

    print("3. Weight averaging: plain steps against steps that also update the average, samples/s")
    compare_settings(args.repeats, ("plain", "averaged"),
                     lambda members, averaged, seed: train_speed(hopper_inputs, hopper_targets, members, True, 20_000, seed, averaged))


if __name__ == "__main__":
    main()
