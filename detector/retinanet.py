"""The RetinaNet network: backbone → FPN → shared heads, returning dense per-anchor outputs
(Lin et al., 2017, §4). Loss and post-processing are separate objects (criterion.py,
postprocess.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.anchors import AnchorGenerator
from detector.backbone import ResNetBackbone
from detector.fpn import FPN
from detector.head import RetinaNetHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UINT8_MAX = 255.0


class DenseOutputs(NamedTuple):
    """Raw outputs of the network, the same in training and inference.

    cls_logits: (N, R, K) classification logits. box_deltas: (N, R, 4) box deltas.
    anchors: (R, 4) xyxy float32, shared by the batch. num_anchors_per_level: L ints summing to R.
    image_sizes: (N, 2) int64 valid ``(h, w)`` of each image inside the padded input.
    """

    cls_logits: Tensor
    box_deltas: Tensor
    anchors: Tensor
    num_anchors_per_level: list[int]
    image_sizes: Tensor


class RetinaNet(nn.Module):
    """ResNet-FPN RetinaNet: normalise and pad images, run backbone, FPN and head.

    Args:
        backbone: returns ``[C3, C4, C5]`` (e.g. ``ResNetBackbone``).
        fpn: turns them into ``[P3, …, P7]`` (e.g. ``FPN``).
        head: maps the levels to (N, R, K) logits and (N, R, 4) deltas (``RetinaNetHead``).
        anchor_generator: anchors matching the head's ``(y, x, a)`` order.
        pixel_mean, pixel_std: RGB normalisation of images in [0, 1] (ImageNet statistics).
        size_divisibility: the padded batch is a multiple of this (128 = the P7 stride, so that
            every level's anchors cover the padded image exactly).
        channels_last: keep the convolution weights, and so the activations, in the
            channels_last (NHWC) memory format: the same values, but oneDNN (CPU) and cuDNN
            convolutions run faster on it, and the head's NCHW → (N, HWA, K) flattening becomes
            a view. ``model.to(memory_format=...)`` switches later; the input follows the weights
            in ``forward``, so this is the one place the memory format is decided (the engine's
            loop and evaluator do not convert).

    The model does not resize: resizing belongs to the data pipeline.
    """

    def __init__(
        self,
        backbone: ResNetBackbone | nn.Module,
        fpn: FPN | nn.Module,
        head: RetinaNetHead,
        anchor_generator: AnchorGenerator,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        size_divisibility: int = 128,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if head.num_anchors != anchor_generator.num_anchors_per_location:
            raise ValueError(
                f"RetinaNet: the head predicts {head.num_anchors} anchors per location but the "
                f"anchor generator makes {anchor_generator.num_anchors_per_location}"
            )
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        self.anchor_generator = anchor_generator
        self.size_divisibility = int(size_divisibility)
        self.register_buffer(
            "pixel_mean", torch.tensor([float(m) for m in pixel_mean]).view(1, 3, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor([float(s) for s in pixel_std]).view(1, 3, 1, 1), False
        )
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int:
        """K, foreground classes."""
        return self.head.num_classes

    def preprocess(
        self, images: Tensor | Sequence[Tensor], image_sizes: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Normalised batch (N, 3, H', W') zero outside each image, H', W' multiples of
        ``size_divisibility``; and the valid sizes (N, 2) int64."""
        device = self.pixel_mean.device
        if isinstance(images, Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(
                    f"RetinaNet: expected images (N, 3, H, W), got shape {tuple(images.shape)}"
                )
            batch = self._normalise(images.to(device))
            n, _, height, width = batch.shape
            if image_sizes is None:
                image_sizes = torch.tensor([[height, width]] * n, device=device)
            else:
                image_sizes = torch.as_tensor(image_sizes, device=device).to(torch.int64)
                if image_sizes.shape != (n, 2):
                    raise ValueError(
                        f"RetinaNet: image_sizes must be ({n}, 2), got {tuple(image_sizes.shape)}"
                    )
                # Normalise, then zero the padding, as torchvision (which pads after normalising).
                rows = torch.arange(height, device=device) < image_sizes[:, :1]
                cols = torch.arange(width, device=device) < image_sizes[:, 1:]
                batch = batch * (rows[:, None, :, None] & cols[:, None, None, :])
        else:
            images = list(images)
            if not images:
                raise ValueError("RetinaNet: got an empty list of images")
            for i, img in enumerate(images):
                if img.dim() != 3 or img.shape[0] != 3:
                    raise ValueError(
                        f"RetinaNet: image {i} must be (3, H, W), got shape {tuple(img.shape)}"
                    )
            height = max(img.shape[1] for img in images)
            width = max(img.shape[2] for img in images)
            batch = torch.zeros(len(images), 3, height, width, device=device)
            for i, img in enumerate(images):
                batch[i, :, : img.shape[1], : img.shape[2]] = self._normalise(img.to(device)[None])[
                    0
                ]
            image_sizes = torch.tensor([list(img.shape[1:]) for img in images], device=device)
        d = self.size_divisibility
        pad_h, pad_w = -batch.shape[2] % d, -batch.shape[3] % d
        # Exported graphs pad unconditionally: a branch on the size would fix the exported size.
        if torch.compiler.is_exporting() or torch.jit.is_tracing() or pad_h or pad_w:
            batch = F.pad(batch, (0, pad_w, 0, pad_h))
        return batch, image_sizes

    def _normalise(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            # Scale inside the normalisation: (x / 255 - mean) / std in one pass.
            return (images.float() - self.pixel_mean * UINT8_MAX) / (self.pixel_std * UINT8_MAX)
        if not images.is_floating_point():
            raise ValueError(
                f"RetinaNet: images must be float in [0, 1] or uint8, got {images.dtype}"
            )
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(
        self, images: Tensor | Sequence[Tensor], image_sizes: Tensor | None = None
    ) -> DenseOutputs:
        """Dense outputs for ``images``: a list of (3, H_i, W_i) or a batch (N, 3, H, W), float
        in [0, 1] or uint8; ``image_sizes`` (N, 2) gives each image's valid ``(h, w)``."""
        batch, image_sizes = self.preprocess(images, image_sizes)
        first_conv = next(self.backbone.parameters())
        if first_conv.dim() == 4 and first_conv.is_contiguous(memory_format=torch.channels_last):
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.fpn(self.backbone(batch))
        cls_logits, box_deltas = self.head(features)
        anchors, per_level = self.anchor_generator.anchors_and_counts(
            [tuple(f.shape[-2:]) for f in features], batch.device, tuple(batch.shape[-2:])
        )
        if anchors.shape[0] != cls_logits.shape[1]:
            raise RuntimeError(
                f"RetinaNet: {anchors.shape[0]} anchors for {cls_logits.shape[1]} head outputs; "
                "the anchor generator's levels or ratios do not match the head"
            )
        return DenseOutputs(cls_logits, box_deltas, anchors, per_level, image_sizes)
