"""Batching and data loaders for training (infinite, seeded) and evaluation (ordered)."""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler as TorchBatchSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from data.ranks import rank_and_world_size
from data.samplers import GroupedBatchSampler, InfiniteSampler, aspect_ratio_groups


class Batch(NamedTuple):
    """A padded batch.

    ``images``: uint8 ``(N, 3, H, W)``, each image at the top-left, zeros elsewhere (H, W the
    largest height and width in the batch); ``image_sizes``: int64 ``(N, 2)`` valid ``(h, w)``;
    ``targets``: the N target dicts as the dataset returned them.
    """

    images: torch.Tensor
    image_sizes: torch.Tensor
    targets: list[dict[str, Any]]

    def pin_memory(self) -> Batch:
        """Called by the DataLoader with ``pin_memory=True``."""
        return Batch(self.images.pin_memory(), self.image_sizes.pin_memory(), self.targets)


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> Batch:
    """Pad ``(3, Hi, Wi)`` uint8 images into one zero-filled ``(N, 3, H, W)`` tensor.

    The model pads further to its ``size_divisibility`` and zeroes the padding after normalising.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    images = [image for image, _ in batch]
    sizes = torch.tensor([tuple(image.shape[-2:]) for image in images], dtype=torch.int64)
    height, width = sizes.max(dim=0).values.tolist()
    padded = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for out, image in zip(padded, images, strict=True):
        out[:, : image.shape[1], : image.shape[2]].copy_(image)
    return Batch(padded, sizes, [target for _, target in batch])


class _WorkerSeeder:
    """``worker_init_fn``: seeds Python, NumPy, torch and the dataset's albumentations pipeline.

    Worker ``w`` of rank ``r`` gets ``seed + 1000 * r + w``; batches go to workers round-robin in
    a fixed order, so a run is reproducible for a given seed and number of workers. OpenCV is
    set single-threaded (its threads would oversubscribe the cores the workers already share).
    """

    def __init__(self, seed: int, rank: int) -> None:
        self.seed = seed
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        seed_everything(self.seed + 1000 * self.rank + worker_id)
        cv2.setNumThreads(1)
        info = torch.utils.data.get_worker_info()
        transforms = getattr(info.dataset, "transforms", None) if info else None
        if hasattr(transforms, "set_random_seed"):
            transforms.set_random_seed(self.seed + 1000 * self.rank + worker_id)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _loader_kwargs(num_workers: int, pin_memory: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "collate_fn": collate,
    }
    if num_workers > 0:
        # forkserver, not fork: a worker forked from a process whose OpenCV or OpenMP thread pools
        # are running can deadlock on its first resize.
        kwargs.update(
            persistent_workers=True, prefetch_factor=2, multiprocessing_context="forkserver"
        )
    return kwargs


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    aspect_ratio_grouping: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """Infinite loader of :class:`Batch` for iteration-based training.

    ``batch_size`` is per process. Indices come from a seeded :class:`InfiniteSampler` sharded over
    the ``torch.distributed`` ranks (when initialised); with ``aspect_ratio_grouping`` batches hold
    only landscape or only portrait images (needs ``dataset.aspect_ratios()``). Iterate it with
    ``iter()`` once and call ``next`` per step; it never ends.
    """
    rank, world_size = rank_and_world_size()
    sampler = InfiniteSampler(
        len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size
    )
    if aspect_ratio_grouping:
        groups = aspect_ratio_groups(dataset.aspect_ratios())
        batch_sampler = GroupedBatchSampler(sampler, groups, batch_size)
    else:
        batch_sampler = TorchBatchSampler(sampler, batch_size, drop_last=True)
    transforms = getattr(dataset, "transforms", None)
    if hasattr(transforms, "set_random_seed"):
        transforms.set_random_seed(seed + 1000 * rank)  # used as is when num_workers == 0
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        worker_init_fn=_WorkerSeeder(seed, rank),
        generator=torch.Generator().manual_seed(seed),
        **_loader_kwargs(num_workers, pin_memory),
    )


def build_test_loader(
    dataset: Dataset,
    batch_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    distributed: bool | None = None,
) -> DataLoader:
    """Finite, ordered loader of :class:`Batch` for evaluation.

    With ``distributed`` (default: whether ``torch.distributed`` is initialised) each rank gets a
    strided shard via ``DistributedSampler(shuffle=False)``, which pads with repeats to equal
    lengths; the evaluator deduplicates by ``image_id``.
    """
    rank, world_size = rank_and_world_size()
    if distributed is None:
        distributed = world_size > 1
    if distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False
        )
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=False,
        **_loader_kwargs(num_workers, pin_memory),
    )
