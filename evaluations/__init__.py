"""PyTorch port of the ADM evaluator (FID, sFID, Inception Score, precision/recall), KID, and a monitoring distance.

`evaluations.evaluator` (the CLI and `evaluate()`) is not imported here so that `python -m evaluations.evaluator`
runs without a double import.
"""

from .inception import FIDInceptionV3, load_inception, random_inception
from .metrics import (
    FeatureStats, feature_stats, frechet_distance, frechet_distance_sqrtm, inception_score, kid, load_reference_stats,
    mmd2_unbiased, monitor_fd, precision_recall, save_reference_stats,
)

__all__ = [
    "FIDInceptionV3", "load_inception", "random_inception", "FeatureStats", "feature_stats", "frechet_distance",
    "frechet_distance_sqrtm", "inception_score", "kid", "load_reference_stats", "mmd2_unbiased", "monitor_fd", "precision_recall",
    "save_reference_stats",
]
