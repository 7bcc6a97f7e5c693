"""Every sample of a run, kept compact: a few growing tensors instead of a Python list of tensors.

A run keeps all its samples (they are drawn from at every training step). Three small tensors per
sample in Python lists cost ~2.4 KB a MountainCar sample (3 numbers): the object headers, not the
numbers. Here each field is one preallocated tensor that doubles when full, so a sample costs the
bytes of its numbers (4 a float32), and a batch is one indexing operation.
"""

from __future__ import annotations

import torch

INITIAL_CAPACITY = 1024


class SampleBuffer:
    """``(demonstration, observation, label)`` samples in append order, drawn by index.

    The shapes and dtypes of the observations and labels are those of the first sample appended.
    """

    def __init__(self, initial_capacity: int = INITIAL_CAPACITY) -> None:
        self._capacity = initial_capacity
        self._size = 0
        self._observations: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._demonstrations = torch.empty(initial_capacity, dtype=torch.bool)
        # The indexes of the demonstrations, for runs that train only on them.
        self._demonstration_indexes = torch.empty(initial_capacity, dtype=torch.int64)
        self._demonstration_count = 0

    def __len__(self) -> int:
        return self._size

    @property
    def demonstration_count(self) -> int:
        return self._demonstration_count

    def append(self, demonstration: bool, observation: torch.Tensor, label: torch.Tensor) -> None:
        if self._observations is None:
            self._observations = torch.empty((self._capacity, *observation.shape), dtype=observation.dtype)
            self._labels = torch.empty((self._capacity, *label.shape), dtype=label.dtype)
        if self._size == self._capacity:
            self._grow()
        self._observations[self._size] = observation
        self._labels[self._size] = label
        self._demonstrations[self._size] = demonstration
        if demonstration:
            self._demonstration_indexes[self._demonstration_count] = self._size
            self._demonstration_count += 1
        self._size += 1

    def _grow(self) -> None:
        self._capacity *= 2
        self._observations = _resized(self._observations, self._capacity, self._size)
        self._labels = _resized(self._labels, self._capacity, self._size)
        self._demonstrations = _resized(self._demonstrations, self._capacity, self._size)
        self._demonstration_indexes = _resized(self._demonstration_indexes, self._capacity, self._demonstration_count)

    def demonstration_indexes(self) -> torch.Tensor:
        """The indexes of the demonstrations, in append order (a view: valid until the next append)."""
        return self._demonstration_indexes[: self._demonstration_count]

    def batch(self, indexes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(demonstrations, observations, labels)`` of the samples at ``indexes`` (copies)."""
        if len(indexes) and int(indexes.max()) >= self._size:
            raise IndexError(f"sample {int(indexes.max())} asked of a buffer of {self._size}")
        return self._demonstrations[indexes], self._observations[indexes], self._labels[indexes]

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's tensors, spare capacity included."""
        tensors = [self._demonstrations, self._demonstration_indexes, self._observations, self._labels]
        return sum(tensor.element_size() * tensor.nelement() for tensor in tensors if tensor is not None)


def _resized(tensor: torch.Tensor, capacity: int, used: int) -> torch.Tensor:
    bigger = torch.empty((capacity, *tensor.shape[1:]), dtype=tensor.dtype)
    bigger[:used] = tensor[:used]
    return bigger
