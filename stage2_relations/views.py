"""What one frame of a stored video becomes for a task mode: its boxes, its pairs and their
labels, built from the store with STTran's rules (:mod:`rules.pairing`).

One store serves every mode (:mod:`store.schema`): PREDCLS sees every GT object; SGCLS and
SGDET see those of the ``_filtersmall`` annotations (``gt_small == 0``) and only the frames
that keep one (:func:`mode_frames`). For each mode there is a training view and a test view:

========  =====================================================  ==========================================
mode      training view                                          test view
========  =====================================================  ==========================================
PREDCLS   GT boxes; (person, object) pairs with a relation       GT boxes; (person, every object)
SGCLS     as PREDCLS (GT labels for the class embeddings)        GT boxes; every ordered pair, from which
                                                                 the head keeps its subject's (STTran)
SGDET     detections labelled by the assignment (``sttran``      STTran's test boxes (copies, NMS 0.6, the
          or ``strict``) plus the GT boxes no detection          most person-like box as the subject), or
          stands for; (subject, the box of each GT relation)     the stored detections (``sgdet_boxes: raw``)
========  =====================================================  ==========================================

Each row is one :class:`ViewBuilder` (:data:`BUILDERS`, by mode) whose ``train`` and ``test``
give the boxes and the candidate pairs (:class:`Candidates`); :func:`frame_view` then finds
each pair's union feature and samples the negatives, the same for every mode.

**Negatives** (pairs without a relation) enter the training view only when
``ViewOptions.negatives`` is on, which RS-Net turns on: baselines train on positives alone,
as their papers do. In SGDET they are the subject with every other box; in PREDCLS / SGCLS,
where every AG object is annotated, the frame's detections that the assignment leaves
unlabelled, each added as a box and paired with the GT person. The store holds the union
feature of (GT person, detection) only when no detection stands for the person; otherwise the
pair takes the union feature of (the detection that stands for the person, that detection),
and the pair is marked ``substituted``. Then :func:`sample_negatives`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from rules.boxes import paired_box_iou_continuous
from rules.modes import Mode
from rules.pairing import (
    Assignment,
    PairIndex,
    SgdetBoxes,
    SttranClasses,
    assign,
    legacy_subject,
    sttran_test_boxes,
    training_subjects,
)
from stage2_relations.view_options import NegativeLabels, ObjectScores, ViewOptions
from store import VideoRecord
from store.vocabulary import Vocabulary


@dataclass(frozen=True)
class FrameView:
    """One frame for one mode and view. K boxes, M pairs; pair indices are local to the frame.

    boxes (K, 4) f32, labels (K,) i64, embed_labels (K,) i64 the labels of the pairs' class
    embeddings in training (``labels`` but for boxes only negatives use: ``negative_labels``),
    scores (K,) f32, is_gt (K,) bool, features (K, D),
    dists (K, C) class distributions; pairs (M, 2) i64 (subject, object); union_rows (M,) i64
    stored pair rows of the frame holding each pair's union feature; substituted (M,) bool
    (the union feature is another pair's, see the module docstring); positive (M,) bool;
    rel_rows (M,) i64 the video's gt_relations row of each positive, -1 otherwise;
    joint (K,) i64 each box's index in the frame's joint box index (GT 0..G-1, detections
    G..), a copy has its original's (for :mod:`stage2_relations.pool`).
    """

    boxes: np.ndarray
    labels: np.ndarray
    embed_labels: np.ndarray
    scores: np.ndarray
    is_gt: np.ndarray
    features: np.ndarray
    dists: np.ndarray
    pairs: np.ndarray
    union_rows: np.ndarray
    substituted: np.ndarray
    positive: np.ndarray
    rel_rows: np.ndarray
    joint: np.ndarray | None = None


def sample_negatives(
    pos_subj_boxes: np.ndarray,
    pos_obj_boxes: np.ndarray,
    pos_classes: np.ndarray,
    neg_subj_boxes: np.ndarray,
    neg_obj_boxes: np.ndarray,
    neg_classes: np.ndarray,
    rng: np.random.Generator,
    *,
    iou_threshold: float = 0.5,
    ratio: float = 1.2,
) -> np.ndarray:
    """RS-Net's negative sampling for one frame (paper section 4.2).

    1. A negative is dropped when some positive of the frame has the same (subject class,
       object class) and **both** boxes overlap that positive's with IoU > ``iou_threshold``
       (subject with subject, object with object). We require both boxes because a pair is
       defined by both; the subject is the person in every AG pair, so in practice this is
       the object box's IoU plus a check that the person boxes agree.
    2. If more than ``floor(ratio * positives)`` negatives remain, a random subset of that
       size is kept (drawn with ``rng``, sorted). A frame without positives keeps none.

    pos_*_boxes (P, 4), pos_classes (P, 2) int, neg_*_boxes (Q, 4), neg_classes (Q, 2).
    Returns the kept indices into the negatives, int64 (sorted ascending).
    """
    q = len(neg_classes)
    idx = np.arange(q)
    if q and len(pos_classes):
        same = (neg_classes[:, None, 0] == pos_classes[None, :, 0]) & (neg_classes[:, None, 1] == pos_classes[None, :, 1])
        n, p = np.nonzero(same)  # the IoU matters only for pairs of the same classes (few, often none)
        if len(n):
            overlap = (paired_box_iou_continuous(neg_subj_boxes[n], pos_subj_boxes[p]) > iou_threshold) & (
                paired_box_iou_continuous(neg_obj_boxes[n], pos_obj_boxes[p]) > iou_threshold)
            keep = np.ones(q, dtype=bool)
            keep[n[overlap]] = False
            idx = np.flatnonzero(keep)
    cap = int(math.floor(ratio * len(pos_classes) + 1e-9))
    if len(idx) > cap:
        idx = np.sort(rng.choice(idx, size=cap, replace=False))
    return idx.astype(np.int64)


def _best_object_class(dists: np.ndarray, person: int) -> np.ndarray:
    """(N,) int64 each box's most probable class other than background and the person, as
    STTran's SGDET test labels every box but the subject."""
    d = np.asarray(dists, dtype=np.float64).copy()
    d[:, [0, person]] = -1.0
    return d.argmax(1).astype(np.int64)


def mode_frames(rec: VideoRecord, mode: Mode, min_frames: int) -> np.ndarray:
    """The frames of ``rec`` in ``mode``'s view, int64: every frame for PREDCLS; for SGCLS and
    SGDET the frames with an object of the _filtersmall annotations, none when fewer than
    ``min_frames`` remain (the reader's rules applied to that file)."""
    if Mode(mode) is Mode.PREDCLS:
        return np.arange(rec.num_frames, dtype=np.int64)
    o = rec.gt_offsets
    kept_objects = np.concatenate([[0], np.cumsum(rec.gt_small == 0)])
    per_frame = kept_objects[o[1:]] - kept_objects[o[:-1]] - 1  # minus the person
    frames = np.flatnonzero(per_frame > 0).astype(np.int64)
    return frames if len(frames) >= min_frames else frames[:0]


def gt_selection(rec: VideoRecord, f: int, mode: Mode) -> np.ndarray:
    """Indices (local to frame ``f``) of the GT objects of ``mode``, the person first."""
    g = rec.frame_rows("gt_objects", f)
    if Mode(mode) is Mode.PREDCLS:
        return np.arange(g.stop - g.start, dtype=np.int64)
    small = rec.gt_small[g].astype(bool)
    small[:1] = False  # the person; a frame of a video without annotations has no GT objects
    return np.flatnonzero(~small).astype(np.int64)


def _relation_rows(rec: VideoRecord, f: int, sel: np.ndarray) -> np.ndarray:
    """(len(sel),) video-level gt_relations row of each selected GT object (person subject), -1 none."""
    r = rec.frame_rows("gt_relations", f)
    g = rec.frame_rows("gt_objects", f)
    of = np.full(g.stop - g.start, -1, dtype=np.int64)
    mine = rec.rel_subject[r] == 0
    of[rec.rel_object[r][mine]] = np.arange(r.start, r.stop)[mine]
    return of[sel]


@dataclass(frozen=True)
class BoxParts:
    """Boxes of a view, or of one part of it (K rows), as :class:`FrameView` takes them.

    joint (K,) i64 each box's index in the frame's joint box index (GT 0..G-1, detections G..);
    boxes (K, 4) f32; labels (K,) i64; embed (K,) i64 the labels of the class embeddings;
    scores (K,) f32; is_gt (K,) bool; features (K, D) f16; dists (K, C).
    """

    joint: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    embed: np.ndarray
    scores: np.ndarray
    is_gt: np.ndarray
    features: np.ndarray
    dists: np.ndarray

    @staticmethod
    def concat(parts: list[BoxParts]) -> BoxParts:
        return BoxParts(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(BoxParts)))


@dataclass(frozen=True)
class Candidates:
    """What a mode's builder gives for one frame, before the union rows and the sampling.

    boxes: the view's boxes; pairs (P, 2) i64 (subject, object) local box indices, the pairs
    scored at test or trained as positives; rel (P,) i64 the video's gt_relations row of each,
    -1 none; negatives (Q, 2) i64 the candidate negatives (training, ``ViewOptions.negatives``);
    fallback / negative_fallback: the joint index of the box whose union feature a pair
    (resp. a negative) without its own takes, None for none (see the module docstring).
    """

    boxes: BoxParts
    pairs: np.ndarray
    rel: np.ndarray
    negatives: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.int64))
    fallback: int | None = None
    negative_fallback: int | None = None


class _Frame:
    """The stored arrays of one frame and its pair lookup, from which the builders take boxes."""

    def __init__(self, rec: VideoRecord, f: int, mode: Mode, options: ViewOptions, classes: SttranClasses) -> None:
        self.rec, self.f, self.options, self.classes = rec, f, options, classes
        g, d, p = (rec.frame_rows(t, f) for t in ("gt_objects", "detections", "pairs"))
        self.g, self.d, self.p = g, d, p
        self.num_gt, self.num_det = g.stop - g.start, d.stop - d.start
        self.index = PairIndex(rec.pair_subject[p], rec.pair_object[p], self.num_gt + self.num_det)
        self.sel = gt_selection(rec, f, mode)
        self.rel = _relation_rows(rec, f, self.sel)

    def gt_boxes(self, local: np.ndarray) -> BoxParts:
        """GT objects ``local`` (indices into the frame's GT rows)."""
        rec, rows = self.rec, self.g.start + local
        return BoxParts(joint=local, boxes=rec.gt_boxes[rows], labels=rec.gt_labels[rows].astype(np.int64),
                        embed=rec.gt_labels[rows].astype(np.int64), scores=np.ones(len(local), np.float32),
                        is_gt=np.ones(len(local), bool), features=rec.gt_features[rows], dists=rec.gt_dists[rows])

    def det_boxes(self, local: np.ndarray, labels: np.ndarray | None = None, scores: np.ndarray | None = None,
                  dists: np.ndarray | None = None) -> BoxParts:
        """Detections ``local``, optionally relabelled / rescored / with other distributions."""
        rec, rows = self.rec, self.d.start + local
        labels = rec.det_labels[rows] if labels is None else labels
        return BoxParts(joint=self.num_gt + local, boxes=rec.det_boxes[rows], labels=labels.astype(np.int64),
                        embed=labels.astype(np.int64),
                        scores=(rec.det_scores[rows] if scores is None else scores).astype(np.float32),
                        is_gt=np.zeros(len(local), bool), features=rec.det_features[rows],
                        dists=rec.det_dists[rows] if dists is None else dists)

    def assignment(self) -> Assignment:
        """The SGDET training assignment (``ViewOptions.assignment``) of the frame's detections to its GT boxes."""
        rec = self.rec
        return assign(self.options.assignment, rec.det_boxes[self.d], rec.gt_boxes[self.g.start + self.sel],
                      rec.gt_labels[self.g.start + self.sel])

    def detection_subject(self) -> int:
        """The stored detections' subject (:func:`~rules.pairing.legacy_subject`), -1 without detections."""
        return legacy_subject(self.rec.det_labels[self.d], self.rec.det_dists[self.d], person=self.classes.person)

    def union_rows(self, joint: np.ndarray, pairs: np.ndarray, fallback: int | None,
                   required: bool) -> tuple[np.ndarray, np.ndarray]:
        """Stored rows of ``pairs`` (local box indices, ``joint`` maps them to the store's);
        a missing pair takes (``fallback``, object)'s row and is marked substituted. A pair
        that is still missing raises (``required``) or gets row -1 (dropped by the caller)."""
        s, o = joint[pairs[:, 0]], joint[pairs[:, 1]]
        rows = self.index.rows(s, o)
        substituted = np.zeros(len(rows), bool)
        if fallback is not None and (rows < 0).any():
            alt = self.index.rows(np.full(len(o), fallback), o)
            substituted = (rows < 0) & (alt >= 0)
            rows = np.where(rows < 0, alt, rows)
        if required and (rows < 0).any():
            k = int(np.flatnonzero(rows < 0)[0])
            raise ValueError(f"video {self.rec.name!r}, frame {self.rec.frame_names[self.f]!r}: the store holds no "
                             f"union feature for boxes ({int(s[k])}, {int(o[k])}) of the frame; was it extracted "
                             f"with another pairing rule? Re-extract with this code's `cli.py detect`.")
        return rows, substituted


def _with_subject(subject: int, objects: np.ndarray) -> np.ndarray:
    """(len(objects), 2) int64 pairs (``subject``, each of ``objects``)."""
    return np.stack([np.full(len(objects), subject, np.int64), objects], 1).astype(np.int64)


class ViewBuilder(abc.ABC):
    """The training and the test view of one mode (the table of the module docstring)."""

    @abc.abstractmethod
    def train(self, fr: _Frame) -> Candidates: ...

    @abc.abstractmethod
    def test(self, fr: _Frame) -> Candidates: ...


class PredclsView(ViewBuilder):
    """GT boxes; training: (person, object) pairs with a relation, and RS-Net's negatives when
    asked; test: (person, every object)."""

    def train(self, fr: _Frame) -> Candidates:
        parts = [fr.gt_boxes(fr.sel)]
        k = len(fr.sel)
        objects = np.arange(1, k)
        has_rel = fr.rel[objects] >= 0
        pairs = _with_subject(0, objects[has_rel])
        if not fr.options.negatives:  # a baseline trains on positives alone
            return Candidates(parts[0], pairs, fr.rel[objects[has_rel]])
        negatives = _with_subject(0, objects[~has_rel])
        negative_fallback = None
        if fr.num_det:
            a = fr.assignment()
            free = np.setdiff1d(np.flatnonzero(a.labels == 0), a.found[a.found >= 0])
            if len(free):
                parts.append(fr.det_boxes(free))
                negatives = np.concatenate([negatives, _with_subject(0, k + np.arange(len(free)))])
            if a.found[0] >= 0:
                negative_fallback = fr.num_gt + int(a.found[0])
        return Candidates(BoxParts.concat(parts), pairs, fr.rel[objects[has_rel]], negatives,
                          negative_fallback=negative_fallback)

    def test(self, fr: _Frame) -> Candidates:
        pairs = _with_subject(0, np.arange(1, len(fr.sel)))
        return Candidates(fr.gt_boxes(fr.sel), pairs, fr.rel[pairs[:, 1]])


class SgclsView(PredclsView):
    """As PREDCLS (GT labels for the class embeddings in training); test under
    ``object_scores: sttran``: every ordered pair, from which the head keeps its subject's (STTran)."""

    def test(self, fr: _Frame) -> Candidates:
        if fr.options.object_scores is not ObjectScores.STTRAN:
            return super().test(fr)
        k = len(fr.sel)
        s, o = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        keep = s != o
        pairs = np.stack([s[keep], o[keep]], 1).astype(np.int64)
        rel = np.where(pairs[:, 0] == 0, fr.rel[pairs[:, 1]], -1)
        return Candidates(fr.gt_boxes(fr.sel), pairs, rel, fallback=0)


class SgdetView(ViewBuilder):
    """Training: the detections labelled by the assignment plus the GT boxes no detection stands
    for, (subject, the box of each GT relation), and (subject, every other box) as negatives;
    test: STTran's test boxes or the stored detections (``sgdet_boxes``)."""

    def train(self, fr: _Frame) -> Candidates:
        rec, options = fr.rec, fr.options
        a = fr.assignment()
        supplied = np.flatnonzero(a.found < 0)  # indices into fr.sel
        detections = fr.det_boxes(np.arange(fr.num_det), labels=a.labels)
        view_of = np.where(a.found >= 0, a.found, 0)
        view_of[supplied] = fr.num_det + np.arange(len(supplied))
        # STTran pairs the relations with the frame's first box, the detector's person box
        # (``localhuman``), when a detection stands for the GT person; else with the added person
        human = view_of[0]
        if a.found[0] >= 0:
            human = fr.detection_subject()
        objects = np.arange(1, len(fr.sel))
        has_rel = fr.rel[objects] >= 0
        pairs = _with_subject(human, view_of[objects[has_rel]])
        taken = np.zeros(fr.num_det + len(supplied), bool)
        taken[pairs[:, 1]] = True
        taken[human] = True
        others = np.flatnonzero(~taken)
        negatives = _with_subject(human, others) if options.negatives else np.zeros((0, 2), np.int64)
        if options.negatives and options.negative_labels is NegativeLabels.DETECTOR:
            # boxes that only negatives use: the class the test view would give them
            labels_at_test = _best_object_class(rec.det_dists[fr.d], fr.classes.person)
            only_negative = np.flatnonzero(~taken[:fr.num_det])
            embed = detections.embed.copy()
            embed[only_negative] = labels_at_test[only_negative]
            detections = dataclasses.replace(detections, embed=embed)
        fallback = None
        if a.found[0] < 0 and fr.num_det:
            subjects = training_subjects(rec.det_boxes[fr.d], rec.gt_boxes[fr.g.start:fr.g.start + 1])
            fallback = fr.num_gt + subjects[0] if subjects else None
        return Candidates(BoxParts.concat([detections, fr.gt_boxes(fr.sel[supplied])]), pairs,
                          fr.rel[objects[has_rel]], negatives, fallback=fallback, negative_fallback=fallback)

    def test(self, fr: _Frame) -> Candidates:
        rec = fr.rec
        if fr.options.sgdet_boxes is SgdetBoxes.STTRAN:
            t = sttran_test_boxes(rec.det_boxes[fr.d], rec.det_dists[fr.d], person=fr.classes.person,
                                  copy_classes=fr.classes.copy_classes)
            dists = np.zeros((len(t.source), t.dists.shape[1] + 1), np.float32)
            dists[:, 1:] = t.dists
            boxes = fr.det_boxes(t.source, t.labels, t.scores, dists)
            subject, objects = t.subject, t.objects
        else:
            boxes = fr.det_boxes(np.arange(fr.num_det))
            subject = fr.detection_subject()
            objects = np.delete(np.arange(fr.num_det), subject) if subject >= 0 else np.zeros(0, np.int64)
        pairs = _with_subject(subject, objects)
        return Candidates(boxes, pairs, np.full(len(pairs), -1, np.int64))


BUILDERS: dict[Mode, ViewBuilder] = {Mode.PREDCLS: PredclsView(), Mode.SGCLS: SgclsView(), Mode.SGDET: SgdetView()}
"""The views of each mode."""


def frame_view(rec: VideoRecord, f: int, mode: Mode | str, *, train: bool, options: ViewOptions,
               rng: np.random.Generator, vocabulary: Vocabulary) -> FrameView:
    """Frame ``f`` of ``rec`` for ``mode`` (training or test view; see the module docstring).
    ``vocabulary``: the store's (``StoreMeta.vocabulary``), which names the classes of STTran's rules."""
    mode = Mode(mode)
    fr = _Frame(rec, f, mode, options, vocabulary.sttran_classes)
    c = BUILDERS[mode].train(fr) if train else BUILDERS[mode].test(fr)
    boxes, pos, rel, neg = c.boxes, c.pairs, c.rel, c.negatives
    pos_rows, pos_sub = fr.union_rows(boxes.joint, pos, c.fallback, required=True)
    if len(neg):
        neg_rows, neg_sub = fr.union_rows(boxes.joint, neg, c.negative_fallback, required=False)
        ok = neg_rows >= 0
        neg, neg_rows, neg_sub = neg[ok], neg_rows[ok], neg_sub[ok]
    else:
        neg_rows, neg_sub = np.zeros(0, np.int64), np.zeros(0, bool)
    if train and len(neg):
        b, lab = boxes.boxes, boxes.labels  # the assignment's classes: its near-duplicates are dropped
        keep = sample_negatives(b[pos[:, 0]], b[pos[:, 1]], lab[pos], b[neg[:, 0]], b[neg[:, 1]], lab[neg], rng,
                                iou_threshold=options.negative_iou, ratio=options.negative_ratio)
        neg, neg_rows, neg_sub = neg[keep], neg_rows[keep], neg_sub[keep]
    return FrameView(
        boxes=boxes.boxes.astype(np.float32), labels=boxes.labels, embed_labels=boxes.embed, scores=boxes.scores,
        is_gt=boxes.is_gt, features=boxes.features, dists=boxes.dists,
        pairs=np.concatenate([pos, neg]).astype(np.int64), union_rows=np.concatenate([pos_rows, neg_rows]),
        substituted=np.concatenate([pos_sub, neg_sub]), positive=np.concatenate([rel >= 0, np.zeros(len(neg), bool)]),
        rel_rows=np.concatenate([np.where(rel >= 0, rel, -1), np.full(len(neg), -1)]).astype(np.int64),
        joint=np.asarray(boxes.joint, np.int64),
    )


__all__ = ["BUILDERS", "BoxParts", "Candidates", "FrameView", "ViewBuilder", "frame_view",
           "gt_selection", "mode_frames", "sample_negatives"]
