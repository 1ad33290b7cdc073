"""STTran's pairing rules (``rules.pairing``) and the "+1 pixel" geometry (``rules.boxes``),
on frames small enough to work out by hand. Boxes are xyxy pixels; a "+1" width is
``x2 - x1 + 1``."""

from __future__ import annotations

import numpy as np
import pytest

from rules.boxes import box_iou_continuous, box_iou_plus_one, nms_plus_one
from rules.pairing import (
    PairIndex,
    SttranClasses,
    person_detections,
    stored_pairs,
    strict_assignment,
    sttran_assignment,
    sttran_test_boxes,
)
from store.vocabulary import ACTION_GENOME as V

PERSON, BED, BOOK, CUP, DISH = (V.object_index(n) for n in ("person", "bed", "book", "cup", "dish"))
PAPER, TABLE = V.object_index("paper"), V.object_index("table")
C = V.num_objects  # 37: background, then the 36 objects
COPY = SttranClasses.from_objects(V.objects).copy_classes  # book, chair, food


def dists(*rows: dict[int, float]) -> np.ndarray:
    """(N, C) class distributions (background included) from {class id: probability} rows."""
    out = np.zeros((len(rows), C))
    for i, row in enumerate(rows):
        for c, p in row.items():
            out[i, c] = p
    assert np.allclose(out.sum(1), 1.0)
    return out


# --- the "+1 pixel" IoU and NMS --------------------------------------------------------------


def test_plus_one_iou_at_the_half_boundary():
    # [0,0,7,7] inside [0,0,10,10]: continuous 7*7 / 10*10 = 0.49; "+1": 8*8 / 11*11 = 64/121.
    a, b = np.array([[0, 0, 7, 7]], float), np.array([[0, 0, 10, 10]], float)
    assert box_iou_continuous(a, b)[0, 0] == pytest.approx(0.49)
    assert box_iou_plus_one(a, b)[0, 0] == pytest.approx(64 / 121)  # 0.529 > 0.5
    # Touching edges: no continuous overlap, but a one-pixel column in "+1" pixels.
    c = np.array([[7, 0, 9, 7]], float)
    assert box_iou_continuous(a, c)[0, 0] == 0.0
    assert box_iou_plus_one(a, c)[0, 0] == pytest.approx(8 / (64 + 24 - 8))


def test_nms_plus_one_suppresses_only_above_the_threshold():
    # +1 widths 20 and 20, shifted by 5: intersection 15*20 = 300, union 800 - 300 = 500: 0.6 exactly.
    boxes = np.array([[0, 0, 19, 19], [5, 0, 24, 19]], float)
    assert box_iou_plus_one(boxes[:1], boxes[1:])[0, 0] == 0.6
    assert nms_plus_one(boxes, np.array([0.9, 0.8]), 0.6).tolist() == [0, 1]  # '>' keeps both
    assert nms_plus_one(boxes, np.array([0.9, 0.8]), 0.59).tolist() == [0]
    # Highest score first, whatever the input order; ties by index.
    assert nms_plus_one(boxes, np.array([0.8, 0.9]), 0.59).tolist() == [1]
    assert nms_plus_one(boxes, np.array([0.5, 0.5]), 0.59).tolist() == [0]
    # The convention decides: [0,0,4,4] and [1,0,5,4] overlap 3*4 / 20 = 0.6 continuously (kept
    # by a '>' NMS) but 4*5 / 30 = 0.667 in "+1" pixels: suppressed.
    near = np.array([[0, 0, 4, 4], [1, 0, 5, 4]], float)
    assert box_iou_continuous(near[:1], near[1:])[0, 0] == pytest.approx(0.6)
    assert nms_plus_one(near, np.array([0.9, 0.8]), 0.6).tolist() == [0]
    # A suppressed box suppresses nothing: 2 overlaps 1 by more than 0.6, but 1 goes under 0.
    chain = np.array([[0, 0, 19, 19], [3, 0, 22, 19], [7, 0, 26, 19]], float)
    assert box_iou_plus_one(chain, chain)[[0, 1, 0], [1, 2, 2]] == pytest.approx([17 / 23, 16 / 24, 13 / 27])
    assert nms_plus_one(chain, np.array([0.9, 0.8, 0.7]), 0.6).tolist() == [0, 2]
    assert nms_plus_one(np.zeros((0, 4)), np.zeros(0), 0.6).tolist() == []


# --- (a) the SGDET training assignment -------------------------------------------------------

PERSON_BOX = [0, 0, 99, 199]


def test_near_duplicate_of_a_gt_box_takes_its_class_under_sttran_only():
    gt = np.array([PERSON_BOX, [200, 200, 249, 249]], float)
    det = np.array([PERSON_BOX, [200, 200, 249, 249], [202, 202, 251, 251], [0, 0, 99, 179]], float)
    labels = np.array([PERSON, CUP])
    iou = box_iou_plus_one(det, gt)
    # det 2: 48*48 / (2500 + 2500 - 2304) = 0.855 with the cup; det 3: 100*180 / 100*200 = 0.9
    # with the person.
    assert iou[2, 1] == pytest.approx(2304 / 2696) and iou[3, 0] == pytest.approx(0.9)
    a = sttran_assignment(det, gt, labels)
    # Every detection whose best IoU is > 0.5 takes that GT box's class, picked or not; the person
    # picks its argmax (det 0, IoU 1), the cup its own (det 1, IoU 1).
    assert a.labels.tolist() == [PERSON, CUP, CUP, PERSON]
    assert a.found.tolist() == [0, 1]
    s = strict_assignment(det, gt, labels)
    assert s.labels.tolist() == [PERSON, CUP, 0, 0]
    assert s.found.tolist() == [0, 1]


def test_sttran_fallback_takes_the_next_detection_with_no_threshold():
    gt = np.array([PERSON_BOX, [200, 200, 249, 249], [204, 200, 253, 249]], float)
    det = np.array([PERSON_BOX, [201, 200, 250, 249], [240, 200, 289, 249]], float)
    labels = np.array([PERSON, CUP, DISH])
    iou = box_iou_plus_one(det, gt)
    # det 1: 49*50 / (5000 - 2450) = 0.961 with the cup, 47*50 / (5000 - 2350) = 0.887 with the
    # dish; det 2: 14*50 / (5000 - 700) = 0.163 with the dish.
    assert iou[1, 1:] == pytest.approx([2450 / 2550, 2350 / 2650])
    assert iou[2, 2] == pytest.approx(700 / 4300)
    a = sttran_assignment(det, gt, labels)
    # The dish's best detection (det 1) is the cup's already: it takes det 2, IoU 0.163 < 0.5.
    assert a.found.tolist() == [0, 1, 2]
    assert a.labels.tolist() == [PERSON, CUP, DISH]
    s = strict_assignment(det, gt, labels)
    # Continuous IoU of det 2 and the dish: 13*49 / (4802 - 637) = 0.153: left unmatched.
    assert s.found.tolist() == [0, 1, -1]
    assert s.labels.tolist() == [PERSON, CUP, 0]
    # When every detection is taken, the dish shares the cup's and relabels it.
    a = sttran_assignment(det[:2], gt, labels)
    assert a.found.tolist() == [0, 1, 1]
    assert a.labels.tolist() == [PERSON, DISH]
    assert strict_assignment(det[:2], gt, labels).found.tolist() == [0, 1, -1]


def test_plus_one_iou_decides_at_the_boundary():
    # The cup box [0,0,7,7] and a detection [0,0,10,10]: 0.49 continuous, 64/121 = 0.529 "+1".
    gt = np.array([[100, 100, 199, 299], [0, 0, 7, 7]], float)
    det = np.array([[100, 100, 199, 299], [0, 0, 10, 10]], float)
    labels = np.array([PERSON, CUP])
    a, s = sttran_assignment(det, gt, labels), strict_assignment(det, gt, labels)
    assert (a.labels.tolist(), a.found.tolist()) == ([PERSON, CUP], [0, 1])
    assert (s.labels.tolist(), s.found.tolist()) == ([PERSON, 0], [0, -1])
    # The person too: found by the "+1" rule only.
    assert person_detections(det[1:], gt[1:]) == (0, -1)


def test_assignment_without_boxes():
    gt = np.array([PERSON_BOX], float)
    for rule in (sttran_assignment, strict_assignment):
        a = rule(np.zeros((0, 4)), gt, np.array([PERSON]))
        assert a.labels.tolist() == [] and a.found.tolist() == [-1]
        a = rule(np.array([PERSON_BOX], float), np.zeros((0, 4)), np.zeros(0, np.int64))
        assert a.labels.tolist() == [0] and a.found.tolist() == []


# --- (b) STTran's SGDET test boxes -----------------------------------------------------------


def test_sttran_test_boxes_by_hand():
    boxes = np.array([
        [10, 10, 109, 209],     # 0: argmax person (0.375), not the most person-like box
        [300, 10, 399, 209],    # 1: argmax bed, person 0.4375: the subject
        [150, 150, 199, 199],   # 2: a book, copied as its second class (paper)
        [400, 300, 430, 330],   # 3: cup, 0.75 once the background (0.5) is taken out
        [405, 300, 435, 330],   # 4: cup, "+1" IoU 26*31 / (1922 - 806) = 0.722 with 3: suppressed
        [409, 300, 439, 330],   # 5: cup, "+1" IoU 22*31 / (1922 - 682) = 0.55 with 3: kept
    ], float)
    d = dists({PERSON: 0.375, CUP: 0.34375, BED: 0.28125},
              {BED: 0.5, PERSON: 0.4375, CUP: 0.0625},
              {BOOK: 0.5, PAPER: 0.375, PERSON: 0.125},
              {0: 0.5, CUP: 0.375, PERSON: 0.125},
              {CUP: 0.625, PERSON: 0.375},
              {CUP: 0.5625, TABLE: 0.4375})
    iou = box_iou_plus_one(boxes[3:4], boxes[4:])[0]
    assert iou == pytest.approx([806 / 1116, 682 / 1240])
    t = sttran_test_boxes(boxes, d, person=PERSON, copy_classes=COPY)
    # Boxes by class (person, bed, book, cup, paper), each class by score: the copy of the book
    # (extended index 6) comes last; the cup 4 is gone.
    assert t.source.tolist() == [0, 1, 2, 3, 5, 2]
    assert t.subject == 1
    assert t.objects.tolist() == [0, 2, 3, 4, 5]
    # Each box: its best class but the person; the subject: the person, scored with its probability.
    assert t.labels.tolist() == [CUP, PERSON, BOOK, CUP, CUP, PAPER]
    assert t.scores.tolist() == [0.34375, 0.4375, 0.5, 0.75, 0.5625, 0.375]
    # The copy has the book's probability set to 0, nothing renormalised.
    assert t.dists[5, BOOK - 1] == 0.0 and t.dists[5, PAPER - 1] == 0.375 and t.dists[5].sum() == 0.5
    assert t.dists[3, CUP - 1] == 0.75  # background removed, renormalised


def test_copies_chain_and_the_subject_can_be_a_copy():
    # A book whose second class is the chair (a copy class too): copied for book, its copy copied
    # again for chair. The person probability is highest on box 0, so the subject is the first
    # of its boxes in class order: the last copy, whose argmax is the person.
    chair = V.object_index("chair")
    boxes = np.array([[0, 0, 49, 49], [100, 0, 149, 49]], float)
    d = dists({BOOK: 0.5, chair: 0.3125, PERSON: 0.1875}, {CUP: 0.875, PERSON: 0.125})
    t = sttran_test_boxes(boxes, d, person=PERSON, copy_classes=COPY)
    # Extended boxes: 0 book, 1 cup, 2 = copy of 0 (chair), 3 = copy of 2 (person). Classes:
    # person [3], book [0], chair [2], cup [1].
    assert t.source.tolist() == [0, 0, 0, 1]
    assert t.subject == 0
    assert t.labels.tolist() == [PERSON, BOOK, chair, CUP]
    assert t.scores.tolist() == [0.1875, 0.5, 0.3125, 0.875]


def test_test_boxes_tie_goes_to_the_first_stored_detection():
    # Two detections of one proposal (one distribution: cup 0.5625, bed 0.4375, i.e. the detector
    # labelled them bed and cup) and a person far away. Both fall in the cup's NMS group with the
    # same score 0.5625; "+1" IoU of (10, 10, 49, 49) and (12, 10, 51, 49): 38 * 40 / (3200 - 1520)
    # = 0.905 > 0.6, so the first of the two in the given order survives. STTran's detector gives
    # them class by class (bed before cup), which keeps the bed's box; by score it would be the cup's.
    person = [60, 0, 99, 99]
    x, y = [10, 10, 49, 49], [12, 10, 51, 49]
    d = dists({PERSON: 1.0}, {CUP: 0.5625, BED: 0.4375}, {CUP: 0.5625, BED: 0.4375})
    assert box_iou_plus_one(np.array([x], float), np.array([y], float))[0, 0] == pytest.approx(1520 / 1680)
    for boxes in ([person, x, y], [person, y, x]):
        t = sttran_test_boxes(np.array(boxes, float), d, person=PERSON, copy_classes=COPY)
        assert t.source.tolist() == [0, 1] and t.subject == 0
    assert nms_plus_one(np.array([x, y], float), np.array([0.5, 0.5]), 0.6).tolist() == [0]
    assert nms_plus_one(np.array([y, x], float), np.array([0.5, 0.5]), 0.6).tolist() == [0]


def test_test_boxes_without_detections():
    t = sttran_test_boxes(np.zeros((0, 4)), np.zeros((0, C), np.float16), person=PERSON, copy_classes=COPY)
    assert t.subject == -1 and t.source.tolist() == [] and t.objects.tolist() == []


# --- (d) the pairs a store holds -------------------------------------------------------------


def _frame_with_a_book():
    """(gt, small, gt_d, det, det_labels, det_d) of the frame of :func:`test_stored_pairs_by_hand`."""
    # GT: person, cup, a small dish that the detector finds most person-like (0.875).
    gt = np.array([PERSON_BOX, [200, 200, 249, 249], [300, 300, 339, 339]], float)
    small = np.array([0, 0, 1])
    gt_d = dists({PERSON: 0.75, CUP: 0.25}, {CUP: 0.875, PERSON: 0.125}, {PERSON: 0.875, DISH: 0.125})
    # Detections (joint 3, 4, 5): 0 the person's box (argmax bed: the training subject only);
    # 1 a book whose copy is the most person-like box (the test subject); 2 labelled person by
    # the detector (the raw subject).
    det = np.array([PERSON_BOX, [400, 0, 449, 99], [500, 0, 549, 99]], float)
    det_labels = np.array([BED, BOOK, PERSON])
    det_d = dists({PERSON: 0.25, BED: 0.75}, {BOOK: 0.53125, PERSON: 0.46875}, {PERSON: 0.375, CUP: 0.625})
    return gt, small, gt_d, det, det_labels, det_d


def test_stored_pairs_by_hand():
    gt, small, gt_d, det, det_labels, det_d = _frame_with_a_book()
    t = sttran_test_boxes(det, det_d, person=PERSON, copy_classes=COPY)
    assert t.source[t.subject] == 1 and 1 in t.source[t.objects]  # the book's copy, and the book
    pairs = stored_pairs(gt, small, gt_d, det, det_labels, det_d, person=PERSON, copy_classes=COPY)
    assert pairs.tolist() == [
        [0, 1], [0, 2],          # the GT person with every GT box
        [2, 1],                  # SGCLS: the most person-like GT box with the others ((2, 0) is (0, 2))
        [3, 4], [3, 5],          # the training subject with every detection
        [3, 1], [3, 2],          # ... and every GT box but the person
        [5, 4],                  # the person detection (STTran's training subject; (5, 3) is (3, 5))
        [5, 1], [5, 2],          # ... also with every GT box but the person
        [4, 4],                  # the test subject ((4, 3), (4, 5) stored already) with its own copy
    ]
    # Within the _filtersmall boxes the person is the most person-like: no second SGCLS subject.
    gt_d2 = gt_d.copy()
    gt_d2[2] = gt_d[1]
    assert [2, 1] not in stored_pairs(gt, small, gt_d2, det, det_labels, det_d, person=PERSON,
                                      copy_classes=COPY).tolist()


def test_stored_pairs_when_no_detection_stands_for_the_person():
    gt = np.array([PERSON_BOX, [200, 200, 249, 249]], float)
    gt_d = dists({PERSON: 0.75, CUP: 0.25}, {CUP: 1.0})
    # det 0 is the cup; det 1 covers the top of the person: 100*61 / 100*200 = 0.305.
    det = np.array([[200, 200, 249, 249], [0, 0, 99, 60]], float)
    det_d = dists({CUP: 0.75, PERSON: 0.25}, {PERSON: 0.625, BED: 0.375})
    pairs = stored_pairs(gt, np.zeros(2), gt_d, det, np.array([CUP, PERSON]), det_d, person=PERSON, copy_classes=COPY)
    # GT pair; the test (and raw) subject det 1 with det 0; the GT person with every detection.
    assert pairs.tolist() == [[0, 1], [3, 2], [0, 2], [0, 3]]
    # A frame without detections holds the GT pairs alone.
    none = stored_pairs(gt, np.zeros(2), gt_d, np.zeros((0, 4)), np.zeros(0, int), np.zeros((0, C)), person=PERSON,
                        copy_classes=COPY)
    assert none.tolist() == [[0, 1]]


def test_stored_pairs_when_only_one_iou_convention_finds_the_person():
    # The person [0,0,7,7] and a detection [0,0,10,10]: the sttran rule takes it (0.529), the
    # strict rule does not (0.49) and adds the GT person, paired with every detection.
    gt = np.array([[0, 0, 7, 7], [50, 50, 99, 99]], float)
    gt_d = dists({PERSON: 1.0}, {CUP: 1.0})
    det = np.array([[0, 0, 10, 10]], float)
    det_d = dists({PERSON: 1.0})
    pairs = stored_pairs(gt, np.zeros(2), gt_d, det, np.array([PERSON]), det_d, person=PERSON, copy_classes=COPY)
    assert pairs.tolist() == [[0, 1], [2, 1], [0, 2]]


def test_stored_pairs_when_the_sttran_fallback_shares_the_persons_detection():
    # One detection, the person's box; the bed overlaps it by 100*80 / 100*100 = 0.8, and every
    # detection is taken: the bed shares the person's detection, a pair of it with itself.
    gt = np.array([[0, 0, 99, 99], [0, 0, 99, 79]], float)
    gt_d = dists({PERSON: 1.0}, {BED: 1.0})
    det = np.array([[0, 0, 99, 99]], float)
    det_d = dists({PERSON: 0.5, BED: 0.5})
    assert sttran_assignment(det, gt, np.array([PERSON, BED])).found.tolist() == [0, 0]
    pairs = stored_pairs(gt, np.zeros(2), gt_d, det, np.array([PERSON]), det_d, person=PERSON, copy_classes=COPY)
    assert pairs.tolist() == [[0, 1], [2, 1], [2, 2]]
    # When the bed is small, the SGDET view does not have it, but PREDCLS's assignment does.
    assert stored_pairs(gt, np.array([0, 1]), gt_d, det, np.array([PERSON]), det_d,
                        person=PERSON, copy_classes=COPY).tolist() == [[0, 1], [2, 1], [2, 2]]


def test_the_classes_are_found_by_name():
    assert SttranClasses.from_objects(V.objects) == SttranClasses(person=1, copy_classes=(5, 8, 17))
    # a vocabulary without a chair copies books and food alone
    assert SttranClasses.from_objects([n for n in V.objects if n != "chair"]).copy_classes == (5, 16)
    with pytest.raises(KeyError, match="person"):
        SttranClasses.from_objects([n for n in V.objects if n != "person"])


def test_test_boxes_and_stored_pairs_follow_the_vocabulary():
    """The frame of :func:`test_stored_pairs_by_hand` in a vocabulary where person and bag, book
    and box trade places (the classes with boxes keep their order): the same boxes, subject and
    pairs, labels mapped. AG's ids there would take the bag as the person and copy no book."""
    names = list(V.objects)
    new_id = np.arange(C)
    for a, b in (("person", "bag"), ("book", "box")):
        i, j = names.index(a), names.index(b)
        names[i], names[j] = b, a
        new_id[[i, j]] = [j, i]
    ids = SttranClasses.from_objects(names)
    assert ids == SttranClasses(person=2, copy_classes=(6, 8, 17))
    gt, small, gt_d, det, det_labels, det_d = _frame_with_a_book()
    t = sttran_test_boxes(det, det_d, person=PERSON, copy_classes=COPY)
    moved = det_d[:, new_id]  # the column of class c moves to new_id[c] (two swaps: their own inverse)
    u = sttran_test_boxes(det, moved, person=ids.person, copy_classes=ids.copy_classes)
    # boxes by class: the book's copy (the person), the bed, the book, the cup
    assert u.source.tolist() == t.source.tolist() == [1, 0, 1, 2] and u.subject == t.subject == 0
    assert u.labels.tolist() == new_id[t.labels].tolist() and u.scores.tolist() == t.scores.tolist()
    assert u.dists.tolist() == t.dists[:, new_id[1:] - 1].tolist()
    assert stored_pairs(gt, small, gt_d[:, new_id], det, new_id[det_labels], moved, person=ids.person,
                        copy_classes=ids.copy_classes).tolist() == stored_pairs(
        gt, small, gt_d, det, det_labels, det_d, person=PERSON, copy_classes=COPY).tolist()
    # with AG's copy ids (5: the box here) the book has no copy: another subject, fewer boxes
    assert sttran_test_boxes(det, moved, person=ids.person, copy_classes=COPY).source.tolist() == [0, 1, 2]


# --- (e) finding stored rows -----------------------------------------------------------------


def test_pair_index_finds_rows_in_either_order():
    index = PairIndex(np.array([0, 0, 3, 4]), np.array([1, 2, 4, 4]), num_boxes=5)
    assert index.rows(np.array([0, 2, 4, 3, 4, 1, 0]), np.array([1, 0, 3, 4, 4, 2, 3])).tolist() == [
        0, 1, 2, 2, 3, -1, -1]
    assert index.rows(np.zeros(0, int), np.zeros(0, int)).tolist() == []
    empty = PairIndex(np.zeros(0, int), np.zeros(0, int), num_boxes=2)
    assert empty.rows(np.array([0]), np.array([1])).tolist() == [-1]
