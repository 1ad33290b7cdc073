"""Geometry of the store's boxes: xyxy, pixels of the original frame, float.

Shared by stage 1 (union boxes of pairs, detection mAP), the pairing rules of
:mod:`rules.pairing` and stage 2 (negative sampling, spatial masks). Two IoU conventions live
here, named by convention: :func:`box_iou_continuous` uses continuous coordinates (area =
(x2 - x1) * (y2 - y1)), as torchvision and COCO do; :func:`box_iou_plus_one` counts pixels
(width = x2 - x1 + 1), as the Cython ``bbox_overlaps`` that STTran inherits from
neural-motifs (:func:`paired_box_iou_plus_one`: the same, row by row, for the evaluation's
matches), and :func:`nms_plus_one` is the non-maximum suppression of the AG detector's CUDA
kernel with that convention.
"""

from __future__ import annotations

import numpy as np


def _iou_continuous(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Continuous IoU of broadcastable float64 (..., 4) boxes -> (...)."""
    inter = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None).prod(-1)
    area_a = np.clip(a[..., 2:] - a[..., :2], 0, None).prod(-1)
    area_b = np.clip(b[..., 2:] - b[..., :2], 0, None).prod(-1)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_iou_continuous(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4) -> float64 (N, M).

    Degenerate boxes have area 0; a pair whose union is empty has IoU 0, not NaN.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return _iou_continuous(a[:, None], b[None])


def paired_box_iou_continuous(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-by-row :func:`box_iou_continuous` of two (K, 4) box arrays -> (K,) float64 (the
    diagonal of the matrix, element for element, without the matrix)."""
    return _iou_continuous(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def union_boxes(subj: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """Enclosing boxes of row-aligned boxes ``subj`` and ``obj`` (M, 4) -> (M, 4)."""
    subj = np.asarray(subj).reshape(-1, 4)
    obj = np.asarray(obj).reshape(-1, 4)
    return np.concatenate([np.minimum(subj[:, :2], obj[:, :2]), np.maximum(subj[:, 2:], obj[:, 2:])], axis=1)


def _iou_plus_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """"+1 pixel" IoU of broadcastable float64 (..., 4) boxes -> (...)."""
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1.0
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1.0
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[..., 2] - a[..., 0] + 1.0) * (a[..., 3] - a[..., 1] + 1.0)
    area_b = (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def box_iou_plus_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4) -> float64 (N, M), with
    the "+1 pixel" convention of STTran's ``bbox_overlaps``: widths are ``x2 - x1 + 1``, and a
    pair overlaps only when both the intersection's width and height are positive."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return _iou_plus_one(a[:, None], b[None])


def paired_box_iou_plus_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-by-row IoU of two (M, 4) xyxy box arrays, with the "+1 pixel" convention (the
    diagonal of :func:`box_iou_plus_one`, without the (M, M) matrix).

    Widths and heights are ``x2 - x1 + 1`` and ``y2 - y1 + 1`` (the integer-pixel
    convention of the Cython ``bbox_overlaps`` that STTran inherits from neural-motifs);
    boxes that do not overlap have IoU 0. Returns (M,) float64.
    """
    return _iou_plus_one(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def nms_plus_one(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS as the AG detector's CUDA kernel (maskrcnn-benchmark's ``nms.cu``, which
    STTran runs): boxes in descending score order (ties by index), a box is suppressed when its
    :func:`box_iou_plus_one` with a kept box is **greater** than ``threshold``.

    boxes (N, 4), scores (N,). Returns the kept indices, int64, highest score first.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    iou = box_iou_plus_one(boxes[order], boxes[order])
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed[i + 1:] |= iou[i, i + 1:] > threshold
    return np.asarray(keep, dtype=np.int64)
