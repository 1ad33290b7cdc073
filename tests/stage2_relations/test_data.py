"""Stage-2 data: negative sampling on hand-built frames, spatial masks, the views of every mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rules.boxes import box_iou_continuous
from rules.modes import Mode
from stage2_relations.data import Collator, VideoDataset, epoch_order, negative_rng, spatial_masks
from stage2_relations.view_options import ViewOptions
from stage2_relations.views import frame_view, mode_frames, sample_negatives
from store import StoreWriter, open_store
from tests.helpers.stage2 import handmade_video, one_thread, tiny_meta, write_random_store

PERSON, CUP, BOOK = 1, 11, 5


def box(x1, y1, x2, y2):
    return np.array([x1, y1, x2, y2], dtype=np.float64)


def test_pairwise_iou_by_hand():
    a = np.array([box(0, 0, 10, 10)])
    b = np.array([box(0, 0, 10, 10), box(5, 0, 15, 10), box(20, 20, 30, 30)])
    np.testing.assert_allclose(box_iou_continuous(a, b), [[1.0, 50 / 150, 0.0]])


def test_spatial_masks_by_hand():
    # subject = left half of the union, object = the whole union: the subject's right edge falls
    # at 13.5 of 27 columns, so column 13 is half covered (STTran's draw_union_boxes)
    m = spatial_masks(np.array([box(0, 0, 50, 100)]), np.array([box(0, 0, 100, 100)]))
    assert m.shape == (1, 2, 27, 27) and m.dtype == np.float32
    np.testing.assert_array_equal(m[0, 1], np.full((27, 27), 0.5, np.float32))
    assert (m[0, 0][:, :13] == 0.5).all() and (m[0, 0][:, 14:] == -0.5).all()
    np.testing.assert_allclose(m[0, 0][:, 13], 0.0)  # half a cell: 0.5 - 0.5
    # a box from 10% to 30% of the union in y: rows 2.7 .. 8.1 -> row 2 covered 0.3, rows 3-7 fully,
    # row 8 covered 0.1 (x: the whole width)
    m = spatial_masks(np.array([box(0, 10, 100, 30)]), np.array([box(0, 0, 100, 100)]))
    col = m[0, 0][:, 5] + 0.5
    np.testing.assert_allclose(col[:2], 0.0, atol=1e-6)
    np.testing.assert_allclose(col[2], 0.3, atol=1e-5)
    np.testing.assert_allclose(col[3:8], 1.0, atol=1e-6)
    np.testing.assert_allclose(col[8], 0.1, atol=1e-5)
    np.testing.assert_allclose(col[9:], 0.0, atol=1e-6)


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
    np.testing.assert_allclose(box_iou_continuous([box(210, 210, 300, 300)], [box(200, 200, 300, 300)]), [[0.81]])
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

WITH_NEG = ViewOptions(negatives=True)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return write_random_store(tmp_path_factory.mktemp("s2data") / "tiny.h5", n=6)


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("negatives", [False, True])
def test_dataset_batches(store_path, mode, train, negatives):
    ds = VideoDataset(str(store_path), "train", mode, train=train, options=ViewOptions(negatives=negatives))
    b = Collator.of(ds)([ds[0], ds[1]])
    m, n = b.num_pairs, b.boxes.shape[0]
    assert b.num_videos == 2 and b.video_frame_offsets[-1] == b.num_frames == len(b.frame_names)
    assert b.pairs.shape == (m, 2) and b.union.shape == (m, 8) and b.masks.shape == (m, 2, 27, 27)
    assert b.features.shape == (n, 16) and b.dists.shape == (n, 37) and b.box_offsets[-1] == n
    assert b.spatial_labels.shape == (m, 6) and b.contacting_labels.shape == (m, 17)
    assert b.union_substituted.shape == (m,)
    # pairs stay inside their frame
    assert torch.equal(b.box_frame[b.pairs[:, 0]], b.pair_frame) and torch.equal(b.box_frame[b.pairs[:, 1]], b.pair_frame)
    # positives have labels, negatives none
    assert (b.attention_labels[~b.pair_positive] == -1).all()
    assert (b.spatial_labels[~b.pair_positive] == 0).all()
    if train and not negatives:
        assert b.pair_positive.all()  # a baseline trains on positives alone
    if train:
        for f in range(b.num_frames):
            sel = b.pair_frame == f
            assert (~b.pair_positive[sel]).sum() <= int(np.floor(1.2 * b.pair_positive[sel].sum().item() + 1e-9))


def test_select_pairs_keeps_frames_in_order(store_path):
    ds = VideoDataset(str(store_path), "train", Mode.PREDCLS, train=False)
    b = Collator.of(ds)([ds[0]])
    keep = torch.arange(0, b.num_pairs, 2)
    s = b.select_pairs(keep)
    assert torch.equal(s.pairs, b.pairs[keep]) and torch.equal(s.pair_frame, b.pair_frame[keep])
    assert torch.equal(s.pair_offsets.diff(), torch.bincount(b.pair_frame[keep], minlength=b.num_frames))
    assert torch.equal(s.union, b.union[keep]) and s.masks.shape[0] == len(keep)


# --- hand-built frames ------------------------------------------------------------------

PERSON_BOX = (0.0, 0.0, 100.0, 200.0)
CUP_BOX = (150.0, 150.0, 200.0, 200.0)
FAR_BOX = (400.0, 0.0, 460.0, 60.0)


def _sgdet_frame():
    """Person and cup GT (cup: looking_at, in_front_of, holding); detections: the person (d0),
    the cup (d1, IoU 0.92), a near-duplicate of the cup (d2, IoU 0.84) and a bystander far away
    (d3, a bag)."""
    return dict(gt=[(PERSON_BOX, 1), (CUP_BOX, 11)], rel={1: [0, 5, 14]},
                det=[((1, 1, 100, 200), 1), ((150, 150, 198, 200), 11), ((152, 154, 200, 200), 11), (FAR_BOX, 2)])


def _record(frames, **kw):
    return handmade_video(tiny_meta(), frames, **kw)


def _view(rec, f, mode, train, options=ViewOptions(), seed=0):
    return frame_view(rec, f, mode, train=train, options=options, rng=negative_rng(seed, 0, rec.name),
                      vocabulary=tiny_meta().vocabulary)


def _union_pair(rec, f, view):
    """The joint (subject, object) of the stored pair each view pair reads its union from."""
    rows = rec.frame_rows("pairs", f).start + view.union_rows
    return rec.pair_union[rows][:, :2].astype(int).tolist()


def test_sgdet_training_view_sttran_assignment():
    rec = _record([_sgdet_frame()] * 3)
    v = _view(rec, 0, Mode.SGDET, True, WITH_NEG)
    # boxes: the 4 detections (no GT box left unmatched); STTran labels the near-duplicate cup too
    assert v.labels.tolist() == [1, 11, 11, 0] and not v.is_gt.any()
    # the positive is (person detection, the cup's detection) with the cup's labels
    assert v.pairs[v.positive].tolist() == [[0, 1]] and v.rel_rows[v.positive].tolist() == [0]
    # negatives: the near-duplicate has the positive's class pair and IoU > 0.5: dropped; the bag stays
    assert v.pairs[~v.positive].tolist() == [[0, 3]]
    # union features are those of (d0, d1) and (d0, d3): joint indices 2+0, 2+1, 2+3
    assert _union_pair(rec, 0, v) == [[2, 3], [2, 5]] and not v.substituted.any()
    # the bystander only negatives use: its detector class (bag) in the class embeddings, not
    # the assignment's background, which the test view never shows
    assert v.embed_labels.tolist() == [1, 11, 11, 2]
    # the strict rule labels the near-duplicate background, so the sampling rule (on the
    # assignment's classes) cannot drop it (no cap here), whatever the embeddings see
    for labels in ("detector", "assigned"):
        s = _view(rec, 0, Mode.SGDET, True, ViewOptions(negatives=True, assignment="strict", negative_ratio=10.0,
                                                           negative_labels=labels))
        assert s.labels.tolist() == [1, 11, 0, 0]
        assert sorted(s.pairs[~s.positive].tolist()) == [[0, 2], [0, 3]]
    assert s.embed_labels.tolist() == [1, 11, 0, 0]
    # without RS-Net's negatives the view holds the positive alone
    assert _view(rec, 0, Mode.SGDET, True).pairs.tolist() == [[0, 1]]


def test_sgdet_sampling_uses_the_assignments_classes():
    """A near-duplicate of the cup that the detector calls a dish: STTran's assignment labels
    it cup, so the sampling rule drops it, though its class embedding says dish."""
    frame = _sgdet_frame()
    frame["det"] = [frame["det"][0], frame["det"][1], ((152, 154, 200, 200), 12), frame["det"][3]]
    rec = _record([frame] * 3)
    v = _view(rec, 0, Mode.SGDET, True, ViewOptions(negatives=True, negative_ratio=10.0))
    assert v.labels.tolist() == [1, 11, 11, 0] and v.embed_labels.tolist() == [1, 11, 12, 2]
    assert v.pairs[~v.positive].tolist() == [[0, 3]]


def test_sgdet_training_subject_is_the_person_detection():
    """STTran pairs the relations with the detector's person box (its ``localhuman``, the
    frame's first box), not with the detection that overlaps the GT person most: here a bag
    box (d1) overlaps the person more than the person detection (d0) does."""
    frame = dict(gt=[(PERSON_BOX, 1), (CUP_BOX, 11)], rel={1: [0, 5, 14]},
                 det=[((0, 20, 100, 200), 1), ((0, 2, 100, 200), 2), ((150, 150, 198, 200), 11)])
    rec = _record([frame] * 3)
    v = _view(rec, 0, Mode.SGDET, True)
    assert v.pairs.tolist() == [[0, 2]]
    assert _union_pair(rec, 0, v) == [[2, 4]]  # (d0, d2) in the joint index


def test_baselines_see_no_unannotated_gt_pair():
    """A GT object without a relation is a negative for RS-Net only."""
    frame = dict(gt=[(PERSON_BOX, 1), (CUP_BOX, 11), (FAR_BOX, 2)], rel={1: [0]})
    rec = _record([frame] * 3)
    assert _view(rec, 0, Mode.PREDCLS, True).pairs.tolist() == [[0, 1]]
    v = _view(rec, 0, Mode.PREDCLS, True, ViewOptions(negatives=True, negative_ratio=10.0))
    assert v.pairs.tolist() == [[0, 1], [0, 2]] and v.positive.tolist() == [True, False]


@pytest.mark.parametrize("train", [True, False])
def test_sgdet_views_read_their_own_union_features(store_path, train):
    """Every SGDET pair has its own stored union feature (no substitution), and no negative is
    lost for want of one: the store holds every pair the views ask for."""
    st = open_store(store_path)
    for video in st.videos():
        rec = st.read_video(video)
        for f in range(rec.num_frames):
            options = ViewOptions(negatives=True, negative_ratio=1e9)
            v = frame_view(rec, f, Mode.SGDET, train=train, options=options, rng=negative_rng(0, 0, video),
                           vocabulary=st.meta.vocabulary)
            assert not v.substituted.any() and (v.union_rows >= 0).all()
            if train:  # every box but the subject is in a pair: no negative was dropped
                assert len(np.unique(v.pairs[:, 1])) == len(v.boxes) - 1 or not len(v.pairs)


def test_sgdet_training_view_supplies_unmatched_gt():
    frame = dict(gt=[(PERSON_BOX, 1), (CUP_BOX, 11), ((300, 300, 340, 340), 5)], rel={1: [0], 2: [1, 4]},
                 det=[((1, 1, 100, 200), 1), ((150, 150, 198, 200), 11), (FAR_BOX, 2)])
    rec = _record([frame] * 3)
    v = _view(rec, 0, Mode.SGDET, True, WITH_NEG)
    # the book has no detection: added as a GT box with score 1 and its GT label
    assert v.labels.tolist() == [1, 11, 0, 5] and v.is_gt.tolist() == [False, False, False, True]
    assert v.scores[3] == 1.0
    assert v.pairs[v.positive].tolist() == [[0, 1], [0, 3]]
    # (person detection, book GT box): the store holds it, joint (3 + 0, 2)
    assert _union_pair(rec, 0, v)[1] == [3, 2]


def test_sgdet_test_view_is_sttran_test_boxes():
    """d1 is a book (argmax) with chair second: STTran copies it as a chair, and copies that
    copy again (``clean_class(8)`` sees it), with book and chair zeroed, whose argmax is then the
    first of equal leftovers, the person. d0 is the person detection, but d2 (labelled bag by
    the detector) has the higher person probability: it suppresses d0 (person NMS, "+1" IoU
    91 / 111 = 0.82 > 0.6) and becomes the subject."""
    c = 37
    dists = np.full((3, c), 0.001, np.float32)
    dists[0, 1], dists[0, 2] = 0.5, 0.4      # d0: person 0.5
    dists[1, 5], dists[1, 8] = 0.6, 0.3      # d1: book, then chair
    dists[2, 2], dists[2, 1] = 0.35, 0.6     # d2: person 0.6 (argmax), bag second
    dists /= dists.sum(1, keepdims=True)
    frame = dict(gt=[(PERSON_BOX, 1), (CUP_BOX, 11)], rel={1: [0]},
                 det=[((0, 0, 100, 200), 1), ((150, 150, 200, 200), 5), ((10, 0, 110, 200), 2)], det_dists=dists)
    rec = _record([frame] * 3)
    v = _view(rec, 0, Mode.SGDET, False)
    fg = rec.det_dists[:3, 1:].astype(np.float64)
    fg /= fg.sum(1, keepdims=True)
    # class order: person group (d2, then the copy of the copy), book (d1), chair (its copy)
    np.testing.assert_allclose(v.boxes, [[10, 0, 110, 200]] + [[150, 150, 200, 200]] * 3)
    assert v.labels.tolist() == [1, 2, 5, 8]
    np.testing.assert_allclose(v.scores, [fg[2, 0], fg[1, 1], fg[1, 4], fg[1, 7]])
    assert v.pairs.tolist() == [[0, 1], [0, 2], [0, 3]]
    # every pair reads the union of (d2, d1): joint 2 + 2, 2 + 1
    assert _union_pair(rec, 0, v) == [[4, 3]] * 3
    # the raw option keeps the detections and the person detection as subject
    r = _view(rec, 0, Mode.SGDET, False, ViewOptions(sgdet_boxes="raw"))
    assert r.labels.tolist() == [1, 5, 2] and r.pairs.tolist() == [[0, 1], [0, 2]]


def test_predcls_negatives_are_unlabelled_detections_with_substituted_unions():
    rec = _record([_sgdet_frame()] * 3)
    v = _view(rec, 0, Mode.PREDCLS, True, ViewOptions(negatives=True, negative_ratio=10.0))
    # GT boxes (person, cup), then the bag detection: the only one the assignment leaves unlabelled
    assert v.labels.tolist() == [1, 11, 2] and v.is_gt.tolist() == [True, True, False]
    assert v.pairs.tolist() == [[0, 1], [0, 2]] and v.positive.tolist() == [True, False]
    # the store has no (GT person, bag) union: the pair reads (person detection, bag), marked
    assert _union_pair(rec, 0, v) == [[0, 1], [2, 5]] and v.substituted.tolist() == [False, True]
    assert _view(rec, 0, Mode.PREDCLS, True).pairs.tolist() == [[0, 1]]


def test_sgcls_test_view_offers_every_ordered_pair():
    frame = dict(gt=[(PERSON_BOX, 1), (CUP_BOX, 11), (FAR_BOX, 2)], rel={1: [0], 2: [1]})
    rec = _record([frame] * 3)
    v = _view(rec, 0, Mode.SGCLS, False)
    assert v.pairs.tolist() == [[0, 1], [0, 2], [1, 0], [1, 2], [2, 0], [2, 1]]
    # (cup, bag) is not stored: it reads (person, bag) and is marked
    assert v.substituted.tolist() == [False, False, False, True, False, True]
    assert _union_pair(rec, 0, v)[3] == [0, 2]
    assert v.positive.tolist() == [True, True, False, False, False, False]
    c = _view(rec, 0, Mode.SGCLS, False, ViewOptions(object_scores="classifier"))
    assert c.pairs.tolist() == [[0, 1], [0, 2]]


def test_modes_filter_small_objects_frames_and_videos(tmp_path):
    meta = tiny_meta(min_frames=3)
    big = dict(gt=[(PERSON_BOX, 1), (CUP_BOX, 11), (FAR_BOX, 2)], small=[0, 0, 1], rel={1: [0], 2: [1]})
    only_small = dict(gt=[(PERSON_BOX, 1), (FAR_BOX, 2)], small=[0, 1], rel={1: [2]})
    a = handmade_video(meta, [big, only_small, big, big], name="a.mp4")
    b = handmade_video(meta, [big, only_small, only_small, big], name="b.mp4")
    assert mode_frames(a, Mode.PREDCLS, 3).tolist() == [0, 1, 2, 3]
    assert mode_frames(a, Mode.SGDET, 3).tolist() == [0, 2, 3]
    assert mode_frames(b, Mode.SGCLS, 3).tolist() == []  # two frames left: under min_frames
    path = tmp_path / "s.h5"
    with StoreWriter(path, meta) as w:
        w.write_video(a)
        w.write_video(b)
    assert VideoDataset(str(path), "train", Mode.PREDCLS, train=False).videos == ["a.mp4", "b.mp4"]
    ds = VideoDataset(str(path), "train", Mode.SGDET, train=False)
    assert ds.videos == ["a.mp4"]
    gts = ds.ground_truth(open_store(path).read_video("a.mp4"))
    assert len(gts) == 3 and gts[0].gt_labels.tolist() == [1, 11]  # the small bag is not SGDET's
    assert gts[0].gt_relations.tolist() == [[0, 1, 0]]
    full = VideoDataset(str(path), "train", Mode.PREDCLS, train=False).ground_truth(open_store(path).read_video("a.mp4"))
    assert full[0].gt_labels.tolist() == [1, 11, 2] and full[0].gt_relations.tolist() == [[0, 1, 0], [0, 2, 1]]
