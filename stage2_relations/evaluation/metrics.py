"""R@K, mR@K (three definitions) and P@K of Action Genome scene graphs, vectorised over frames.

Reproduces the recall of STTran's ``lib/evaluation_recall.py`` (and of DSG-DETR, STKET and
TEMPURA, which copy it) on the same predictions:

* a predicted triplet matches a GT triplet of its frame when subject class, predicate and
  object class are equal and both boxes have IoU >= 0.5 (``+1`` pixel convention);
* R@K of a frame = GT triplets matched by some prediction among the frame's top K / GT
  triplets of the frame; R@K = the mean over frames, a frame without predictions counting 0;
* a frame without any GT triplet has no defined recall (STTran divides by zero on it; on AG
  every kept frame has at least one). Such frames are left out of every metric, and counted
  in :attr:`EvaluationResult.num_frames_without_gt`.

Precision is the RS-Net paper's: P@K of a frame = predictions among its top K that match some
GT triplet / K (see :class:`~.structures.PrecisionDenominator` for the alternative), averaged
over the same frames. Several predictions matching one GT triplet all count as hits, as in
STTran's ``pred_to_gt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from rules.boxes import paired_box_iou_plus_one
from rules.modes import Mode
from store.vocabulary import ACTION_GENOME, Vocabulary

from .structures import (
    Constraint,
    FrameGroundTruth,
    FramePredictions,
    GroundTruthSet,
    MeanRecall,
    PaddedCells,
    PrecisionDenominator,
    PredictionSet,
)
from .triplets import GroundTruthTriplets, RankedTriplets, ground_truth_triplets, rank_triplets

log = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (10, 20, 50, 100)
NOT_MATCHED = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Matches:
    """Result of matching ranked predictions against GT triplets.

    pred_hit:       (C,) bool, the prediction matches at least one GT triplet of its frame.
    gt_first_rank:  (T,) int64, best (smallest) rank of a prediction matching the GT triplet,
                    NOT_MATCHED when none does; the triplet is recalled at K iff this is < K.
    """

    pred_hit: np.ndarray
    gt_first_rank: np.ndarray


def match_triplets(
    ranked: RankedTriplets,
    pred: PredictionSet,
    gt_triplets: GroundTruthTriplets,
    gt: GroundTruthSet,
    *,
    num_objects: int,
    num_predicates: int,
    iou_threshold: float = 0.5,
) -> Matches:
    """Match every ranked prediction with the GT triplets of its frame (see module docstring)."""
    # One integer key per (frame, predicate, subject class, object class); equal keys are the
    # candidates for a match, which then need both IoUs >= threshold.
    def key(frame, predicate, subj_label, obj_label):
        return ((frame * num_predicates + predicate) * num_objects + subj_label) * num_objects + obj_label

    g_key = key(gt_triplets.frame, gt_triplets.predicate, gt.gt_labels[gt_triplets.subject], gt.gt_labels[gt_triplets.object])
    p_key = key(ranked.frame, ranked.predicate, pred.pred_labels[ranked.subject], pred.pred_labels[ranked.object])
    g_order = np.argsort(g_key, kind="stable")
    g_sorted = g_key[g_order]
    lo = np.searchsorted(g_sorted, p_key, side="left")
    hi = np.searchsorted(g_sorted, p_key, side="right")
    counts = hi - lo
    total = int(counts.sum())
    cand = np.repeat(np.arange(len(p_key), dtype=np.int64), counts)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    gidx = g_order[lo[cand] + within]
    iou = paired_box_iou_plus_one
    ok = (iou(pred.pred_boxes[ranked.subject[cand]], gt.gt_boxes[gt_triplets.subject[gidx]]) >= iou_threshold) & (
        iou(pred.pred_boxes[ranked.object[cand]], gt.gt_boxes[gt_triplets.object[gidx]]) >= iou_threshold
    )
    cand, gidx = cand[ok], gidx[ok]
    pred_hit = np.zeros(len(p_key), dtype=bool)
    pred_hit[cand] = True
    gt_first_rank = np.full(len(g_key), NOT_MATCHED, dtype=np.int64)
    np.minimum.at(gt_first_rank, gidx, ranked.rank[cand])
    return Matches(pred_hit=pred_hit, gt_first_rank=gt_first_rank)


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one constraint.

    recall / precision:  {K: value in [0, 1]} (R@K, P@K).
    mean_recall:         {definition: {K: value}} for every :class:`MeanRecall`.
    predicate_recall:    {definition: (len(ks), num_predicates) float64}, the per-predicate
                         recall that each mR averages; NaN where the predicate has no GT
                         (counted as 0 in the mean, as the published code does).
    predicate_gt_count:  (num_predicates,) int64, GT triplets per predicate (evaluated frames).
    frame_recall:        (num_frames, len(ks)) float64, per-frame R@K, NaN for frames without GT.
    frame_precision:     (num_frames, len(ks)) float64, per-frame P@K, NaN for frames without GT.
    """

    constraint: Constraint
    mode: Mode
    ks: tuple[int, ...]
    recall: dict[int, float]
    precision: dict[int, float]
    mean_recall: dict[MeanRecall, dict[int, float]]
    predicate_recall: dict[MeanRecall, np.ndarray]
    predicate_gt_count: np.ndarray
    frame_recall: np.ndarray
    frame_precision: np.ndarray
    num_frames: int
    num_frames_evaluated: int
    num_frames_without_gt: int
    num_frames_without_predictions: int
    num_gt_triplets: int
    options: dict = field(default_factory=dict)

    def to_dict(self, vocabulary: Vocabulary = ACTION_GENOME) -> dict:
        """Plain-JSON form (no per-frame arrays)."""

        def per_pred(arr: np.ndarray) -> dict:
            return {
                str(k): {p: (None if np.isnan(v) else float(v)) for p, v in zip(vocabulary.predicates, row)}
                for k, row in zip(self.ks, arr)
            }

        return {
            "constraint": self.constraint.value,
            "mode": self.mode.value,
            "ks": list(self.ks),
            "recall": {str(k): v for k, v in self.recall.items()},
            "precision": {str(k): v for k, v in self.precision.items()},
            "mean_recall": {d.value: {str(k): v for k, v in m.items()} for d, m in self.mean_recall.items()},
            "predicate_recall": {d.value: per_pred(a) for d, a in self.predicate_recall.items()},
            "predicate_gt_count": dict(zip(vocabulary.predicates, map(int, self.predicate_gt_count))),
            "num_frames": self.num_frames,
            "num_frames_evaluated": self.num_frames_evaluated,
            "num_frames_without_gt": self.num_frames_without_gt,
            "num_frames_without_predictions": self.num_frames_without_predictions,
            "num_gt_triplets": self.num_gt_triplets,
            "options": self.options,
        }


def _check_ks(ks: Sequence[int], max_k: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks) or max(ks) > max_k:
        raise ValueError(f"every K must lie in 1..{max_k}, got {ks}")
    return ks


def evaluate(
    ground_truth: GroundTruthSet,
    predictions: PredictionSet,
    *,
    constraint: Constraint | str,
    mode: Mode | str,
    vocabulary: Vocabulary = ACTION_GENOME,
    ks: Sequence[int] = DEFAULT_KS,
    semi_threshold: float = 0.9,
    iou_threshold: float = 0.5,
    padded_cells: PaddedCells | str = PaddedCells.RANK,
    precision_denominator: PrecisionDenominator | str = PrecisionDenominator.K,
    no_constraint_top: int = 100,
) -> EvaluationResult:
    """Score predictions against ground truth under one constraint, as STTran's protocol does.

    Frame i of ``predictions`` is scored against frame i of ``ground_truth`` (use
    :meth:`PredictionSet.aligned_to` to align by frame name first).

    Args:
        ground_truth: GT boxes, labels and (person, object, predicate) relations per frame.
        predictions: predicted boxes, labels, object scores, pairs and probabilities per frame.
        constraint: WITH, SEMI or NO.
        mode: PREDCLS (object scores taken as 1), SGCLS or SGDET.
        vocabulary: object classes and predicate groups (Action Genome by default).
        ks: the K of R@K, mR@K and P@K, each in 1..100.
        semi_threshold: SEMI keeps spatial / contacting predicates with p > this.
        iou_threshold: both boxes of a match need IoU >= this ("+1 pixel" IoU).
        padded_cells: RANK reproduces STTran's zero-padded rows, IGNORE corrects them.
        precision_denominator: K (default) or RETURNED, see :class:`PrecisionDenominator`.
        no_constraint_top: cells kept per frame under NO (100 in the protocol).

    Returns:
        EvaluationResult.
    """
    constraint, mode = Constraint(constraint), Mode(mode)
    padded_cells, precision_denominator = PaddedCells(padded_cells), PrecisionDenominator(precision_denominator)
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if not 0 <= semi_threshold < 1:
        raise ValueError(f"semi_threshold must be in [0, 1), got {semi_threshold}")
    ks = _check_ks(ks, min(100, no_constraint_top) if constraint == Constraint.NO else 100)
    if predictions.num_frames != ground_truth.num_frames:
        raise ValueError(f"{predictions.num_frames} frames of predictions for {ground_truth.num_frames} frames of ground truth")
    if ground_truth.gt_labels.size and (ground_truth.gt_labels.min() < 0 or ground_truth.gt_labels.max() >= vocabulary.num_objects):
        raise ValueError(f"gt_labels outside 0..{vocabulary.num_objects - 1}")
    num_frames, num_pred = ground_truth.num_frames, vocabulary.num_predicates

    ranked = rank_triplets(
        predictions, constraint=constraint, mode=mode, vocabulary=vocabulary, semi_threshold=semi_threshold,
        padded_cells=padded_cells, no_constraint_top=no_constraint_top, max_per_frame=max(ks),
    )
    gtt = ground_truth_triplets(ground_truth, vocabulary)
    matches = match_triplets(
        ranked, predictions, gtt, ground_truth, num_objects=vocabulary.num_objects,
        num_predicates=num_pred, iou_threshold=iou_threshold,
    )

    n_gt = np.diff(gtt.offsets)
    n_ranked = np.diff(ranked.offsets)
    evaluated = n_gt > 0
    n_eval = int(evaluated.sum())
    if n_eval < num_frames:
        log.warning("%d of %d frames have no GT triplet and are left out of the metrics", num_frames - n_eval, num_frames)

    # counts[f, p]: GT triplets of predicate p in frame f; hits[k][f, p]: those recalled at K.
    flat = gtt.frame * num_pred + gtt.predicate
    counts = np.bincount(flat, minlength=num_frames * num_pred).reshape(num_frames, num_pred)
    frame_recall = np.full((num_frames, len(ks)), np.nan)
    frame_precision = np.full((num_frames, len(ks)), np.nan)
    recall, precision = {}, {}
    mean_recall: dict[MeanRecall, dict[int, float]] = {d: {} for d in MeanRecall}
    predicate_recall = {d: np.full((len(ks), num_pred), np.nan) for d in MeanRecall}
    gt_count = counts[evaluated].sum(axis=0)
    for j, k in enumerate(ks):
        recalled = matches.gt_first_rank < k
        hits = np.bincount(flat[recalled], minlength=num_frames * num_pred).reshape(num_frames, num_pred)
        frame_hits = hits.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            frame_recall[:, j] = np.where(evaluated, frame_hits / n_gt, np.nan)
        top = matches.pred_hit & (ranked.rank < k)
        pred_hits = np.bincount(ranked.frame[top], minlength=num_frames)
        if precision_denominator == PrecisionDenominator.K:
            denom = np.full(num_frames, float(k))
        else:
            denom = np.minimum(n_ranked, k).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(denom > 0, pred_hits / denom, 0.0)
        frame_precision[:, j] = np.where(evaluated, p, np.nan)
        recall[k] = float(frame_recall[evaluated, j].mean()) if n_eval else 0.0
        precision[k] = float(frame_precision[evaluated, j].mean()) if n_eval else 0.0

        ev_hits, ev_counts = hits[evaluated], counts[evaluated]
        present = gt_count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            frame_pred_recall = np.where(ev_counts > 0, ev_hits / np.maximum(ev_counts, 1), 0.0)
            dataset = np.where(present, ev_hits.sum(axis=0) / np.maximum(gt_count, 1), np.nan)
            all_frames = np.where(present, frame_pred_recall.mean(axis=0) if n_eval else 0.0, np.nan)
            with_pred = np.where(present, frame_pred_recall.sum(axis=0) / np.maximum((ev_counts > 0).sum(axis=0), 1), np.nan)
        for d, arr in ((MeanRecall.DATASET, dataset), (MeanRecall.ALL_FRAMES, all_frames),
                       (MeanRecall.FRAMES_WITH_PREDICATE, with_pred)):
            predicate_recall[d][j] = arr
            # A predicate without GT counts 0 and the mean divides by the vocabulary's size.
            mean_recall[d][k] = float(np.nan_to_num(arr, nan=0.0).sum() / num_pred)

    return EvaluationResult(
        constraint=constraint,
        mode=mode,
        ks=ks,
        recall=recall,
        precision=precision,
        mean_recall=mean_recall,
        predicate_recall=predicate_recall,
        predicate_gt_count=gt_count.astype(np.int64),
        frame_recall=frame_recall,
        frame_precision=frame_precision,
        num_frames=num_frames,
        num_frames_evaluated=n_eval,
        num_frames_without_gt=num_frames - n_eval,
        num_frames_without_predictions=int(((np.diff(predictions.pair_offsets) == 0) & evaluated).sum()),
        num_gt_triplets=int(n_gt[evaluated].sum()),
        options={
            "semi_threshold": float(semi_threshold),
            "iou_threshold": float(iou_threshold),
            "padded_cells": padded_cells.value,
            "precision_denominator": precision_denominator.value,
            "no_constraint_top": int(no_constraint_top),
        },
    )


def evaluate_all(
    ground_truth: GroundTruthSet,
    predictions: PredictionSet,
    *,
    constraints: Sequence[Constraint | str] = tuple(Constraint),
    **kwargs,
) -> dict[Constraint, EvaluationResult]:
    """:func:`evaluate` under each constraint; keyword arguments as for :func:`evaluate`."""
    return {Constraint(c): evaluate(ground_truth, predictions, constraint=c, **kwargs) for c in constraints}


def evaluate_frames(
    ground_truth: Sequence[FrameGroundTruth],
    predictions: Sequence[FramePredictions],
    *,
    constraint: Constraint | str,
    mode: Mode | str,
    vocabulary: Vocabulary = ACTION_GENOME,
    **kwargs,
) -> EvaluationResult:
    """Score per-frame arrays: the stable entry point for another project's predictions.

    ``ground_truth[i]`` and ``predictions[i]`` describe the same frame. Each is a
    :class:`FrameGroundTruth` / :class:`FramePredictions` of plain numpy arrays (boxes xyxy in
    pixels, labels, object scores, (person, object) pair indices, attention / spatial /
    contacting probability vectors, optional RS-Net pair scores). Other keyword arguments as
    for :func:`evaluate`.

    Example::

        result = evaluate_frames(gts, preds, constraint="with", mode="sgdet")
        result.recall[20], result.mean_recall[MeanRecall.DATASET][20], result.precision[10]
    """
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(predictions)} frames of predictions for {len(ground_truth)} frames of ground truth")
    return evaluate(
        GroundTruthSet.from_frames(ground_truth),
        PredictionSet.from_frames(predictions, widths=vocabulary.group_widths),
        constraint=constraint, mode=mode, vocabulary=vocabulary, **kwargs,
    )
