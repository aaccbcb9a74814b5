"""collate, samplers and loaders."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from torch.utils.data import DistributedSampler, SequentialSampler

from data.coco import CocoDetection
from data.loader import Batch, build_test_loader, build_train_loader, collate
from data.samplers import GroupedBatchSampler, InfiniteSampler, aspect_ratio_groups
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
