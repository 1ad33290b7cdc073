"""Stage-2 heads: every registered head with and without RS-Net (tiny dims), the losses by hand."""

from __future__ import annotations

import math

import pytest
import torch

from stage2_relations.data import VideoDataset, collate
from stage2_relations.heads import HEADS, RSNet, build_model, count_parameters
from stage2_relations.heads.losses import focal_loss, multilabel_margin_loss
from store.vocabulary import ACTION_GENOME, Mode
from tests.stage2_fixtures import one_thread, TINY_HEAD, TINY_RSNET, tiny_meta, write_random_store


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return write_random_store(tmp_path_factory.mktemp("s2heads") / "tiny.h5", n=6)


def _model(name, mode, rsnet, **rs):
    meta = tiny_meta()
    return build_model(name, TINY_HEAD, None if not rsnet else {**TINY_RSNET, **rs}, vocabulary=meta.vocabulary,
                       mode=mode, feature_dim=meta.feature_dim, union_shape=meta.union_shape)


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("rsnet", [False, True])
@pytest.mark.parametrize("mode", [Mode.PREDCLS, Mode.SGCLS, Mode.SGDET])
def test_head_shapes_losses_gradients(store_path, name, rsnet, mode):
    torch.manual_seed(0)
    ds = VideoDataset(str(store_path), "train", mode, train=True)
    batch = collate([ds[0], ds[3]], mode, True)
    model = _model(name, mode, rsnet)
    out = model(batch)
    m, n = batch.num_pairs, batch.boxes.shape[0]
    assert out.attention_logits.shape == (m, 3) and out.spatial_logits.shape == (m, 6)
    assert out.contacting_logits.shape == (m, 17)
    assert out.object_labels.shape == (n,) and out.object_scores.shape == (n,)
    assert (out.object_logits is None) == (mode is Mode.PREDCLS)
    if rsnet:
        assert out.pair_logits.shape == (m, 2) and out.pair_scores.shape == (m,)
        assert ((out.pair_scores >= 0) & (out.pair_scores <= 1)).all()
    losses = model.loss(out, batch)
    assert set(losses) >= {"attention", "spatial", "contacting"} | ({"relation_score"} if rsnet else set())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [k for k, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, missing
    # every parameter tensor moves: a nonzero gradient somewhere in it
    zero = [k for k, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


@pytest.mark.parametrize("token", ["learnable", "mean", "none"])
@pytest.mark.parametrize("fusion", [True, False])
def test_rsnet_ablations(store_path, token, fusion):
    ds = VideoDataset(str(store_path), "train", Mode.PREDCLS, train=True)
    batch = collate([ds[0], ds[1]], Mode.PREDCLS, True)
    model = _model("sttran", Mode.PREDCLS, True, temporal_token=token, context_fusion=fusion)
    out = model(batch)
    assert out.pair_scores.shape == (batch.num_pairs,)
    assert hasattr(model, "fusion") == (fusion and token != "none")
    assert hasattr(model, "temporal_encoder") == (token != "none")
    sum(model.loss(out, batch).values()).backward()


def test_rsnet_context_fusion_equals_linear_on_concatenation(store_path):
    """The fused heads are W [r, c] + b: the head's classifier plus a map of the video token."""
    ds = VideoDataset(str(store_path), "train", Mode.PREDCLS, train=True)
    batch = collate([ds[0]], Mode.PREDCLS, True)
    model = _model("sttran", Mode.PREDCLS, True).eval()
    out = model(batch)
    f = model.head.encode(batch)
    _, ctx = model.context(f.pair_input, batch)
    w = torch.cat([model.head.attention_head.weight, model.fusion[0].weight], 1)
    want = torch.cat([f.relation, ctx], 1) @ w.T + model.head.attention_head.bias
    torch.testing.assert_close(out.attention_logits, want)


def test_head_is_unchanged_inside_rsnet(store_path):
    """RS-Net leaves the head's own forward alone: same weights, same outputs without fusion."""
    ds = VideoDataset(str(store_path), "train", Mode.PREDCLS, train=False)
    batch = collate([ds[0]], Mode.PREDCLS, False)
    torch.manual_seed(0)
    model = _model("sttran", Mode.PREDCLS, True, context_fusion=False).eval()
    torch.testing.assert_close(model(batch).attention_logits, model.head(batch).attention_logits)


def test_multilabel_margin_loss_by_hand():
    s = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    # row 0: pos 0 vs neg 1, 2: (1 - .9 + .2) + (1 - .9 + .6) = 0.3 + 0.7 = 1.0, / 3
    # row 1: pos 1, 2 vs neg 0: (1 - .8 + .1) + (1 - .3 + .1) = 0.3 + 0.8 = 1.1, / 3
    want = (1.0 / 3 + 1.1 / 3) / 2
    torch.testing.assert_close(multilabel_margin_loss(s, t), torch.tensor(want))
    idx = torch.tensor([[0, -1, -1], [1, 2, -1]])
    torch.testing.assert_close(multilabel_margin_loss(s, t), torch.nn.functional.multilabel_margin_loss(s, idx))
    assert multilabel_margin_loss(s[:0], t[:0]).item() == 0


def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positive = torch.tensor([True, True, False])
    p0 = [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1)), 0.5]
    alpha, gamma = (0.25, 0.75), 2.0
    terms = [-0.25 * (1 - p0[0]) ** 2 * math.log(p0[0]),
             -0.25 * (1 - p0[1]) ** 2 * math.log(p0[1]),
             -0.75 * (1 - 0.5) ** 2 * math.log(0.5)]
    got = focal_loss(logits, positive, alpha=alpha, gamma=gamma)
    torch.testing.assert_close(got, torch.tensor(sum(terms) / 3))
    # gamma 0, alpha 1: plain cross-entropy with class 0 = positive
    ce = torch.nn.functional.cross_entropy(logits, (~positive).long())
    torch.testing.assert_close(focal_loss(logits, positive, alpha=(1.0, 1.0), gamma=0.0), ce)


def test_rsnet_adds_about_32m_to_full_size_sttran():
    head = build_model("sttran", {}, None, vocabulary=ACTION_GENOME, mode=Mode.SGDET, feature_dim=2048,
                       union_shape=(1024, 7, 7))
    n_head = count_parameters(head)
    added = count_parameters(RSNet(head)) - n_head
    assert 31e6 < added < 34e6, added


def test_glove_embeddings_initialise_both_tables(tmp_path):
    from stage2_relations.heads.sttran import glove_embeddings

    p = tmp_path / "glove.txt"
    p.write_text("person 1 0 0 0\ncup 0 1 0 0\nlight 0 0 1 0\nnot_used 9 9 9 9\nbad 1 2\n")
    emb = glove_embeddings(p, ACTION_GENOME, 4)
    assert emb.shape == (ACTION_GENOME.num_objects, 4)
    torch.testing.assert_close(emb[ACTION_GENOME.object_index("person")], torch.tensor([1.0, 0, 0, 0]))
    torch.testing.assert_close(emb[ACTION_GENOME.object_index("cup")], torch.tensor([0.0, 1, 0, 0]))
    meta = tiny_meta()
    head = build_model("sttran", {**TINY_HEAD, "embed_dim": 4}, None, vocabulary=meta.vocabulary, mode=Mode.SGCLS,
                       feature_dim=16, union_shape=(8,), class_embeddings=emb)
    for table in (head.subj_embed, head.obj_embed, head.class_embed):
        torch.testing.assert_close(table.weight.detach(), emb)
        assert table.weight.requires_grad


@pytest.mark.parametrize("rsnet", [False, True])
def test_consecutive_frames_without_pairs_stay_finite(rsnet):
    """Frames 1 and 2 have no pair in training (no relation, so no negative either): STTran's
    window (1, 2) is empty (attention over only padding gives NaN rows in torch), and the
    outputs and gradients must stay finite."""
    from store.testing import synthetic_video

    meta = tiny_meta()
    rec = synthetic_video(meta, "a.mp4", seed=3, num_frames=5, empty_relation_frames=(1, 2))
    ds = VideoDataset.__new__(VideoDataset)
    ds.mode, ds.train, ds.seed, ds.epoch = Mode.PREDCLS, True, 0, 0
    ds.negative_ratio, ds.negative_iou, ds.vocabulary = 1.2, 0.5, meta.vocabulary
    batch = collate([ds.build(rec)], Mode.PREDCLS, True)
    assert batch.pair_offsets.diff().tolist()[1:3] == [0, 0]
    model = _model("sttran", Mode.PREDCLS, rsnet)
    out = model(batch)
    assert torch.isfinite(out.attention_logits).all()
    sum(model.loss(out, batch).values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
