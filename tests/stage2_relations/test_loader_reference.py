"""The loader's fast path gives the batches of the code it replaced, bit for bit.

The one loader optimisation is RS-Net's negative sampling (:func:`stage2_relations.views.sample_negatives`,
IoUs only for pairs of a positive's classes); its earlier code is kept verbatim below, and the
loader must reproduce every field of every batch with it, in every mode, over several epochs of
sampling, for every view that samples negatives (training views with ``negatives``), on stores
with the edge cases (videos without detections, frames without relations, near-duplicate
detections whose negatives the sampling rule drops)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import stage2_relations.views as views
from rules.boxes import box_iou_continuous as box_iou
from rules.modes import Mode
from stage2_relations.data import Collator, VideoDataset, negative_rng
from stage2_relations.view_options import ViewOptions
from store import StoreWriter
from store.testing import synthetic_video
from tests.helpers.stage2 import one_thread, tiny_meta

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


# --- the reference: the code before the loader was optimised (git b38ee8f) ----------------------

DROPS = {"count": 0}


def reference_sample_negatives(pos_subj_boxes, pos_obj_boxes, pos_classes, neg_subj_boxes, neg_obj_boxes, neg_classes,
                               rng, *, iou_threshold=0.5, ratio=1.2):
    q = len(neg_classes)
    keep = np.ones(q, dtype=bool)
    if q and len(pos_classes):
        same = (neg_classes[:, None, 0] == pos_classes[None, :, 0]) & (neg_classes[:, None, 1] == pos_classes[None, :, 1])
        overlap = (box_iou(neg_subj_boxes, pos_subj_boxes) > iou_threshold) & (
            box_iou(neg_obj_boxes, pos_obj_boxes) > iou_threshold)
        keep = ~np.any(same & overlap, axis=1)
    DROPS["count"] += int((~keep).sum())
    idx = np.flatnonzero(keep)
    cap = int(math.floor(ratio * len(pos_classes) + 1e-9))
    if len(idx) > cap:
        idx = np.sort(rng.choice(idx, size=cap, replace=False))
    return idx.astype(np.int64)


# --- stores -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """Random videos, AG-like counts (up to 6 GT objects, 12 detections a frame), with the edge cases."""
    meta = tiny_meta()
    path = tmp_path_factory.mktemp("loader_ref") / "ref.h5"
    with StoreWriter(path, meta) as w:
        for i in range(10):
            w.write_video(synthetic_video(meta, f"v{i:03d}.mp4", seed=100 + i, num_frames=5 + i % 4,
                                          split="train" if i < 7 else "test", max_objects=6, max_detections=12,
                                          no_detections=i == 3, empty_relation_frames=(1,) if i % 2 else (),
                                          small_fraction=0.2))
    return path


def _batches(store_path, mode, train, options, epochs=3):
    ds = VideoDataset(str(store_path), "train", mode, train=train, options=options, preload=True)
    collate = Collator.of(ds)
    out = []
    for epoch in range(epochs if train else 1):
        ds.set_epoch(epoch)
        out += [collate([ds[i], ds[i + 1]]) for i in range(0, len(ds) - 1, 2)] + [collate([ds[len(ds) - 1]])]
    return out


def _assert_identical(new, ref):
    assert len(new) == len(ref)
    for a, b in zip(new, ref):
        for f in dataclasses.fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if isinstance(x, torch.Tensor):
                assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), f.name
            elif f.name == "pool":
                assert (x is None) == (y is None)
                if x is not None:
                    for g in dataclasses.fields(x):
                        assert torch.equal(getattr(x, g.name), getattr(y, g.name)), g.name
            else:
                assert x == y, f.name


OPTIONS = [  # the training views that sample negatives (no other view calls sample_negatives)
    ViewOptions(negatives=True),
    ViewOptions(negatives=True, negative_labels="assigned", assignment="strict"),
    ViewOptions(negatives=True, negative_ratio=3.0, negative_iou=0.3),
]


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("options", OPTIONS, ids=["negatives", "strict-assigned", "ratio3"])
def test_batches_are_bit_identical_to_the_reference(store_path, monkeypatch, mode, options):
    calls = {"n": 0}

    def counted(*args, **kwargs):
        calls["n"] += 1
        return reference_sample_negatives(*args, **kwargs)

    new = _batches(store_path, mode, True, options)
    with monkeypatch.context() as m:
        m.setattr(views, "sample_negatives", counted)
        ref = _batches(store_path, mode, True, options)
    assert calls["n"] > 0  # the reference took part (else this compares the loader with itself)
    _assert_identical(new, ref)


def test_the_comparison_sees_dropped_negatives(store_path, monkeypatch):
    """The stores exercise the sampling rule's drop (else the comparison above could not fail there)."""
    DROPS["count"] = 0
    monkeypatch.setattr(views, "sample_negatives", reference_sample_negatives)
    _batches(store_path, Mode.SGDET, True, ViewOptions(negatives=True), epochs=1)
    assert DROPS["count"] > 0


def test_sample_negatives_matches_the_reference_on_random_frames():
    gen = np.random.default_rng(0)
    for trial in range(300):
        p, q = int(gen.integers(0, 6)), int(gen.integers(0, 12))
        xy = gen.uniform(0, 50, (p + q, 2, 2))
        boxes = np.concatenate([xy[:, 0], xy[:, 0] + gen.uniform(0, 30, (p + q, 2))], 1)
        subj = np.tile(boxes[:1], (p + q, 1)) + gen.integers(0, 2, (p + q, 1)) * gen.uniform(-3, 3, (p + q, 4))
        classes = np.stack([np.ones(p + q, np.int64), gen.integers(2, 5, p + q)], 1)
        args = (subj[:p], boxes[:p], classes[:p], subj[p:], boxes[p:], classes[p:])
        kw = dict(iou_threshold=float(gen.uniform(0.2, 0.7)), ratio=float(gen.choice([0.5, 1.2, 3.0])))
        r1, r2 = negative_rng(trial, 0, "v"), negative_rng(trial, 0, "v")
        assert np.array_equal(views.sample_negatives(*args, r1, **kw), reference_sample_negatives(*args, r2, **kw))
        assert r1.integers(1 << 30) == r2.integers(1 << 30)  # the generators drew alike
