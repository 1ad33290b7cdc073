"""Geometry of the store's boxes: xyxy, pixels of the original frame, float.

Shared by stage 1 (matching detections to GT boxes, union boxes of pairs, detection mAP) and
stage 2 (negative sampling, spatial masks). IoU here uses continuous coordinates (area =
(x2 - x1) * (y2 - y1)), as torchvision and COCO do; the AG evaluation protocol's "+1 pixel"
IoU lives with the protocol (:mod:`stage2_relations.evaluation.triplets`).
"""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4) -> float64 (N, M).

    Degenerate boxes have area 0; a pair whose union is empty has IoU 0, not NaN.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def union_boxes(subj: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """Enclosing boxes of row-aligned boxes ``subj`` and ``obj`` (M, 4) -> (M, 4)."""
    subj = np.asarray(subj).reshape(-1, 4)
    obj = np.asarray(obj).reshape(-1, 4)
    return np.concatenate([np.minimum(subj[:, :2], obj[:, :2]), np.maximum(subj[:, 2:], obj[:, 2:])], axis=1)
