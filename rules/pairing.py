"""Which boxes a frame's pairs join: STTran's rules, as pure functions of one frame.

Shared by the extraction, which stores a union feature for every pair that a stage-2 view
can ask for (:func:`stored_pairs`), and by the stage-2 loader, which builds the views from
the stored boxes with the same functions. Every rule reproduces STTran's public code
(``lib/funcs.py::assign_relations``, ``lib/object_detector.py``, ``lib/sttran.py``); the
stricter alternatives are named options. Boxes are xyxy pixels; class distributions are the
detector's softmax over every class, background (index 0) included, as the store holds them.

* :func:`sttran_assignment`, :func:`strict_assignment`: the SGDET training assignment of
  detections to GT boxes (``assignment: sttran | strict`` in the recipes).
* :func:`sttran_test_boxes`: the boxes, labels and scores STTran scores at SGDET test time
  (book / chair / food boxes copied with their second class, per-class NMS 0.6, the box with
  the highest person probability as the subject).
* :class:`SttranClasses`: the class ids those rules name (the person, the copied classes), found
  by name in a vocabulary's object list; the rules take them as required keyword arguments.
* :func:`legacy_subject`: the subject of the stored detections as they are (the person
  detection, else the highest person probability): the ``sgdet_boxes: raw`` option.
* :func:`person_detections`, :func:`training_subjects`: the detection that stands for the GT
  person under each assignment rule.
* :func:`stored_pairs`: the pairs a store holds for a frame.

A frame's boxes are indexed jointly: GT objects ``0 .. G-1`` (the person first), then
detections ``G .. G+N-1``. A union box is symmetric, so a union feature serves a pair in
either order (:func:`pair_key`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rules.boxes import box_iou_continuous, box_iou_plus_one, nms_plus_one


class AssignmentRule(str, enum.Enum):
    """The SGDET training assignment of detections to GT boxes (``assignment`` in the recipes).

    STTRAN: STTran's ``lib/funcs.py::assign_relations`` (:func:`sttran_assignment`).
    STRICT: one detection per GT box, IoU > 0.5, the rest background (:func:`strict_assignment`).
    """

    STTRAN = "sttran"
    STRICT = "strict"


class SgdetBoxes(str, enum.Enum):
    """The boxes an SGDET test view scores (``sgdet_boxes`` in the recipes).

    STTRAN: STTran's test-time steps (:func:`sttran_test_boxes`).
    RAW:    the stored detections with their detector labels and scores, the person detection
            as the subject (:func:`legacy_subject`).
    """

    STTRAN = "sttran"
    RAW = "raw"


# STTran's ``clean_class`` calls at SGDET test, in its order (``lib/object_detector.py``).
COPY_CLASS_NAMES: tuple[str, ...] = ("book", "chair", "food")
TEST_NMS_THRESHOLD = 0.6


@dataclass(frozen=True)
class SttranClasses:
    """The object class ids STTran's rules name, in one vocabulary's index.

    person:       the subject's class.
    copy_classes: the classes of :data:`COPY_CLASS_NAMES` that the vocabulary has, in that order
                  (Action Genome: book 5, chair 8, food 17); a vocabulary without one of them
                  copies no box for it.
    """

    person: int
    copy_classes: tuple[int, ...]

    @classmethod
    def from_objects(cls, objects: Sequence[str]) -> "SttranClasses":
        """The ids in ``objects``, a vocabulary's object names by index (background first)."""
        objects = list(objects)
        if "person" not in objects:
            raise KeyError("the object vocabulary has no 'person', the subject of STTran's rules")
        return cls(person=objects.index("person"),
                   copy_classes=tuple(objects.index(name) for name in COPY_CLASS_NAMES if name in objects))


@dataclass(frozen=True)
class Assignment:
    """The SGDET training assignment of one frame.

    labels: (N,) int64 class of each detection, 0 = background.
    found:  (G,) int64 the detection that stands for each GT box, -1 when none does (the GT
            box is then added to the training boxes with its GT-box feature and score 1).
    """

    labels: np.ndarray
    found: np.ndarray


def _unassigned(det_boxes: np.ndarray, gt_labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """The inputs as float64 boxes and int64 labels, and an assignment of nothing: labels (N,)
    all background, found (G,) all -1."""
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64)
    return det_boxes, gt_labels, np.zeros(len(det_boxes), np.int64), np.full(len(gt_labels), -1, np.int64)


def sttran_assignment(det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                      threshold: float = 0.5) -> Assignment:
    """STTran's ``assign_relations`` (IoU with the "+1 pixel" convention):

    1. every detection whose best IoU with a GT box is > 0.5 takes that box's class;
    2. the person (GT 0) takes the detection of highest IoU, if that IoU > ``threshold``;
    3. each other GT box in order, if some IoU > ``threshold``, takes the detection of highest
       IoU, or, when that one is already taken, the next detection by IoU that is not, **with no
       threshold** (when every detection is taken it shares the best one), and gives it its class.

    Ties in the IoU order go to the lower detection index (numpy's stable sort; STTran's
    ``np.argsort`` leaves them to the sort).
    """
    det_boxes, gt_labels, labels, found = _unassigned(det_boxes, gt_labels)
    n, g = len(labels), len(found)
    if n == 0 or g == 0:
        return Assignment(labels, found)
    iou = box_iou_plus_one(det_boxes, gt_boxes)  # (N, G)
    best = iou.max(1)
    labels[best > 0.5] = gt_labels[iou.argmax(1)][best > 0.5]
    taken: list[int] = []
    for m in range(g):
        if not (iou[:, m] > threshold).any():
            continue
        cand = int(iou[:, m].argmax())
        if m > 0 and cand in taken:
            for c in np.argsort(-iou[:, m], kind="stable"):
                if int(c) not in taken:
                    cand = int(c)
                    break
        found[m] = cand
        taken.append(cand)
        if m > 0:
            labels[cand] = gt_labels[m]
    return Assignment(labels, found)


def strict_assignment(det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                      threshold: float = 0.5) -> Assignment:
    """The stricter rule (``assignment: strict``): GT boxes in order each take the unused
    detection of highest continuous IoU when that IoU is > ``threshold``; only those detections
    take a class, every other one is background."""
    det_boxes, gt_labels, labels, found = _unassigned(det_boxes, gt_labels)
    n, g = len(labels), len(found)
    if n == 0 or g == 0:
        return Assignment(labels, found)
    iou = box_iou_continuous(gt_boxes, det_boxes)
    used = np.zeros(n, dtype=bool)
    for m in range(g):
        cand = np.where(used, -1.0, iou[m])
        d = int(cand.argmax())
        if cand[d] > threshold:
            used[d] = True
            found[m] = d
            labels[d] = gt_labels[m]
    return Assignment(labels, found)


def assign(rule: AssignmentRule | str, det_boxes: np.ndarray, gt_boxes: np.ndarray,
           gt_labels: np.ndarray) -> Assignment:
    """The assignment of ``rule`` (ValueError for a name that is none)."""
    rule_function = {AssignmentRule.STTRAN: sttran_assignment, AssignmentRule.STRICT: strict_assignment}
    return rule_function[AssignmentRule(rule)](det_boxes, gt_boxes, gt_labels)


def foreground(dists: np.ndarray) -> np.ndarray:
    """(N, C) distributions with background -> (N, C-1) float64 over the object classes alone.

    STTran's object distribution is ``softmax(cls_score[:, 1:])``, which is the detector's
    softmax renormalised without the background."""
    fg = np.asarray(dists, dtype=np.float64)[:, 1:]
    return fg / np.maximum(fg.sum(1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class TestBoxes:
    """The boxes STTran scores at SGDET test time, for one frame. K boxes.

    source: (K,) int64 the detection each box is (a copy shares its original's box and feature).
    dists:  (K, C-1) float64 foreground distribution (a copy has its original's class zeroed).
    labels: (K,) int64 object classes: the subject is the person, every other box its most
            probable class other than the person.
    scores: (K,) float64 the probability of that class (the subject: its person probability).
    subject: index of the subject among the K boxes, -1 when the frame has no detection.
    """

    source: np.ndarray
    dists: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    subject: int

    @property
    def objects(self) -> np.ndarray:
        """(K-1,) int64 every box but the subject, in order: the pairs are (subject, each)."""
        k = np.arange(len(self.source))
        return k[k != self.subject] if self.subject >= 0 else k[:0]


def sttran_test_boxes(det_boxes: np.ndarray, det_dists: np.ndarray, *, person: int,
                      copy_classes: tuple[int, ...], nms_threshold: float = TEST_NMS_THRESHOLD) -> TestBoxes:
    """STTran's SGDET test-time steps (``ObjectClassifier.forward``, mode sgdet, eval) on one
    frame's detections, in the order STTran's detector gives them to the classifier (class by
    class, each class by descending score: the order a store holds by default,
    ``DetectorSettings.detection_order``). The order decides ties: two detections of one
    proposal share its distribution, so in step 3 they score the same and the first survives.

    1. labels are the argmax of the foreground distribution (:func:`foreground`);
    2. for each class c of ``copy_classes`` in turn (``clean_class``): every box labelled c,
       copies included, gets a copy with c's probability set to 0, labelled by the argmax of
       what is left; copies follow the originals;
    3. per class (the argmax of each box's distribution), boxes by descending probability of
       that class, equal ones in their order (``torch.sort``, then the NMS kernel's own sort,
       keep ties in order for up to 16 boxes on the CPU; a stable sort here), NMS with the "+1"
       IoU at ``nms_threshold`` (0.6); kept boxes in class order, then score order;
    4. every box is labelled with its most probable class other than the person, scored with
       that probability; the box with the highest person probability is the subject,
       labelled person and scored with its person probability.

    ``person``, ``copy_classes``: class ids (:class:`SttranClasses` of the store's vocabulary).
    """
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    det_dists = np.asarray(det_dists)
    # (0, C) stays as it is: numpy cannot infer the -1 of an empty reshape.
    fg = foreground(det_dists if det_dists.ndim == 2 else det_dists.reshape(len(det_boxes), -1))
    return select_test_boxes(det_boxes, fg, person=person, copy_classes=copy_classes, nms_threshold=nms_threshold)


def select_test_boxes(det_boxes: np.ndarray, fg: np.ndarray, *, person: int,
                      copy_classes: tuple[int, ...], nms_threshold: float = TEST_NMS_THRESHOLD) -> TestBoxes:
    """Steps 1-4 of :func:`sttran_test_boxes` on a given (N, C-1) object-class distribution
    ``fg`` (person first), taken as it is (not renormalised): DSG-DETR runs them on its own
    classifier's ``softmax(37 logits)[:, 1:]`` (``lib/sttran.py:328-418``)."""
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    fg = np.asarray(fg, dtype=np.float64)
    fg = fg if fg.ndim == 2 else fg.reshape(len(det_boxes), -1)
    p = person - 1  # the person's column in the foreground distribution
    source = np.arange(len(det_boxes))
    labels = fg.argmax(1) + 1 if len(fg) else np.zeros(0, np.int64)
    for c in copy_classes:
        sel = np.flatnonzero(labels == c)
        copies = fg[sel].copy()
        copies[:, c - 1] = 0.0
        source = np.concatenate([source, source[sel]])
        fg = np.concatenate([fg, copies])
        labels = np.concatenate([labels, copies.argmax(1) + 1 if len(sel) else np.zeros(0, np.int64)])
    boxes = det_boxes[source]
    top = fg.argmax(1) if len(fg) else np.zeros(0, np.int64)
    kept = []
    for j in range(fg.shape[1]):
        inds = np.flatnonzero(top == j)
        if len(inds):
            kept.extend(inds[nms_plus_one(boxes[inds], fg[inds, j], nms_threshold)].tolist())
    kept = np.asarray(kept, dtype=np.int64)
    source, fg = source[kept], fg[kept]
    if not len(kept):
        return TestBoxes(source, fg, np.zeros(0, np.int64), np.zeros(0), -1)
    others = np.delete(fg, p, axis=1)
    best = others.argmax(1)
    labels = np.where(best >= p, best + 1, best) + 1  # back to foreground columns, then to class ids
    scores = others.max(1)
    subject = int(fg[:, p].argmax())
    labels[subject] = person
    scores[subject] = fg[subject, p]
    return TestBoxes(source, fg, labels.astype(np.int64), scores, subject)


def legacy_subject(det_labels: np.ndarray, det_dists: np.ndarray, *, person: int) -> int:
    """The subject of the stored detections as they are: the first detection labelled person,
    else the one with the highest person probability; -1 without detections."""
    det_labels = np.asarray(det_labels)
    if not len(det_labels):
        return -1
    is_person = np.flatnonzero(det_labels == person)
    if len(is_person):
        return int(is_person[0])
    return int(np.asarray(det_dists, dtype=np.float64)[:, person].argmax())


def person_detections(det_boxes: np.ndarray, person_box: np.ndarray, threshold: float = 0.5) -> tuple[int, int]:
    """The detection that stands for the GT person under each rule of :func:`assign`, -1 where
    none does: ``(sttran, strict)``. Both rules serve the person first, each with its own IoU
    convention ("+1 pixel" for sttran, continuous for strict): the detection of highest IoU,
    when that IoU is > ``threshold``."""
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    if not len(det_boxes):
        return -1, -1
    out = []
    for iou in (box_iou_plus_one(det_boxes, person_box)[:, 0], box_iou_continuous(det_boxes, person_box)[:, 0]):
        d = int(iou.argmax())
        out.append(d if iou[d] > threshold else -1)
    return out[0], out[1]


def training_subjects(det_boxes: np.ndarray, person_box: np.ndarray, threshold: float = 0.5) -> list[int]:
    """The detections that may stand for the GT person in SGDET training: those of
    :func:`person_detections`, without -1 and without repeats (sttran's first)."""
    out: list[int] = []
    for d in person_detections(det_boxes, person_box, threshold):
        if d >= 0 and d not in out:
            out.append(d)
    return out


def _given_to_an_object(det_boxes: np.ndarray, gt_boxes: np.ndarray, detection: int) -> bool:
    """Whether :func:`sttran_assignment` gives ``detection`` to a GT box other than the person
    (its fallback takes any untaken detection, and shares the best one when every one is taken)."""
    found = sttran_assignment(det_boxes, gt_boxes, np.zeros(len(gt_boxes), np.int64)).found
    return bool(np.any(found[1:] == detection))


def pair_key(a: np.ndarray, b: np.ndarray, num_boxes: int) -> np.ndarray:
    """The key of the unordered pair {a, b} of a frame with ``num_boxes`` boxes (int64)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return np.minimum(a, b) * num_boxes + np.maximum(a, b)


def stored_pairs(gt_boxes: np.ndarray, gt_small: np.ndarray, gt_dists: np.ndarray, det_boxes: np.ndarray,
                 det_labels: np.ndarray, det_dists: np.ndarray, *, person: int,
                 copy_classes: tuple[int, ...]) -> np.ndarray:
    """The (subject, object) pairs of one frame whose union feature a store holds, (M, 2) int64
    in the frame's joint box index (GT 0..G-1, detections G..G+N-1), no unordered pair twice:

    1. the GT person with every other GT box (PREDCLS, SGCLS);
    2. for SGCLS at test time, where the subject is the box the classifier finds most
       person-like: the GT box of highest detector person probability, among all and among
       those of the _filtersmall annotations, with every other GT box, when it is not the person;
    3. every detection that can be the subject (:func:`training_subjects`, the subject of
       :func:`sttran_test_boxes`, :func:`legacy_subject`) with every other detection; when a
       detection stands for the GT person, the training subjects and the person detection
       (:func:`legacy_subject`, STTran's training subject) also with every GT box but the
       person (GT boxes that no detection stands for are added in training and paired with the
       subject); a detection with itself when the test view pairs it with its own copy, or when
       :func:`sttran_assignment` (over every GT box, or over those of the _filtersmall
       annotations) gives such a subject to a GT object too (its fallback);
    4. when a rule of :func:`assign` finds no detection for the GT person
       (:func:`person_detections`: the two IoU conventions disagree near 0.5), the GT person,
       which that rule adds to its training boxes, with every detection.

    ``det_dists`` should be the values as stored (float16), so that the loader, which calls
    :func:`sttran_test_boxes` on them, finds the same subject. ``person``, ``copy_classes``: class
    ids (:class:`SttranClasses` of the store's vocabulary).
    """
    g, n = len(gt_boxes), len(det_boxes)
    gt_small = np.asarray(gt_small, dtype=bool)
    rows: list[tuple[int, int]] = [(0, j) for j in range(1, g)]
    gt_person = np.asarray(gt_dists, dtype=np.float64)[:, person] if g else np.zeros(0)
    for cand in (np.arange(g), np.flatnonzero(~gt_small)):
        if len(cand):
            h = int(cand[gt_person[cand].argmax()])
            if h != 0:
                rows.extend((h, j) for j in range(g) if j != h)
    by_rule = person_detections(det_boxes, np.asarray(gt_boxes[:1])) if g and n else (-1, -1)
    train = list(dict.fromkeys(d for d in by_rule if d >= 0))  # training_subjects, without a second IoU pass
    test = sttran_test_boxes(det_boxes, det_dists, person=person, copy_classes=copy_classes) if n else None
    legacy = legacy_subject(det_labels, det_dists, person=person)
    with_gt = train + ([legacy] if train and legacy not in train else [])  # the SGDET training subjects
    subjects = list(with_gt)
    for s in ((int(test.source[test.subject]) if test is not None and test.subject >= 0 else -1), legacy):
        if s >= 0 and s not in subjects:
            subjects.append(s)
    for s in subjects:
        rows.extend((g + s, g + d) for d in range(n) if d != s)
        if s in with_gt:
            rows.extend((g + s, j) for j in range(1, g))
    if test is not None and test.subject >= 0:
        s = int(test.source[test.subject])
        if np.any(test.source[test.objects] == s):
            rows.append((g + s, g + s))
    if g and n:
        for cand in (np.arange(g), np.concatenate([[0], 1 + np.flatnonzero(~gt_small[1:])])):
            for s in with_gt:
                if _given_to_an_object(det_boxes, np.asarray(gt_boxes)[cand], s):
                    rows.append((g + s, g + s))
        if min(by_rule) < 0:
            rows.extend((0, g + d) for d in range(n))
    out = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    _, first = np.unique(pair_key(out[:, 0], out[:, 1], g + n), return_index=True)
    return out[np.sort(first)]


class PairIndex:
    """Finds the stored row of a frame's pairs: ``rows(subject, object)`` in the joint box index,
    either order, -1 where the store holds no such pair."""

    def __init__(self, subject: np.ndarray, obj: np.ndarray, num_boxes: int) -> None:
        self.num_boxes = num_boxes
        keys = pair_key(subject, obj, num_boxes)
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]

    def rows(self, subject: np.ndarray, obj: np.ndarray) -> np.ndarray:
        keys = pair_key(subject, obj, self.num_boxes)
        if not len(self._keys):
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return np.where(self._keys[pos] == keys, self._order[pos], -1).astype(np.int64)
