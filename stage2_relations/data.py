"""Stage-2 data: videos from the feature store as :class:`RelationBatch` objects.

One item of :class:`VideoDataset` is one whole video for one task :class:`~rules.modes.Mode`
and view (training or test); :func:`collate` stacks several videos (``videos_per_batch``) into
one flat batch. Everything is read through :mod:`store` (opened lazily in each DataLoader
worker, or preloaded). What each frame becomes per mode and view, STTran's rules and RS-Net's
negatives, is in :mod:`stage2_relations.views`; here are the batch, the dataset, the spatial
masks and the epoch order.

Negative sampling (:func:`~stage2_relations.views.sample_negatives`, RS-Net paper section 4.2)
happens at load time on the training view when the view options ask for negatives, afresh
every epoch from a generator seeded by (seed, epoch, video).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rules.boxes import union_boxes
from rules.modes import Mode
from stage2_relations.pool import PairPool, collate_pools, video_pool
from stage2_relations.view_options import ObjectScores, SgdetBoxes, ViewOptions
from stage2_relations.views import FrameView, frame_view, mode_frames
from store import Store, VideoRecord, open_store
from store.vocabulary import Vocabulary

MASK_SIZE = 27


# --- geometry (pure, vectorised) ------------------------------------------------------


def spatial_masks(subj: np.ndarray, obj: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """STTran's ``draw_union_boxes`` (``lib/draw_rectangles``): the subject's and the object's box
    drawn inside their union box on a ``size`` x ``size`` grid, minus 0.5.

    subj, obj: (M, 4) xyxy pixels. Returns (M, 2, size, size) float32 in [-0.5, 0.5]. With the
    box mapped to grid units (x1' = size * (x1 - ux1) / uw, ...), cell (row j, column k) is
    ``clip(k + 1 - x1', 0, 1) * clip(x2' - k, 0, 1) * clip(j + 1 - y1', 0, 1) * clip(y2' - j, 0, 1)``:
    1 inside the box, the covered fraction in a cell that an edge cuts, 0 outside; in float32,
    as STTran's Cython.
    """
    subj = np.asarray(subj, dtype=np.float32).reshape(-1, 4)
    obj = np.asarray(obj, dtype=np.float32).reshape(-1, 4)
    u = union_boxes(subj, obj)
    w = np.maximum(u[:, 2] - u[:, 0], np.float32(1e-6))[:, None]
    h = np.maximum(u[:, 3] - u[:, 1], np.float32(1e-6))[:, None]
    grid = np.arange(size, dtype=np.float32)[None]
    out = np.empty((len(u), 2, size, size), dtype=np.float32)
    for i, b in enumerate((subj, obj)):
        x1 = (b[:, [0]] - u[:, [0]]) * size / w
        x2 = (b[:, [2]] - u[:, [0]]) * size / w
        y1 = (b[:, [1]] - u[:, [1]]) * size / h
        y2 = (b[:, [3]] - u[:, [1]]) * size / h
        x = np.clip(grid + 1 - x1, 0, 1) * np.clip(x2 - grid, 0, 1)  # (M, size)
        y = np.clip(grid + 1 - y1, 0, 1) * np.clip(y2 - grid, 0, 1)
        out[:, i] = y[:, :, None] * x[:, None, :]
    return out - np.float32(0.5)


# --- negative sampling ------------------------------------------------------------------


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
    object_scores: the test-time object rule of the view (:class:`~stage2_relations.view_options.ObjectScores`).
    video_frame_offsets: (V+1,) int64, frames of video v are ``[o[v], o[v+1])``.
    frame_sizes:  (F, 2) int64 (width, height) pixels.
    box_offsets:  (F+1,) int64; box_frame (N,) int64 frame of each box.
    boxes:        (N, 4) xyxy pixels of the original frame.
    box_labels:   (N,) int64 class ids: GT labels (PREDCLS/SGCLS; the detector's label for an
                  extra negative box), the assigned label in SGDET training (0 = background),
                  in SGDET test STTran's test labels (the subject: person), or the detector's
                  with ``sgdet_boxes: raw``.
    box_embed_labels: (N,) int64 the labels of the pairs' class embeddings in training: box_labels
                  but for boxes that only RS-Net's negatives use (``ViewOptions.negative_labels``).
    box_scores:   (N,) detector scores, STTran's test scores in SGDET test, 1 for GT boxes.
    box_is_gt:    (N,) bool, box comes from the GT boxes (False: from a detection).
    features:     (N, D) RoI features; dists (N, C) detector class distributions.
    pair_offsets: (F+1,) int64; pair_frame (M,) int64.
    pairs:        (M, 2) int64 (subject box, object box), global box indices; subject = person.
                  In the SGCLS test view (``object_scores: sttran``) every ordered pair of a
                  frame's boxes: the head keeps those of the subject it finds.
    union:        (M, *U) union features (pooled (M, U) or map (M, 1024, 7, 7)).
    union_substituted: (M,) bool, the union feature is another pair's (views docstring).
    masks:        (M, 2, 27, 27) spatial masks (subject, object) in the union box, values +-0.5.
    pair_positive: (M,) bool, the pair has an annotated relation (RS-Net positive).
    attention_labels: (M,) int64 local attention id, -1 for none (negatives).
    spatial_labels:   (M, S) float32 multi-hot; contacting_labels (M, Cn) float32 multi-hot.
    sgdet_boxes:  the view's SGDET test boxes (:class:`~rules.pairing.SgdetBoxes`).
    pool:         every union feature the store holds for the batch's frames
                  (:class:`~stage2_relations.pool.PairPool`; test views with ``ViewOptions.pair_pool``), or None;
                  :meth:`with_boxes` and :meth:`with_pairs` rebuild boxes and pairs from it.
    """

    video_names: tuple[str, ...]
    frame_names: tuple[str, ...]
    mode: Mode
    train: bool
    object_scores: ObjectScores
    video_frame_offsets: torch.Tensor
    frame_sizes: torch.Tensor
    box_offsets: torch.Tensor
    box_frame: torch.Tensor
    boxes: torch.Tensor
    box_labels: torch.Tensor
    box_embed_labels: torch.Tensor
    box_scores: torch.Tensor
    box_is_gt: torch.Tensor
    features: torch.Tensor
    dists: torch.Tensor
    pair_offsets: torch.Tensor
    pair_frame: torch.Tensor
    pairs: torch.Tensor
    union: torch.Tensor
    union_substituted: torch.Tensor
    masks: torch.Tensor
    pair_positive: torch.Tensor
    attention_labels: torch.Tensor
    spatial_labels: torch.Tensor
    contacting_labels: torch.Tensor
    sgdet_boxes: SgdetBoxes = SgdetBoxes.STTRAN
    pool: PairPool | None = None

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
        return torch.repeat_interleave(torch.arange(self.num_videos, device=counts.device), counts)

    @property
    def pair_video(self) -> torch.Tensor:
        """(M,) int64 video index of each pair."""
        return self.frame_video[self.pair_frame]

    def select_pairs(self, index: torch.Tensor) -> "RelationBatch":
        """The batch with only the pairs ``index`` (M',) int64, ascending (frames stay in order)."""
        frame = self.pair_frame[index]
        counts = torch.bincount(frame, minlength=self.num_frames)
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        per_pair = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name in _PAIR_FIELDS}
        return replace(self, pair_offsets=offsets.to(self.pair_offsets), pair_frame=frame, **per_pair)

    def with_boxes(self, source: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                   dists: torch.Tensor | None = None) -> "RelationBatch":
        """The batch over a new list of N' boxes and no pairs (give them with :meth:`with_pairs`).

        Box i is a copy of box ``source[i]`` (N',) int64: its box, frame, feature, GT flag and
        pool index, with the new ``labels`` (N',) int64 (also the class-embedding labels),
        ``scores`` (N',) and, when given, ``dists`` (N', C). ``source`` must keep the frames in
        order (non-decreasing frame).
        """
        frame = self.box_frame[source]
        if len(frame) > 1 and bool((frame.diff() < 0).any()):
            raise ValueError("with_boxes: the new boxes must keep the frames in order")
        counts = torch.bincount(frame, minlength=self.num_frames)
        changes = {f.name: getattr(self, f.name)[source] for f in fields(self)
                   if f.name in ("boxes", "features", "dists")
                   or (f.name.startswith("box_") and f.name not in ("box_offsets", "box_frame"))}
        for name in ("box_labels", "box_embed_labels"):
            if name in changes:
                changes[name] = labels.to(changes[name])
        changes["box_scores"] = scores.to(self.box_scores)
        if dists is not None:
            changes["dists"] = dists.to(self.dists)
        pool = self.pool if self.pool is None else replace(self.pool, box_joint=self.pool.box_joint[source])
        empty = self.select_pairs(self.pairs.new_zeros(0))
        return replace(empty, box_frame=frame, box_offsets=torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]),
                       pool=pool, **changes)

    def with_pairs(self, pairs: torch.Tensor) -> "RelationBatch":
        """The batch with new pairs (M', 2) int64 (subject, object) of its boxes, both of one
        frame, in frame order. Union features come from the pool (:meth:`PairPool.lookup`:
        the stored pair in either order, else the frame's fallback pair or zeros, marked
        ``union_substituted``), spatial masks from the boxes; the pairs carry no relation
        labels (not positive, attention -1, no spatial / contacting bit): a test-time batch.
        """
        if self.pool is None:
            raise ValueError("with_pairs needs the pair pool: build the view with ViewOptions(pair_pool=True)")
        pairs = pairs.reshape(-1, 2).to(self.pairs)
        frame = self.box_frame[pairs[:, 0]]
        if bool((frame != self.box_frame[pairs[:, 1]]).any()) or (len(frame) > 1 and bool((frame.diff() < 0).any())):
            raise ValueError("with_pairs: each pair's boxes must share a frame, and the pairs keep the frames in order")
        joint = self.pool.box_joint
        union, substituted = self.pool.lookup(frame, joint[pairs[:, 0]], joint[pairs[:, 1]])
        b = self.boxes.detach().cpu().numpy()
        p = pairs.cpu().numpy()
        masks = (spatial_masks(b[p[:, 0]], b[p[:, 1]]) if len(p)
                 else np.zeros((0, 2, MASK_SIZE, MASK_SIZE), np.float32))
        m = len(pairs)
        counts = torch.bincount(frame, minlength=self.num_frames)
        return replace(
            self, pairs=pairs, pair_frame=frame, pair_offsets=torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]),
            union=union.to(self.union), union_substituted=substituted, masks=torch.from_numpy(masks).to(self.masks),
            pair_positive=torch.zeros(m, dtype=torch.bool, device=pairs.device),
            attention_labels=torch.full((m,), -1, dtype=torch.long, device=pairs.device),
            spatial_labels=self.spatial_labels.new_zeros((m, self.spatial_labels.shape[1])),
            contacting_labels=self.contacting_labels.new_zeros((m, self.contacting_labels.shape[1])))

    def to(self, device: torch.device | str) -> "RelationBatch":
        changes = {f.name: getattr(self, f.name).to(device, non_blocking=True)
                   for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        if self.pool is not None:
            changes["pool"] = self.pool.to(device)
        return replace(self, **changes)

    def pin_memory(self) -> "RelationBatch":
        changes = {f.name: getattr(self, f.name).pin_memory()
                   for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        if self.pool is not None:
            changes["pool"] = self.pool.pin_memory()
        return replace(self, **changes)


_PAIR_FIELDS = ("pairs", "union", "union_substituted", "masks", "pair_positive", "attention_labels",
                "spatial_labels", "contacting_labels")


@dataclass(frozen=True)
class _VideoArrays:
    """One video as numpy arrays, before collation (same fields as RelationBatch, per video)."""

    name: str
    frame_names: tuple[str, ...]
    frame_sizes: np.ndarray
    box_counts: np.ndarray
    boxes: np.ndarray
    box_labels: np.ndarray
    box_embed_labels: np.ndarray
    box_scores: np.ndarray
    box_is_gt: np.ndarray
    features: np.ndarray
    dists: np.ndarray
    pair_counts: np.ndarray
    pairs: np.ndarray  # local to the frame
    union: np.ndarray
    union_substituted: np.ndarray
    masks: np.ndarray
    pair_positive: np.ndarray
    attention_labels: np.ndarray
    spatial_labels: np.ndarray
    contacting_labels: np.ndarray
    pool: dict | None = None  # the pair pool's arrays (stage2_relations.pool.video_pool), or None


def _labels(rec: VideoRecord, rel_rows: np.ndarray, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attention id (first set bit of the attention block, -1 none), spatial and contacting multi-hot."""
    (a0, a1), (s0, s1), (c0, c1) = vocab.group_ranges
    _, n_spatial, n_contacting = vocab.group_widths
    m = len(rel_rows)
    att = np.full(m, -1, dtype=np.int64)
    spa = np.zeros((m, n_spatial), dtype=np.float32)
    con = np.zeros((m, n_contacting), dtype=np.float32)
    ok = rel_rows >= 0
    if ok.any():
        lab = rec.rel_labels[rel_rows[ok]].astype(np.float32)
        block = lab[:, a0:a1]
        att[ok] = np.where(block.any(1), block.argmax(1), -1)
        spa[ok] = lab[:, s0:s1]
        con[ok] = lab[:, c0:c1]
    return att, spa, con


class VideoDataset(Dataset):
    """Videos of one split of a store, for one mode and view; item ``i`` is video ``i`` as a
    numpy record that :func:`collate` turns into a :class:`RelationBatch`.

    store:   a path (opened lazily in each worker) or an open :class:`~store.Store`.
    train:   the training view (assignment, negatives when ``options.negatives``) or the test view.
    options: :class:`~stage2_relations.view_options.ViewOptions` (assignment, SGDET test boxes, object
             rule, negatives and their sampling).
    min_frames: videos with fewer frames in the mode's view are left out (SGCLS / SGDET see
             only the frames with an object of the _filtersmall annotations); default: the
             reader's ``min_frames`` recorded in the store.
    preload: read every video of the split into memory on first use.
    verify:  check what is read against the store's per-video checksums (:class:`~store.Store`);
             applies when ``store`` is a path.
    seed / epoch: negative sampling draws from ``negative_rng(seed, epoch, video)``; call
    :meth:`set_epoch` before each epoch (the DataLoader workers see it at iteration start).
    """

    def __init__(self, store: str | Store, split: str, mode: Mode | str, *, train: bool = True, seed: int = 0,
                 options: ViewOptions = ViewOptions(), preload: bool = False, max_videos: int = 0,
                 videos: Sequence[str] | None = None, min_frames: int | None = None, verify: bool = True) -> None:
        self._store_path = store if not isinstance(store, Store) else None
        self.verify = verify
        self._store = store if isinstance(store, Store) else None
        self.split = split
        self.mode = Mode(mode)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.options = options
        self.preload = preload
        self._ground_truth: dict[str, list] = {}
        st = self.store
        self.meta = st.meta
        self.vocabulary = st.meta.vocabulary
        self.min_frames = int(min_frames if min_frames is not None
                              else (st.meta.source.get("reader") or {}).get("min_frames", 1))
        if preload:
            self._load_all()
        names = list(videos) if videos is not None else st.videos(split)
        if self.mode is not Mode.PREDCLS:
            names = [v for v in names if len(self.frames_of(st.read_video(v, fields=("gt_small",))))]
        self.videos = names[:max_videos] if max_videos else names

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self._store_path, verify=self.verify)
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

    def frames_of(self, rec: VideoRecord) -> np.ndarray:
        """The frames of ``rec`` in this dataset's mode (:func:`~stage2_relations.views.mode_frames`)."""
        return mode_frames(rec, self.mode, self.min_frames)

    def ground_truth(self, rec: VideoRecord) -> list:
        """The GT of every frame of ``rec`` in this mode, as the evaluation takes it."""
        from stage2_relations.ground_truth import frame_ground_truth

        return [frame_ground_truth(rec, int(f), self.mode) for f in self.frames_of(rec)]

    def video_ground_truth(self, name: str) -> list:
        """:meth:`ground_truth` of the video ``name``, read (its GT arrays only) once per dataset:
        validation asks for it every epoch."""
        from stage2_relations.ground_truth import GT_FIELDS

        if name not in self._ground_truth:
            self._ground_truth[name] = self.ground_truth(self.store.read_video(name, fields=GT_FIELDS))
        return self._ground_truth[name]

    # -- building one video -------------------------------------------------------------

    def build(self, rec: VideoRecord) -> _VideoArrays:
        rng = negative_rng(self.seed, self.epoch, rec.name)
        frames = self.frames_of(rec)
        views = [frame_view(rec, int(f), self.mode, train=self.train, options=self.options, rng=rng,
                            vocabulary=self.vocabulary) for f in frames]
        union = rec.pair_union
        return _VideoArrays(
            name=rec.name,
            frame_names=tuple(rec.frame_names[f] for f in frames),
            frame_sizes=np.asarray(rec.frame_sizes, dtype=np.int64)[frames].reshape(-1, 2),
            box_counts=np.array([len(v.boxes) for v in views], dtype=np.int64),
            pair_counts=np.array([len(v.pairs) for v in views], dtype=np.int64),
            **_concat_views(views, rec, self.vocabulary, union, frames),
            # the pool serves heads that rebuild SGDET pairs at test time; other views skip its cost
            pool=(video_pool(rec, frames, self.mode, [v.joint for v in views], self.vocabulary)
                  if self.options.pair_pool and not self.train and self.mode is Mode.SGDET else None),
        )


def _concat_views(views: list[FrameView], rec: VideoRecord, vocab: Vocabulary, union: np.ndarray,
                  frames: np.ndarray) -> dict[str, np.ndarray]:
    """The per-frame views of a video as flat arrays (pair indices stay local to their frame)."""
    if not views:
        d, c = rec.gt_features.shape[1], rec.gt_dists.shape[1]
        pairs = np.zeros((0, 2), np.int64)
        empty = {k: np.zeros((0,) + s, t) for k, s, t in (
            ("boxes", (4,), np.float32), ("box_labels", (), np.int64), ("box_embed_labels", (), np.int64),
            ("box_scores", (), np.float32),
            ("box_is_gt", (), bool), ("features", (d,), np.float16), ("dists", (c,), np.float16),
            ("union_substituted", (), bool), ("pair_positive", (), bool))}
        return dict(empty, pairs=pairs, union=union[:0],
                    masks=np.zeros((0, 2, MASK_SIZE, MASK_SIZE), np.float32),
                    **dict(zip(("attention_labels", "spatial_labels", "contacting_labels"),
                               _labels(rec, np.zeros(0, np.int64), vocab))))
    cat = lambda key: np.concatenate([getattr(v, key) for v in views])  # noqa: E731
    pairs = cat("pairs")
    boxes = [v.boxes for v in views]
    subj = np.concatenate([b[v.pairs[:, 0]] for b, v in zip(boxes, views)])
    obj = np.concatenate([b[v.pairs[:, 1]] for b, v in zip(boxes, views)])
    p_start = rec.pair_offsets[frames]
    rows = np.concatenate([v.union_rows + s for v, s in zip(views, p_start)]).astype(np.int64)
    att, spa, con = _labels(rec, cat("rel_rows"), vocab)
    return dict(
        boxes=cat("boxes"), box_labels=cat("labels"), box_embed_labels=cat("embed_labels"),
        box_scores=cat("scores").astype(np.float32),
        box_is_gt=cat("is_gt"), features=np.concatenate([v.features for v in views]),
        dists=np.concatenate([np.asarray(v.dists, np.float32) for v in views]),
        pairs=pairs, union=union[rows], union_substituted=cat("substituted"),
        masks=spatial_masks(subj, obj) if len(pairs) else np.zeros((0, 2, MASK_SIZE, MASK_SIZE), np.float32),
        pair_positive=cat("positive"), attention_labels=att, spatial_labels=spa, contacting_labels=con,
    )


def collate(videos: Sequence[_VideoArrays], mode: Mode | str = Mode.PREDCLS, train: bool = True,
            object_scores: ObjectScores | str = ObjectScores.STTRAN,
            sgdet_boxes: SgdetBoxes | str = SgdetBoxes.STTRAN) -> RelationBatch:
    """Stack videos into one :class:`RelationBatch` (frame-local pair indices become global;
    the pair pool when every video carries one)."""
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
        mode=mode, train=train, object_scores=ObjectScores(object_scores),
        video_frame_offsets=t(np.concatenate([[0], np.cumsum(frame_counts)]).astype(np.int64)),
        frame_sizes=cat("frame_sizes", torch.int64),
        box_offsets=t(box_offsets), box_frame=t(np.repeat(np.arange(len(box_counts)), box_counts).astype(np.int64)),
        boxes=cat("boxes", torch.float32), box_labels=cat("box_labels", torch.int64),
        box_embed_labels=cat("box_embed_labels", torch.int64),
        box_scores=cat("box_scores", torch.float32), box_is_gt=cat("box_is_gt", torch.bool),
        features=cat("features", torch.float32), dists=cat("dists", torch.float32),
        pair_offsets=t(pair_offsets), pair_frame=t(pair_frame.astype(np.int64)), pairs=t(pairs.astype(np.int64)),
        union=cat("union", torch.float32), union_substituted=cat("union_substituted", torch.bool),
        masks=cat("masks", torch.float32),
        pair_positive=cat("pair_positive", torch.bool), attention_labels=cat("attention_labels", torch.int64),
        spatial_labels=cat("spatial_labels", torch.float32), contacting_labels=cat("contacting_labels", torch.float32),
        sgdet_boxes=SgdetBoxes(sgdet_boxes),
        pool=collate_pools([v.pool for v in videos]) if videos and all(v.pool is not None for v in videos) else None,
    )


class Collator:
    """Picklable ``collate_fn`` for a dataset's mode and view."""

    def __init__(self, mode: Mode | str, train: bool, object_scores: ObjectScores | str = ObjectScores.STTRAN,
                 sgdet_boxes: SgdetBoxes | str = SgdetBoxes.STTRAN) -> None:
        self.mode, self.train, self.object_scores, self.sgdet_boxes = Mode(mode), train, object_scores, sgdet_boxes

    @classmethod
    def of(cls, dataset: "VideoDataset") -> "Collator":
        return cls(dataset.mode, dataset.train, dataset.options.object_scores, dataset.options.sgdet_boxes)

    def __call__(self, videos: Sequence[_VideoArrays]) -> RelationBatch:
        return collate(videos, self.mode, self.train, self.object_scores, self.sgdet_boxes)


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
