"""collate, samplers and loaders."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from torch.utils.data import DistributedSampler, SequentialSampler

from data.coco import CocoDetection
from data.loader import Batch, build_test_loader, build_train_loader, collate
from data.samplers import (
    GroupedBatchSampler,
    InfiniteSampler,
    PositionedSampler,
    SkipBatches,
    StreamItem,
    aspect_ratio_groups,
)
from data.transforms import build_transforms


def test_collate_pads_with_zeros():
    a = torch.full((3, 2, 5), 7, dtype=torch.uint8)
    b = torch.full((3, 4, 3), 9, dtype=torch.uint8)
    batch = collate([(a, {"image_id": 1}), (b, {"image_id": 2})])
    assert isinstance(batch, Batch)
    assert batch.images.shape == (2, 3, 4, 5) and batch.images.dtype == torch.uint8
    assert batch.image_sizes.tolist() == [[2, 5], [4, 3]] and batch.image_sizes.dtype == torch.int64
    assert (batch.images[0, :, :2, :] == 7).all() and (batch.images[0, :, 2:, :] == 0).all()
    assert (batch.images[1, :, :, :3] == 9).all() and (batch.images[1, :, :, 3:] == 0).all()
    assert [t["image_id"] for t in batch.targets] == [1, 2]
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_infinite_sampler_seeded_and_sharded():
    full = list(itertools.islice(iter(InfiniteSampler(5, seed=3)), 20))
    assert sorted(full[:5]) == list(range(5)) and sorted(full[5:10]) == list(range(5))
    assert full == list(itertools.islice(iter(InfiniteSampler(5, seed=3)), 20))
    assert full != list(itertools.islice(iter(InfiniteSampler(5, seed=4)), 20))
    rank0 = list(itertools.islice(iter(InfiniteSampler(5, seed=3, rank=0, world_size=2)), 10))
    rank1 = list(itertools.islice(iter(InfiniteSampler(5, seed=3, rank=1, world_size=2)), 10))
    assert rank0 == full[0::2] and rank1 == full[1::2]
    with pytest.raises(ValueError, match="rank 2 is not in"):
        InfiniteSampler(5, rank=2, world_size=2)


def test_grouped_batches_are_pure_and_counted():
    groups = [0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0]  # 7 in group 0, 4 in group 1
    sampler = GroupedBatchSampler(SequentialSampler(range(11)), groups, batch_size=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 11 // 3
    assert batches[:2] == [[0, 2, 3], [1, 4, 6]]  # full groups in stream order
    assert batches[2] == [5, 7, 8]
    for batch in batches:
        assert len(batch) == 3 and len({groups[i] for i in batch}) == 1


def test_grouped_batches_complete_partial_groups_at_the_end():
    groups = [0, 1, 0, 1, 0, 1]  # 3 + 3 with batch 2: one leftover per group
    batches = list(GroupedBatchSampler(SequentialSampler(range(6)), groups, batch_size=2))
    assert batches == [[0, 2], [1, 3], [4, 0]]
    assert Counter(len(b) for b in batches) == {2: 3}


def test_grouped_over_distributed_sampler():
    groups = [i % 3 == 0 for i in range(23)]
    per_rank = []
    for rank in range(2):
        sampler = DistributedSampler(range(23), num_replicas=2, rank=rank, shuffle=True, seed=1)
        grouped = GroupedBatchSampler(sampler, [int(g) for g in groups], batch_size=4)
        batches = list(grouped)
        assert len(batches) == len(grouped) == 12 // 4
        assert all(len({groups[i] for i in batch}) == 1 for batch in batches)
        per_rank.append({i for b in batches for i in b})
    assert per_rank[0].isdisjoint(per_rank[1])


def test_grouped_over_infinite_sampler_never_ends():
    grouped = GroupedBatchSampler(InfiniteSampler(5, seed=0), [0, 1, 0, 1, 0], batch_size=2)
    batches = list(itertools.islice(iter(grouped), 50))
    assert len(batches) == 50
    with pytest.raises(TypeError):
        len(grouped)


def test_aspect_ratio_groups():
    assert aspect_ratio_groups([0.5, 1.0, 1.5]) == [0, 0, 1]


def test_train_loader_deterministic_and_grouped(tiny_coco):
    ann_file, img_dir, _ = tiny_coco
    nodes = [
        {
            "_target_": "data.transforms.ResizeShortestEdge",
            "short_sizes": [20, 40],
            "max_size": 200,
        },
        {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
    ]

    def first_batches(num_workers):
        dataset = CocoDetection(ann_file, img_dir, transforms=build_transforms(nodes))
        loader = build_train_loader(dataset, batch_size=2, num_workers=num_workers, seed=5)
        stream = iter(loader)
        return [next(stream) for _ in range(4)]

    runs = [first_batches(0), first_batches(0), first_batches(1)]
    for batches in runs:
        for batch in batches:
            ratios = {t["orig_size"][0] > t["orig_size"][1] for t in batch.targets}
            assert len(ratios) == 1  # landscape and portrait never mixed
    for batch_a, batch_b in zip(runs[0], runs[1], strict=True):
        assert torch.equal(batch_a.images, batch_b.images)
        for ta, tb in zip(batch_a.targets, batch_b.targets, strict=True):
            assert torch.equal(ta["boxes"], tb["boxes"])
    assert [t["image_id"] for b in runs[0] for t in b.targets] == [
        t["image_id"] for b in runs[2] for t in b.targets
    ]


def test_test_loader_keeps_order(tiny_coco):
    ann_file, img_dir, _ = tiny_coco
    eval_nodes = [{"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": 20}]
    dataset = CocoDetection(ann_file, img_dir, transforms=build_transforms(eval_nodes, train=False))
    batches = list(build_test_loader(dataset, batch_size=2))
    assert [t["image_id"] for b in batches for t in b.targets] == [10, 20, 30]
    assert batches[0].image_sizes.tolist() == [[20, 30], [33, 20]]
    assert batches[0].images.shape == (2, 3, 33, 30)


def test_skipped_grouped_batches_replay_the_uninterrupted_stream():
    # Aspect-ratio buffering makes a batch depend on every earlier index: skipping must rebuild
    # the buffers, not start them empty at the resume point.
    groups = [0, 1, 1, 0, 1, 0, 0]
    grouped = GroupedBatchSampler(PositionedSampler(InfiniteSampler(7, seed=2)), groups, 3)
    straight = list(itertools.islice(iter(grouped), 12))
    assert list(itertools.islice(iter(SkipBatches(grouped, 5)), 7)) == straight[5:]
    assert all(len({groups[i.index] for i in batch}) == 1 for batch in straight)
    # Positions count the shared stream: each appears once, in stream order within a group.
    positions = sorted(item.position for batch in straight for item in batch)
    assert positions == sorted(set(positions)) and positions[0] == 0
    with pytest.raises(ValueError, match="cannot skip a negative number of batches: -1"):
        SkipBatches(grouped, -1)


def test_positions_are_global_over_ranks():
    full = list(itertools.islice(iter(PositionedSampler(InfiniteSampler(5, seed=3))), 10))
    assert full == [StreamItem(index, position) for position, index in enumerate(
        itertools.islice(iter(InfiniteSampler(5, seed=3)), 10)
    )]  # fmt: skip
    rank1 = PositionedSampler(InfiniteSampler(5, seed=3, rank=1, world_size=2))
    assert list(itertools.islice(iter(rank1), 5)) == full[1::2]


FLIP_AND_SCALE = [
    {"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [20, 40], "max_size": 200},
    {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
]


def _batches(tiny_coco, num_workers: int, start_batch: int, count: int) -> list[Batch]:
    ann_file, img_dir, _ = tiny_coco
    dataset = CocoDetection(ann_file, img_dir, transforms=build_transforms(FLIP_AND_SCALE))
    loader = build_train_loader(
        dataset, batch_size=2, num_workers=num_workers, seed=5, start_batch=start_batch
    )
    stream = iter(loader)
    return [next(stream) for _ in range(count)]


def test_resumed_loader_gives_the_same_augmented_batches_with_any_workers(tiny_coco):
    straight = _batches(tiny_coco, num_workers=0, start_batch=0, count=8)
    boxes = [t["boxes"] for b in straight for t in b.targets if len(t["boxes"])]
    # The augmentation is random: both flips of the asymmetric image 10 and both scales occur.
    flipped = {float(t["boxes"][0, 0]) for b in straight for t in b.targets if t["image_id"] == 10}
    assert len(flipped) >= 3 and len({tuple(b.images.shape[-2:]) for b in straight}) >= 2
    assert boxes
    for num_workers in (0, 2):
        resumed = _batches(tiny_coco, num_workers=num_workers, start_batch=5, count=3)
        for a, b in zip(straight[5:], resumed, strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.image_sizes, b.image_sizes)
            for ta, tb in zip(a.targets, b.targets, strict=True):
                assert ta["image_id"] == tb["image_id"]
                assert torch.equal(ta["boxes"], tb["boxes"])


def test_train_loader_needs_a_reseedable_pipeline(tiny_coco):
    ann_file, img_dir, _ = tiny_coco
    dataset = CocoDetection(ann_file, img_dir, transforms=lambda **data: data)
    with pytest.raises(TypeError, match="must be an albumentations pipeline .* got function"):
        build_train_loader(dataset, batch_size=2)
