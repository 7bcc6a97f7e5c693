"""SampleBuffer: every sample of a run in compact growing tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apprentice.sample_buffer import SampleBuffer


def mountain_car_samples(count: int, seed: int = 0) -> list[tuple[bool, torch.Tensor, torch.Tensor]]:
    generator = np.random.default_rng(seed)
    return [
        (bool(generator.random() < 0.3), torch.as_tensor(generator.random(3, dtype=np.float32)), torch.tensor(int(generator.integers(3))))
        for _ in range(count)
    ]


def test_samples_come_back_by_index_across_growths():
    samples = mountain_car_samples(1000)
    buffer = SampleBuffer(initial_capacity=4)  # grows 8 times
    for sample in samples:
        buffer.append(*sample)
    assert len(buffer) == 1000
    assert buffer.demonstration_count == sum(flag for flag, _, _ in samples)

    indexes = torch.tensor([0, 3, 4, 511, 999, 3])
    demonstrations, observations, labels = buffer.batch(indexes)
    assert demonstrations.tolist() == [samples[i][0] for i in indexes.tolist()]
    assert torch.equal(observations, torch.stack([samples[i][1] for i in indexes.tolist()]))
    assert torch.equal(labels, torch.stack([samples[i][2] for i in indexes.tolist()]))
    assert labels.dtype == torch.int64 and observations.dtype == torch.float32
    assert buffer.demonstration_indexes().tolist() == [i for i, (flag, _, _) in enumerate(samples) if flag]


def test_box_labels_keep_their_shape():
    buffer = SampleBuffer(initial_capacity=1)
    for value in range(5):
        buffer.append(False, torch.full((111,), float(value)), torch.full((8,), -float(value)))
    _, observations, labels = buffer.batch(torch.tensor([4, 0]))
    assert observations.shape == (2, 111) and labels.shape == (2, 8)
    assert observations[0, 0] == 4.0 and labels[1, 7] == 0.0


def test_a_sample_costs_the_bytes_of_its_numbers():
    """MuJoCo-sized: 111 float32 observations and 8 float32 labels, 20,000 of them."""
    buffer = SampleBuffer()
    observation, label = torch.zeros(111), torch.zeros(8)
    for _ in range(20_000):
        buffer.append(True, observation, label)
    numbers_per_sample = 111 + 8
    # At most twice the numbers' bytes (the spare half after a doubling), plus the flag and index.
    assert buffer.nbytes / len(buffer) <= 2 * (4 * numbers_per_sample + 1 + 8)


def test_an_index_past_the_end_is_refused():
    buffer = SampleBuffer()
    buffer.append(False, torch.zeros(3), torch.tensor(1))
    with pytest.raises(IndexError, match="sample 1 asked of a buffer of 1"):
        buffer.batch(torch.tensor([1]))
