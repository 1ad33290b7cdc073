"""Stage-2 data: negative sampling on hand-built frames, spatial masks, the dataset views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from store.boxes import box_iou
from stage2_relations.data import (
    VideoDataset,
    collate,
    epoch_order,
    negative_rng,
    sample_negatives,
    spatial_masks,
)
from store import open_store
from store.vocabulary import Mode
from tests.stage2_fixtures import one_thread, write_random_store

PERSON, CUP, BOOK = 1, 11, 5


def box(x1, y1, x2, y2):
    return np.array([x1, y1, x2, y2], dtype=np.float64)


def test_pairwise_iou_by_hand():
    a = np.array([box(0, 0, 10, 10)])
    b = np.array([box(0, 0, 10, 10), box(5, 0, 15, 10), box(20, 20, 30, 30)])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])


def test_spatial_masks_by_hand():
    # subject = left half of the union, object = the whole union: 27 columns split at 13.5
    m = spatial_masks(np.array([box(0, 0, 50, 100)]), np.array([box(0, 0, 100, 100)]))
    assert m.shape == (1, 2, 27, 27)
    assert set(np.unique(m)) == {-0.5, 0.5}
    np.testing.assert_array_equal(m[0, 1], np.full((27, 27), 0.5, np.float32))
    # columns [floor(0), ceil(13.5)) = 0..13 are set
    assert (m[0, 0][:, :14] == 0.5).all() and (m[0, 0][:, 14:] == -0.5).all()


def _frame():
    """2 positives (person-cup, person-book); 5 negatives:
    n0 person-cup, object IoU 0.81 with the cup positive          -> dropped
    n1 person-cup, object far away (IoU 0)                       -> kept
    n2 person-book, object IoU 0.81 with the *cup* positive only -> kept (class differs)
    n3 person-book, object identical to the book positive, but the person box IoU 0.33 -> kept
    n4 person-book, identical to the book positive               -> dropped
    """
    person = box(0, 0, 100, 100)
    cup, book = box(200, 200, 300, 300), box(400, 0, 500, 100)
    near_cup = box(210, 210, 300, 300)  # IoU 0.81 with cup
    pos_s = np.stack([person, person])
    pos_o = np.stack([cup, book])
    pos_c = np.array([[PERSON, CUP], [PERSON, BOOK]])
    neg_s = np.stack([person, person, person, box(50, 0, 150, 100), person])
    neg_o = np.stack([near_cup, box(600, 600, 700, 700), near_cup, book, book])
    neg_c = np.array([[PERSON, CUP], [PERSON, CUP], [PERSON, BOOK], [PERSON, BOOK], [PERSON, BOOK]])
    return pos_s, pos_o, pos_c, neg_s, neg_o, neg_c


def test_negative_exclusion_is_exactly_the_rule():
    np.testing.assert_allclose(box_iou([box(210, 210, 300, 300)], [box(200, 200, 300, 300)]), [[0.81]])
    kept = sample_negatives(*_frame(), np.random.default_rng(0), ratio=10.0)
    np.testing.assert_array_equal(kept, [1, 2, 3])


def test_negative_cap_is_1_2_times_positives():
    pos_s, pos_o, pos_c, neg_s, neg_o, neg_c = _frame()
    far = np.stack([box(600 + 20 * i, 600, 610 + 20 * i, 610) for i in range(20)])
    neg_s = np.repeat(pos_s[:1], 20, 0)
    neg_c = np.tile([[PERSON, CUP]], (20, 1))
    for n_pos in (1, 2, 5):
        ps, po, pc = np.repeat(pos_s[:1], n_pos, 0), np.repeat(pos_o[:1], n_pos, 0), np.repeat(pos_c[:1], n_pos, 0)
        kept = sample_negatives(ps, po, pc, neg_s, far, neg_c, np.random.default_rng(0))
        assert len(kept) == int(np.floor(1.2 * n_pos)) and len(set(kept.tolist())) == len(kept)
    # no positive, no negative
    assert len(sample_negatives(pos_s[:0], pos_o[:0], pos_c[:0], neg_s, far, neg_c, np.random.default_rng(0))) == 0
    # under the cap: all kept
    np.testing.assert_array_equal(
        sample_negatives(np.repeat(pos_s[:1], 20, 0), np.repeat(pos_o[:1], 20, 0), np.repeat(pos_c[:1], 20, 0),
                         neg_s, far, neg_c, np.random.default_rng(0)), np.arange(20))


def test_negative_subset_per_epoch_and_seed():
    pos_s = np.repeat([box(0, 0, 100, 100)], 5, 0)
    pos_o = np.repeat([box(200, 200, 300, 300)], 5, 0)
    pos_c = np.tile([[PERSON, CUP]], (5, 1))
    neg_o = np.stack([box(600 + 20 * i, 600, 610 + 20 * i, 610) for i in range(30)])
    neg_s = np.repeat(pos_s[:1], 30, 0)
    neg_c = np.tile([[PERSON, BOOK]], (30, 1))
    draw = lambda seed, epoch: sample_negatives(  # noqa: E731
        pos_s, pos_o, pos_c, neg_s, neg_o, neg_c, negative_rng(seed, epoch, "a.mp4")).tolist()
    assert draw(0, 0) == draw(0, 0)
    assert draw(0, 0) != draw(0, 1)
    assert draw(0, 0) != draw(1, 0)
    assert len(draw(0, 3)) == 6


def test_epoch_order_shards_and_repeats():
    full = epoch_order(7, seed=3, epoch=2)
    assert sorted(full) == list(range(7)) and full == epoch_order(7, seed=3, epoch=2)
    assert full != epoch_order(7, seed=3, epoch=3)
    r0, r1 = epoch_order(7, 3, 2, rank=0, world_size=2), epoch_order(7, 3, 2, rank=1, world_size=2)
    assert len(r0) == len(r1) == 4 and set(r0) | set(r1) == set(range(7))


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return write_random_store(tmp_path_factory.mktemp("s2data") / "tiny.h5", n=6)


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("train", [True, False])
def test_dataset_batches(store_path, mode, train):
    ds = VideoDataset(str(store_path), "train", mode, train=train)
    b = collate([ds[0], ds[1]], mode, train)
    m, n = b.num_pairs, b.boxes.shape[0]
    assert b.num_videos == 2 and b.video_frame_offsets[-1] == b.num_frames == len(b.frame_names)
    assert b.pairs.shape == (m, 2) and b.union.shape == (m, 8) and b.masks.shape == (m, 2, 27, 27)
    assert b.features.shape == (n, 16) and b.dists.shape == (n, 37) and b.box_offsets[-1] == n
    assert b.spatial_labels.shape == (m, 6) and b.contacting_labels.shape == (m, 17)
    # pairs stay inside their frame, subject and object differ
    assert torch.equal(b.box_frame[b.pairs[:, 0]], b.pair_frame) and torch.equal(b.box_frame[b.pairs[:, 1]], b.pair_frame)
    # positives have labels, negatives none
    assert (b.attention_labels[~b.pair_positive] == -1).all()
    assert (b.spatial_labels[~b.pair_positive] == 0).all()
    # at most 1.2x negatives per frame in training
    if train:
        for f in range(b.num_frames):
            sel = b.pair_frame == f
            assert (~b.pair_positive[sel]).sum() <= int(np.floor(1.2 * b.pair_positive[sel].sum().item() + 1e-9))


def test_predcls_negatives_are_unmatched_detections(store_path):
    ds = VideoDataset(str(store_path), "train", Mode.PREDCLS, train=True, negative_ratio=100.0)
    rec = open_store(store_path).read_video(ds.videos[0])
    item = ds.build(rec)
    b = collate([item], Mode.PREDCLS, True)
    for f in range(rec.num_frames):
        sel = (b.pair_frame == f) & ~b.pair_positive
        objs = b.pairs[sel, 1]
        # every negative's object is a detection box or an unlabelled GT pair's object
        d = rec.frame_rows("detections", f)
        unmatched = rec.det_boxes[d][rec.det_matched_gt[d] < 0]
        for o in objs.tolist():
            if not b.box_is_gt[o]:
                assert any(np.allclose(b.boxes[o].numpy(), u) for u in unmatched)


def test_sgdet_training_assignment(store_path):
    st = open_store(store_path)
    ds = VideoDataset(st, "train", Mode.SGDET, train=True)
    rec = st.read_video(ds.videos[0])
    b = collate([ds.build(rec)], Mode.SGDET, True)
    for f in range(rec.num_frames):
        d, g = rec.frame_rows("detections", f), rec.frame_rows("gt_objects", f)
        boxes = b.box_frame == f
        labels = b.box_labels[boxes].numpy()
        matched = rec.det_matched_gt[d]
        n_det = len(matched)
        want = np.where(matched >= 0, rec.gt_labels[g][np.maximum(matched, 0)], 0)
        np.testing.assert_array_equal(labels[:n_det], want)
        unmatched_gt = np.setdiff1d(np.arange(g.stop - g.start), matched[matched >= 0])
        np.testing.assert_array_equal(labels[n_det:], rec.gt_labels[g][unmatched_gt])
        assert (b.box_scores[boxes][n_det:] == 1).all() and b.box_is_gt[boxes][n_det:].all()
        # every GT relation of the frame is a positive
        labelled = {int(x) for x in rec.pair_relation[rec.frame_rows("pairs", f)] if x >= 0}
        assert int(b.pair_positive[b.pair_frame == f].sum()) >= len(labelled)
