"""Evaluation metrics (torchmetrics ``Metric`` classes and functional forms)."""

from eval_metrics.landmarks import (
    FACE_IDX,
    MOUTH_IDX,
    STABLE_IDX,
    LandmarkDistance,
    LandmarkMetrics,
    LandmarkVelocityDifference,
    align_landmarks,
    face_ld,
    face_lvd,
    landmark_distance,
    landmark_velocity_difference,
    mouth_ld,
    mouth_lvd,
)

__all__ = [
    "FACE_IDX",
    "MOUTH_IDX",
    "STABLE_IDX",
    "LandmarkDistance",
    "LandmarkMetrics",
    "LandmarkVelocityDifference",
    "align_landmarks",
    "face_ld",
    "face_lvd",
    "landmark_distance",
    "landmark_velocity_difference",
    "mouth_ld",
    "mouth_lvd",
]
