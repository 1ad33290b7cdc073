"""Small stores for the stage-2 tests: random synthetic records (``store.testing``) and a
*learnable* variant whose relation labels are a function of the object class and whose
features carry the class, so that a few epochs of training must beat an untrained model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rules.pairing import SttranClasses, stored_pairs, sttran_assignment
from store import StoreMeta, StoreWriter, VideoRecord
from store.testing import synthetic_meta, synthetic_video, synthetic_videos

TINY_HEAD = dict(hidden=16, embed_dim=8, mask_channels=8, box_dim=8, object_hidden=16,
                 num_heads=2, ffn_dim=32, temporal_layers=1, dropout=0.0)
# Tiny keyword arguments of every registered head: the registry tests build each head with its
# entry here (a new head adds one).
TINY_HEADS = {"sttran": TINY_HEAD}
# STKET without its dead base heads (never trained, they would fail "every parameter moves")
TINY_HEADS["stket"] = dict(hidden=16, embed_dim=8, mask_channels=8, box_dim=8, object_hidden=16, num_heads=2,
                           ffn_dim=32, spatial_layers=1, temporal_layers=1, ensemble_layers=1, prior_widths=[4, 8],
                           dropout=0.0, base_heads=False)
# DSG-DETR: object tokens 16 + 8 + 8 = 32 wide, relation 64
TINY_HEADS["dsgdetr"] = dict(TINY_HEAD, object_layers=1, object_ffn_dim=32)
TINY_RSNET = dict(d_model=16, ffn_dim=32, mlp_hidden=16, num_heads=2, spatial_layers=1, temporal_layers=1,
                  max_frames=64, dropout=0.0)


def tiny_meta(min_frames: int = 1) -> StoreMeta:
    """16-d features, 8-d pooled unions; the reader's ``min_frames`` as the store records it."""
    return synthetic_meta(feature_dim=16, union_shape=(8,), source={"dataset": "synthetic",
                                                                    "reader": {"min_frames": min_frames}})


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
        d, g = rec.frame_rows("detections", f), rec.frame_rows("gt_objects", f)
        assigned = sttran_assignment(rec.det_boxes[d], rec.gt_boxes[g], gt_labels[g]).labels
        det_labels[d] = np.where(assigned > 0, assigned, BYSTANDERS[rec.det_labels[d] % len(BYSTANDERS)])
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


def handmade_video(meta: StoreMeta, frames: list[dict], name: str = "hand.mp4", split: str = "train") -> VideoRecord:
    """A video from hand-written frames. Each frame is a dict with ``gt`` (list of (box, label)
    tuples, the person first), optional ``small`` (list of 0/1 per GT object), ``rel`` (dict
    GT object index -> list of predicate ids), ``det`` (list of (box, label) tuples) and
    optional ``det_dists`` ((N, C) array; default: mass 0.9 on the label). Stored pairs are
    :func:`rules.pairing.stored_pairs`'s; each pair's union feature is (subject, object, 0, ...)
    in the joint box index, so a test can read which stored pair a view used. Features of a
    box are (its joint index + 1) * 0.01 everywhere."""
    c, p, dim = meta.vocabulary.num_objects, meta.vocabulary.num_predicates, meta.feature_dim
    classes = SttranClasses.from_objects(meta.vocabulary.objects)
    counts = {t: [] for t in ("gt", "rel", "det", "pair")}
    parts = {k: [] for k in ("gt_boxes", "gt_labels", "gt_features", "gt_dists", "gt_small", "rel_subject",
                             "rel_object", "rel_labels", "det_boxes", "det_scores", "det_labels", "det_dists",
                             "det_features", "pair_subject", "pair_object", "pair_union")}

    def onehot(labels):
        x = np.full((len(labels), c), 0.1 / (c - 1), np.float32)
        x[np.arange(len(labels)), labels] = 0.9
        return x.astype(np.float16)

    for fr in frames:
        gt_boxes = np.array([b for b, _ in fr["gt"]], np.float32).reshape(-1, 4)
        gt_labels = np.array([lab for _, lab in fr["gt"]], np.int32)
        g = len(gt_labels)
        small = np.array(fr.get("small", [0] * g), np.uint8)
        det = fr.get("det", [])
        det_boxes = np.array([b for b, _ in det], np.float32).reshape(-1, 4)
        det_labels = np.array([lab for _, lab in det], np.int32)
        n = len(det_labels)
        det_dists = np.asarray(fr["det_dists"], np.float16) if "det_dists" in fr else onehot(det_labels)
        gt_dists = onehot(gt_labels)
        rel = fr.get("rel", {})
        lab = np.zeros((len(rel), p), np.uint8)
        for i, preds in enumerate(rel.values()):
            lab[i, list(preds)] = 1
        pairs = stored_pairs(gt_boxes, small, gt_dists, det_boxes, det_labels, det_dists, person=classes.person,
                             copy_classes=classes.copy_classes)
        union = np.zeros((len(pairs),) + tuple(meta.union_shape), np.float16)
        union.reshape(len(pairs), -1)[:, :2] = pairs
        joint = np.arange(g + n, dtype=np.float32)[:, None]
        feats = np.repeat((joint + 1) * 0.01, dim, 1).astype(np.float16)
        for key, value in (("gt_boxes", gt_boxes), ("gt_labels", gt_labels), ("gt_features", feats[:g]),
                           ("gt_dists", gt_dists), ("gt_small", small),
                           ("rel_subject", np.zeros(len(rel), np.int32)),
                           ("rel_object", np.array(list(rel), np.int32)), ("rel_labels", lab),
                           ("det_boxes", det_boxes), ("det_scores", np.linspace(0.9, 0.5, n).astype(np.float32)),
                           ("det_labels", det_labels), ("det_dists", det_dists.reshape(n, c)),
                           ("det_features", feats[g:]), ("pair_subject", pairs[:, 0].astype(np.int32)),
                           ("pair_object", pairs[:, 1].astype(np.int32)), ("pair_union", union)):
            parts[key].append(value)
        for t, k in (("gt", g), ("rel", len(rel)), ("det", n), ("pair", len(pairs))):
            counts[t].append(k)
    offsets = {t: np.concatenate([[0], np.cumsum(v)]).astype(np.int64) for t, v in counts.items()}
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    cat["rel_labels"] = cat["rel_labels"].reshape(-1, p)
    cat["det_boxes"] = cat["det_boxes"].reshape(-1, 4)
    rec = VideoRecord(
        name=name, split=split, frame_names=tuple(f"{name}/{i:06d}.png" for i in range(len(frames))),
        frame_sizes=np.tile(np.array([[640, 480]], np.int32), (len(frames), 1)),
        gt_offsets=offsets["gt"], rel_offsets=offsets["rel"], det_offsets=offsets["det"],
        pair_offsets=offsets["pair"], **cat)
    rec.validate(meta)
    return rec
