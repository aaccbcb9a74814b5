"""Samplers: an infinite, seeded, rank-sharded index stream and aspect-ratio batch grouping."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

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


class StreamItem(NamedTuple):
    """One draw of the training stream: dataset ``index`` at ``position`` in the stream that all
    ranks share (the ``position``-th index the seeded permutations produce)."""

    index: int
    position: int


class PositionedSampler(Sampler[StreamItem]):
    """The indices of an :class:`InfiniteSampler`, each with its global position in the stream.

    Rank ``r`` of ``world_size`` takes positions ``r, r + world_size, ...``, so a position names
    one draw whatever the number of ranks; seeding a sample's augmentation with it (see
    ``data.loader.SeededSamples``) makes the augmentation a function of (seed, position), not of
    a generator's history.
    """

    def __init__(self, sampler: InfiniteSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[StreamItem]:
        rank, world_size = self.sampler.rank, self.sampler.world_size
        for count, index in enumerate(self.sampler):
            yield StreamItem(index, rank + count * world_size)


class SkipBatches(Sampler[list]):
    """A batch sampler without the first ``count`` batches of ``batch_sampler`` (a run resumed
    after ``count`` steps).

    The batches are replayed from the start and dropped as index lists (no image of a skipped
    batch is decoded), so what depends on history, such as the buffers of
    :class:`GroupedBatchSampler`, is rebuilt exactly.
    """

    def __init__(self, batch_sampler: Iterable[list], count: int) -> None:
        if count < 0:
            raise ValueError(f"cannot skip a negative number of batches: {count}")
        self.batch_sampler = batch_sampler
        self.count = count

    def __iter__(self) -> Iterator[list]:
        return itertools.islice(iter(self.batch_sampler), self.count, None)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images all share a group (e.g. landscape vs portrait), to pad less.

    Wraps any index sampler (``RandomSampler``, ``DistributedSampler``, :class:`InfiniteSampler`)
    and buffers indices per group, yielding a batch when a group holds ``batch_size`` of them, as
    torchvision's reference GroupedBatchSampler and detectron2's AspectRatioGroupedDataset do.
    Over a finite sampler it yields exactly ``len(sampler) // batch_size`` batches, completing
    partial groups at the end with repeated indices of the same group, so every
    ``DistributedSampler`` rank runs the same number of steps. The items may also be
    :class:`StreamItem` items (grouped by their ``index``); batches then hold the items.
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
            group = self.group_ids[index.index if isinstance(index, StreamItem) else index]
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
