"""Training losses: CosFace classifier, SupCon (stage 1), label-smoothed CE and soft triplet (stage 2)."""

from progeo.losses.cosface import CosFace
from progeo.losses.label_smoothing import label_smoothed_cross_entropy
from progeo.losses.supcon import image_text_supcon, supcon_loss
from progeo.losses.triplet import pairwise_distances, soft_triplet_loss

__all__ = [
    "CosFace",
    "label_smoothed_cross_entropy",
    "image_text_supcon",
    "supcon_loss",
    "pairwise_distances",
    "soft_triplet_loss",
]
