"""Detection metrics of stage 1 (``stage1_detect.detection_metrics``) on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from rules.boxes import box_iou_continuous
from stage1_detect.detection_metrics import average_precision, detection_map


def test_box_iou_unit_cases():
    a = np.array([[0, 0, 2, 2],      # area 4
                  [0, 0, 2, 1],      # area 2
                  [0, 0, 4, 4]])     # area 16
    b = np.array([[0, 0, 2, 2],      # same as a[0]
                  [1, 0, 3, 1],      # half of a[1] shifted by 1
                  [1, 1, 3, 3],      # inside a[2], quarter of a[0]
                  [2, 0, 4, 2],      # touches a[0] along an edge
                  [5, 5, 6, 6]])     # disjoint from everything
    expected = np.array([
        [1.0, 1 / 5, 1 / 7, 0.0, 0.0],     # a0&b1: inter 1, union 4+2-1; a0&b2: 1 / (4+4-1)
        [2 / 4, 1 / 3, 0.0, 0.0, 0.0],     # a1&b0: inter 2, union 4; a1&b1: 1 / (2+2-1)
        [4 / 16, 2 / 16, 4 / 16, 4 / 16, 0.0],
    ])
    iou = box_iou_continuous(a, b)
    assert iou.shape == (3, 5) and iou.dtype == np.float64
    np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(box_iou_continuous(b, a), expected.T, rtol=0, atol=1e-12)


def test_box_iou_degenerate_and_empty():
    point = np.array([[1, 1, 1, 1]])
    assert box_iou_continuous(point, point).tolist() == [[0.0]]  # zero union: 0, not NaN
    assert box_iou_continuous(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    assert box_iou_continuous(np.ones((2, 4)), np.zeros((0, 4))).shape == (2, 0)
    # Continuous coordinates, no '+1': [0,0,10,10] and [0,0,10,5] overlap by exactly one half.
    assert box_iou_continuous([[0, 0, 10, 10]], [[0, 0, 10, 5]])[0, 0] == 0.5


def test_average_precision_envelope():
    # recall steps 1/3 (precision 1), 2/3 (precision 2/3); the dip to 1/2 in between does
    # not count because the envelope takes the best precision at any higher recall.
    ap = average_precision(np.array([1 / 3, 1 / 3, 2 / 3, 2 / 3]), np.array([1, 1 / 2, 2 / 3, 1 / 2]))
    assert ap == pytest.approx(5 / 9, abs=1e-12)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    # The envelope lifts an early low precision to a later higher one.
    assert average_precision(np.array([0.5, 1.0]), np.array([0.5, 1.0])) == pytest.approx(1.0)


A, B, C = 3, 7, 9


def _hand_case():
    """Class A: GT [0,0,10,10] in image 0, [0,0,10,10] and [50,50,60,60] in image 1.
    Predictions of A: .9 TP and .8 FP (image 0), .7 TP and .6 duplicate of it (image 1).
    Class B: a GT box and no prediction. Class C: a prediction and no GT (not scored)."""
    pred_boxes = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float),
                  np.array([[50, 50, 60, 60], [50, 50, 60, 61], [0, 0, 5, 5]], float)]
    pred_scores = [np.array([0.9, 0.8]), np.array([0.7, 0.6, 0.95])]
    pred_labels = [np.array([A, A]), np.array([A, A, C])]
    gt_boxes = [np.array([[0, 0, 10, 10], [100, 100, 120, 120]], float),
                np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float)]
    gt_labels = [np.array([A, B]), np.array([A, A])]
    return pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels


def test_detection_map_hand_worked():
    result = detection_map(*_hand_case())
    # Sorted A predictions: TP, FP, TP, FP -> recall 1/3,1/3,2/3,2/3, precision 1,1/2,2/3,1/2
    # -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9. B has GT and no prediction: AP 0. C has no GT.
    assert result.ap == pytest.approx({A: 5 / 9, B: 0.0}, abs=1e-12)
    assert result.num_gt == {A: 3, B: 1}
    assert result.map == pytest.approx((5 / 9 + 0.0) / 2, abs=1e-12)
    assert result.iou_threshold == 0.5


def test_detection_map_threshold_and_duplicates():
    gt = [np.array([[0, 0, 10, 10]], float)]
    labels = [np.array([A])]
    # IoU exactly 0.5 is a match (>=), just below is not.
    at = detection_map([np.array([[0, 0, 10, 5]], float)], [np.array([0.5])], [np.array([A])], gt, labels)
    below = detection_map([np.array([[0, 0, 10, 4.9]], float)], [np.array([0.5])], [np.array([A])], gt, labels)
    assert at.ap[A] == pytest.approx(1.0) and below.ap[A] == 0.0
    # The higher-scoring of two duplicates takes the GT whatever their order in the input.
    dup = detection_map([np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)], [np.array([0.2, 0.9])],
                        [np.array([A, A])], gt, labels)
    assert dup.ap[A] == pytest.approx(1.0)
    # A prediction of A in an image without A ground truth is a false positive.
    fp_first = detection_map([np.array([[0, 0, 10, 10]], float), np.array([[0, 0, 10, 10]], float)],
                             [np.array([0.5]), np.array([0.9])], [np.array([A]), np.array([A])],
                             gt + [np.zeros((0, 4))], labels + [np.zeros(0, int)])
    assert fp_first.ap[A] == pytest.approx(0.5)  # recall 1 reached at precision 1/2
    # No ground truth at all: nothing to average.
    empty = detection_map([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, int)], [np.zeros((0, 4))],
                          [np.zeros(0, int)])
    assert empty.map == 0.0 and empty.ap == {}
