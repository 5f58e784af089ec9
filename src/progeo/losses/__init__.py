"""Training losses: CosFace classifier, SupCon (stage 1), label-smoothed CE and soft triplet (stage 2)."""

from progeo.losses.cosface import CosFace
from progeo.losses.label_smoothing import LabelSmoothingCrossEntropy, label_smoothed_cross_entropy
from progeo.losses.supcon import SupConLoss, image_text_supcon, supcon_loss
from progeo.losses.triplet import SoftTripletLoss, pairwise_distances, soft_triplet_loss

__all__ = [
    "CosFace",
    "LabelSmoothingCrossEntropy",
    "label_smoothed_cross_entropy",
    "SupConLoss",
    "image_text_supcon",
    "supcon_loss",
    "SoftTripletLoss",
    "pairwise_distances",
    "soft_triplet_loss",
]
