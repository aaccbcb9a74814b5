"""Samplers: an infinite, seeded, rank-sharded index stream and aspect-ratio batch grouping."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import Sampler


class InfiniteSampler(Sampler[int]):
    """Endless stream of indices into a dataset of ``size`` items, for iteration-based training.

    Each pass is a fresh permutation from a generator seeded with ``seed`` (or ``0..size-1`` in
    order with ``shuffle=False``); the stream is sharded so that rank ``r`` of ``world_size``
    takes items ``r, r + world_size, ...``: the ranks see disjoint samples and the whole stream is
    identical for a given seed (as detectron2's TrainingSampler).
    """

    def __init__(
        self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if size <= 0:
            raise ValueError(f"InfiniteSampler needs a non-empty dataset, got size={size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def _stream(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=generator).tolist()
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._stream(), self.rank, None, self.world_size)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images all share a group (e.g. landscape vs portrait), to pad less.

    Wraps any index sampler (``RandomSampler``, ``DistributedSampler``, :class:`InfiniteSampler`)
    and buffers indices per group, yielding a batch when a group holds ``batch_size`` of them, as
    torchvision's reference GroupedBatchSampler and detectron2's AspectRatioGroupedDataset do.
    Over a finite sampler it yields exactly ``len(sampler) // batch_size`` batches, completing
    partial groups at the end with repeated indices of the same group, so every
    ``DistributedSampler`` rank runs the same number of steps.
    """

    def __init__(self, sampler: Iterable[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        seen: dict[int, list[int]] = defaultdict(list)
        yielded = 0
        for index in self.sampler:
            group = self.group_ids[index]
            buffers[group].append(index)
            seen[group].append(index)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
                yielded += 1
        if not hasattr(self.sampler, "__len__"):
            return
        remaining = len(self) - yielded
        # Complete the fullest partial groups by cycling through their own indices.
        partial = sorted(buffers.items(), key=lambda item: (-len(item[1]), item[0]))
        for group, batch in partial[:remaining]:
            batch.extend(
                itertools.islice(itertools.cycle(seen[group]), self.batch_size - len(batch))
            )
            yield batch

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size


def aspect_ratio_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """Group id per image: 0 for landscape or square (h/w ≤ 1), 1 for portrait (h/w > 1).

    The two groups detectron2 uses; padding a batch never mixes orientations.
    """
    return [int(ratio > 1.0) for ratio in aspect_ratios]
