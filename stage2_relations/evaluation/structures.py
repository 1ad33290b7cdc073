"""Inputs and options of the evaluation: per-frame arrays, their flat batched form, enums.

Two levels of container:

* :class:`FrameGroundTruth` / :class:`FramePredictions`: the arrays of one frame, the form in
  which another project hands its predictions over (all plain numpy arrays);
* :class:`GroundTruthSet` / :class:`PredictionSet`: the same arrays of many frames
  concatenated, with half-open offsets per frame (``offsets[i]:offsets[i + 1]`` are the rows of
  frame ``i``), the form on which every metric is computed in one vectorised pass.

Box and pair indices inside both containers are *local to their frame* (0 = the frame's first
box), exactly as in the per-frame form; the metrics turn them into flat indices themselves.
Boxes are xyxy in pixels of the original frame. Predicate ids are global (0..25 on Action
Genome); object labels are indices of ``vocabulary.objects`` (person = 1 on AG).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


class Constraint(str, enum.Enum):
    """How many predicates one predicted pair may contribute (STTran's graph constraints).

    WITH: three triplets per pair, the argmax of the attention, spatial and contacting rows.
    SEMI: the attention argmax plus every spatial / contacting predicate whose probability
          exceeds the semi threshold (0.9 by default).
    NO:   the top cells (100 per frame) of all rows of all pairs, ranked by triplet score.
    """

    WITH = "with"
    SEMI = "semi"
    NO = "no"


class MeanRecall(str, enum.Enum):
    """The three mean-recall definitions found in the Action Genome literature.

    DATASET (TEMPURA): per predicate, recalled GT triplets / GT triplets summed over the whole
        test set; then the mean over all predicates of the vocabulary.
    ALL_FRAMES (STKET): per predicate, the mean over all evaluated frames of the frame's
        recall of that predicate, a frame without the predicate counting 0; then the mean over
        all predicates.
    FRAMES_WITH_PREDICATE (DSG-DETR): per predicate, the mean of the frame's recall of that
        predicate over the frames that contain it; then the mean over all predicates.

    In all three, as in the three public implementations, a predicate absent from the ground
    truth contributes 0 to the mean and the mean divides by the size of the vocabulary.
    """

    DATASET = "dataset"
    ALL_FRAMES = "all_frames"
    FRAMES_WITH_PREDICATE = "frames_with_predicate"


class PaddedCells(str, enum.Enum):
    """What the zero-padded cells of each 26-wide score row may do (a quirk of STTran).

    STTran writes each pair's attention, spatial and contacting scores into three rows of
    width ``num_predicates`` that are zero outside the row's own block. RANK reproduces what
    that representation does:

    * NO constraint ranks all ``3 x 26`` cells of each pair, so when a frame has fewer than
      100 real cells, zero-score cells fill its top 100: duplicates of real triplets (which
      then count as hits in P@K) and cross-group triplets such as (person, object, spatial);
    * WITH constraint takes the argmax over the whole row, so a row whose own block is all
      zero emits predicate 0 (``looking_at``) with score 0;
    * SEMI constraint recognises a row's group from the sum of the first two cells of each
      block, so a row whose first two cells are both exactly 0 emits nothing.

    IGNORE is the corrected behaviour: a row only ever offers the predicates of its own group.
    With strictly positive probabilities (softmax / sigmoid without underflow) the two agree
    on WITH and SEMI; on NO they differ in P@K, and in R@K only in degenerate cases (real
    cells of probability exactly 0, which tie with the padded ones; objects labelled person).
    """

    RANK = "rank"
    IGNORE = "ignore"


class PrecisionDenominator(str, enum.Enum):
    """What P@K of a frame divides its hits by.

    K:        always K (the standard information-retrieval P@K). A frame that returns fewer
              than K triplets is not rewarded for returning few, and a frame with no
              prediction scores 0, as it does in recall.
    RETURNED: min(K, number of triplets the frame returned); a frame with no prediction
              scores 0.
    """

    K = "k"
    RETURNED = "returned"


def _as(a, dtype, shape_tail: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size == 0:
        arr = arr.reshape((0,) + shape_tail)
    arr = arr.astype(dtype, copy=False)
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        raise ValueError(f"{name}: expected shape (n, {', '.join(map(str, shape_tail))}), got {arr.shape}".replace(", )", ")"))
    return arr


def _check_boxes(boxes: np.ndarray, name: str, offsets: np.ndarray | None = None,
                 frame_names: Sequence[str] | None = None) -> None:
    """Every row is a finite xyxy box with x1 <= x2 and y1 <= y2; ValueError naming the first
    row that is not (and its frame, given the offsets)."""
    if not len(boxes):
        return
    finite = np.isfinite(boxes).all(1)
    ordered = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    bad = ~(finite & ordered)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        where = ""
        if offsets is not None:
            f = int(np.searchsorted(offsets, row, side="right") - 1)
            where = f" (frame {frame_names[f]!r})" if frame_names is not None else f" (frame {f})"
        what = "is not finite" if not finite[row] else "has x1 > x2 or y1 > y2 (boxes are xyxy)"
        raise ValueError(f"{name}: row {row}{where} {what}: {boxes[row].tolist()}")


def _check_unique(names: Sequence[str], what: str) -> None:
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dup = next(n for n in names if n in seen or seen.add(n))
        raise ValueError(f"{what} name frame {dup!r} twice: each frame must appear once")


@dataclass(frozen=True)
class FrameGroundTruth:
    """Ground truth of one frame.

    gt_boxes:     (B, 4) float64, xyxy pixels; the person box among them.
    gt_labels:    (B,) int64, object class ids (person = ``vocabulary.person_index``).
    gt_relations: (R, 3) int64 rows ``(person box, object box, predicate id)``: each annotated
                  relation with the person as subject, as AG stores it, whatever its group;
                  the evaluation itself reverses the spatial ones, as the protocol does.
    """

    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_relations: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "gt_boxes", _as(self.gt_boxes, np.float64, (4,), "gt_boxes"))
        object.__setattr__(self, "gt_labels", _as(self.gt_labels, np.int64, (), "gt_labels"))
        object.__setattr__(self, "gt_relations", _as(self.gt_relations, np.int64, (3,), "gt_relations"))
        if len(self.gt_labels) != len(self.gt_boxes):
            raise ValueError(f"gt_labels has {len(self.gt_labels)} rows, gt_boxes {len(self.gt_boxes)}")
        _check_boxes(self.gt_boxes, "gt_boxes")


@dataclass(frozen=True)
class FramePredictions:
    """Predictions of one frame.

    pred_boxes:       (N, 4) float64, xyxy pixels.
    pred_labels:      (N,) int64, object class ids.
    pred_scores:      (N,) float64 in [0, 1], object scores (ignored, taken as 1, in PREDCLS).
    pred_pairs:       (P, 2) int64 rows ``(person box, object box)``, indices into pred_boxes.
    pred_attention:   (P, A) float64 in [0, 1], attention probabilities (softmax applied).
    pred_spatial:     (P, S) float64 in [0, 1], spatial probabilities (sigmoid applied).
    pred_contacting:  (P, C) float64 in [0, 1], contacting probabilities (sigmoid applied).
    pred_pair_scores: (P,) float64 in [0, 1] or None; RS-Net's p_{t,0}, which multiplies the
                      score of every triplet of the pair when present.

    A, S, C are the sizes of the vocabulary's groups (3, 6, 17 on AG).
    """

    pred_boxes: np.ndarray
    pred_labels: np.ndarray
    pred_scores: np.ndarray
    pred_pairs: np.ndarray
    pred_attention: np.ndarray
    pred_spatial: np.ndarray
    pred_contacting: np.ndarray
    pred_pair_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        _coerce_predictions(self)
        _check_boxes(self.pred_boxes, "pred_boxes")


def _coerce_predictions(obj) -> None:
    """Cast and check the prediction arrays that one frame and a set of frames share."""
    set_ = lambda k, v: object.__setattr__(obj, k, v)  # noqa: E731
    set_("pred_boxes", _as(obj.pred_boxes, np.float64, (4,), "pred_boxes"))
    set_("pred_labels", _as(obj.pred_labels, np.int64, (), "pred_labels"))
    set_("pred_scores", _as(obj.pred_scores, np.float64, (), "pred_scores"))
    set_("pred_pairs", _as(obj.pred_pairs, np.int64, (2,), "pred_pairs"))
    p = len(obj.pred_pairs)
    for name in ("pred_attention", "pred_spatial", "pred_contacting"):
        arr = np.asarray(getattr(obj, name), dtype=np.float64)
        if arr.ndim == 1 and arr.size == 0:
            arr = arr.reshape(0, 0)
        if arr.ndim != 2 or arr.shape[0] != p:
            raise ValueError(f"{name}: expected shape ({p}, width), got {arr.shape}")
        set_(name, arr)
    if obj.pred_pair_scores is not None:
        set_("pred_pair_scores", _as(obj.pred_pair_scores, np.float64, (), "pred_pair_scores"))
        if len(obj.pred_pair_scores) != p:
            raise ValueError(f"pred_pair_scores has {len(obj.pred_pair_scores)} rows, pred_pairs {p}")


def _offsets(counts: Sequence[int]) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=out[1:])
    return out


def _check_offsets(offsets: np.ndarray, n_rows: int, name: str) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != n_rows or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name}: offsets must start at 0, be non-decreasing and end at {n_rows} (the row count)")
    return offsets


def _check_local_indices(idx: np.ndarray, row_offsets: np.ndarray, box_offsets: np.ndarray, name: str) -> None:
    """Every index of frame i's rows must lie in [0, number of boxes of frame i)."""
    if idx.size == 0:
        return
    frame = np.repeat(np.arange(len(row_offsets) - 1), np.diff(row_offsets))
    n_boxes = np.diff(box_offsets)[frame]
    bad = (idx < 0) | (idx >= n_boxes[:, None])
    if bad.any():
        row = int(np.flatnonzero(bad.any(1))[0])
        raise ValueError(f"{name}: row {row} (frame {frame[row]}) indexes a box outside its frame's {n_boxes[row]} boxes")


@dataclass(frozen=True)
class GroundTruthSet:
    """Ground truth of F frames, flat.

    box_offsets:      (F + 1,) int64; frame i's boxes are rows box_offsets[i]:box_offsets[i+1].
    gt_boxes:         (B, 4) float64, xyxy pixels.
    gt_labels:        (B,) int64.
    relation_offsets: (F + 1,) int64, the same for gt_relations.
    gt_relations:     (R, 3) int64 ``(person box, object box, predicate)``, box indices local
                      to the frame.
    frame_names:      F names (e.g. ``'001YG.mp4/000089.png'``) or None.
    """

    box_offsets: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    relation_offsets: np.ndarray
    gt_relations: np.ndarray
    frame_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("gt_boxes", _as(self.gt_boxes, np.float64, (4,), "gt_boxes"))
        set_("gt_labels", _as(self.gt_labels, np.int64, (), "gt_labels"))
        set_("gt_relations", _as(self.gt_relations, np.int64, (3,), "gt_relations"))
        set_("box_offsets", _check_offsets(self.box_offsets, len(self.gt_boxes), "box_offsets"))
        set_("relation_offsets", _check_offsets(self.relation_offsets, len(self.gt_relations), "relation_offsets"))
        if len(self.gt_labels) != len(self.gt_boxes):
            raise ValueError(f"gt_labels has {len(self.gt_labels)} rows, gt_boxes {len(self.gt_boxes)}")
        if len(self.box_offsets) != len(self.relation_offsets):
            raise ValueError("box_offsets and relation_offsets describe different numbers of frames")
        if self.frame_names is not None:
            set_("frame_names", tuple(str(n) for n in self.frame_names))
            if len(self.frame_names) != self.num_frames:
                raise ValueError(f"{len(self.frame_names)} frame names for {self.num_frames} frames")
            _check_unique(self.frame_names, "the ground truth's frame_names")
        _check_local_indices(self.gt_relations[:, :2], self.relation_offsets, self.box_offsets, "gt_relations")
        _check_boxes(self.gt_boxes, "gt_boxes", self.box_offsets, self.frame_names)

    @property
    def num_frames(self) -> int:
        return len(self.box_offsets) - 1

    @classmethod
    def from_frames(cls, frames: Sequence[FrameGroundTruth], frame_names: Sequence[str] | None = None) -> "GroundTruthSet":
        frames = list(frames)
        return cls(
            box_offsets=_offsets([len(f.gt_boxes) for f in frames]),
            gt_boxes=np.concatenate([f.gt_boxes for f in frames]) if frames else np.zeros((0, 4)),
            gt_labels=np.concatenate([f.gt_labels for f in frames]) if frames else np.zeros(0, np.int64),
            relation_offsets=_offsets([len(f.gt_relations) for f in frames]),
            gt_relations=np.concatenate([f.gt_relations for f in frames]) if frames else np.zeros((0, 3), np.int64),
            frame_names=tuple(frame_names) if frame_names is not None else None,
        )

    def frame(self, i: int) -> FrameGroundTruth:
        b = slice(self.box_offsets[i], self.box_offsets[i + 1])
        r = slice(self.relation_offsets[i], self.relation_offsets[i + 1])
        return FrameGroundTruth(self.gt_boxes[b], self.gt_labels[b], self.gt_relations[r])


@dataclass(frozen=True)
class PredictionSet:
    """Predictions of F frames, flat.

    box_offsets:      (F + 1,) int64 into the box rows.
    pred_boxes:       (N, 4) float64; pred_labels (N,) int64; pred_scores (N,) float64.
    pair_offsets:     (F + 1,) int64 into the pair rows.
    pred_pairs:       (P, 2) int64 ``(person box, object box)``, local to the frame.
    pred_attention:   (P, A), pred_spatial (P, S), pred_contacting (P, C) float64
                      probabilities; pred_pair_scores (P,) float64 or None (RS-Net p_{t,0}).
    frame_names:      F names or None.
    """

    box_offsets: np.ndarray
    pred_boxes: np.ndarray
    pred_labels: np.ndarray
    pred_scores: np.ndarray
    pair_offsets: np.ndarray
    pred_pairs: np.ndarray
    pred_attention: np.ndarray
    pred_spatial: np.ndarray
    pred_contacting: np.ndarray
    pred_pair_scores: np.ndarray | None = None
    frame_names: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        _coerce_predictions(self)
        n, p = len(self.pred_boxes), len(self.pred_pairs)
        if len(self.pred_labels) != n or len(self.pred_scores) != n:
            raise ValueError(f"pred_labels / pred_scores must have {n} rows like pred_boxes")
        set_("box_offsets", _check_offsets(self.box_offsets, n, "box_offsets"))
        set_("pair_offsets", _check_offsets(self.pair_offsets, p, "pair_offsets"))
        if len(self.box_offsets) != len(self.pair_offsets):
            raise ValueError("box_offsets and pair_offsets describe different numbers of frames")
        if self.frame_names is not None:
            set_("frame_names", tuple(str(x) for x in self.frame_names))
            if len(self.frame_names) != self.num_frames:
                raise ValueError(f"{len(self.frame_names)} frame names for {self.num_frames} frames")
            _check_unique(self.frame_names, "the predictions' frame_names")
        _check_local_indices(self.pred_pairs, self.pair_offsets, self.box_offsets, "pred_pairs")
        _check_boxes(self.pred_boxes, "pred_boxes", self.box_offsets, self.frame_names)

    @property
    def num_frames(self) -> int:
        return len(self.box_offsets) - 1

    @classmethod
    def from_frames(
        cls, frames: Sequence[FramePredictions], frame_names: Sequence[str] | None = None, *, widths: tuple[int, int, int] | None = None
    ) -> "PredictionSet":
        """Concatenate per-frame predictions. ``widths`` (A, S, C) is needed only when
        ``frames`` is empty."""
        frames = list(frames)
        with_p0 = [f.pred_pair_scores is not None for f in frames]
        if any(with_p0) and not all(with_p0):
            raise ValueError("pred_pair_scores must be given for every frame or for none")
        if frames:
            widths = (frames[0].pred_attention.shape[1], frames[0].pred_spatial.shape[1], frames[0].pred_contacting.shape[1])
        elif widths is None:
            widths = (0, 0, 0)

        def cat(name: str, tail: tuple[int, ...], dtype) -> np.ndarray:
            if not frames:
                return np.zeros((0,) + tail, dtype)
            return np.concatenate([getattr(f, name) for f in frames])

        return cls(
            box_offsets=_offsets([len(f.pred_boxes) for f in frames]),
            pred_boxes=cat("pred_boxes", (4,), np.float64),
            pred_labels=cat("pred_labels", (), np.int64),
            pred_scores=cat("pred_scores", (), np.float64),
            pair_offsets=_offsets([len(f.pred_pairs) for f in frames]),
            pred_pairs=cat("pred_pairs", (2,), np.int64),
            pred_attention=cat("pred_attention", (widths[0],), np.float64),
            pred_spatial=cat("pred_spatial", (widths[1],), np.float64),
            pred_contacting=cat("pred_contacting", (widths[2],), np.float64),
            pred_pair_scores=cat("pred_pair_scores", (), np.float64) if frames and all(with_p0) else None,
            frame_names=tuple(frame_names) if frame_names is not None else None,
        )

    def frame(self, i: int) -> FramePredictions:
        b = slice(self.box_offsets[i], self.box_offsets[i + 1])
        p = slice(self.pair_offsets[i], self.pair_offsets[i + 1])
        return FramePredictions(
            self.pred_boxes[b], self.pred_labels[b], self.pred_scores[b], self.pred_pairs[p],
            self.pred_attention[p], self.pred_spatial[p], self.pred_contacting[p],
            None if self.pred_pair_scores is None else self.pred_pair_scores[p],
        )

    def aligned_to(self, frame_names: Sequence[str]) -> "PredictionSet":
        """These predictions reordered to ``frame_names``; a frame absent here gets no prediction.

        Raises ValueError when this set has no frame names or names a frame twice.
        """
        if self.frame_names is None:
            raise ValueError("predictions carry no frame names, cannot align them to the ground truth")
        index = {n: i for i, n in enumerate(self.frame_names)}
        if len(index) != len(self.frame_names):
            raise ValueError("predictions name some frame twice")
        widths = (self.pred_attention.shape[1], self.pred_spatial.shape[1], self.pred_contacting.shape[1])
        frames = []
        for name in frame_names:
            i = index.get(name)
            if i is not None:
                frames.append(self.frame(i))
            else:
                frames.append(FramePredictions(
                    np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 2), np.int64),
                    np.zeros((0, widths[0])), np.zeros((0, widths[1])), np.zeros((0, widths[2])),
                    None if self.pred_pair_scores is None else np.zeros(0),
                ))
        return PredictionSet.from_frames(frames, list(frame_names), widths=widths)
