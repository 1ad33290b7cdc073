"""DSG-DETR's object sequences (``lib/track.py::get_sequence``): which boxes of a video its
object transformer attends over together. Pure functions on one video's numpy arrays:
:func:`group_by_label` (PREDCLS), :func:`group_by_class` (SGDET) and :func:`track_objects`
(SGCLS: DETR's Hungarian matcher, an online tracker, DSG-DETR's swapped (height, width)
normalisation behind ``swap_hw``). Each mode's rule, the costs, acceptance and expiry with the
code's lines: docs/stage2.md, "DSG-DETR's object sequences".
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

EXPIRY_FRAMES = 50
ACCEPT_COST = 0.5
COST_WEIGHTS = (0.5, 1.0, 1.0, 0.5)  # class, feature, L1 box, GIoU (train.py:84, test.py:71)


def frame_number(name: str) -> int:
    """The raw frame number of a frame name ``'VIDEO.mp4/000123.png'`` -> 123 (``track.py:178``)."""
    try:
        return int(name.rsplit("/", 1)[-1].split(".")[0])
    except ValueError:
        raise ValueError(f"DSG-DETR's tracker reads frame numbers from frame names like 'VIDEO.mp4/000123.png'; "
                         f"got {name!r}") from None


def group_by_label(labels: np.ndarray) -> list[np.ndarray]:
    """PREDCLS: for each label value in ascending order, the indices (ascending) of its boxes."""
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def group_by_class(dists: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """SGDET: boxes grouped by the argmax of their (N, K) class distribution.

    Returns (the boxes alone in their class, ascending by class; the groups of two boxes or
    more, by ascending class, each ascending), as ``indices[0]`` and ``indices[1:]`` of the code.
    """
    top = np.asarray(dists).argmax(1) if len(dists) else np.zeros(0, np.int64)
    groups = [np.flatnonzero(top == c) for c in np.unique(top)]
    singles = [g for g in groups if len(g) == 1]
    return (np.concatenate(singles) if singles else np.zeros(0, np.int64)), [g for g in groups if len(g) > 1]


def frame_ranks(frames: np.ndarray) -> np.ndarray:
    """For a chronological sequence of boxes (or pairs), the rank of each one's frame among the
    sequence's distinct frames (DSG-DETR's SGDET positions, ``sttran.py:286-295, 514-522``)."""
    return np.unique(np.asarray(frames), return_inverse=True)[1].reshape(-1).astype(np.int64)


# --- the SGCLS tracker -----------------------------------------------------------------


def _cosine_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 - cosine similarity, (N, M), with the code's ``x / (|x| + 1e-12)``."""
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    y = y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-12)
    return 1.0 - x @ y.T


def _xywh_to_cxcywh(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[:, :2] + b[:, 2:] / 2, b[:, 2:]], 1)


def generalized_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """GIoU (N, M) of xyxy boxes (continuous coordinates, no "+1"), as ``lib/matcher.py``."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None] - inter
    hull = np.clip(np.maximum(a[:, None, 2:], b[None, :, 2:]) - np.minimum(a[:, None, :2], b[None, :, :2]), 0, None)
    hull_area = hull[..., 0] * hull[..., 1]
    # a degenerate (zero-area) pair would give 0/0 (the code asserts it away): count it as IoU 0
    iou = inter / np.maximum(union, 1e-12)
    return iou - (hull_area - union) / np.maximum(hull_area, 1e-12)


def matching_costs(det_boxes: np.ndarray, det_feats: np.ndarray, det_classes: np.ndarray, trk_boxes: np.ndarray,
                   trk_feats: np.ndarray, trk_classes: np.ndarray, weights=COST_WEIGHTS) -> tuple[np.ndarray, ...]:
    """DETR's matcher as DSG-DETR weights it. Boxes are normalised xywh (N, 4) / (M, 4); feats
    (N, D) / (M, D); classes one-hot (N, K) / mean one-hots (M, K).
    Returns (total cost (N, M), class-cosine cost, feature-cosine cost)."""
    cost_class = _cosine_cost(det_classes, trk_classes)
    cost_feat = _cosine_cost(det_feats, trk_feats)
    a, b = _xywh_to_cxcywh(det_boxes), _xywh_to_cxcywh(trk_boxes)
    cost_l1 = np.abs(a[:, None, :] - b[None, :, :]).sum(-1)
    xyxy = lambda c: np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], 1)  # noqa: E731
    cost_giou = -generalized_iou(xyxy(a), xyxy(b))
    wc, wf, wb, wg = weights
    return wc * cost_class + wf * cost_feat + wb * cost_l1 + wg * cost_giou, cost_class, cost_feat


class _Track:
    """An active track: its last accepted in-image box (xywh pixels), that box's frame number and
    its cluster."""

    def __init__(self, box: np.ndarray, number: int, cluster: int) -> None:
        self.box, self.number, self.cluster = box, number, cluster


def track_objects(boxes: np.ndarray, box_frame: np.ndarray, frame_numbers: np.ndarray, features: np.ndarray,
                  classes: np.ndarray, image_size: tuple[float, float], *, swap_hw: bool = True,
                  expiry: int = EXPIRY_FRAMES, accept: float = ACCEPT_COST, weights=COST_WEIGHTS) -> list[np.ndarray]:
    """DSG-DETR's SGCLS tracker over one video (module docstring).

    boxes (N, 4) xyxy pixels, sorted by frame; box_frame (N,) int frame index 0..F-1 of each
    box; frame_numbers (F,) raw frame numbers (:func:`frame_number`); features (N, D) RoI
    features; classes (N,) int predicted class of each box (the argmax of the detector's
    distribution; only equality matters, as one-hots); image_size (width, height) pixels.
    Returns the clusters in creation order, each an int64 array of box indices, chronological;
    every box is in exactly one cluster.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    feats = np.asarray(features, np.float64)
    classes = np.asarray(classes, np.int64)
    box_frame = np.asarray(box_frame, np.int64)
    onehot = np.zeros((len(classes), int(classes.max()) + 1 if len(classes) else 1))
    onehot[np.arange(len(classes)), classes] = 1.0
    width, height = float(image_size[0]), float(image_size[1])
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    norm = np.array([height, width, height, width] if swap_hw else [width, height, width, height])
    outside = ((xywh[:, 0] + xywh[:, 2] > width) | (xywh[:, 1] + xywh[:, 3] > height)
               | (xywh[:, 0] < 0) | (xywh[:, 1] < 0))
    clusters: list[list[int]] = []
    members: list[list[int]] = []  # the in-image members, whose mean is the track's appearance
    tracks: list[_Track] = []
    starts = np.searchsorted(box_frame, np.arange(len(frame_numbers) + 1))
    for f, number in enumerate(np.asarray(frame_numbers, np.int64).tolist()):
        dets = np.arange(starts[f], starts[f + 1])
        updated = [False] * len(tracks)
        assigned = set()

        def new_cluster(i: int) -> None:
            clusters.append([i])
            members.append([] if outside[i] else [i])
            if not outside[i]:
                tracks.append(_Track(xywh[i], number, len(clusters) - 1))
                updated.append(False)  # a new track counts as not updated, but has gap 0

        if len(tracks) and len(dets):
            cost, cost_class, cost_feat = matching_costs(
                xywh[dets] / norm, feats[dets], onehot[dets],
                np.stack([t.box for t in tracks]) / norm,
                np.stack([feats[members[t.cluster]].mean(0) for t in tracks]),
                np.stack([onehot[members[t.cluster]].mean(0) for t in tracks]), weights)
            rows, cols = linear_sum_assignment(cost)  # tracks started in the loop below are not candidates
            for r, c in zip(rows.tolist(), cols.tolist()):
                i = int(dets[r])
                assigned.add(r)
                if cost_class[r, c] < accept or cost_feat[r, c] < accept:
                    t = tracks[c]
                    clusters[t.cluster].append(i)
                    if outside[i]:
                        continue
                    members[t.cluster].append(i)
                    t.box, t.number = xywh[i], number
                    updated[c] = True
                else:
                    new_cluster(i)
        for r, i in enumerate(dets.tolist()):
            if r not in assigned:
                new_cluster(i)
        tracks = [t for t, u in zip(tracks, updated) if u or number - t.number < expiry]
    return [np.asarray(c, np.int64) for c in clusters]
