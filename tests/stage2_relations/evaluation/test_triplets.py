"""Triplet formation and IoU, on hand-worked inputs."""

from __future__ import annotations

import numpy as np
import pytest

from rules.boxes import paired_box_iou_plus_one
from rules.modes import Mode
from stage2_relations.evaluation import (
    Constraint,
    FrameGroundTruth,
    FramePredictions,
    GroundTruthSet,
    PaddedCells,
    PredictionSet,
    ground_truth_triplets,
    rank_triplets,
)
from store.vocabulary import ACTION_GENOME as VOC

LOOKING_AT, NOT_LOOKING_AT, UNSURE = 0, 1, 2
ABOVE, IN_FRONT_OF, BEHIND, IN = 3, 5, 6, 8
HOLDING, NOT_CONTACTING = 14, 17
PERSON, CUP, TABLE = VOC.person_index, VOC.object_index("cup"), VOC.object_index("table")


def probs(width, base=0.0, **cells):
    """A probability vector of ``width`` cells equal to ``base``, some set: probs(6, c2=0.9)."""
    v = np.full(width, base)
    for k, val in cells.items():
        v[int(k[1:])] = val
    return v


def frame_pred(boxes, labels, scores, pairs, att, spa, con, pair_scores=None) -> PredictionSet:
    return PredictionSet.from_frames([FramePredictions(
        np.array(boxes, float), np.array(labels), np.array(scores, float), np.array(pairs).reshape(-1, 2),
        np.array(att, float).reshape(-1, 3), np.array(spa, float).reshape(-1, 6), np.array(con, float).reshape(-1, 17),
        None if pair_scores is None else np.array(pair_scores, float),
    )])


def test_box_iou_plus_one_convention():
    a = np.array([[0, 0, 9, 9]] * 4, float)
    b = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [10, 0, 19, 9], [9, 0, 18, 9]], float)
    # 10x10 pixel boxes: half overlap 50 / (100 + 100 - 50); touching at x=9 shares one column.
    np.testing.assert_allclose(paired_box_iou_plus_one(a, b), [1.0, 1 / 3, 0.0, 10 / 190])


def test_box_iou_049_and_050():
    gt = np.array([[0, 0, 99, 99]] * 2, float)
    pred = np.array([[0, 0, 99, 48], [0, 0, 99, 49]], float)  # 49 and 50 rows of 100
    np.testing.assert_allclose(paired_box_iou_plus_one(gt, pred), [0.49, 0.50])


def test_ground_truth_spatial_reversed():
    # Person is box 1 here (not 0): nothing may assume the person comes first.
    gt = GroundTruthSet.from_frames([
        FrameGroundTruth(np.zeros((2, 4)), [CUP, PERSON], [[1, 0, LOOKING_AT], [1, 0, IN_FRONT_OF], [1, 0, HOLDING]]),
        FrameGroundTruth(np.zeros((2, 4)), [PERSON, TABLE], [[0, 1, BEHIND]]),
    ])
    t = ground_truth_triplets(gt, VOC)
    np.testing.assert_array_equal(t.subject, [1, 0, 1, 3])  # flat box indices
    np.testing.assert_array_equal(t.object, [0, 1, 0, 2])
    np.testing.assert_array_equal(t.predicate, [LOOKING_AT, IN_FRONT_OF, HOLDING, BEHIND])
    np.testing.assert_array_equal(t.frame, [0, 0, 0, 1])


def _two_pair_frame(**kw) -> PredictionSet:
    boxes = [[0, 0, 99, 199], [10, 10, 29, 29], [50, 100, 149, 159]]
    return frame_pred(
        boxes, [PERSON, CUP, TABLE], kw.get("scores", [1.0, 0.5, 1.0]), [[0, 1], [0, 2]],
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]],
        [[0.05, 0.1, 0.3, 0.2, 0.1, 0.6], [0.1, 0.2, 0.95, 0.97, 0.3, 0.1]],
        [probs(17, 0.01, c5=0.92), probs(17, 0.02, c8=0.85)],
        kw.get("pair_scores"),
    )


def test_with_constraint_three_rows_per_pair_sgdet_scores():
    r = rank_triplets(_two_pair_frame(), constraint=Constraint.WITH, mode=Mode.SGDET)
    # Triplet score = s_subj * s_obj * p; the cup's object score is 0.5.
    expected = [  # (subject, object, predicate, score)
        (2, 0, BEHIND, 0.97), (0, 2, NOT_CONTACTING, 0.85), (0, 2, NOT_LOOKING_AT, 0.8),
        (0, 1, HOLDING, 0.46), (0, 1, LOOKING_AT, 0.35), (1, 0, IN, 0.3),
    ]
    got = list(zip(r.subject.tolist(), r.object.tolist(), r.predicate.tolist(), r.score.round(12).tolist()))
    assert got == expected
    np.testing.assert_array_equal(r.rank, np.arange(6))
    np.testing.assert_array_equal(r.offsets, [0, 6])


def test_predcls_takes_object_scores_as_one_and_pair_scores_multiply():
    r = rank_triplets(_two_pair_frame(pair_scores=[1.0, 0.5]), constraint=Constraint.WITH, mode=Mode.PREDCLS)
    got = list(zip(r.predicate.tolist(), r.score.round(12).tolist()))
    assert got == [(HOLDING, 0.92), (LOOKING_AT, 0.7), (IN, 0.6), (BEHIND, 0.485), (NOT_CONTACTING, 0.425), (NOT_LOOKING_AT, 0.4)]
    np.testing.assert_allclose(r.predicate_score, [0.92, 0.7, 0.6, 0.97, 0.85, 0.8])


def test_semi_constraint_threshold_is_strict():
    pred = frame_pred(
        [[0, 0, 9, 9], [0, 0, 9, 9]], [PERSON, CUP], [1, 1], [[0, 1]],
        [[0.2, 0.5, 0.3]], [probs(6, c0=0.9, c1=0.9000001, c3=0.95)], [probs(17, 0.01, c5=0.91, c8=0.3)],
    )
    r = rank_triplets(pred, constraint=Constraint.SEMI, mode=Mode.PREDCLS)
    assert list(zip(r.predicate.tolist(), r.subject.tolist())) == [(BEHIND, 1), (HOLDING, 0), (ABOVE + 1, 1), (NOT_LOOKING_AT, 0)]
    r = rank_triplets(pred, constraint=Constraint.SEMI, mode=Mode.PREDCLS, semi_threshold=0.3)
    assert sorted(r.predicate.tolist()) == [NOT_LOOKING_AT, ABOVE, ABOVE + 1, BEHIND, HOLDING]


def test_no_constraint_padded_cells_fill_the_top_100():
    pred = _two_pair_frame()
    rank = rank_triplets(pred, constraint=Constraint.NO, mode=Mode.PREDCLS, padded_cells=PaddedCells.RANK)
    ignore = rank_triplets(pred, constraint=Constraint.NO, mode=Mode.PREDCLS, padded_cells=PaddedCells.IGNORE)
    # 2 pairs: 52 real cells; STTran ranks 6 rows x 26 = 156 cells and keeps 100.
    assert len(rank.score) == 100 and len(ignore.score) == 52
    np.testing.assert_array_equal(rank.score[:52], ignore.score)
    np.testing.assert_array_equal(rank.predicate[:52], ignore.predicate)
    assert np.all(rank.score[52:] == 0)
    # The first zero cells are the attention row of pair (person, cup), predicates 3..25:
    # among them (person, cup, holding), a duplicate of a real contacting cell.
    np.testing.assert_array_equal(rank.predicate[52:75], np.arange(3, 26))
    assert set(zip(rank.subject[52:75].tolist(), rank.object[52:75].tolist())) == {(0, 1)}
    # then the attention row of (person, table), then the spatial row of (cup, person).
    np.testing.assert_array_equal(rank.predicate[75:98], np.arange(3, 26))
    np.testing.assert_array_equal(rank.predicate[98:], [0, 1])
    assert (rank.subject[98], rank.object[98]) == (1, 0)


def test_with_constraint_padded_row_argmax_quirk():
    pred = frame_pred(
        [[0, 0, 9, 9], [0, 0, 9, 9]], [PERSON, CUP], [1, 1], [[0, 1]],
        [[0.2, 0.5, 0.3]], [np.zeros(6)], [probs(17, c5=0.5)],
    )
    r = rank_triplets(pred, constraint=Constraint.WITH, mode=Mode.PREDCLS, padded_cells=PaddedCells.RANK)
    # The all-zero spatial row: argmax of the padded row is predicate 0, on the reversed pair.
    assert (r.subject[-1], r.object[-1], r.predicate[-1], r.score[-1]) == (1, 0, LOOKING_AT, 0.0)
    r = rank_triplets(pred, constraint=Constraint.WITH, mode=Mode.PREDCLS, padded_cells=PaddedCells.IGNORE)
    assert (r.subject[-1], r.object[-1], r.predicate[-1], r.score[-1]) == (1, 0, ABOVE, 0.0)


def test_semi_constraint_group_detection_quirk():
    # Attention all on 'unsure' and a spatial row whose first two cells are 0.
    pred = frame_pred(
        [[0, 0, 9, 9], [0, 0, 9, 9]], [PERSON, CUP], [1, 1], [[0, 1]],
        [[0.0, 0.0, 1.0]], [probs(6, c3=0.95)], [probs(17, c0=0.5, c5=0.95)],
    )
    r = rank_triplets(pred, constraint=Constraint.SEMI, mode=Mode.PREDCLS, padded_cells=PaddedCells.RANK)
    assert r.predicate.tolist() == [HOLDING]  # STTran drops the other two rows
    r = rank_triplets(pred, constraint=Constraint.SEMI, mode=Mode.PREDCLS, padded_cells=PaddedCells.IGNORE)
    assert r.predicate.tolist() == [UNSURE, BEHIND, HOLDING]


def test_ties_keep_emission_order():
    pred = frame_pred(
        [[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9]], [PERSON, CUP, TABLE], [1, 1, 1], [[0, 1], [0, 2]],
        [[0.5, 0.25, 0.25]] * 2, [probs(6, c0=0.5)] * 2, [probs(17, c0=0.5)] * 2,
    )
    r = rank_triplets(pred, constraint=Constraint.WITH, mode=Mode.PREDCLS)
    # all six at 0.5: attention rows (pair order), then spatial, then contacting.
    assert r.predicate.tolist() == [LOOKING_AT, LOOKING_AT, ABOVE, ABOVE, 9, 9]
    assert r.object.tolist() == [1, 2, 0, 0, 1, 2]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="probabilities"):
        rank_triplets(frame_pred([[0, 0, 1, 1]] * 2, [1, 2], [1, 1], [[0, 1]], [[2.0, -1.0, 0.0]], [np.zeros(6)],
                                 [np.zeros(17)]), constraint="with", mode="predcls")
    narrow_spatial = PredictionSet.from_frames([FramePredictions(
        np.zeros((2, 4)), [1, 2], [1, 1], [[0, 1]], np.ones((1, 3)) / 3, np.zeros((1, 5)), np.zeros((1, 17)))])
    with pytest.raises(ValueError, match="width 5"):
        rank_triplets(narrow_spatial, constraint="with", mode="predcls")
    with pytest.raises(ValueError, match="outside its frame"):
        frame_pred([[0, 0, 1, 1]] * 2, [1, 2], [1, 1], [[0, 2]], [[1.0, 0, 0]], [np.zeros(6)], [np.zeros(17)])
