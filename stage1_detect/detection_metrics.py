"""Detection mAP, as PASCAL VOC (2010 and later) computes it.

Per class: all predictions of that class over the dataset, sorted by score, are matched
greedily to unmatched ground-truth boxes of the same image with IoU >= threshold; AP is
the area under the precision/recall curve with precision made monotone (all-point
interpolation). mAP is the mean over the classes that have ground truth. Boxes are xyxy
pixels; IoU uses continuous coordinates (no "+1"), as torchvision and COCO do
(:func:`rules.boxes.box_iou_continuous`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rules.boxes import box_iou_continuous


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone precision envelope (VOC all-point interpolation)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


@dataclass(frozen=True)
class DetectionMAP:
    """mAP over the classes with ground truth, and AP and GT count per class id."""

    map: float
    ap: dict[int, float]
    num_gt: dict[int, int]
    iou_threshold: float


def detection_map(
    pred_boxes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
) -> DetectionMAP:
    """mAP@``iou_threshold`` of per-image predictions against per-image ground truth.

    Each argument is a sequence with one entry per image: boxes (n, 4) xyxy, scores (n,),
    labels (n,) int.
    """
    classes = sorted({int(c) for labels in gt_labels for c in np.asarray(labels).reshape(-1)})
    ap: dict[int, float] = {}
    num_gt: dict[int, int] = {}
    for c in classes:
        records = []  # (score, image, box index) of every prediction of class c
        gt_of_image = []
        for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
            gt_of_image.append(np.asarray(boxes, np.float64).reshape(-1, 4)[np.asarray(labels).reshape(-1) == c])
        for i, (boxes, scores, labels) in enumerate(zip(pred_boxes, pred_scores, pred_labels)):
            mask = np.asarray(labels).reshape(-1) == c
            for j in np.nonzero(mask)[0]:
                records.append((float(np.asarray(scores).reshape(-1)[j]), i, np.asarray(boxes, np.float64).reshape(-1, 4)[j]))
        n_gt = sum(len(g) for g in gt_of_image)
        num_gt[c] = n_gt
        # Stable sort by descending score: ties keep image order, as VOC's argsort.
        records.sort(key=lambda r: -r[0])
        used = [np.zeros(len(g), dtype=bool) for g in gt_of_image]
        tp = np.zeros(len(records))
        for k, (_, i, box) in enumerate(records):
            gts = gt_of_image[i]
            if len(gts) == 0:
                continue
            ious = box_iou_continuous(box[None], gts)[0]
            best = int(ious.argmax())
            if ious[best] >= iou_threshold and not used[i][best]:
                used[i][best] = True
                tp[k] = 1
        tp_cum = np.cumsum(tp)
        fp_cum = np.cumsum(1 - tp)
        recall = tp_cum / max(n_gt, 1)
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        ap[c] = average_precision(recall, precision) if len(records) else 0.0
    mean = float(np.mean(list(ap.values()))) if ap else 0.0
    return DetectionMAP(map=mean, ap=ap, num_gt=num_gt, iou_threshold=iou_threshold)
