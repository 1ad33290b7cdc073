"""Stage-2 data: videos from the feature store as :class:`RelationBatch` objects.

One item of :class:`VideoDataset` is one whole video for one task :class:`~store.vocabulary.Mode`;
:func:`collate` stacks several videos (``videos_per_batch``) into one flat batch. Everything is
read through :mod:`store` (opened lazily in each DataLoader worker, or preloaded).

What a video becomes, per mode (``train=True`` is the training view, ``False`` the test view):

* PREDCLS / SGCLS: the boxes are the frame's GT objects (person first) with their GT-box
  features and detector class distributions; the pairs are the stored GT pairs (person, every
  other GT object). In training, the **negatives for RS-Net** are GT pairs without a relation
  (none on Action Genome, where every kept object is annotated) plus the frame's cached
  detections that match no GT object, each added as an extra box (its detection feature,
  detector label and score) and paired with the GT person through its cached detection pair
  (whose union feature was pooled with the person *detection*'s box). The test view has GT
  pairs only, as the protocol scores them.
* SGDET, test view: the detections and the stored detection pairs.
* SGDET, training view: the assignment of section 5 of the reference: a detection matched to a
  GT object takes its GT label, others the background label 0; GT objects that no detection
  matched are added as boxes with their GT-box features and score 1. Every GT relation is a
  positive: through its labelled detection pair when there is one, else through the GT pair
  (subject and object mapped to the matched detection or to the added GT box). Detection
  pairs without a relation are the negatives.

Negative sampling (:func:`sample_negatives`, RS-Net paper section 4.2) happens at load time
on the training view, afresh every epoch from a generator seeded by (seed, epoch, video).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from store import PAIR_SOURCE_DET, PAIR_SOURCE_GT, Store, UnionMode, VideoRecord, open_store
from store.boxes import box_iou, union_boxes
from store.vocabulary import Mode, PredicateGroup, Vocabulary

MASK_SIZE = 27


# --- geometry (pure, vectorised) ------------------------------------------------------


def spatial_masks(subj: np.ndarray, obj: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """STTran's ``draw_union_boxes``: binary masks of the subject and the object inside their
    union box on a ``size`` x ``size`` grid, minus 0.5.

    subj, obj: (M, 4) xyxy pixels. Returns (M, 2, size, size) float32 with values -0.5 / 0.5.
    A cell (row y, column x) is set when it lies in ``[floor(s * (x1 - ux1) / uw), ceil(s * (x2 - ux1) / uw))``
    (same along y), which is how STTran rasterises the boxes.
    """
    subj = np.asarray(subj, dtype=np.float64).reshape(-1, 4)
    obj = np.asarray(obj, dtype=np.float64).reshape(-1, 4)
    u = union_boxes(subj, obj)
    w = np.maximum(u[:, 2] - u[:, 0], 1e-6)[:, None]
    h = np.maximum(u[:, 3] - u[:, 1], 1e-6)[:, None]
    grid = np.arange(size)
    out = np.empty((len(u), 2, size, size), dtype=np.float32)
    for k, b in enumerate((subj, obj)):
        x0 = np.floor(size * (b[:, [0]] - u[:, [0]]) / w)
        x1 = np.ceil(size * (b[:, [2]] - u[:, [0]]) / w)
        y0 = np.floor(size * (b[:, [1]] - u[:, [1]]) / h)
        y1 = np.ceil(size * (b[:, [3]] - u[:, [1]]) / h)
        in_x = (grid[None] >= x0) & (grid[None] < x1)  # (M, size)
        in_y = (grid[None] >= y0) & (grid[None] < y1)
        out[:, k] = (in_y[:, :, None] & in_x[:, None, :]).astype(np.float32)
    return out - 0.5


# --- negative sampling ------------------------------------------------------------------


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
    keep = np.ones(q, dtype=bool)
    if q and len(pos_classes):
        same = (neg_classes[:, None, 0] == pos_classes[None, :, 0]) & (neg_classes[:, None, 1] == pos_classes[None, :, 1])
        overlap = (box_iou(neg_subj_boxes, pos_subj_boxes) > iou_threshold) & (
            box_iou(neg_obj_boxes, pos_obj_boxes) > iou_threshold)
        keep = ~np.any(same & overlap, axis=1)
    idx = np.flatnonzero(keep)
    cap = int(math.floor(ratio * len(pos_classes) + 1e-9))
    if len(idx) > cap:
        idx = np.sort(rng.choice(idx, size=cap, replace=False))
    return idx.astype(np.int64)


def negative_rng(seed: int, epoch: int, video: str) -> np.random.Generator:
    """The generator of one video's negatives in one epoch: same (seed, epoch, video), same draw."""
    return np.random.default_rng([int(seed), int(epoch), zlib.crc32(video.encode())])


# --- the batch --------------------------------------------------------------------------


@dataclass(frozen=True)
class RelationBatch:
    """One or more videos, flattened. V videos, F frames, N boxes, M pairs.

    Indices are global within the batch unless said otherwise. Float tensors are float32.

    video_names:  tuple of V str; frame_names: tuple of F str.
    mode:         the task :class:`Mode`; ``train``: the training view (negatives, SGDET assignment).
    video_frame_offsets: (V+1,) int64, frames of video v are ``[o[v], o[v+1])``.
    frame_sizes:  (F, 2) int64 (width, height) pixels.
    box_offsets:  (F+1,) int64; box_frame (N,) int64 frame of each box.
    boxes:        (N, 4) xyxy pixels of the original frame.
    box_labels:   (N,) int64 class ids: GT labels (PREDCLS/SGCLS; the detector's label for an
                  extra negative box), the assigned label in SGDET training (0 = background),
                  the detector's label in SGDET test.
    box_scores:   (N,) detector scores (1 for GT boxes).
    box_is_gt:    (N,) bool, box comes from the GT boxes (False: from a detection).
    features:     (N, D) RoI features; dists (N, C) detector class distributions.
    pair_offsets: (F+1,) int64; pair_frame (M,) int64.
    pairs:        (M, 2) int64 (subject box, object box), global box indices; subject = person.
    union:        (M, *U) union features (pooled (M, U) or map (M, 1024, 7, 7)).
    masks:        (M, 2, 27, 27) spatial masks (subject, object) in the union box, values +-0.5.
    pair_positive: (M,) bool, the pair has an annotated relation (RS-Net positive).
    attention_labels: (M,) int64 local attention id, -1 for none (negatives).
    spatial_labels:   (M, S) float32 multi-hot; contacting_labels (M, Cn) float32 multi-hot.
    """

    video_names: tuple[str, ...]
    frame_names: tuple[str, ...]
    mode: Mode
    train: bool
    video_frame_offsets: torch.Tensor
    frame_sizes: torch.Tensor
    box_offsets: torch.Tensor
    box_frame: torch.Tensor
    boxes: torch.Tensor
    box_labels: torch.Tensor
    box_scores: torch.Tensor
    box_is_gt: torch.Tensor
    features: torch.Tensor
    dists: torch.Tensor
    pair_offsets: torch.Tensor
    pair_frame: torch.Tensor
    pairs: torch.Tensor
    union: torch.Tensor
    masks: torch.Tensor
    pair_positive: torch.Tensor
    attention_labels: torch.Tensor
    spatial_labels: torch.Tensor
    contacting_labels: torch.Tensor

    @property
    def num_videos(self) -> int:
        return len(self.video_names)

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    @property
    def num_pairs(self) -> int:
        return int(self.pairs.shape[0])

    @property
    def frame_video(self) -> torch.Tensor:
        """(F,) int64 video index of each frame."""
        counts = self.video_frame_offsets.diff()
        return torch.repeat_interleave(torch.arange(self.num_videos), counts)

    @property
    def pair_video(self) -> torch.Tensor:
        """(M,) int64 video index of each pair."""
        return self.frame_video[self.pair_frame]

    def to(self, device: torch.device | str) -> "RelationBatch":
        changes = {f.name: getattr(self, f.name).to(device, non_blocking=True)
                   for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **changes)

    def pin_memory(self) -> "RelationBatch":
        changes = {f.name: getattr(self, f.name).pin_memory()
                   for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **changes)


@dataclass(frozen=True)
class _VideoArrays:
    """One video as numpy arrays, before collation (same fields as RelationBatch, per video)."""

    name: str
    frame_names: tuple[str, ...]
    frame_sizes: np.ndarray
    box_counts: np.ndarray
    boxes: np.ndarray
    box_labels: np.ndarray
    box_scores: np.ndarray
    box_is_gt: np.ndarray
    features: np.ndarray
    dists: np.ndarray
    pair_counts: np.ndarray
    pairs: np.ndarray  # local to the frame
    union: np.ndarray
    masks: np.ndarray
    pair_positive: np.ndarray
    attention_labels: np.ndarray
    spatial_labels: np.ndarray
    contacting_labels: np.ndarray


def _labels(rec: VideoRecord, rel_rows: np.ndarray, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attention id (first set bit of the attention block, -1 none), spatial and contacting multi-hot."""
    a0, a1 = vocab.group_range(PredicateGroup.ATTENTION)
    s0, s1 = vocab.group_range(PredicateGroup.SPATIAL)
    c0, c1 = vocab.group_range(PredicateGroup.CONTACTING)
    m = len(rel_rows)
    att = np.full(m, -1, dtype=np.int64)
    spa = np.zeros((m, s1 - s0), dtype=np.float32)
    con = np.zeros((m, c1 - c0), dtype=np.float32)
    ok = rel_rows >= 0
    if ok.any():
        lab = rec.rel_labels[rel_rows[ok]].astype(np.float32)
        block = lab[:, a0:a1]
        att[ok] = np.where(block.any(1), block.argmax(1), -1)
        spa[ok] = lab[:, s0:s1]
        con[ok] = lab[:, c0:c1]
    return att, spa, con


class VideoDataset(Dataset):
    """Videos of one split of a store, for one mode; item ``i`` is video ``i`` as a numpy record
    that :func:`collate` turns into a :class:`RelationBatch`.

    store:  a path (opened lazily in each worker) or an open :class:`~store.Store`.
    train:  the training view (negatives sampled, SGDET assignment) or the test view.
    preload: read every video of the split into memory on first use.
    seed / epoch: negative sampling draws from ``negative_rng(seed, epoch, video)``; call
    :meth:`set_epoch` before each epoch (the DataLoader workers see it at iteration start).
    """

    def __init__(self, store: str | Store, split: str, mode: Mode | str, *, train: bool = True,
                 seed: int = 0, negative_ratio: float = 1.2, negative_iou: float = 0.5,
                 preload: bool = False, max_videos: int = 0, videos: Sequence[str] | None = None) -> None:
        self._store_path = store if not isinstance(store, Store) else None
        self._store = store if isinstance(store, Store) else None
        self.split = split
        self.mode = Mode(mode)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.negative_ratio = negative_ratio
        self.negative_iou = negative_iou
        self.preload = preload
        st = self.store
        names = list(videos) if videos is not None else st.videos(split)
        self.videos = names[:max_videos] if max_videos else names
        self.meta = st.meta
        self.vocabulary = st.meta.vocabulary
        if preload:
            self._load_all()

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self._store_path)
        return self._store

    def _load_all(self) -> None:
        st = self.store
        st.preload(self.split)

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        if self._store_path is not None and not self.preload:
            d["_store"] = None  # each worker opens its own handle
        # a preloaded Store travels with its cache (its file handles are dropped by Store itself)
        return d

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> _VideoArrays:
        rec = self.store.read_video(self.videos[i])
        return self.build(rec)

    # -- building one video -------------------------------------------------------------

    def build(self, rec: VideoRecord) -> _VideoArrays:
        rng = negative_rng(self.seed, self.epoch, rec.name)
        frames = [self._frame(rec, f, rng) for f in range(rec.num_frames)]
        cat = lambda k: np.concatenate([fr[k] for fr in frames]) if frames else None  # noqa: E731
        return _VideoArrays(
            name=rec.name,
            frame_names=tuple(rec.frame_names),
            frame_sizes=np.asarray(rec.frame_sizes, dtype=np.int64),
            box_counts=np.array([len(fr["boxes"]) for fr in frames], dtype=np.int64),
            boxes=cat("boxes"), box_labels=cat("box_labels"), box_scores=cat("box_scores"),
            box_is_gt=cat("box_is_gt"), features=cat("features"), dists=cat("dists"),
            pair_counts=np.array([len(fr["pairs"]) for fr in frames], dtype=np.int64),
            pairs=cat("pairs"), union=cat("union"), masks=cat("masks"), pair_positive=cat("pair_positive"),
            attention_labels=cat("att"), spatial_labels=cat("spa"), contacting_labels=cat("con"),
        )

    def _frame(self, rec: VideoRecord, f: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        g = rec.frame_rows("gt_objects", f)
        d = rec.frame_rows("detections", f)
        p = rec.frame_rows("pairs", f)
        src, ps, po, prel = rec.pair_source[p], rec.pair_subject[p], rec.pair_object[p], rec.pair_relation[p]
        union = rec.pair_union[p]
        n_gt, n_det = g.stop - g.start, d.stop - d.start
        gt = dict(boxes=rec.gt_boxes[g], labels=rec.gt_labels[g].astype(np.int64), scores=np.ones(n_gt, np.float32),
                  is_gt=np.ones(n_gt, bool), features=rec.gt_features[g], dists=rec.gt_dists[g])
        det = dict(boxes=rec.det_boxes[d], labels=rec.det_labels[d].astype(np.int64), scores=rec.det_scores[d],
                   is_gt=np.zeros(n_det, bool), features=rec.det_features[d], dists=rec.det_dists[d])
        matched = rec.det_matched_gt[d]
        gt_pairs = np.flatnonzero(src == PAIR_SOURCE_GT)
        det_pairs = np.flatnonzero(src == PAIR_SOURCE_DET)

        # Each candidate pair: (box table 'gt'/'det'/'extra' mapping), subject/object box index
        # in the frame's box list, its stored pair row, its relation row.
        def as_pairs(rows: np.ndarray) -> np.ndarray:  # (subject, object) of stored pair rows
            return np.stack([ps[rows], po[rows]], 1).reshape(-1, 2).astype(np.int64)

        no_rows = np.zeros(0, np.int64)
        if self.mode is not Mode.SGDET and not self.train:
            # test view: every stored GT pair, scored (unlabelled ones become -1 below)
            box_parts, pos_rows, neg_rows = [gt], gt_pairs, no_rows
            pos_pairs, neg_pairs = as_pairs(gt_pairs), as_pairs(no_rows)
        elif self.mode is not Mode.SGDET:
            box_parts = [gt]
            pos_rows, neg_rows = gt_pairs[prel[gt_pairs] >= 0], gt_pairs[prel[gt_pairs] < 0]
            pos_pairs, neg_pairs = as_pairs(pos_rows), as_pairs(neg_rows)
            # unmatched detections as extra boxes, paired with the GT person (row 0 in the
            # store) through their cached detection pair
            extra_rows = det_pairs[(matched[po[det_pairs]] < 0) & (po[det_pairs] != ps[det_pairs])] \
                if n_det else no_rows
            if len(extra_rows):
                objs = po[extra_rows]
                box_parts.append({k: v[objs] for k, v in det.items()})
                extra_pairs = np.stack([np.zeros(len(objs), np.int64), n_gt + np.arange(len(objs))], 1)
                neg_pairs = np.concatenate([neg_pairs, extra_pairs]).astype(np.int64)
                neg_rows = np.concatenate([neg_rows, extra_rows]).astype(np.int64)
        elif not self.train:
            box_parts, pos_rows, neg_rows = [det], det_pairs, no_rows
            pos_pairs, neg_pairs = as_pairs(det_pairs), as_pairs(no_rows)
        else:
            # section 5 assignment: matched detections take the GT label, the rest background;
            # unmatched GT boxes are added with their GT-box features and score 1
            det_assigned = dict(det)
            det_assigned["labels"] = np.where(matched >= 0, gt["labels"][np.maximum(matched, 0)], 0).astype(np.int64)
            unmatched_gt = np.setdiff1d(np.arange(n_gt), matched[matched >= 0])
            box_parts = [det_assigned, {k: v[unmatched_gt] for k, v in gt.items()}]
            gt_to_box = np.full(n_gt, -1, np.int64)
            gt_to_box[matched[matched >= 0]] = np.flatnonzero(matched >= 0)
            gt_to_box[unmatched_gt] = n_det + np.arange(len(unmatched_gt))
            # every GT relation is a positive: its labelled detection pair, else its GT pair
            lab_det = det_pairs[prel[det_pairs] >= 0]
            covered = set(prel[lab_det].tolist())
            extra_gt = np.array([r for r in gt_pairs if prel[r] >= 0 and prel[r] not in covered], np.int64)
            pos_rows = np.concatenate([lab_det, extra_gt]).astype(np.int64)
            pos_pairs = np.concatenate([as_pairs(lab_det), gt_to_box[as_pairs(extra_gt)]]).astype(np.int64)
            neg_rows = det_pairs[prel[det_pairs] < 0]
            neg_pairs = as_pairs(neg_rows)

        boxes = {k: np.concatenate([bp[k] for bp in box_parts]) for k in gt}
        if self.train and len(neg_rows):
            b = boxes["boxes"]
            lab = boxes["labels"]
            keep = sample_negatives(
                b[pos_pairs[:, 0]], b[pos_pairs[:, 1]], np.stack([lab[pos_pairs[:, 0]], lab[pos_pairs[:, 1]]], 1),
                b[neg_pairs[:, 0]], b[neg_pairs[:, 1]], np.stack([lab[neg_pairs[:, 0]], lab[neg_pairs[:, 1]]], 1),
                rng, iou_threshold=self.negative_iou, ratio=self.negative_ratio)
            neg_rows, neg_pairs = neg_rows[keep], neg_pairs[keep]
        rows = np.concatenate([pos_rows, neg_rows]).astype(np.int64)
        pairs = np.concatenate([pos_pairs.reshape(-1, 2), neg_pairs.reshape(-1, 2)]).astype(np.int64)
        n_pos = len(pos_rows)
        rel_rows = prel[rows] if len(rows) else np.zeros(0, np.int64)
        rel_rows = np.where(np.arange(len(rows)) < n_pos, rel_rows, -1)
        global_rel = np.where(rel_rows >= 0, rel_rows + rec.rel_offsets[f], -1)  # video rows of rel_labels
        att, spa, con = _labels(rec, global_rel, self.vocabulary)
        positive = rel_rows >= 0
        b = boxes["boxes"]
        return dict(
            boxes=b.astype(np.float32), box_labels=boxes["labels"].astype(np.int64),
            box_scores=boxes["scores"].astype(np.float32), box_is_gt=boxes["is_gt"],
            features=boxes["features"], dists=boxes["dists"],
            pairs=pairs, union=union[rows] if len(rows) else union[:0],
            masks=spatial_masks(b[pairs[:, 0]], b[pairs[:, 1]]) if len(pairs) else np.zeros((0, 2, MASK_SIZE, MASK_SIZE), np.float32),
            pair_positive=positive, att=att, spa=spa, con=con,
        )


def collate(videos: Sequence[_VideoArrays], mode: Mode | str = Mode.PREDCLS, train: bool = True) -> RelationBatch:
    """Stack videos into one :class:`RelationBatch` (frame-local pair indices become global)."""
    mode = Mode(mode)
    box_counts = np.concatenate([v.box_counts for v in videos])
    pair_counts = np.concatenate([v.pair_counts for v in videos])
    box_offsets = np.concatenate([[0], np.cumsum(box_counts)]).astype(np.int64)
    pair_offsets = np.concatenate([[0], np.cumsum(pair_counts)]).astype(np.int64)
    frame_counts = np.array([len(v.frame_names) for v in videos])
    pair_frame = np.repeat(np.arange(len(pair_counts)), pair_counts)
    pairs = np.concatenate([v.pairs for v in videos]) + box_offsets[pair_frame][:, None]
    t = torch.from_numpy

    def cat(name: str, dtype: torch.dtype) -> torch.Tensor:
        return t(np.ascontiguousarray(np.concatenate([getattr(v, name) for v in videos]))).to(dtype)

    return RelationBatch(
        video_names=tuple(v.name for v in videos),
        frame_names=tuple(n for v in videos for n in v.frame_names),
        mode=mode, train=train,
        video_frame_offsets=t(np.concatenate([[0], np.cumsum(frame_counts)]).astype(np.int64)),
        frame_sizes=cat("frame_sizes", torch.int64),
        box_offsets=t(box_offsets), box_frame=t(np.repeat(np.arange(len(box_counts)), box_counts).astype(np.int64)),
        boxes=cat("boxes", torch.float32), box_labels=cat("box_labels", torch.int64),
        box_scores=cat("box_scores", torch.float32), box_is_gt=cat("box_is_gt", torch.bool),
        features=cat("features", torch.float32), dists=cat("dists", torch.float32),
        pair_offsets=t(pair_offsets), pair_frame=t(pair_frame.astype(np.int64)), pairs=t(pairs.astype(np.int64)),
        union=cat("union", torch.float32), masks=cat("masks", torch.float32),
        pair_positive=cat("pair_positive", torch.bool), attention_labels=cat("attention_labels", torch.int64),
        spatial_labels=cat("spatial_labels", torch.float32), contacting_labels=cat("contacting_labels", torch.float32),
    )


class Collator:
    """Picklable ``collate_fn`` for a mode and view."""

    def __init__(self, mode: Mode | str, train: bool) -> None:
        self.mode, self.train = Mode(mode), train

    def __call__(self, videos: Sequence[_VideoArrays]) -> RelationBatch:
        return collate(videos, self.mode, self.train)


def epoch_order(num_videos: int, seed: int, epoch: int, *, shuffle: bool = True, rank: int = 0,
                world_size: int = 1) -> list[int]:
    """The video order of one epoch, for one rank: a permutation from (seed, epoch), padded by
    wrapping around to a multiple of ``world_size``, then every ``world_size``-th index from ``rank``."""
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))
        order = torch.randperm(num_videos, generator=g).tolist()
    else:
        order = list(range(num_videos))
    if world_size > 1:
        total = int(math.ceil(num_videos / world_size)) * world_size
        order = (order * (total // max(num_videos, 1) + 1))[:total]
        order = order[rank::world_size]
    return order


def union_is_map(meta) -> bool:
    return meta.union_mode is UnionMode.MAP
