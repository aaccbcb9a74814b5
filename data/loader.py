"""Batching and data loaders for training (infinite, seeded) and evaluation (ordered)."""

from __future__ import annotations

import ctypes
import os
import random
import select
import signal
import sys
import threading
from typing import Any, NamedTuple

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler as TorchBatchSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from data.ranks import rank_and_world_size
from data.samplers import (
    GroupedBatchSampler,
    InfiniteSampler,
    PositionedSampler,
    SkipBatches,
    StreamItem,
    aspect_ratio_groups,
)
from data.transforms import reseed


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


class SeededSamples(Dataset):
    """The training view of ``dataset``: item :class:`~data.samplers.StreamItem` ``(index,
    position)`` is ``dataset[index]`` with its augmentation drawn from ``(seed, position)``.

    Every random choice of the pipeline is then a function of the seed and the sample's position
    in the stream, not of a generator's history: a resumed run, any number of workers (a batch
    may go to any of them) and a change of worker count all see the same augmentations.
    ``dataset.transforms`` must be ``None`` or an albumentations pipeline
    (:func:`data.transforms.build_transforms`).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        transforms = getattr(dataset, "transforms", None)
        if transforms is not None and not isinstance(transforms, A.BaseCompose):
            raise TypeError(
                f"training transforms must be an albumentations pipeline (build_transforms), so "
                f"that each sample's augmentation can be seeded; got {type(transforms).__name__}"
            )
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: StreamItem) -> Any:
        transforms = getattr(self.dataset, "transforms", None)
        if transforms is not None:
            reseed(transforms, self.seed, item.position)
        return self.dataset[item.index]


class _DieWithTrainer:
    """``worker_init_fn`` of the evaluation loader: the worker ends with the process that built
    the loader (:func:`die_with`)."""

    def __init__(self) -> None:
        self.trainer_pid = os.getpid()

    def __call__(self, worker_id: int) -> None:
        die_with(self.trainer_pid)


class _WorkerInit(_DieWithTrainer):
    """``worker_init_fn`` of the training loader: seeds Python, NumPy and torch, and the worker
    ends with the trainer.

    Worker ``w`` of rank ``r`` gets ``seed + 1000 * r + w`` for the global generators (the
    augmentation draws from its own, see :class:`SeededSamples`). OpenCV is set single-threaded
    (its threads would oversubscribe the cores the workers already share).
    """

    def __init__(self, seed: int, rank: int) -> None:
        super().__init__()
        self.seed = seed
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        seed_everything(self.seed + 1000 * self.rank + worker_id)
        cv2.setNumThreads(1)
        super().__call__(worker_id)


def die_with(pid: int) -> None:
    """End this process (SIGKILL) as soon as process ``pid`` or this process's parent ends.

    A forkserver worker's parent is the forkserver, not the trainer, and the forkserver lives as
    long as a worker holds its "alive" pipe (each worker inherits it): after a ``kill -9`` of the
    trainer, torch's own watchdog (which watches the parent) would wait for ever, the workers
    (~1 GB each), the forkserver and the resource tracker with it. So the worker watches the
    trainer itself, from a daemon thread blocked on a pidfd (readable when ``pid`` exits), and
    asks the kernel for SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``). Once the
    workers are gone, the forkserver and the resource tracker see their pipes close and exit.
    """
    if sys.platform != "linux":
        return  # torch's watchdog remains (the worker ends when its parent does)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:  # the trainer died before this worker started
        os.kill(os.getpid(), signal.SIGKILL)
        return
    except OSError:  # no pidfd (Linux < 5.3, or a sandbox refuses it): the parent-death signal
        return

    def watch() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="focaldet-trainer-watch", daemon=True).start()


_PR_SET_PDEATHSIG = 1
"""``prctl`` option of <linux/prctl.h>: the signal to receive when the parent thread ends."""


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
    start_batch: int = 0,
) -> DataLoader:
    """Infinite loader of :class:`Batch` for iteration-based training.

    ``batch_size`` is per process. Indices come from a seeded :class:`InfiniteSampler` sharded over
    the ``torch.distributed`` ranks (when initialised); with ``aspect_ratio_grouping`` batches hold
    only landscape or only portrait images (needs ``dataset.aspect_ratios()``). Each sample's
    augmentation is seeded with ``(seed, its position in the stream)`` (:class:`SeededSamples`).
    ``start_batch`` skips the batches a resumed run has already trained on: the loader then gives
    exactly the batches, augmentations included, that follow them in an uninterrupted run,
    whatever ``num_workers`` either run used. Iterate it with ``iter()`` once and call ``next``
    per step; it never ends.
    """
    rank, world_size = rank_and_world_size()
    sampler = PositionedSampler(
        InfiniteSampler(len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size)
    )
    if aspect_ratio_grouping:
        groups = aspect_ratio_groups(dataset.aspect_ratios())
        batch_sampler = GroupedBatchSampler(sampler, groups, batch_size)
    else:
        batch_sampler = TorchBatchSampler(sampler, batch_size, drop_last=True)
    return DataLoader(
        SeededSamples(dataset, seed),
        batch_sampler=SkipBatches(batch_sampler, start_batch),
        worker_init_fn=_WorkerInit(seed, rank),
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
        worker_init_fn=_DieWithTrainer(),
        **_loader_kwargs(num_workers, pin_memory),
    )
