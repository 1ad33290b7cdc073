"""R@K, mR@K and P@K on hand-worked frames; every number below is computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from rules.modes import Mode
from stage2_relations.evaluation import (
    Constraint,
    FrameGroundTruth,
    FramePredictions,
    MeanRecall,
    PaddedCells,
    PrecisionDenominator,
    evaluate_frames,
)
from store.vocabulary import ACTION_GENOME as VOC

LOOKING_AT, NOT_LOOKING_AT = 0, 1
IN_FRONT_OF, BEHIND = 5, 6
HOLDING = 14
PERSON, CUP, TABLE, BOOK, PHONE = (VOC.object_index(n) for n in ("person", "cup", "table", "book", "phone"))
BOXES = np.array([[0, 0, 99, 199], [10, 10, 29, 29], [50, 100, 149, 159]], float)


def probs(width, base=0.0, **cells):
    v = np.full(width, base)
    for k, val in cells.items():
        v[int(k[1:])] = val
    return v


def pred(boxes, labels, pairs, att, spa=None, con=None, scores=None) -> FramePredictions:
    n = len(pairs)
    return FramePredictions(
        np.asarray(boxes, float), labels, np.ones(len(labels)) if scores is None else scores,
        np.asarray(pairs).reshape(-1, 2), np.asarray(att, float).reshape(-1, 3),
        np.full((n, 6), 0.01) if spa is None else np.asarray(spa, float),
        np.full((n, 17), 0.01) if con is None else np.asarray(con, float),
    )


@pytest.fixture
def three_gt_frame():
    """Person, cup, table; GT (person, cup, looking_at), (person, cup, holding), and
    (person, table, in_front_of), i.e. the protocol's (table, person, in_front_of)."""
    gt = FrameGroundTruth(BOXES, [PERSON, CUP, TABLE], [[0, 1, LOOKING_AT], [0, 1, HOLDING], [0, 2, IN_FRONT_OF]])
    p = pred(
        BOXES, [PERSON, CUP, TABLE], [[0, 1], [0, 2]],
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]],
        [[0.05, 0.1, 0.3, 0.2, 0.1, 0.6], [0.1, 0.2, 0.95, 0.97, 0.3, 0.1]],
        [probs(17, 0.01, c5=0.92), probs(17, 0.02, c8=0.85)],
    )
    return gt, p


def run(gt, p, constraint, ks=(10, 20, 50, 100), **kw):
    gts = gt if isinstance(gt, list) else [gt]
    ps = p if isinstance(p, list) else [p]
    return evaluate_frames(gts, ps, constraint=constraint, mode=kw.pop("mode", Mode.PREDCLS), ks=ks, **kw)


def test_with_constraint_recalls_two_of_three(three_gt_frame):
    # Ranked: (table, person, behind) .97 x, holding .92 +, not_contacting .85 x,
    # not_looking_at .80 x, looking_at .70 +, (cup, person, in) .60 x.
    r = run(*three_gt_frame, Constraint.WITH, ks=(1, 2, 5, 10, 20))
    assert r.recall == pytest.approx({1: 0.0, 2: 1 / 3, 5: 2 / 3, 10: 2 / 3, 20: 2 / 3})
    assert r.precision == pytest.approx({1: 0.0, 2: 0.5, 5: 0.4, 10: 0.2, 20: 0.1})
    r = run(*three_gt_frame, Constraint.WITH, ks=(10,), precision_denominator=PrecisionDenominator.RETURNED)
    assert r.precision[10] == pytest.approx(2 / 6)
    for d in MeanRecall:  # one frame, one GT per predicate: looking_at and holding recalled
        assert r.mean_recall[d][10] == pytest.approx(2 / 26)
    assert r.num_gt_triplets == 3 and r.num_frames_evaluated == 1


def test_semi_constraint_adds_the_second_spatial_predicate(three_gt_frame):
    # Emitted: behind .97 x, in_front_of .95 +, holding .92 +, not_looking_at .8 x, looking_at .7 +.
    r = run(*three_gt_frame, Constraint.SEMI, ks=(1, 2, 3, 5, 10))
    assert r.recall == pytest.approx({1: 0.0, 2: 1 / 3, 3: 2 / 3, 5: 1.0, 10: 1.0})
    assert r.precision == pytest.approx({1: 0.0, 2: 0.5, 3: 2 / 3, 5: 0.6, 10: 0.3})
    # At 0.96 only behind (.97) passes besides attention: in_front_of and holding are lost.
    r = run(*three_gt_frame, Constraint.SEMI, ks=(10,), semi_threshold=0.96)
    assert r.recall[10] == pytest.approx(1 / 3)


def test_no_constraint_padded_cells_change_precision_only(three_gt_frame):
    rank = run(*three_gt_frame, Constraint.NO, ks=(10, 100), padded_cells=PaddedCells.RANK)
    ignore = run(*three_gt_frame, Constraint.NO, ks=(10, 100), padded_cells=PaddedCells.IGNORE)
    assert rank.recall == ignore.recall == pytest.approx({10: 1.0, 100: 1.0})
    assert ignore.precision == pytest.approx({10: 0.3, 100: 0.03})
    # STTran's top 100 also holds 48 zero cells; one of them, (person, cup, holding) from the
    # attention row, duplicates a hit and counts as a second match.
    assert rank.precision == pytest.approx({10: 0.3, 100: 0.04})
    ret = run(*three_gt_frame, Constraint.NO, ks=(100,), padded_cells=PaddedCells.IGNORE,
              precision_denominator=PrecisionDenominator.RETURNED)
    assert ret.precision[100] == pytest.approx(3 / 52)


def test_spatial_matches_only_reversed():
    gt = FrameGroundTruth(BOXES[[0, 2]], [PERSON, TABLE], [[0, 1, IN_FRONT_OF]])
    spa = [probs(6, 0.1, c2=0.9)]
    good = pred(BOXES[[0, 2]], [PERSON, TABLE], [[0, 1]], [[0.5, 0.3, 0.2]], spa)
    flipped = pred(BOXES[[0, 2]], [PERSON, TABLE], [[1, 0]], [[0.5, 0.3, 0.2]], spa)
    assert run(gt, good, Constraint.WITH).recall[10] == 1.0
    assert run(gt, flipped, Constraint.WITH).recall[10] == 0.0
    # An attention GT, by contrast, needs the (person, object) direction.
    gt_att = FrameGroundTruth(BOXES[[0, 2]], [PERSON, TABLE], [[0, 1, LOOKING_AT]])
    assert run(gt_att, good, Constraint.WITH).recall[10] == 1.0
    assert run(gt_att, flipped, Constraint.WITH).recall[10] == 0.0


def test_iou_049_misses_and_050_matches():
    gt_boxes = np.array([[0, 0, 99, 99], [200, 0, 299, 99]], float)
    gt = FrameGroundTruth(gt_boxes, [PERSON, CUP], [[0, 1, LOOKING_AT]])
    for y2, expected in ((48, 0.0), (49, 1.0)):  # object box IoU 0.49, then 0.50
        boxes = np.array([[0, 0, 99, 99], [200, 0, 299, y2]], float)
        r = run(gt, pred(boxes, [PERSON, CUP], [[0, 1]], [[0.9, 0.05, 0.05]]), Constraint.WITH, mode=Mode.SGDET)
        assert r.recall[10] == expected
        assert r.precision[10] == expected / 10
    # Right boxes, wrong object class: no match either.
    r = run(gt, pred(gt_boxes, [PERSON, BOOK], [[0, 1]], [[0.9, 0.05, 0.05]]), Constraint.WITH)
    assert r.recall[10] == 0.0


def test_frame_without_predictions_counts_zero_and_frame_without_gt_is_left_out(three_gt_frame):
    gt, p = three_gt_frame
    empty = pred(np.zeros((0, 4)), np.zeros(0, int), np.zeros((0, 2), int), np.zeros((0, 3)),
                 np.zeros((0, 6)), np.zeros((0, 17)))
    no_gt = FrameGroundTruth(BOXES, [PERSON, CUP, TABLE], np.zeros((0, 3), int))
    r = run([gt, gt, no_gt], [p, empty, p], Constraint.WITH, ks=(10,))
    assert r.recall[10] == pytest.approx((2 / 3 + 0.0) / 2)
    assert r.precision[10] == pytest.approx((0.2 + 0.0) / 2)
    assert (r.num_frames, r.num_frames_evaluated, r.num_frames_without_gt, r.num_frames_without_predictions) == (3, 2, 1, 1)
    assert np.isnan(r.frame_recall[2, 0]) and r.frame_recall[1, 0] == 0.0


def test_three_mean_recall_definitions_differ():
    """looking_at: frame 1 recalls 1 of 3, frame 2 1 of 1; not_looking_at: frame 3 0 of 1."""
    boxes4 = np.array([[0, 0, 99, 199], [10, 10, 29, 29], [50, 100, 149, 159], [120, 0, 159, 39]], float)
    f1 = FrameGroundTruth(boxes4, [PERSON, CUP, BOOK, PHONE], [[0, o, LOOKING_AT] for o in (1, 2, 3)])
    p1 = pred(boxes4, [PERSON, CUP, BOOK, PHONE], [[0, 1], [0, 2], [0, 3]],
              [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    f2 = FrameGroundTruth(BOXES[:2], [PERSON, CUP], [[0, 1, LOOKING_AT]])
    f3 = FrameGroundTruth(BOXES[:2], [PERSON, CUP], [[0, 1, NOT_LOOKING_AT]])
    p23 = pred(BOXES[:2], [PERSON, CUP], [[0, 1]], [[0.6, 0.3, 0.1]])
    r = run([f1, f2, f3], [p1, p23, p23], Constraint.WITH, ks=(10,))
    assert r.recall[10] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert r.mean_recall[MeanRecall.DATASET][10] == pytest.approx((2 / 4) / 26)  # TEMPURA
    assert r.mean_recall[MeanRecall.ALL_FRAMES][10] == pytest.approx((4 / 9) / 26)  # STKET
    assert r.mean_recall[MeanRecall.FRAMES_WITH_PREDICATE][10] == pytest.approx((2 / 3) / 26)  # DSG-DETR
    pr = r.predicate_recall[MeanRecall.DATASET][0]
    assert pr[LOOKING_AT] == pytest.approx(0.5) and pr[NOT_LOOKING_AT] == 0.0 and np.isnan(pr[HOLDING])
    assert r.predicate_gt_count[LOOKING_AT] == 4 and r.predicate_gt_count[NOT_LOOKING_AT] == 1


def test_sgdet_object_scores_reorder_predcls_ignores_them(three_gt_frame):
    gt, p = three_gt_frame
    # Person score 1, cup 0.1, table 1: the cup's two hits (.92, .7) drop to .092 and .07,
    # below the three triplets of the table pair (.97, .85, .8): ranks 3 and 4.
    sg = FramePredictions(p.pred_boxes, p.pred_labels, np.array([1.0, 0.1, 1.0]), p.pred_pairs,
                          p.pred_attention, p.pred_spatial, p.pred_contacting)
    assert run(gt, sg, Constraint.WITH, ks=(2, 4, 5), mode=Mode.SGDET).recall == pytest.approx({2: 0.0, 4: 1 / 3, 5: 2 / 3})
    assert run(gt, sg, Constraint.WITH, ks=(2,), mode=Mode.PREDCLS).recall[2] == pytest.approx(1 / 3)


def test_bad_arguments_raise(three_gt_frame):
    gt, p = three_gt_frame
    with pytest.raises(ValueError, match="1..100"):
        run(gt, p, Constraint.WITH, ks=(200,))
    with pytest.raises(ValueError, match="frames of predictions"):
        evaluate_frames([gt, gt], [p], constraint="with", mode="predcls")
    with pytest.raises(ValueError):
        run(gt, p, "everything")
