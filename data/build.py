"""Datasets from a composed config (``cfg.data``): generate the synthetic set when the config says
how, then build each split with its transform pipeline.

Training, evaluation and the paper tools all build their datasets here, so none of them imports
the training engine to read a dataset.
"""

from __future__ import annotations

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from data.coco import CocoDetection
from data.ranks import rank_and_world_size
from data.synthetic import ensure_synthetic
from data.transforms import build_transforms
from data.validate import DatasetError


def prepare_data(cfg: DictConfig) -> None:
    """Generate the dataset when the config says how (``data.generate``) and it is missing.

    Under ``torch.distributed`` rank 0 generates while the others wait, then every rank reads the
    same files.
    """
    generate = cfg.data.get("generate")
    rank, world_size = rank_and_world_size()
    if generate is not None and rank == 0:
        ensure_synthetic(cfg.data.root, **OmegaConf.to_container(generate, resolve=True))
    if world_size > 1:
        dist.barrier()


def build_dataset(cfg: DictConfig, split: str, seed: int = 0) -> CocoDetection:
    """The ``data.<split>`` dataset with its transform pipeline (random only for ``train``,
    seeded with ``seed``), its images checked at start (``data.bad_image_policy``)."""
    node = cfg.data[split]
    transforms = build_transforms(node.transforms, train=split == "train", seed=seed)
    return CocoDetection(
        node.ann_file,
        node.img_dir,
        transforms=transforms,
        bad_box_policy=cfg.data.get("bad_box_policy", "warn"),
        check_images=True,
        bad_image_policy=cfg.data.get("bad_image_policy", "error"),
    )


def build_train_val(cfg: DictConfig, seed: int = 0) -> tuple[CocoDetection, CocoDetection]:
    """The ``train`` (augmentations seeded with ``seed``) and ``val`` datasets, which must list
    the same categories (else :class:`~data.validate.DatasetError` naming both files)."""
    train_set = build_dataset(cfg, "train", seed=seed)
    val_set = build_dataset(cfg, "val")
    if val_set.classes != train_set.classes:
        raise DatasetError(
            f"{cfg.data.val.ann_file} and {cfg.data.train.ann_file} list different categories"
        )
    return train_set, val_set
