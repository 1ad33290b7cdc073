"""Triplets as STTran's evaluation protocol forms them (``lib/evaluation_recall.py``).

Ground truth: for each annotated relation ``(person, object, predicate)`` the protocol's
triplet is ``(person, object, predicate)`` for attention and contacting predicates and
``(object, person, predicate)`` for spatial ones (subject and object reversed).

Predictions: each predicted pair gives three rows, attention ``(person, object)``, spatial
``(object, person)`` and contacting ``(person, object)``; the constraint decides which cells
of those rows become triplets (:class:`~.structures.Constraint`). The score of a triplet is
``s_subj * s_obj * p_{t,0} * p`` (``p_{t,0}`` = RS-Net's pair score, 1 when absent; object
scores are 1 in PREDCLS), computed in float64 as STTran does after its upcast.

Triplets are ranked per frame by descending score; exact ties keep emission order (all
attention rows of the frame in pair order, then spatial, then contacting; cells in predicate
order). STTran sorts with numpy's unstable quicksort, so its order among exactly tied scores
is unspecified; with real-valued scores ties only arise between zero-score cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rules.modes import Mode
from store.vocabulary import ACTION_GENOME, GROUP_ORDER, PredicateGroup, Vocabulary

from .structures import Constraint, GroundTruthSet, PaddedCells, PredictionSet

# Upper bound on the elements of one temporary (frames x cells) matrix during ranking.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class GroundTruthTriplets:
    """The protocol's GT triplets of F frames, in annotation order within each frame.

    offsets:   (F + 1,) int64; frame i's triplets are rows offsets[i]:offsets[i+1].
    frame:     (T,) int64 frame index.
    subject:   (T,) int64 flat index into ``GroundTruthSet.gt_boxes``.
    object:    (T,) int64 flat index into ``GroundTruthSet.gt_boxes``.
    predicate: (T,) int64 global predicate id.
    """

    offsets: np.ndarray
    frame: np.ndarray
    subject: np.ndarray
    object: np.ndarray
    predicate: np.ndarray


@dataclass(frozen=True)
class RankedTriplets:
    """Predicted triplets of F frames, best first within each frame, at most ``max_per_frame``.

    offsets:         (F + 1,) int64; frame i's triplets are rows offsets[i]:offsets[i+1].
    frame:           (C,) int64 frame index.
    rank:            (C,) int64 0-based rank within the frame (row - offsets[frame]).
    subject:         (C,) int64 flat index into ``PredictionSet.pred_boxes``.
    object:          (C,) int64 flat index into ``PredictionSet.pred_boxes``.
    predicate:       (C,) int64 global predicate id.
    predicate_score: (C,) float64, the cell's probability p.
    score:           (C,) float64, s_subj * s_obj * p_{t,0} * p, non-increasing within a frame.
    """

    offsets: np.ndarray
    frame: np.ndarray
    rank: np.ndarray
    subject: np.ndarray
    object: np.ndarray
    predicate: np.ndarray
    predicate_score: np.ndarray
    score: np.ndarray


def ground_truth_triplets(gt: GroundTruthSet, vocabulary: Vocabulary = ACTION_GENOME) -> GroundTruthTriplets:
    """Form the protocol's GT triplets: spatial relations become (object, person, predicate)."""
    rel = gt.gt_relations
    if rel.size and (rel[:, 2].min() < 0 or rel[:, 2].max() >= vocabulary.num_predicates):
        raise ValueError(f"gt_relations holds predicate ids outside 0..{vocabulary.num_predicates - 1}")
    frame = np.repeat(np.arange(gt.num_frames, dtype=np.int64), np.diff(gt.relation_offsets))
    base = gt.box_offsets[frame]
    person, obj = rel[:, 0] + base, rel[:, 1] + base
    s0, s1 = vocabulary.group_range(PredicateGroup.SPATIAL)
    spatial = (rel[:, 2] >= s0) & (rel[:, 2] < s1)
    return GroundTruthTriplets(
        offsets=gt.relation_offsets.copy(),
        frame=frame,
        subject=np.where(spatial, obj, person),
        object=np.where(spatial, person, obj),
        predicate=rel[:, 2].copy(),
    )


def _check_finite(name: str, arr: np.ndarray, pred: PredictionSet) -> None:
    """A NaN or an infinity is not a probability a softmax can fix: say where it is."""
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        offsets = pred.box_offsets if name == "pred_scores" else pred.pair_offsets
        frame = int(np.searchsorted(offsets, row, side="right")) - 1
        where = f" (frame {pred.frame_names[frame]!r})" if 0 <= frame < len(pred.frame_names) else ""
        n = int(bad.sum())
        raise ValueError(f"{name} holds {n} value{'s that are' if n > 1 else ' that is'} not finite (NaN or inf), the "
                         f"first in row {row}{where}: the model's outputs were not finite")


def _check_predictions(pred: PredictionSet, vocabulary: Vocabulary) -> None:
    for group, name, width in zip(GROUP_ORDER, ("pred_attention", "pred_spatial", "pred_contacting"),
                                  vocabulary.group_widths):
        arr = getattr(pred, name)
        if arr.shape[1] != width:
            raise ValueError(f"{name} has width {arr.shape[1]}, the vocabulary's {group.value} group has {width}")
        _check_finite(name, arr, pred)
        if arr.size and not (np.all(arr >= 0.0) and np.all(arr <= 1.0)):
            raise ValueError(f"{name} must hold probabilities in [0, 1] (apply softmax / sigmoid to logits first)")
    for name in ("pred_scores", "pred_pair_scores"):
        arr = getattr(pred, name)
        if arr is not None:
            _check_finite(name, arr, pred)
        if arr is not None and arr.size and not (np.all(arr >= 0.0) and np.all(arr <= 1.0)):
            raise ValueError(f"{name} must lie in [0, 1]")
    if pred.pred_labels.size and (pred.pred_labels.min() < 0 or pred.pred_labels.max() >= vocabulary.num_objects):
        raise ValueError(f"pred_labels outside 0..{vocabulary.num_objects - 1}")


def _pair_weights(pred: PredictionSet, mode: Mode) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pair: frame, flat person box, flat object box, s_subj * s_obj * p_{t,0}."""
    frame = np.repeat(np.arange(pred.num_frames, dtype=np.int64), np.diff(pred.pair_offsets))
    base = pred.box_offsets[frame]
    person = pred.pred_pairs[:, 0] + base
    obj = pred.pred_pairs[:, 1] + base
    if mode == Mode.PREDCLS:
        weight = np.ones(len(person))
    else:
        weight = pred.pred_scores[person] * pred.pred_scores[obj]
    if pred.pred_pair_scores is not None:
        weight = weight * pred.pred_pair_scores
    return frame, person, obj, weight


def _segment_rank(score: np.ndarray, offsets: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Within each segment ``offsets[i]:offsets[i+1]`` of ``score``, the indices of its ``keep``
    best entries by descending score (ties: lower index first).

    Returns (order, out_offsets): ``order[out_offsets[i]:out_offsets[i+1]]`` are segment i's
    kept indices into ``score``, best first.
    """
    lengths = np.diff(offsets)
    kept = np.minimum(lengths, keep)
    out_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(kept, out=out_offsets[1:])
    order = np.empty(out_offsets[-1], dtype=np.int64)
    # Segments of equal length form one dense matrix, sorted row-wise in one call.
    for length in np.unique(lengths):
        if length == 0:
            continue
        segs = np.flatnonzero(lengths == length)
        m = min(int(length), keep)
        step = max(1, _CHUNK_ELEMENTS // int(length))
        cols = np.arange(length)
        for c in range(0, len(segs), step):
            chunk = segs[c : c + step]
            idx = offsets[chunk][:, None] + cols
            best = np.argsort(-score[idx], axis=1, kind="stable")[:, :m]
            order[out_offsets[chunk][:, None] + np.arange(m)] = np.take_along_axis(idx, best, axis=1)
    return order, out_offsets


def _assemble(
    frame_offsets: np.ndarray, frame: np.ndarray, subject: np.ndarray, obj: np.ndarray,
    predicate: np.ndarray, predicate_score: np.ndarray, score: np.ndarray,
) -> RankedTriplets:
    rank = np.arange(len(frame), dtype=np.int64) - frame_offsets[frame]
    return RankedTriplets(frame_offsets, frame, rank, subject, obj, predicate, predicate_score, score)


def _rank_candidates(
    num_frames: int, cand_frame: np.ndarray, cand_subject: np.ndarray, cand_object: np.ndarray,
    cand_predicate: np.ndarray, cand_pscore: np.ndarray, cand_score: np.ndarray, keep: int,
) -> RankedTriplets:
    """Rank candidates that are grouped by frame in emission order."""
    offsets = np.zeros(num_frames + 1, dtype=np.int64)
    np.cumsum(np.bincount(cand_frame, minlength=num_frames), out=offsets[1:])
    order, out_offsets = _segment_rank(cand_score, offsets, keep)
    return _assemble(
        out_offsets, cand_frame[order], cand_subject[order], cand_object[order],
        cand_predicate[order], cand_pscore[order], cand_score[order],
    )


def _group_rows(pred: PredictionSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return pred.pred_attention, pred.pred_spatial, pred.pred_contacting


def _emission_position(pair_frame: np.ndarray, pair_offsets: np.ndarray, group: int) -> np.ndarray:
    """Flat position of a pair's row of ``group`` when each frame lists its attention rows,
    then its spatial rows, then its contacting rows (3 rows per pair)."""
    n_pairs = np.diff(pair_offsets)[pair_frame]
    local = np.arange(len(pair_frame), dtype=np.int64) - pair_offsets[pair_frame]
    return 3 * pair_offsets[pair_frame] + group * n_pairs + local


def _with_constraint(pred, vocabulary, mode, padded, keep) -> RankedTriplets:
    frame, person, obj, weight = _pair_weights(pred, mode)
    n = len(frame)
    c_frame = np.empty(3 * n, np.int64)
    c_subj = np.empty(3 * n, np.int64)
    c_obj = np.empty(3 * n, np.int64)
    c_pred = np.empty(3 * n, np.int64)
    c_p = np.empty(3 * n, np.float64)
    c_weight = np.empty(3 * n, np.float64)
    for g, (group, (start, _), rows) in enumerate(zip(GROUP_ORDER, vocabulary.group_ranges, _group_rows(pred))):
        pos = _emission_position(frame, pred.pair_offsets, g)
        best = rows.max(axis=1) if n else np.zeros(0)
        arg = start + (rows.argmax(axis=1) if n else np.zeros(0, np.int64))
        if padded == PaddedCells.RANK:
            # Argmax over the whole zero-padded row: an all-zero block yields predicate 0.
            arg = np.where(best > 0, arg, 0)
        spatial = group == PredicateGroup.SPATIAL
        c_frame[pos] = frame
        c_subj[pos] = obj if spatial else person
        c_obj[pos] = person if spatial else obj
        c_pred[pos] = arg
        c_p[pos] = best
        c_weight[pos] = weight
    return _rank_candidates(pred.num_frames, c_frame, c_subj, c_obj, c_pred, c_p, c_weight * c_p, keep)


def _semi_constraint(pred, vocabulary, mode, padded, threshold, keep) -> RankedTriplets:
    frame, person, obj, weight = _pair_weights(pred, mode)
    parts = []  # (frame, subject, object, predicate, p, weight, order key within frame)
    n_pairs = np.diff(pred.pair_offsets)[frame]
    local = np.arange(len(frame), dtype=np.int64) - pred.pair_offsets[frame]
    for g, (group, (start, end), rows) in enumerate(zip(GROUP_ORDER, vocabulary.group_ranges, _group_rows(pred))):
        spatial = group == PredicateGroup.SPATIAL
        if padded == PaddedCells.RANK and end - start >= 2:
            # STTran tells a row's group by the sum of the first two cells of each block.
            alive = rows[:, 0] + rows[:, 1] > 0
        else:
            alive = np.ones(len(rows), bool)
        if group == PredicateGroup.ATTENTION:
            pair = np.flatnonzero(alive)
            col = rows[pair].argmax(axis=1) if len(pair) else np.zeros(0, np.int64)
        else:
            pair, col = np.nonzero((rows > threshold) & alive[:, None])
        p = rows[pair, col]
        # Position within the frame in STTran's loop order: group, then pair, then predicate.
        key = (g * n_pairs[pair] + local[pair]) * vocabulary.num_predicates + start + col
        parts.append((frame[pair], obj[pair] if spatial else person[pair], person[pair] if spatial else obj[pair],
                      start + col, p, weight[pair], key))
    cat = [np.concatenate(x) for x in zip(*parts)]
    c_frame, c_subj, c_obj, c_pred, c_p, c_w, c_key = cat
    order = np.lexsort((c_key, c_frame))
    c_frame, c_subj, c_obj, c_pred, c_p, c_w = (a[order] for a in (c_frame, c_subj, c_obj, c_pred, c_p, c_w))
    return _rank_candidates(pred.num_frames, c_frame, c_subj, c_obj, c_pred, c_p, c_w * c_p, keep)


def _no_constraint_layout(n_pairs: int, vocabulary: Vocabulary, padded: PaddedCells):
    """Per cell of one frame with ``n_pairs`` pairs, in emission order: group (0..2), local
    pair, predicate id and whether the cell is real (inside its row's block)."""
    groups, pairs, preds, real = [], [], [], []
    for g, (start, end) in enumerate(vocabulary.group_ranges):
        width = vocabulary.num_predicates if padded == PaddedCells.RANK else end - start
        pid = np.arange(width) if padded == PaddedCells.RANK else np.arange(start, end)
        groups.append(np.full(n_pairs * width, g))
        pairs.append(np.repeat(np.arange(n_pairs), width))
        preds.append(np.tile(pid, n_pairs))
        real.append(np.tile((pid >= start) & (pid < end), n_pairs))
    return (np.concatenate(groups), np.concatenate(pairs), np.concatenate(preds), np.concatenate(real))


def _no_constraint(pred, vocabulary, mode, padded, top, keep) -> RankedTriplets:
    frame, person, obj, weight = _pair_weights(pred, mode)
    pairs_per_frame = np.diff(pred.pair_offsets)
    # RANK: 3 rows of num_predicates cells per pair; IGNORE: the three blocks, num_predicates in all.
    cells_per_pair = vocabulary.num_predicates * (3 if padded == PaddedCells.RANK else 1)
    kept = np.minimum(pairs_per_frame * cells_per_pair, min(top, keep))
    out_offsets = np.zeros(pred.num_frames + 1, dtype=np.int64)
    np.cumsum(kept, out=out_offsets[1:])
    total = int(out_offsets[-1])
    r_subj = np.empty(total, np.int64)
    r_obj = np.empty(total, np.int64)
    r_pred = np.empty(total, np.int64)
    r_p = np.empty(total, np.float64)
    r_s = np.empty(total, np.float64)
    rows = _group_rows(pred)
    for n_pairs in np.unique(pairs_per_frame):
        n_pairs = int(n_pairs)
        if n_pairs == 0:
            continue
        frames = np.flatnonzero(pairs_per_frame == n_pairs)
        g_of, pair_of, pred_of, real_of = _no_constraint_layout(n_pairs, vocabulary, padded)
        n_cells = len(g_of)
        m = min(n_cells, top, keep)
        step = max(1, _CHUNK_ELEMENTS // n_cells)
        for c in range(0, len(frames), step):
            chunk = frames[c : c + step]
            pair_idx = pred.pair_offsets[chunk][:, None] + np.arange(n_pairs)  # (f, n_pairs)
            cells = np.zeros((len(chunk), n_cells))
            for g, block in enumerate(rows):
                sel = np.flatnonzero((g_of == g) & real_of)
                # Real cells of group g, pair-major then predicate: exactly the block values.
                cells[:, sel] = block[pair_idx].reshape(len(chunk), -1)
            p_cells = cells
            s_cells = cells * weight[pair_idx][:, pair_of]
            best = np.argsort(-s_cells, axis=1, kind="stable")[:, :m]
            dest = out_offsets[chunk][:, None] + np.arange(m)
            g_sel, pair_sel = g_of[best], pair_of[best]
            flat_pair = np.take_along_axis(pair_idx, pair_sel, axis=1)
            spatial = g_sel == GROUP_ORDER.index(PredicateGroup.SPATIAL)
            r_subj[dest] = np.where(spatial, obj[flat_pair], person[flat_pair])
            r_obj[dest] = np.where(spatial, person[flat_pair], obj[flat_pair])
            r_pred[dest] = pred_of[best]
            r_p[dest] = np.take_along_axis(p_cells, best, axis=1)
            r_s[dest] = np.take_along_axis(s_cells, best, axis=1)
    r_frame = np.repeat(np.arange(pred.num_frames, dtype=np.int64), kept)
    return _assemble(out_offsets, r_frame, r_subj, r_obj, r_pred, r_p, r_s)


def rank_triplets(
    pred: PredictionSet,
    *,
    constraint: Constraint,
    mode: Mode,
    vocabulary: Vocabulary = ACTION_GENOME,
    semi_threshold: float = 0.9,
    padded_cells: PaddedCells = PaddedCells.RANK,
    no_constraint_top: int = 100,
    max_per_frame: int = 100,
) -> RankedTriplets:
    """Form and rank the predicted triplets of every frame under ``constraint``.

    Args:
        pred: the predictions; probabilities, not logits.
        constraint: WITH, SEMI or NO (see :class:`Constraint`).
        mode: PREDCLS takes every object score as 1; SGCLS and SGDET use ``pred_scores``.
        vocabulary: gives the predicate groups (block of each row, which rows are reversed).
        semi_threshold: SEMI keeps spatial / contacting cells with p > this (strictly).
        padded_cells: RANK reproduces STTran's zero-padded rows, IGNORE corrects them
            (see :class:`PaddedCells`).
        no_constraint_top: NO keeps this many cells per frame (100 in the protocol).
        max_per_frame: keep at most this many triplets per frame; metrics at K need K of them.

    Returns:
        RankedTriplets, best first in each frame.
    """
    constraint, mode, padded_cells = Constraint(constraint), Mode(mode), PaddedCells(padded_cells)
    _check_predictions(pred, vocabulary)
    if constraint == Constraint.WITH:
        return _with_constraint(pred, vocabulary, mode, padded_cells, max_per_frame)
    if constraint == Constraint.SEMI:
        return _semi_constraint(pred, vocabulary, mode, padded_cells, float(semi_threshold), max_per_frame)
    return _no_constraint(pred, vocabulary, mode, padded_cells, int(no_constraint_top), max_per_frame)
