"""Figure 4 of Lin et al. (2017): the cumulative distribution of the focal loss over positive and
negative anchors of a trained model, for several γ (§5.1, "Analysis of the Focal Loss").

The paper applies a model trained with γ = 2 to many images, computes the focal loss of every
positive and every negative sample for γ ∈ {0, .5, 1, 2} (γ varies in the loss only, the model is
fixed), normalises each group's loss to sum to one, sorts it from low to high and plots the
cumulative sum against the fraction of samples. α is constant within each group, so it cancels in
the normalisation and is left out. A sample here is an anchor (labelled by the training run's
``AnchorLabeler``) and its loss is the sum over the K binary classifiers, as the criterion sums it;
``IGNORE`` anchors are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detector.labeling import BACKGROUND, AnchorLabeler
from detector.matcher import Matcher
from detector.paper.figures import pyplot, save
from detector.retinanet import DenseOutputs
from losses.focal import sigmoid_focal_loss_labels

GAMMAS = (0.0, 0.5, 1.0, 2.0)
"""The γ values of Figure 4."""

GROUPS = ("positive", "negative")

MATCHER_SETTINGS = ("fg_iou_thresh", "bg_iou_thresh", "allow_low_quality_matches")
"""The ``Matcher`` arguments read from a training config."""

PLOT_POINTS = 2000
"""Points drawn per curve (evenly spaced along the sorted samples)."""


@dataclass
class LossSamples:
    """Per-anchor losses by group (``"positive"``, ``"negative"``) and γ, each a 1-D tensor."""

    gammas: tuple[float, ...]
    losses: dict[str, dict[float, list[Tensor]]] = field(default_factory=dict)

    def add(self, group: str, gamma: float, values: Tensor) -> None:
        self.losses.setdefault(group, {}).setdefault(gamma, []).append(values.double().cpu())

    def get(self, group: str, gamma: float) -> Tensor:
        """All losses of ``group`` for ``gamma``, float64 ``(S,)``."""
        parts = self.losses.get(group, {}).get(gamma, [])
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def anchor_losses(logits: Tensor, labels: Tensor, gamma: float) -> Tensor:
    """Focal loss without α of each anchor, summed over classes: ``(M,)`` from ``(M, K)``, ``(M,)``.

    In the logits' dtype (``reduction="none"``); the model runs without autocast here.
    """
    per_element = sigmoid_focal_loss_labels(
        logits, labels, alpha=None, gamma=gamma, reduction="none"
    )
    return per_element.sum(dim=1)


def labeler_from_config(config: Mapping[str, Any]) -> AnchorLabeler:
    """The labeler of a training run from its resolved config (a checkpoint's ``config``).

    Only the matcher's settings are read (``criterion.labeler.matcher``, or
    ``criterion.matcher`` in configs written before the labeler existed); no ``_target_`` from
    the file is built. Without either node the paper's matcher (0.5 / 0.4) is used.
    """
    criterion = config.get("criterion") or {}
    node = (criterion.get("labeler") or {}).get("matcher") or criterion.get("matcher") or {}
    return AnchorLabeler(Matcher(**{k: node[k] for k in MATCHER_SETTINGS if k in node}))


@torch.no_grad()
def add_batch(
    samples: LossSamples,
    outputs: DenseOutputs,
    targets: Sequence[dict],
    labeler: AnchorLabeler,
) -> None:
    """Label one batch's anchors with ``labeler`` and record their losses."""
    for logits, target in zip(outputs.cls_logits, targets, strict=True):
        labels = labeler(outputs.anchors, target)[0]
        masks = {"positive": labels >= 0, "negative": labels == BACKGROUND}
        for gamma in samples.gammas:
            losses = anchor_losses(logits, labels, gamma)
            for group, mask in masks.items():
                samples.add(group, gamma, losses[mask])


@torch.no_grad()
def collect(
    model: nn.Module,
    labeler: AnchorLabeler,
    loader: Iterable,
    device: torch.device,
    gammas: Sequence[float] = GAMMAS,
    max_images: int | None = None,
) -> LossSamples:
    """Losses of every anchor of the images in ``loader`` (``data.Batch``es), model in eval mode."""
    model.eval()
    samples = LossSamples(tuple(float(g) for g in gammas))
    seen = 0
    for batch in loader:
        if max_images is not None and seen >= max_images:
            break
        targets = batch.targets
        images, sizes = batch.images, batch.image_sizes
        if max_images is not None and seen + len(targets) > max_images:
            keep = max_images - seen
            images, sizes, targets = images[:keep], sizes[:keep], targets[:keep]
        outputs = model(images.to(device), sizes.to(device))
        device_targets = [
            {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets
        ]
        add_batch(samples, outputs, device_targets, labeler)
        seen += len(targets)
    return samples


def cumulative_loss(losses: Tensor) -> tuple[Tensor, Tensor]:
    """``(fraction of samples, normalised cumulative loss)``, both float64 ``(S,)``.

    The losses are sorted from low to high; point ``i`` is ``((i + 1) / S, sum of the i + 1
    smallest / total)``. A group whose losses are all zero has a cumulative loss of zero.
    """
    ordered = losses.double().flatten().sort().values
    count = ordered.numel()
    fraction = torch.arange(1, count + 1, dtype=torch.float64) / max(count, 1)
    cumulative = ordered.cumsum(0)
    total = cumulative[-1] if count else torch.tensor(0.0, dtype=torch.float64)
    return fraction, cumulative / total if total > 0 else torch.zeros_like(cumulative)


def share_of_hardest(losses: Tensor, fraction: float) -> float:
    """Share of the total loss held by the hardest ``fraction`` of samples (0 if no loss)."""
    _, cumulative = cumulative_loss(losses)
    if cumulative.numel() == 0 or cumulative[-1] == 0:
        return 0.0
    easy = int(round((1 - fraction) * cumulative.numel()))
    return float(1 - (cumulative[easy - 1] if easy > 0 else 0.0))


def summary(samples: LossSamples, fraction: float = 0.2) -> str:
    """One line per group and γ: the sample count and the hardest ``fraction``'s loss share."""
    lines = []
    for group in GROUPS:
        for gamma in samples.gammas:
            losses = samples.get(group, gamma)
            share = share_of_hardest(losses, fraction)
            lines.append(
                f"{group:8s} γ={gamma:g}: {losses.numel()} anchors, hardest {fraction:.0%} hold "
                f"{share:.1%} of the loss"
            )
    return "\n".join(lines)


def plot(samples: LossSamples, path: str | Path) -> Path:
    """Figure 4's two panels (positive, negative samples): one curve per γ, as a PNG."""
    plt = pyplot()
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, group in zip(axes, GROUPS, strict=True):
        for gamma in samples.gammas:
            fraction, cumulative = cumulative_loss(samples.get(group, gamma))
            if fraction.numel() > PLOT_POINTS:
                index = torch.linspace(0, fraction.numel() - 1, PLOT_POINTS).round().long()
                fraction, cumulative = fraction[index], cumulative[index]
            ax.plot(fraction.numpy(), cumulative.numpy(), label=f"γ = {gamma:g}")
        count = samples.get(group, samples.gammas[0]).numel()
        ax.set_title(f"{group} samples ({count} anchors)")
        ax.set_xlabel(f"fraction of {group} samples")
        ax.set_ylabel("cumulative normalized loss")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    return save(fig, path)
