"""Losses of the focal-loss paper (Lin et al., 2017): focal loss, FL*, and box regression losses."""

from detector.labeling import BACKGROUND, IGNORE
from losses.box import GIoUBoxLoss, SmoothL1BoxLoss, giou_loss, smooth_l1_loss
from losses.focal import FocalLoss, sigmoid_focal_loss, sigmoid_focal_loss_labels
from losses.focal_star import FocalLossStar, focal_loss_star, focal_loss_star_labels

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "FocalLoss",
    "FocalLossStar",
    "GIoUBoxLoss",
    "SmoothL1BoxLoss",
    "focal_loss_star",
    "focal_loss_star_labels",
    "giou_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_labels",
    "smooth_l1_loss",
]
