"""Random Action Genome-like frames for tests and benchmarks of the evaluation (no data needed).

Each frame has one person and a few objects; its ground truth gives every object one
attention label, some spatial and some contacting labels. Predictions are derived from the
ground truth (jittered boxes, mostly right labels, extra detections) so that matches, misses
and near-misses (IoU just under 0.5) all occur.
"""

from __future__ import annotations

import numpy as np

from store.vocabulary import ACTION_GENOME, Vocabulary

from .structures import FrameGroundTruth, FramePredictions


def _random_box(rng: np.random.Generator, width: float = 480.0, height: float = 270.0) -> np.ndarray:
    x1, y1 = rng.uniform(0, width - 40), rng.uniform(0, height - 40)
    return np.array([x1, y1, x1 + rng.uniform(10, 200), y1 + rng.uniform(10, 150)])


def random_frame(
    rng: np.random.Generator,
    *,
    vocabulary: Vocabulary = ACTION_GENOME,
    mean_objects: float = 5.0,
    extra_detections: float = 1.0,
    zero_probability: float = 0.0,
    tie_grid: float | None = None,
    empty_probability: float = 0.0,
    spatial_rate: float = 1.0,
    contacting_rate: float = 1.0,
    person_objects: float = 0.0,
    shuffle_boxes: bool = False,
) -> tuple[FrameGroundTruth, FramePredictions]:
    """One random frame: (ground truth, predictions).

    mean_objects: mean number of annotated objects besides the person (at least 1).
    extra_detections: mean number of predicted boxes that match no GT object.
    zero_probability: chance that a probability is exactly 0 (exercises the padded-cell quirks).
    tie_grid: if set, probabilities are rounded to this grid so that exact ties occur.
    empty_probability: chance that the frame has no predicted pair at all.
    spatial_rate, contacting_rate: mean number of spatial / contacting labels per object
        (Poisson, at most 3), besides its one attention label.
    person_objects: chance that an object is another person overlapping the subject (lets
        reversed and cross-group triplets match).
    shuffle_boxes: shuffle the box order so that the person is not box 0.
    """
    person = vocabulary.person_index
    att, spa, con = vocabulary.group_ranges
    n_obj = max(1, int(rng.poisson(mean_objects - 1)) + 1)
    objects = [c for c in range(1, vocabulary.num_objects) if c != person]
    gt_boxes = np.stack([_random_box(rng) for _ in range(n_obj + 1)]).round()
    gt_labels = np.concatenate([[person], rng.choice(objects, n_obj)])
    other_person = np.flatnonzero(rng.random(n_obj + 1) < person_objects)
    other_person = other_person[other_person > 0]
    gt_labels[other_person] = person
    gt_boxes[other_person] = gt_boxes[0] + rng.integers(-3, 4, (len(other_person), 4))
    relations = []
    for o in range(1, n_obj + 1):
        relations.append((0, o, rng.integers(*att)))
        for p in rng.choice(np.arange(*spa), min(3, rng.poisson(spatial_rate)), replace=False):
            relations.append((0, o, p))
        for p in rng.choice(np.arange(*con), min(3, rng.poisson(contacting_rate)), replace=False):
            relations.append((0, o, p))
    gt = FrameGroundTruth(gt_boxes, gt_labels, np.array(relations, dtype=np.int64).reshape(-1, 3))

    # Predicted boxes: the GT boxes jittered (sometimes a lot), some labels wrong, extras added.
    jitter = rng.choice([0.0, 3.0, 40.0], size=(n_obj + 1, 1), p=[0.5, 0.35, 0.15])
    boxes = gt_boxes + rng.normal(0, 1, (n_obj + 1, 4)) * jitter
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    labels = gt_labels.copy()
    wrong = rng.random(n_obj + 1) < 0.15
    wrong[0] = False
    labels[wrong] = rng.choice(objects, wrong.sum())
    n_extra = int(rng.poisson(extra_detections))
    if n_extra:
        boxes = np.concatenate([boxes, np.stack([_random_box(rng) for _ in range(n_extra)])])
        labels = np.concatenate([labels, rng.choice(objects, n_extra)])
    scores = rng.uniform(0.3, 1.0, len(boxes))
    n_pairs = 0 if rng.random() < empty_probability else len(boxes) - 1
    pairs = np.stack([np.zeros(n_pairs, np.int64), np.arange(1, n_pairs + 1)], axis=1)

    def probs(width: int, softmax: bool) -> np.ndarray:
        x = rng.normal(0, 2, (n_pairs, width))
        p = np.exp(x) / np.exp(x).sum(1, keepdims=True) if softmax else 1 / (1 + np.exp(-x))
        if tie_grid:
            p = np.round(p / tie_grid) * tie_grid
        p[rng.random(p.shape) < zero_probability] = 0.0
        return np.clip(p, 0.0, 1.0)

    if shuffle_boxes:
        gt_perm, pred_perm = rng.permutation(n_obj + 1), rng.permutation(len(boxes))
        gt_pos, pred_pos = np.argsort(gt_perm), np.argsort(pred_perm)  # old index -> new index
        rel = gt.gt_relations.copy()
        rel[:, :2] = gt_pos[rel[:, :2]]
        gt = FrameGroundTruth(gt_boxes[gt_perm], gt_labels[gt_perm], rel)
        boxes, labels, scores, pairs = boxes[pred_perm], labels[pred_perm], scores[pred_perm], pred_pos[pairs]
    pred = FramePredictions(
        boxes, labels, scores, pairs,
        probs(att[1] - att[0], True), probs(spa[1] - spa[0], False), probs(con[1] - con[0], False),
    )
    return gt, pred


def random_frames(rng: np.random.Generator, n: int, **kwargs) -> tuple[list[FrameGroundTruth], list[FramePredictions]]:
    """``n`` frames of :func:`random_frame`; returns (ground truths, predictions)."""
    pairs = [random_frame(rng, **kwargs) for _ in range(n)]
    return [g for g, _ in pairs], [p for _, p in pairs]
