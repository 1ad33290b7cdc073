"""The pair pool: every union feature the store holds for the frames of a batch, for a head
that rebuilds boxes and pairs after its own object rule (DSG-DETR at SGDET test re-scores the
detections, then runs STTran's copies, NMS and subject choice on its scores, so its pairs are
not the view's).

The test view asks for it with ``ViewOptions(pair_pool=True)`` (a head says so with
``RelationHead.needs_pair_pool``; training views never carry it, no head needs it there, and
its union features would cost memory and transfers every step);
:class:`~stage2_relations.data.RelationBatch` then carries a
:class:`PairPool`, and its :meth:`~stage2_relations.data.RelationBatch.with_boxes` /
:meth:`~stage2_relations.data.RelationBatch.with_pairs` build the new batch. A pair's union
feature is found by the pair's key in the frame's joint box index (:func:`rules.pairing.pair_key`,
either order); when the store lacks the pair (it holds the pairs of :func:`rules.pairing.stored_pairs`),
:meth:`PairPool.lookup` falls back, in order, to

1. the pair (the frame's ``fallback`` box, the object): in SGDET the subject of STTran's test
   boxes on the detector's distribution (:func:`rules.pairing.sttran_test_boxes`), which the
   store pairs with every other detection; in PREDCLS / SGCLS the GT person;
2. a zero union feature (a box paired with a copy of itself, when the store does not pair them).

Both fallbacks mark the pair ``union_substituted`` (counted by the evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch

from rules.modes import Mode
from rules.pairing import SttranClasses, pair_key, sttran_test_boxes
from store import VideoRecord
from store.vocabulary import Vocabulary


@dataclass(frozen=True)
class PairPool:
    """The stored pairs of the F frames of a batch of N boxes; P stored pairs.

    box_joint: (N,) int64 each box's index in its frame's joint box index (GT boxes 0..G-1,
               detections G..G+D-1, as the store numbers them); a copy has its original's.
    num_joint: (F,) int64 G + D of each frame (the ``num_boxes`` of :func:`rules.pairing.pair_key`).
    fallback:  (F,) int64 joint index of the frame's fallback subject (module docstring), -1 none.
    offsets:   (F+1,) int64, frame f's stored pairs are ``[offsets[f], offsets[f+1])``.
    keys:      (P,) int64 ``pair_key(subject, object, num_joint[f])`` of each stored pair.
    union:     (P, *U) float32 their union features.
    """

    box_joint: torch.Tensor
    num_joint: torch.Tensor
    fallback: torch.Tensor
    offsets: torch.Tensor
    keys: torch.Tensor
    union: torch.Tensor

    def _map(self, fn) -> "PairPool":
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> "PairPool":
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "PairPool":
        return self._map(lambda t: t.pin_memory())

    def lookup(self, frame: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Union features of the pairs (joint index ``a``, joint index ``b``) of frames ``frame``
        (all (M,) int64): returns (union (M, *U), substituted (M,) bool), with the fallbacks of
        the module docstring."""
        rows = self.rows(frame, a, b)
        fb = self.fallback[frame]
        alt = self.rows(frame, fb, b)
        alt = torch.where(fb >= 0, alt, torch.full_like(alt, -1))
        substituted = rows < 0
        rows = torch.where(substituted, alt, rows)
        union = self.union.new_zeros((len(rows),) + tuple(self.union.shape[1:]))
        found = rows >= 0
        union[found] = self.union[rows[found]]
        return union, substituted

    def rows(self, frame: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(M,) int64 pool row of each pair (either order), -1 where the store holds none."""
        if not len(self.keys) or not len(frame):
            return torch.full_like(frame, -1)
        # one key space for the whole batch: frame f's keys lie in [f * span, (f + 1) * span)
        span = int(self.num_joint.max()) ** 2 + 1
        pool_frame = torch.repeat_interleave(torch.arange(len(self.num_joint), device=self.keys.device),
                                             self.offsets.diff())
        stored = pool_frame * span + self.keys
        order = torch.argsort(stored)
        stored = stored[order]
        n = self.num_joint[frame]
        wanted = frame * span + torch.minimum(a, b) * n + torch.maximum(a, b)
        pos = torch.searchsorted(stored, wanted).clamp(max=len(stored) - 1)
        hit = stored[pos] == wanted
        return torch.where(hit, order[pos], torch.full_like(pos, -1))


def frame_pool(rec: VideoRecord, f: int, mode: Mode, classes: SttranClasses) -> dict[str, np.ndarray]:
    """Frame ``f``'s part of a pool (numpy): num_joint, fallback, keys (P,), union (P, *U);
    ``classes``: those of the store's vocabulary, for the SGDET subject."""
    g, d, p = (rec.frame_rows(t, f) for t in ("gt_objects", "detections", "pairs"))
    n = (g.stop - g.start) + (d.stop - d.start)
    fallback = 0 if g.stop > g.start else -1
    if Mode(mode) is Mode.SGDET:
        t = sttran_test_boxes(rec.det_boxes[d], rec.det_dists[d], person=classes.person,
                              copy_classes=classes.copy_classes)
        fallback = (g.stop - g.start) + int(t.source[t.subject]) if t.subject >= 0 else -1
    return dict(num_joint=np.int64(n), fallback=np.int64(fallback),
                keys=pair_key(rec.pair_subject[p], rec.pair_object[p], n), union=rec.pair_union[p])


def video_pool(rec: VideoRecord, frames: np.ndarray, mode: Mode, box_joint: Sequence[np.ndarray],
               vocabulary: Vocabulary) -> dict[str, np.ndarray]:
    """One video's pool arrays (numpy) for the view's ``frames`` and each frame's boxes' joint
    indices ``box_joint``; ``vocabulary``: the store's (``StoreMeta.vocabulary``).
    :func:`collate_pools` stacks videos."""
    parts = [frame_pool(rec, int(f), mode, vocabulary.sttran_classes) for f in frames]
    cat = lambda key, empty: np.concatenate([p[key] for p in parts]) if parts else empty  # noqa: E731
    return dict(
        box_joint=np.concatenate(list(box_joint)).astype(np.int64) if len(box_joint) else np.zeros(0, np.int64),
        num_joint=np.array([p["num_joint"] for p in parts], np.int64),
        fallback=np.array([p["fallback"] for p in parts], np.int64),
        counts=np.array([len(p["keys"]) for p in parts], np.int64),
        keys=cat("keys", np.zeros(0, np.int64)).astype(np.int64),
        union=cat("union", rec.pair_union[:0]))


def collate_pools(pools: Sequence[dict[str, np.ndarray]]) -> PairPool:
    """Stack the videos' pool arrays (frames and boxes in batch order)."""
    t = lambda key, dtype: torch.from_numpy(  # noqa: E731
        np.ascontiguousarray(np.concatenate([p[key] for p in pools]))).to(dtype)
    counts = np.concatenate([p["counts"] for p in pools])
    return PairPool(box_joint=t("box_joint", torch.int64), num_joint=t("num_joint", torch.int64),
                    fallback=t("fallback", torch.int64),
                    offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)),
                    keys=t("keys", torch.int64), union=t("union", torch.float32))
