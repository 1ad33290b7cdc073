"""DSG-DETR: its object sequences (tracker, class grouping) on hand-built boxes, the pair pool,
the SGDET test path that re-scores the detections, positions, and the full-size size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rules.modes import Mode
from rules.pairing import PairIndex, SttranClasses, select_test_boxes, sttran_test_boxes
from stage2_relations.data import Collator, VideoDataset, spatial_masks
from stage2_relations.heads import HeadContext, build_model, count_parameters
from stage2_relations.heads import dsgdetr as dsg
from stage2_relations.heads.objects import center_size
from stage2_relations.heads.tracking import (
    frame_number,
    frame_ranks,
    generalized_iou,
    group_by_class,
    group_by_label,
    track_objects,
)
from stage2_relations.recipe import TrainConfig
from stage2_relations.train import train
from stage2_relations.view_options import ViewOptions
from store import StoreWriter, open_store
from store.vocabulary import ACTION_GENOME
from tests.helpers import REPO
from tests.helpers.stage2 import TINY_HEADS, TINY_RSNET, handmade_video, one_thread, tiny_meta, write_learnable_store

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

PERSON, BAG, BOOK, CHAIR, CUP = 1, 2, 5, 8, 11
AG = SttranClasses.from_objects(ACTION_GENOME.objects)
W, H = 400, 100  # image size of the tracker cases


def _track(frames, numbers=None, size=(W, H), **kw):
    """frames: list of lists of (box xyxy, class, feature) -> clusters as lists of (frame, slot)."""
    boxes, frame, classes, feats, names = [], [], [], [], []
    for f, dets in enumerate(frames):
        for j, (b, c, x) in enumerate(dets):
            boxes.append(b)
            frame.append(f)
            classes.append(c)
            feats.append(x)
            names.append((f, j))
    numbers = np.arange(len(frames)) if numbers is None else np.asarray(numbers)
    clusters = track_objects(np.array(boxes, float).reshape(-1, 4), np.array(frame), numbers,
                             np.array(feats, float).reshape(len(boxes), -1), np.array(classes), size, **kw)
    return sorted([[names[i] for i in c] for c in clusters])


E1, E2, E3 = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
PERSON_AT = ((10, 10, 40, 90), PERSON, E1)


def test_tracker_keeps_identity_and_starts_a_track_for_a_new_object():
    cup = lambda dx: ((100 + dx, 20, 130 + dx, 50), CUP, E2)  # noqa: E731
    frames = [[PERSON_AT, cup(0)], [cup(5), PERSON_AT], [PERSON_AT, cup(10), ((300, 40, 340, 80), BOOK, E3)]]
    assert _track(frames) == [[(0, 0), (1, 1), (2, 0)], [(0, 1), (1, 0), (2, 1)], [(2, 2)]]


def test_tracker_acceptance_is_an_or_of_two_cosine_costs():
    """The only track is the only candidate: Hungarian assigns it, then the pair is accepted when
    the class-cosine cost or the feature-cosine cost is < 0.5, whatever the box distance."""
    far = (300, 40, 340, 80)
    # other class, orthogonal feature (both costs 1): a new track
    assert _track([[((100, 20, 130, 50), CUP, E2)], [(far, BOOK, E3)]]) == [[(0, 0)], [(1, 0)]]
    # same class, orthogonal feature, far away: class cost 0 -> accepted
    assert _track([[((100, 20, 130, 50), CUP, E2)], [(far, CUP, E3)]]) == [[(0, 0), (1, 0)]]
    # other class, feature cosine 0.8 (cost 0.2): accepted
    assert _track([[((100, 20, 130, 50), CUP, E2)], [(far, BOOK, (0.6, 0.8, 0.0))]]) == [[(0, 0), (1, 0)]]
    # other class, feature cosine 0.5 exactly (cost 0.5, not < 0.5): rejected
    assert _track([[((100, 20, 130, 50), CUP, E2)], [(far, BOOK, (math.sqrt(0.75), 0.5, 0.0))]]) == [[(0, 0)], [(1, 0)]]


def test_tracker_survives_a_gap_and_expires_after_50_frame_numbers():
    cup = ((100, 20, 130, 50), CUP, E2)
    frames = [[PERSON_AT, cup], [PERSON_AT], [PERSON_AT, cup]]
    # unmatched in the frame numbered 49 (gap 49 < 50): still active, matched again at 60
    assert _track(frames, numbers=[0, 49, 60]) == [[(0, 0), (1, 0), (2, 0)], [(0, 1), (2, 1)]]
    # unmatched at 50 (gap 50 >= 50): dropped there, so the cup at 60 starts a new track
    assert _track(frames, numbers=[0, 50, 60]) == [[(0, 0), (1, 0), (2, 0)], [(0, 1)], [(2, 1)]]
    # the gap counts from the last update: expiry is checked only in frames where the track is unmatched
    assert _track([[cup], [cup], [cup]], numbers=[0, 40, 80]) == [[(0, 0), (1, 0), (2, 0)]]


def test_tracker_boxes_outside_the_image():
    inside, outside = ((100, 20, 130, 50), CUP, E2), ((380, 20, 410, 50), CUP, E2)  # x2 410 > W
    # an out-of-image box starts a cluster but no track: the next box cannot join it
    assert _track([[outside], [inside]]) == [[(0, 0)], [(1, 0)]]
    # an out-of-image box joins a track but does not update it: its last update stays at 0
    frames = [[inside], [outside], [], [inside]]
    assert _track(frames, numbers=[0, 30, 50, 60]) == [[(0, 0), (1, 0)], [(3, 0)]]
    frames = [[inside], [inside], [], [inside]]
    assert _track(frames, numbers=[0, 30, 50, 60]) == [[(0, 0), (1, 0), (3, 0)]]


def test_tracker_box_normaliser_swaps_height_and_width_by_default():
    """Two same-looking tracks A (cx 100, cy 20) and B (cx 140, cy 80), detections at (100, 80)
    and (140, 20), 30 x 30 boxes, image 400 x 100. Matching by x costs L1 2 * 60 / Zy and GIoU
    2 * 0.5 / 3; matching by y costs 2 * 40 / Zx and 2 * 0.5 / 7. The code's Z = (H, W, H, W):
    0.3 + 0.33 < 0.8 + 0.14 -> by x; corrected (W, H, W, H): 1.2 + 0.33 > 0.2 + 0.14 -> by y."""
    sq = lambda cx, cy: (cx - 15, cy - 15, cx + 15, cy + 15)  # noqa: E731
    frames = [[(sq(100, 20), CUP, E2), (sq(140, 80), CUP, E2)], [(sq(100, 80), CUP, E2), (sq(140, 20), CUP, E2)]]
    assert _track(frames) == [[(0, 0), (1, 0)], [(0, 1), (1, 1)]]
    assert _track(frames, swap_hw=False) == [[(0, 0), (1, 1)], [(0, 1), (1, 0)]]


def test_generalized_iou_by_hand():
    a = np.array([[0, 0, 2, 2.0]])
    b = np.array([[1, 1, 3, 3.0], [4, 0, 6, 2.0]])
    # overlap 1, union 7, hull 9: 1/7 - 2/9; disjoint: 0 - (12 - 8) / 12
    np.testing.assert_allclose(generalized_iou(a, b), [[1 / 7 - 2 / 9, -4 / 12]])


def test_grouping_by_label_class_and_frame_ranks():
    assert [g.tolist() for g in group_by_label(np.array([11, 1, 11, 5, 1]))] == [[1, 4], [3], [0, 2]]
    dists = np.eye(8)[[3, 5, 3, 7, 3, 5]]
    singles, groups = group_by_class(dists)
    assert singles.tolist() == [3] and [g.tolist() for g in groups] == [[0, 2, 4], [1, 5]]
    assert frame_ranks(np.array([0, 0, 2, 5, 5])).tolist() == [0, 0, 1, 2, 2]
    assert frame_number("abc.mp4/000123.png") == 123


# --- the head on hand-built stores ------------------------------------------------------

PERSON_BOX, CUP_BOX, CUP2_BOX = (0, 0, 100, 200), (150, 150, 200, 200), (250, 150, 300, 200)
DETS = [((1, 1, 100, 200), PERSON), ((150, 150, 198, 200), CUP), ((300, 10, 350, 60), BAG)]


def _store(tmp_path, frames, name="s.h5"):
    meta = tiny_meta()
    with StoreWriter(tmp_path / name, meta) as w:
        w.write_video(handmade_video(meta, frames))
    return tmp_path / name


def _batch(path, mode, train, **options):
    ds = VideoDataset(str(path), "train", mode, train=train, options=ViewOptions(**options))
    return Collator.of(ds)([ds[0]])


def _head(mode, **kw):
    meta = tiny_meta()
    ctx = HeadContext(vocabulary=meta.vocabulary, mode=Mode(mode), feature_dim=meta.feature_dim,
                      union_shape=meta.union_shape)
    torch.manual_seed(0)
    return build_model("dsgdetr", {**TINY_HEADS["dsgdetr"], **kw}, None, ctx)


def test_pair_pool_lookup_exact_and_fallback(tmp_path):
    """Joint indices: GT person 0, cup 1; detections d0 2 (person), d1 3 (cup), d2 4 (bag). The
    store pairs d0 (every subject rule's) with d1 and d2, not d1 with d2."""
    path = _store(tmp_path, [dict(gt=[(PERSON_BOX, PERSON), (CUP_BOX, CUP)], rel={1: [0]}, det=DETS)])
    b = _batch(path, Mode.SGDET, False, sgdet_boxes="raw", pair_pool=True)
    assert b.pool.box_joint.tolist() == [2, 3, 4] and b.pool.fallback.tolist() == [2]
    # the torch lookup agrees with the store's PairIndex for every ordered pair of the frame
    rec = open_store(path).read_video("hand.mp4")
    index = PairIndex(rec.pair_subject, rec.pair_object, 5)
    s, o = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    want = index.rows(s.ravel(), o.ravel())
    got = b.pool.rows(torch.zeros(25, dtype=torch.long), torch.from_numpy(s.ravel()), torch.from_numpy(o.ravel()))
    assert got.tolist() == want.tolist() and (want >= 0).any() and (want < 0).any()
    # (d2, d0) reversed: exact; (d1, d2): not stored -> (d0, d2); (d0, d0): neither -> zeros
    p = b.with_pairs(torch.tensor([[2, 0], [1, 2], [0, 0]]))
    assert p.union[:, :2].tolist() == [[2, 4], [2, 4], [0, 0]] and not p.union[2].any()
    assert p.union_substituted.tolist() == [False, True, True]
    assert p.pair_offsets.tolist() == [0, 3] and not p.pair_positive.any() and (p.attention_labels == -1).all()
    bx = b.boxes.numpy()
    torch.testing.assert_close(p.masks, torch.from_numpy(spatial_masks(bx[[2, 1, 0]], bx[[0, 2, 0]])))
    # copies: box i is a copy of box source[i], with its pool index
    c = b.with_boxes(torch.tensor([0, 2, 2]), torch.tensor([1, BAG, CHAIR]), torch.tensor([0.9, 0.5, 0.4]))
    assert c.num_pairs == 0 and c.pool.box_joint.tolist() == [2, 4, 4] and c.box_offsets.tolist() == [0, 3]
    torch.testing.assert_close(c.features, b.features[[0, 2, 2]])
    cp = c.with_pairs(torch.tensor([[0, 1], [0, 2], [1, 2]]))
    assert cp.union[:, :2].tolist() == [[2, 4], [2, 4], [2, 4]]
    assert cp.union_substituted.tolist() == [False, False, True]  # (d2, its copy) reads (d0, d2)
    with pytest.raises(ValueError, match="pair_pool=True"):
        _batch(path, Mode.SGDET, False, sgdet_boxes="raw").with_pairs(torch.tensor([[0, 1]]))


def _hand_logits():
    """Classifier logits (3, 37) of the detections DETS: d0 a cup (then the person), d1 the
    person, d2 a chair (then a bag)."""
    logits = torch.full((3, 37), -10.0)
    logits[0, [0, PERSON, CUP]] = torch.tensor([0.0, 1.0, 3.0])
    logits[1, [0, PERSON, CUP]] = torch.tensor([1.0, 4.0, 0.0])
    logits[2, [0, CHAIR, BAG]] = torch.tensor([0.0, 3.0, 2.0])
    return logits


def _run_with_logits(batch, logits):
    """The SGDET head at test on ``batch`` with its classifier's logits replaced by ``logits``."""
    head = _head(Mode.SGDET).eval()
    head.object_classifier.classify = lambda refined, extra=None: logits
    with torch.no_grad():
        return head(batch)


def test_sgdet_test_rescores_with_the_heads_distribution(tmp_path):
    """The detector calls d0 the person (0.9); the head's classifier calls d1 the person, d0 a cup
    and d2 a chair (second: a bag). DSG-DETR's rule on the head's softmax over all 37 logits:
    d2 gets a copy without the chair (a bag); NMS keeps all; the subject is d1."""
    path = _store(tmp_path, [dict(gt=[(PERSON_BOX, PERSON), (CUP_BOX, CUP)], rel={1: [0]}, det=DETS)])
    batch = _batch(path, Mode.SGDET, False, sgdet_boxes="raw", pair_pool=True)
    det_subject = sttran_test_boxes(batch.boxes.numpy(), batch.dists.numpy(), person=AG.person,
                                    copy_classes=AG.copy_classes)
    assert det_subject.source[det_subject.subject] == 0
    logits = _hand_logits()
    out = _run_with_logits(batch, logits)
    fg = logits.softmax(-1)[:, 1:]
    want = select_test_boxes(batch.boxes.numpy(), fg.double().numpy(), person=AG.person,
                             copy_classes=AG.copy_classes)
    assert want.source.tolist() == [1, 2, 2, 0] and want.subject == 0  # class order: person, bag, chair, cup
    b = out.batch
    torch.testing.assert_close(b.boxes, batch.boxes[[1, 2, 2, 0]])
    assert out.object_labels.tolist() == [PERSON, BAG, CHAIR, CUP]
    # scores: the head's probabilities, not renormalised without the background
    torch.testing.assert_close(out.object_scores, torch.stack([fg[1, 0], fg[2, BAG - 1], fg[2, CHAIR - 1],
                                                               fg[0, CUP - 1]]))
    assert not torch.isclose(out.object_scores[0], fg[1, 0] / fg[1].sum())
    assert b.pairs.tolist() == [[0, 1], [0, 2], [0, 3]]
    # (d1, d2) is not stored: it reads the detector subject's (d0, d2); (d1, d0) is stored
    assert b.union[:, :2].tolist() == [[2, 4], [2, 4], [2, 3]]
    assert b.union_substituted.tolist() == [True, True, False]
    assert torch.equal(out.object_logits, logits[[1, 2, 2, 0]])
    assert out.attention_logits.shape == (3, 3)


def test_sgdet_test_needs_the_raw_detections_and_the_pool(tmp_path):
    path = _store(tmp_path, [dict(gt=[(PERSON_BOX, PERSON), (CUP_BOX, CUP)], rel={1: [0]}, det=DETS)])
    head = _head(Mode.SGDET).eval()
    for options in (dict(sgdet_boxes="raw"), dict(pair_pool=True)):
        with pytest.raises(ValueError, match="sgdet_boxes='raw', pair_pool=True"), torch.no_grad():
            head(_batch(path, Mode.SGDET, False, **options))
    # the trainer asks for them; a recipe that names STTran's test boxes contradicts the head
    cfg = TrainConfig(store=str(path), mode="sgdet", head="dsgdetr", sgdet_boxes="raw")
    assert cfg.view_options().pair_pool and cfg.view_options().sgdet_boxes == "raw"
    with pytest.raises(ValueError, match="needs sgdet_boxes: raw"):
        TrainConfig(store=str(path), mode="sgdet", head="dsgdetr").view_options()
    assert TrainConfig(store=str(path), mode="predcls", head="dsgdetr").view_options().pair_pool
    assert not TrainConfig(store=str(path), head="sttran").view_options().pair_pool


def _two_cup_frames():
    """Three frames; frame 1 has two cups, each with a relation."""
    one = dict(gt=[(PERSON_BOX, PERSON), (CUP_BOX, CUP)], rel={1: [0]}, det=DETS[:2])
    two = dict(gt=[(PERSON_BOX, PERSON), (CUP_BOX, CUP), (CUP2_BOX, CUP)], rel={1: [0], 2: [1]},
               det=DETS[:2] + [((250, 150, 298, 200), CUP)])
    return [one, two, one]


@pytest.mark.parametrize("mode", [Mode.PREDCLS, Mode.SGDET])
def test_sequences_and_positions(tmp_path, monkeypatch, mode):
    """Objects: PREDCLS by GT class (position = index), SGDET by the detector's class (position =
    the frame's rank). Relations: by object class over the video, position = index in PREDCLS,
    the rank of the subject box (its frame) in SGDET."""
    path = _store(tmp_path, _two_cup_frames())
    batch = _batch(path, mode, True)
    head = _head(mode).train()
    index, offsets, position = head.object_sequences(batch)
    seqs = [(index[a:b].tolist(), position[a:b].tolist()) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    # boxes: frame 0 (person, cup), frame 1 (person, cup, cup), frame 2 (person, cup)
    want_pos = [0, 1, 2, 3] if mode is Mode.PREDCLS else [0, 1, 1, 2]
    assert sorted(seqs) == [([0, 2, 5], [0, 1, 2]), ([1, 3, 4, 6], want_pos)]
    calls = []
    real = dsg.run_sequences

    def spy(stack, drop, x, idx, offs, pos):
        calls.append((stack, idx.tolist(), offs.tolist(), pos.tolist()))
        return real(stack, drop, x, idx, offs, pos)

    monkeypatch.setattr(dsg, "run_sequences", spy)
    head(batch)
    [(idx, offs, pos)] = [c[1:] for c in calls if c[0] is head.temporal_encoder]
    assert batch.pairs[:, 1].tolist() == [1, 3, 4, 6] and offs == [0, 4] and idx == [0, 1, 2, 3]
    assert pos == ([0, 1, 2, 3] if mode is Mode.PREDCLS else [0, 1, 1, 2])


def test_sgcls_training_embeds_the_predicted_labels(tmp_path):
    path = _store(tmp_path, _two_cup_frames())
    batch = _batch(path, Mode.SGCLS, True)
    head = _head(Mode.SGCLS).train()
    objects, _ = head.objects(batch)
    torch.testing.assert_close(objects.embed_labels, objects.logits[:, 1:].argmax(1) + 1)
    assert torch.equal(objects.labels, batch.box_labels)  # the loss's targets stay the GT


def test_run_sequences_equals_each_sequence_alone():
    torch.manual_seed(0)
    stack = dsg.encoder(8, 2, 16, 2, 0.0).eval()
    x = torch.randn(7, 8)
    index, offsets = torch.tensor([4, 0, 2, 6, 1, 5]), torch.tensor([0, 1, 4, 6])
    position = torch.tensor([0, 0, 1, 2, 0, 0])  # two rows of the last sequence share position 0
    with torch.no_grad():
        out = dsg.run_sequences(stack, torch.nn.Dropout(0.0), x, index, offsets, position)
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            rows = index[a:b]
            alone = stack((x[rows] + dsg.sinusoid(position[a:b], 8))[None])[0]
            torch.testing.assert_close(out[rows], alone, atol=1e-5, rtol=1e-5)
    assert not out[3].any()  # in no sequence


def test_sinusoid_by_hand():
    pe = dsg.sinusoid(torch.tensor([0, 1, 2]), 4)
    want = torch.tensor([[0, 1, 0, 1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
                         [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]])
    torch.testing.assert_close(pe, want.float())


def test_full_size_parameter_count_is_the_codes():
    """lib/sttran.py at SGDET with the 1024x7x7 union map and 2048-d features: object classifier
    84,891,749 (3 object-transformer layers of 27,469,960), relation feature 9,442,896 (subj/obj
    fc 2376 -> 512), 4 relation layers of 22,941,712, heads 50,362."""
    ctx = HeadContext(vocabulary=ACTION_GENOME, mode=Mode.SGDET, feature_dim=2048, union_shape=(1024, 7, 7))
    head = build_model("dsgdetr", {}, None, ctx)
    assert count_parameters(head) == 186_151_855
    assert count_parameters(head.object_classifier) == 84_891_749
    assert count_parameters(head.object_classifier.encoder.layers[0]) == 27_469_960
    assert count_parameters(head.temporal_encoder.layers[0]) == 22_941_712
    # nn.TransformerEncoder copies its layer: the stack starts from one layer's weights, as the code's
    layers = head.temporal_encoder.layers
    assert torch.equal(layers[0].linear1.weight, layers[2].linear1.weight)


@pytest.mark.slow
def test_train_and_validate_sgdet_with_rsnet(tmp_path):
    """One epoch of tiny DSG-DETR + RS-Net in SGDET; validation runs the rebuilding test path."""
    path = write_learnable_store(tmp_path / "learn.h5", n_train=4, n_val=2)
    cfg = TrainConfig(store=str(path), mode="sgdet", head="dsgdetr", head_cfg=TINY_HEADS["dsgdetr"], rsnet=TINY_RSNET,
                      sgdet_boxes="raw", epochs=1, lr=1e-3, videos_per_batch=2, preload=True, device="cpu")
    result = train(cfg, tmp_path / "run", progress=False, echo=lambda s: None)
    row = result["history"][0]
    assert math.isfinite(row["loss_total"]) and 0 <= row["val_R@20"] <= 1


@pytest.mark.parametrize("recipe", ["dsgdetr_sgdet", "dsgdetr_rsnet_sgdet", "demo_dsgdetr", "demo_dsgdetr_rsnet"])
def test_recipes(recipe):
    from stage2_relations.recipe import load_config
    from stage2_relations.train import build_from_config

    cfg = load_config(REPO / "configs" / f"{recipe}.yaml")
    assert cfg.head == "dsgdetr" and cfg.mode == "sgdet" and (cfg.rsnet is not None) == ("rsnet" in recipe)
    options = cfg.view_options()
    assert options.sgdet_boxes == "raw" and options.pair_pool
    if recipe.startswith("demo"):  # the tiny model builds on a store's sizes
        model = build_from_config(cfg, tiny_meta())
        assert 1e4 < count_parameters(model) < 1e6
    else:
        assert cfg.head_cfg == {} and cfg.lr == 1e-5 and cfg.epochs == 10 and cfg.videos_per_batch == 1


# --- RS-Net's extra boxes leave the GT boxes' tracks and tokens (issue 18, item 5) ---------

CUP_DOWN = (150, 260, 200, 310)


@pytest.mark.parametrize("mode", [Mode.SGCLS, Mode.PREDCLS])
def test_rsnet_extra_boxes_leave_the_gt_tracks_and_tokens(tmp_path, mode):
    """SGCLS / PREDCLS training with RS-Net's negatives adds the free detections as boxes. Frame
    0: the GT person and cup at CUP_BOX; frame 1: the cup moved to CUP_DOWN, and a free cup
    detection sits where the cup was. Tracked with the GT boxes (before the fix) that detection
    would take the cup's track (L1 0, GIoU 1) and split the GT cup's sequence; and the BatchNorm
    of the box embedding and of the classifier would normalise over it. Now the GT boxes' sequences,
    refined tokens, logits and BatchNorm running statistics equal those of the same batch without
    the negatives (dropout 0, training mode: BatchNorm on batch statistics), and the extra box is
    normalised with the GT boxes' statistics and sequenced apart."""
    frames = [dict(gt=[(PERSON_BOX, PERSON), (CUP_BOX, CUP)], rel={1: [0]}, det=DETS[:2]),
              dict(gt=[(PERSON_BOX, PERSON), (CUP_DOWN, CUP)], rel={1: [0]},
                   det=[DETS[0], (CUP_DOWN, CUP), (CUP_BOX, CUP)])]
    path = _store(tmp_path, frames)
    with_neg = _batch(path, mode, True, negatives=True)
    without = _batch(path, mode, True)
    gt = torch.nonzero(with_neg.box_is_gt)[:, 0]
    assert (~with_neg.box_is_gt).sum() == 1 and without.box_is_gt.all() and len(gt) == len(without.boxes) == 4
    torch.testing.assert_close(with_neg.boxes[gt], without.boxes)
    head = _head(mode, dropout=0.0).train()

    def sequences(batch, rows):
        index, offsets, position = head.object_sequences(batch)
        return sorted((rows[index[a:b]].tolist(), position[a:b].tolist())
                      for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()))

    extra = int(torch.nonzero(~with_neg.box_is_gt)[0, 0])
    # as GT indices: person (0, 2), cup (1, 3); the extra box (-1) alone at position 0
    want = [([0, 2], [0, 1]), ([1, 3], [0, 1])]
    as_gt = torch.full((len(with_neg.boxes),), -1, dtype=torch.long)
    as_gt[gt] = torch.arange(len(gt))
    assert sequences(with_neg, as_gt) == [([-1], [0])] + want
    assert sequences(without, torch.arange(4)) == want
    clf = head.object_classifier
    bn = clf.pos_embed[0]
    start = bn.running_mean.clone()
    with torch.no_grad():
        tokens_neg = clf.tokens(with_neg, head.extra_boxes(with_neg))
        running_neg = bn.running_mean.clone()
        bn.running_mean.copy_(start)
        refined_neg = clf.refine(tokens_neg, *head.object_sequences(with_neg))
        tokens = clf.tokens(without)
        refined = clf.refine(tokens, *head.object_sequences(without))
        torch.testing.assert_close(tokens_neg[gt], tokens)
        torch.testing.assert_close(refined_neg[gt], refined)
        torch.testing.assert_close(running_neg, bn.running_mean)  # updated from the GT boxes alone
        if mode is Mode.SGCLS:
            logits_neg = clf.classify(refined_neg, head.extra_boxes(with_neg))
            torch.testing.assert_close(logits_neg[gt], clf.classify(refined))
        # the extra box's box embedding: BatchNorm with the GT boxes' batch statistics (the mode
        # the GT boxes are in: no train / test cue), then the same Linear and ReLU
        cs = center_size(with_neg.boxes)
        ref = cs[gt]
        norm = (cs[extra] - ref.mean(0)) / torch.sqrt(ref.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(tokens_neg[extra, -clf.pos_embed[1].out_features:],
                                   clf.pos_embed[2](clf.pos_embed[1](norm)))
        # its own sequence (the only extra box): refined alone at position 0
        alone = clf.encoder((clf.drop(tokens_neg[extra] + dsg.sinusoid(torch.zeros(1, dtype=torch.long), clf.dim)))[None])
        torch.testing.assert_close(refined_neg[extra], alone[0, 0])
        head.encode(with_neg)  # the whole head runs on it


def test_detector_rule_scores_sgdet_boxes_with_the_detectors_distribution(tmp_path):
    """``object_scores: detector``: DSG-DETR scores STTran's test boxes with the detector's
    distribution, as STTran and STKET do, instead of re-scoring the raw detections with its
    classifier (whose logits call d1 the person). The detector calls d0 the person, d1 a
    cup, d2 a bag: STTran's test boxes, subject d0."""
    from common.errors import ConfigError
    from stage2_relations.evaluate_checkpoint import eval_view_options

    path = _store(tmp_path, [dict(gt=[(PERSON_BOX, PERSON), (CUP_BOX, CUP)], rel={1: [0]}, det=DETS)])
    cfg = TrainConfig(store=str(path), mode="sgdet", head="dsgdetr", sgdet_boxes="raw")
    options = eval_view_options(cfg, Mode.SGDET, object_scores="detector")
    assert options.sgdet_boxes == "sttran" and options.object_scores == "detector" and not options.negatives
    assert eval_view_options(cfg, Mode.SGDET).sgdet_boxes == "raw"  # the code's rule: the raw detections
    with pytest.raises(ConfigError, match="SGDET rule"):
        eval_view_options(cfg, Mode.SGCLS, object_scores="detector")
    with pytest.raises(ConfigError, match="SGDET rule"):
        TrainConfig(store=str(path), mode="sgcls", head="sttran", object_scores="detector").view_options()
    # a recipe may name the rule: every head then takes STTran's boxes, DSG-DETR's pool kept
    rule_cfg = TrainConfig(store=str(path), mode="sgdet", head="dsgdetr", object_scores="detector")
    assert rule_cfg.view_options().sgdet_boxes == "sttran" and rule_cfg.view_options().pair_pool

    batch = Collator.of(ds := VideoDataset(str(path), "train", Mode.SGDET, train=False, options=options))([ds[0]])
    # STTran's test boxes in class order: d0 (person, the subject), d2 (bag), d1 (cup)
    assert batch.box_labels.tolist() == [PERSON, BAG, CUP]
    torch.testing.assert_close(batch.boxes, torch.tensor([DETS[i][0] for i in (0, 2, 1)], dtype=torch.float32))
    out = _run_with_logits(batch, _hand_logits())
    assert out.batch is None  # no rebuilt boxes: the view's pairs (subject d0)
    assert torch.equal(out.object_labels, batch.box_labels) and torch.equal(out.object_scores, batch.box_scores)
    assert batch.pairs[:, 0].tolist() == [0, 0] and out.attention_logits.shape == (2, 3)
