"""Small stores for the stage-2 tests: random synthetic records (``store.testing``) and a
*learnable* variant whose relation labels are a function of the object class and whose
features carry the class, so that a few epochs of training must beat an untrained model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from store import StoreMeta, StoreWriter, VideoRecord
from store.testing import synthetic_meta, synthetic_video, synthetic_videos

TINY_HEAD = dict(hidden=16, embed_dim=8, union_channels=8, mask_channels=8, box_dim=8, object_hidden=16,
                 num_heads=2, ffn_dim=32, temporal_layers=1, dropout=0.0)
TINY_RSNET = dict(d_model=16, ffn_dim=32, mlp_hidden=16, num_heads=2, spatial_layers=1, temporal_layers=1,
                  max_frames=64, dropout=0.0)


def tiny_meta() -> StoreMeta:
    return synthetic_meta(feature_dim=16, union_shape=(8,))


def write_random_store(path: Path, n: int = 6, seed: int = 0) -> Path:
    meta = tiny_meta()
    with StoreWriter(path, meta) as w:
        for v in synthetic_videos(meta, n, seed=seed):
            w.write_video(v)
    return path


ANNOTATED = np.arange(2, 30)   # classes of annotated objects
BYSTANDERS = np.arange(30, 37)  # classes of objects that are never annotated (unmatched detections)


def learnable_video(meta: StoreMeta, name: str, split: str, seed: int, protos: np.ndarray) -> VideoRecord:
    """A video whose relation labels are a function of the object class, whose features carry
    the class, and whose unmatched detections (RS-Net's negatives) are of bystander classes,
    as in the synthetic AG data: every part of the model has something to learn."""
    rec = synthetic_video(meta, name, seed=seed, num_frames=4, split=split, max_objects=5, max_detections=6,
                          empty_relation_frames=())
    rng = np.random.default_rng(seed + 7)
    person = meta.vocabulary.person_index
    gt_labels = np.where(rec.gt_labels == person, person, ANNOTATED[rec.gt_labels % len(ANNOTATED)]).astype(np.int32)
    det_labels = rec.det_labels.copy()
    for f in range(rec.num_frames):
        d, g0 = rec.frame_rows("detections", f), rec.gt_offsets[f]
        m = rec.det_matched_gt[d]
        det_labels[d] = np.where(m >= 0, gt_labels[g0 + np.maximum(m, 0)], BYSTANDERS[rec.det_labels[d] % len(BYSTANDERS)])
    p = meta.vocabulary.num_predicates
    lab = np.zeros((rec.num_rows("gt_relations"), p), np.uint8)
    for f in range(rec.num_frames):
        g0 = rec.gt_offsets[f]
        for r in range(rec.rel_offsets[f], rec.rel_offsets[f + 1]):
            c = int(gt_labels[g0 + rec.rel_object[r]])
            lab[r, c % 3] = 1
            lab[r, 3 + c % 6] = 1
            lab[r, 9 + c % 17] = 1
    noise = lambda n: 0.3 * rng.standard_normal((n, meta.feature_dim))  # noqa: E731
    return dataclasses.replace(
        rec, rel_labels=lab, gt_labels=gt_labels, det_labels=det_labels.astype(np.int32),
        gt_features=(protos[gt_labels] + noise(len(gt_labels))).astype(np.float16),
        det_features=(protos[det_labels] + noise(len(det_labels))).astype(np.float16),
    )


def write_learnable_store(path: Path, n_train: int = 16, n_val: int = 6, seed: int = 0) -> Path:
    meta = tiny_meta()
    protos = np.random.default_rng(seed).standard_normal((meta.vocabulary.num_objects, meta.feature_dim))
    with StoreWriter(path, meta) as w:
        for i in range(n_train + n_val):
            split = "train" if i < n_train else "val"
            w.write_video(learnable_video(meta, f"v{i:03d}.mp4", split, seed * 1000 + i, protos))
    return path


def one_thread():
    """Generator for an autouse fixture: the tiny models run fastest, and steadiest on a shared
    machine, on one intra-op thread (two threads spin against other jobs' processes)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
