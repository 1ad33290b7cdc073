"""Synthetic store content for tests and benchmarks: random arrays of the right shapes.

:func:`synthetic_video` follows the AG conventions (the vocabulary's person is GT object 0 of
each frame, relations are person -> object, pairs as :func:`rules.pairing.stored_pairs` chooses
them). Options give the edge cases a store must
keep: a video with no detections, frames without relations.
"""

from __future__ import annotations

import numpy as np

from rules.pairing import stored_pairs
from store.records import DetectorInfo, StoreMeta, UnionMode, VideoRecord
from store.vocabulary import ACTION_GENOME, Vocabulary


def synthetic_meta(feature_dim: int = 16, union_shape: tuple[int, ...] = (8,),
                   vocabulary: Vocabulary = ACTION_GENOME, **kwargs: object) -> StoreMeta:
    mode = UnionMode.POOLED if len(union_shape) == 1 else UnionMode.MAP
    defaults = dict(
        detector=DetectorInfo(arch="synthetic", settings={"score_thresh": 0.1, "nms": 0.4}, weights_sha256="0" * 64),
        source={"dataset": "synthetic", "reader": {"min_frames": 3}},
        code_revision="test",
        created="2026-01-01T00:00:00+00:00",
    )
    defaults.update(kwargs)
    return StoreMeta(vocabulary=vocabulary, feature_dim=feature_dim, union_mode=mode,
                     union_shape=union_shape, **defaults)  # type: ignore[arg-type]


def _offsets(counts: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def synthetic_video(meta: StoreMeta, name: str, *, seed: int = 0, num_frames: int = 4, split: str = "train",
                    max_objects: int = 4, max_detections: int = 6, no_detections: bool = False,
                    empty_relation_frames: tuple[int, ...] = (1,), small_fraction: float = 0.25) -> VideoRecord:
    """One random video. Frames listed in ``empty_relation_frames`` get no relations.

    About ``small_fraction`` of the objects are marked absent from the _filtersmall
    annotations. Detections are jittered copies of some GT boxes (with the GT class most
    probable) plus random boxes; the stored pairs are :func:`rules.pairing.stored_pairs`'s.
    """
    rng = np.random.default_rng(seed)
    vocab = meta.vocabulary
    c, p, d, u = vocab.num_objects, vocab.num_predicates, meta.feature_dim, meta.union_shape
    person = vocab.person_index
    classes = vocab.sttran_classes
    others = np.delete(np.arange(1, c), person - 1)  # the object classes but the person

    def other_classes(n: int) -> np.ndarray:
        # the numbers ``rng.integers(2, C)`` drew when the person was class 1: the same stores as then
        return others[rng.integers(0, c - 2, size=n)]

    def boxes(n: int) -> np.ndarray:
        xy = rng.uniform(0, 400, size=(n, 2))
        wh = rng.uniform(8, 200, size=(n, 2))
        return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)

    def dists(labels: np.ndarray) -> np.ndarray:
        x = rng.random((len(labels), c)) + 1e-3
        x[np.arange(len(labels)), labels] += 3.0 * rng.random(len(labels))
        return (x / x.sum(1, keepdims=True)).astype(np.float16)

    counts: dict[str, list[int]] = {t: [] for t in ("gt", "rel", "det", "pair")}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "gt_boxes", "gt_labels", "gt_dists", "gt_small", "rel_subject", "rel_object", "rel_labels",
        "det_boxes", "det_labels", "det_dists", "pair_subject", "pair_object")}
    for f in range(num_frames):
        g = int(rng.integers(1, max_objects + 1))
        gt_labels = np.concatenate([[person], other_classes(g - 1)]).astype(np.int32)
        gt_boxes = boxes(g)
        gt_small = np.concatenate([[0], rng.random(g - 1) < small_fraction]).astype(np.uint8)
        r = 0 if f in empty_relation_frames else g - 1
        lab = np.zeros((r, p), np.uint8)
        for i in range(r):
            lab[i, rng.integers(0, 3)] = 1
            lab[i, rng.integers(3, p, size=2)] = 1
        n = 0 if no_detections else int(rng.integers(0, max_detections + 1))
        near = np.flatnonzero(rng.random(g) < 0.7)[:n]
        jitter = rng.uniform(-4, 4, size=(len(near), 4)).astype(np.float32)
        det_boxes = np.concatenate([gt_boxes[near] + jitter, boxes(n - len(near))])
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        det_labels = np.concatenate([gt_labels[near], other_classes(n - len(near))]).astype(np.int32)
        gt_d, det_d = dists(gt_labels), dists(det_labels)
        pairs = stored_pairs(gt_boxes, gt_small, gt_d, det_boxes, det_labels, det_d, person=person,
                             copy_classes=classes.copy_classes)
        for key, value in (("gt_boxes", gt_boxes), ("gt_labels", gt_labels), ("gt_dists", gt_d), ("gt_small", gt_small),
                           ("rel_subject", np.zeros(r, np.int32)), ("rel_object", np.arange(1, r + 1, dtype=np.int32)),
                           ("rel_labels", lab), ("det_boxes", det_boxes), ("det_labels", det_labels),
                           ("det_dists", det_d), ("pair_subject", pairs[:, 0].astype(np.int32)),
                           ("pair_object", pairs[:, 1].astype(np.int32))):
            parts[key].append(value)
        for t, k in (("gt", g), ("rel", r), ("det", n), ("pair", len(pairs))):
            counts[t].append(k)
    G, N, M = (sum(counts[t]) for t in ("gt", "det", "pair"))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return VideoRecord(
        name=name,
        split=split,
        frame_names=tuple(f"{name}/{10 * (i + 1):06d}.png" for i in range(num_frames)),
        frame_sizes=np.tile(np.array([[480, 270]], np.int32), (num_frames, 1)),
        gt_offsets=_offsets(counts["gt"]),
        gt_boxes=cat["gt_boxes"].astype(np.float32),
        gt_labels=cat["gt_labels"],
        gt_features=rng.standard_normal((G, d)).astype(np.float16),
        gt_dists=cat["gt_dists"],
        gt_small=cat["gt_small"],
        rel_offsets=_offsets(counts["rel"]),
        rel_subject=cat["rel_subject"],
        rel_object=cat["rel_object"],
        rel_labels=cat["rel_labels"].reshape(-1, p),
        det_offsets=_offsets(counts["det"]),
        det_boxes=cat["det_boxes"].reshape(-1, 4).astype(np.float32),
        det_scores=rng.random(N).astype(np.float32),
        det_labels=cat["det_labels"],
        det_dists=cat["det_dists"].reshape(-1, c),
        det_features=rng.standard_normal((N, d)).astype(np.float16),
        pair_offsets=_offsets(counts["pair"]),
        pair_subject=cat["pair_subject"],
        pair_object=cat["pair_object"],
        pair_union=rng.standard_normal((M,) + tuple(u)).astype(np.float16),
    )


def synthetic_videos(meta: StoreMeta, n: int, *, seed: int = 0, **kwargs: object) -> list[VideoRecord]:
    """``n`` videos named ``vid0000.mp4`` ...; video 1 has no detections, splits alternate
    train/test, and frame 1 of every video has no relations."""
    out = []
    for i in range(n):
        out.append(synthetic_video(meta, f"vid{i:04d}.mp4", seed=seed * 100003 + i, split="test" if i % 3 == 2 else "train",
                                   num_frames=3 + i % 3, no_detections=(i == 1), **kwargs))  # type: ignore[arg-type]
    return out
