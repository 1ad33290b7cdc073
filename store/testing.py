"""Synthetic store content for tests and benchmarks: random arrays of the right shapes.

:func:`synthetic_video` follows the AG conventions (person = object 1 is GT object 0 of each
frame, relations are person -> object, a pair row for the person against every other box of
the frame, from GT boxes and from detections). Options give the edge cases a store must
keep: a video with no detections, frames without relations.
"""

from __future__ import annotations

import numpy as np

from store.records import DetectorInfo, StoreMeta, UnionMode, VideoRecord
from store.schema import PAIR_SOURCE_DET, PAIR_SOURCE_GT
from store.vocabulary import ACTION_GENOME, Vocabulary


def synthetic_meta(feature_dim: int = 16, union_shape: tuple[int, ...] = (8,),
                   vocabulary: Vocabulary = ACTION_GENOME, **kwargs: object) -> StoreMeta:
    mode = UnionMode.POOLED if len(union_shape) == 1 else UnionMode.MAP
    defaults = dict(
        detector=DetectorInfo(arch="synthetic", settings={"score_thresh": 0.1, "nms": 0.4}, weights_sha256="0" * 64),
        source={"dataset": "synthetic", "filters": {"min_frames": 3}},
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
                    empty_relation_frames: tuple[int, ...] = (1,)) -> VideoRecord:
    """One random video. Frames listed in ``empty_relation_frames`` get no relations."""
    rng = np.random.default_rng(seed)
    vocab = meta.vocabulary
    c, p, d, u = vocab.num_objects, vocab.num_predicates, meta.feature_dim, meta.union_shape
    person = vocab.person_index

    def boxes(n: int) -> np.ndarray:
        xy = rng.uniform(0, 400, size=(n, 2))
        wh = rng.uniform(8, 200, size=(n, 2))
        return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)

    def dists(n: int) -> np.ndarray:
        x = rng.random((n, c)) + 1e-3
        return (x / x.sum(1, keepdims=True)).astype(np.float16)

    g_counts, r_counts, n_counts, m_counts = [], [], [], []
    gt_labels, rel_s, rel_o, rel_lab, det_match, det_labels = [], [], [], [], [], []
    p_src, p_s, p_o, p_rel = [], [], [], []
    for f in range(num_frames):
        g = int(rng.integers(1, max_objects + 1))
        labels = np.concatenate([[person], rng.integers(2, c, size=g - 1)]).astype(np.int32)
        gt_labels.append(labels)
        r = 0 if f in empty_relation_frames else g - 1
        lab = np.zeros((r, p), np.uint8)
        for i in range(r):
            lab[i, rng.integers(0, 3)] = 1
            lab[i, rng.integers(3, p, size=2)] = 1
        rel_s.append(np.zeros(r, np.int32))
        rel_o.append(np.arange(1, r + 1, dtype=np.int32))
        rel_lab.append(lab)
        n = 0 if no_detections else int(rng.integers(0, max_detections + 1))
        det_labels.append(rng.integers(1, c, size=n).astype(np.int32))
        det_match.append(rng.integers(-1, g, size=n).astype(np.int32))
        # GT pairs: person (GT 0) with every other GT box; relation i is pair i when labelled.
        src = [PAIR_SOURCE_GT] * (g - 1)
        subj, obj = [0] * (g - 1), list(range(1, g))
        rel = [i if i < r else -1 for i in range(g - 1)]
        # Detection pairs: detection 0 as the person with every other detection.
        if n > 1:
            src += [PAIR_SOURCE_DET] * (n - 1)
            subj += [0] * (n - 1)
            obj += list(range(1, n))
            rel += [int(x) for x in rng.integers(-1, max(r, 0), size=n - 1)] if r else [-1] * (n - 1)
        p_src.append(np.array(src, np.uint8))
        p_s.append(np.array(subj, np.int32))
        p_o.append(np.array(obj, np.int32))
        p_rel.append(np.array(rel, np.int32))
        g_counts.append(g)
        r_counts.append(r)
        n_counts.append(n)
        m_counts.append(len(src))
    G, N, M = sum(g_counts), sum(n_counts), sum(m_counts)
    return VideoRecord(
        name=name,
        split=split,
        frame_names=tuple(f"{name}/{10 * (i + 1):06d}.png" for i in range(num_frames)),
        frame_sizes=np.tile(np.array([[480, 270]], np.int32), (num_frames, 1)),
        gt_offsets=_offsets(g_counts),
        gt_boxes=boxes(G),
        gt_labels=np.concatenate(gt_labels),
        gt_features=rng.standard_normal((G, d)).astype(np.float16),
        gt_dists=dists(G),
        rel_offsets=_offsets(r_counts),
        rel_subject=np.concatenate(rel_s),
        rel_object=np.concatenate(rel_o),
        rel_labels=np.concatenate(rel_lab).reshape(-1, p),
        det_offsets=_offsets(n_counts),
        det_boxes=boxes(N),
        det_scores=rng.random(N).astype(np.float32),
        det_labels=np.concatenate(det_labels),
        det_dists=dists(N),
        det_features=rng.standard_normal((N, d)).astype(np.float16),
        det_matched_gt=np.concatenate(det_match),
        pair_offsets=_offsets(m_counts),
        pair_source=np.concatenate(p_src),
        pair_subject=np.concatenate(p_s),
        pair_object=np.concatenate(p_o),
        pair_relation=np.concatenate(p_rel),
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
