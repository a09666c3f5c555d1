"""Batches: Poisson sampling (DP) or shuffled mini-batches (non-private), empty batches kept."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate


class PoissonBatches:
    """``steps`` batches per pass, each record included independently with probability ``q``.

    The generator is the run's SECRET sampler generator: the batches must not be predictable
    from anything released (a known sampler removes the amplification by subsampling).
    An empty batch is yielded as an empty list (the engine takes a noise-only step for it).
    """

    def __init__(self, n: int, q: float, steps: int, generator: torch.Generator):
        self.n, self.q, self.steps, self.generator = int(n), float(q), int(steps), generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = torch.rand(self.n, generator=self.generator) < self.q
            yield mask.nonzero().flatten().tolist()


class ShuffledBatches:
    """Non-private: a fresh permutation per pass, cut into ``ceil(N / B)`` batches."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = int(n), int(batch_size), generator

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=self.generator).tolist()
        for i in range(0, self.n, self.batch_size):
            yield perm[i:i + self.batch_size]


def collate_or_none(items: list) -> Any:
    """``default_collate``, or ``None`` for an empty Poisson batch."""
    return default_collate(items) if items else None


def make_loader(dataset: Dataset, batches, num_workers: int, device: torch.device | None = None) -> DataLoader:
    """A loader over ``batches`` (index lists); worker processes change neither order nor values.
    For a CUDA ``device`` batches come in pinned memory, so :func:`to_device` copies them
    asynchronously while the GPU is still busy with the previous step."""
    pin = device is not None and torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_or_none, num_workers=int(num_workers),
                      pin_memory=pin)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=batch.is_pinned())
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)):
        return batch_len(batch[0])
    if isinstance(batch, dict):
        return batch_len(next(iter(batch.values())))
    raise TypeError(f"cannot find the batch size of {type(batch).__name__}")


def split_batch(batch: Any, size: int) -> list:
    """Physical chunks of at most ``size`` rows (every tensor of the batch cut alike)."""
    n = batch_len(batch)
    return [_slice(batch, i, min(i + size, n)) for i in range(0, n, size)]


def _slice(batch: Any, i: int, j: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[i:j]
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice(b, i, j) for b in batch)
    if isinstance(batch, dict):
        return {k: _slice(v, i, j) for k, v in batch.items()}
    return batch
