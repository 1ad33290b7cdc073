"""Stage-2 heads: every registered head with and without RS-Net (tiny dims), the losses by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rules.modes import Mode
from stage2_relations.data import Collator, VideoDataset
from stage2_relations.heads import HEADS, HeadContext, RSNet, build_model, count_parameters, head_class
from stage2_relations.heads.losses import focal_loss, multilabel_margin_loss
from stage2_relations.heads.objects import object_loss, predict_objects, sgcls_test_objects
from stage2_relations.view_options import ViewOptions
from store import StoreWriter
from store.vocabulary import ACTION_GENOME
from tests.helpers.stage2 import TINY_HEAD, TINY_HEADS, TINY_RSNET, one_thread, tiny_meta, write_random_store

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return write_random_store(tmp_path_factory.mktemp("s2heads") / "tiny.h5", n=6)


def _context(mode, **derived):
    meta = tiny_meta()
    return HeadContext(vocabulary=meta.vocabulary, mode=Mode(mode), feature_dim=meta.feature_dim,
                       union_shape=meta.union_shape, derived=derived)


def _model(name, mode, rsnet, head_cfg=None, store_path=None, **rs):
    """A tiny head (``TINY_HEADS``), with what it derives from the training split of ``store_path``."""
    if head_cfg is None:
        assert name in TINY_HEADS, f"add tiny keyword arguments for head {name!r} to TINY_HEADS (tests/helpers/stage2.py)"
        head_cfg = TINY_HEADS[name]
    derived = {}
    if store_path is not None:
        derived = head_class(name).derive(dict(head_cfg), VideoDataset(str(store_path), "train", mode, train=True))
    return build_model(name, head_cfg, None if not rsnet else {**TINY_RSNET, **rs}, _context(mode, **derived))


def _batch(store_path, mode, train, videos=(0, 3), **options):
    ds = VideoDataset(str(store_path), "train", mode, train=train, options=ViewOptions(**options))
    return Collator.of(ds)([ds[i] for i in videos])


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("rsnet", [False, True])
@pytest.mark.parametrize("mode", [Mode.PREDCLS, Mode.SGCLS, Mode.SGDET])
def test_head_shapes_losses_gradients(store_path, name, rsnet, mode):
    torch.manual_seed(0)
    batch = _batch(store_path, mode, True, negatives=rsnet, **head_class(name).required_view_options())
    model = _model(name, mode, rsnet, store_path=store_path)
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


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("rsnet", [False, True])
@pytest.mark.parametrize("mode", [Mode.PREDCLS, Mode.SGCLS, Mode.SGDET])
@pytest.mark.parametrize("object_scores", ["sttran", "classifier"])
def test_head_test_views(store_path, name, rsnet, mode, object_scores):
    """At test time a head scores the view's pairs, or the subset it keeps (output.batch)."""
    batch = _batch(store_path, mode, False, object_scores=object_scores, **head_class(name).required_view_options())
    model = _model(name, mode, rsnet, store_path=store_path).eval()
    with torch.no_grad():
        out = model(batch)
    keeps = mode is Mode.SGCLS and object_scores == "sttran"
    # a head with a pair pool (DSG-DETR) rebuilds the SGDET test boxes and pairs from its own scores
    rebuilds = mode is Mode.SGDET and object_scores == "sttran" and head_class(name).needs_pair_pool
    assert (out.batch is not None) == (keeps or rebuilds)
    m = batch.num_pairs if out.batch is None else out.batch.num_pairs
    n = batch.boxes.shape[0] if out.batch is None else out.batch.boxes.shape[0]
    assert out.attention_logits.shape == (m, 3) and out.object_labels.shape == (n,)
    if rsnet:
        assert out.pair_scores.shape == (m,)
    if rebuilds:  # each frame: one subject (person), paired with every other rebuilt box
        b = out.batch
        assert (out.object_labels[b.pairs[:, 0]] == 1).all() and (out.object_labels[b.pairs[:, 1]] != 1).all()
        assert torch.equal(b.pair_offsets.diff(), (b.box_offsets.diff() - 1).clamp(min=0))
    elif mode is Mode.SGDET and object_scores == "sttran":  # the detector's test labels, no classifier
        assert out.object_logits is None and torch.equal(out.object_labels, batch.box_labels)
        assert torch.equal(out.object_scores, batch.box_scores)
    if keeps:  # each frame: pairs of one subject, never an object labelled person
        kept = out.batch.pairs
        assert out.batch.num_pairs < batch.num_pairs
        assert (out.object_labels[kept[:, 1]] != 1).all() and (out.object_labels[kept[:, 0]] == 1).all()


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("rsnet", [False, True])
def test_detector_rule_is_one_rule_for_every_head(store_path, name, rsnet):
    """``object_scores: detector`` (SGDET test): every head scores STTran's test boxes with the
    detector's labels and scores, no rebuilt boxes; for a head that follows the protocol's table
    (no re-scoring of its own) the output is exactly its ``sttran`` output."""
    required = head_class(name).required_view_options("detector")
    assert required["sgdet_boxes"] == "sttran"
    batch = _batch(store_path, Mode.SGDET, False, object_scores="detector", **required)
    model = _model(name, Mode.SGDET, rsnet, store_path=store_path).eval()
    with torch.no_grad():
        out = model(batch)
        assert out.batch is None
        assert torch.equal(out.object_labels, batch.box_labels) and torch.equal(out.object_scores, batch.box_scores)
        if not head_class(name).needs_pair_pool:
            same = model(_batch(store_path, Mode.SGDET, False, object_scores="sttran", **required))
            for field in ("attention_logits", "spatial_logits", "contacting_logits", "pair_scores"):
                a, b = getattr(out, field), getattr(same, field)
                assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("token", ["learnable", "mean", "none"])
@pytest.mark.parametrize("fusion", [True, False])
def test_rsnet_ablations(store_path, token, fusion):
    batch = _batch(store_path, Mode.PREDCLS, True, videos=(0, 1), negatives=True)
    if token == "none" and fusion:
        with pytest.raises(ValueError, match="context_fusion"):
            _model("sttran", Mode.PREDCLS, True, temporal_token=token, context_fusion=fusion)
        return
    model = _model("sttran", Mode.PREDCLS, True, temporal_token=token, context_fusion=fusion)
    out = model(batch)
    assert out.pair_scores.shape == (batch.num_pairs,)
    assert hasattr(model, "fusion") == fusion
    assert hasattr(model, "temporal_encoder") == (token == "learnable")
    sum(model.loss(out, batch).values()).backward()


def test_rsnet_mean_token_is_the_mean_of_frame_tokens(store_path):
    """Table 4's ĉ_mean: the mean of the frames' spatial context tokens, no temporal encoder."""
    batch = _batch(store_path, Mode.PREDCLS, False, videos=(0, 2))
    model = _model("sttran", Mode.PREDCLS, True, temporal_token="mean").eval()
    with torch.no_grad():
        f = model.head.encode(batch)
        _, ctx = model.context(f.pair_input, f.batch)
        # the frame tokens, one frame at a time
        x = model.input_proj(f.pair_input)
        tokens = []
        for i in range(batch.num_frames):
            seq = torch.cat([model.frame_token[None], x[batch.pair_offsets[i]:batch.pair_offsets[i + 1]]])[None]
            tokens.append(model.spatial_encoder(seq)[0, 0])
        tokens = torch.stack(tokens)
    vo = batch.video_frame_offsets.tolist()
    for p in (0, batch.num_pairs - 1):
        v = int(batch.pair_video[p])
        torch.testing.assert_close(ctx[p], tokens[vo[v]:vo[v + 1]].mean(0), atol=1e-5, rtol=1e-4)


def test_rsnet_context_fusion_equals_linear_on_concatenation(store_path):
    """The fused heads are W [r, c] + b: the head's classifier plus a map of the video token."""
    batch = _batch(store_path, Mode.PREDCLS, True, videos=(0,), negatives=True)
    model = _model("sttran", Mode.PREDCLS, True).eval()
    out = model(batch)
    f = model.head.encode(batch)
    _, ctx = model.context(f.pair_input, f.batch)
    w = torch.cat([model.head.attention_head.weight, model.fusion[0].weight], 1)
    want = torch.cat([f.relation, ctx], 1) @ w.T + model.head.attention_head.bias
    torch.testing.assert_close(out.attention_logits, want)


def test_head_is_unchanged_inside_rsnet(store_path):
    """RS-Net leaves the head's own forward alone: same weights, same outputs without fusion."""
    batch = _batch(store_path, Mode.PREDCLS, False, videos=(0,))
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
    ctx = HeadContext(vocabulary=ACTION_GENOME, mode=Mode.SGDET, feature_dim=2048, union_shape=(1024, 7, 7))
    head = build_model("sttran", {}, None, ctx)
    # STTran's own SGDET model with the union map: 103,398,359 parameters (lib/sttran.py, counted by hand)
    assert count_parameters(head) == 103_398_359
    n_head = count_parameters(head)
    added = count_parameters(RSNet(head)) - n_head
    assert 31e6 < added < 34e6, added


def test_glove_embeddings_initialise_every_table(tmp_path):
    from stage2_relations.heads.embeddings import glove_embeddings

    p = tmp_path / "glove.txt"
    p.write_text("person 1 0 0 0\ncup 0 1 0 0\nglass 5 5 5 5\nlight 0 0 1 0\nnot_used 9 9 9 9\nbad 1 2\n")
    emb = glove_embeddings(p, ACTION_GENOME, 4)
    assert emb.shape == (ACTION_GENOME.num_objects, 4)
    torch.testing.assert_close(emb[ACTION_GENOME.object_index("person")], torch.tensor([1.0, 0, 0, 0]))
    # cup/glass/bottle takes the word before the first "/" (STTran's obj_edge_vectors), not a mean
    torch.testing.assert_close(emb[ACTION_GENOME.object_index("cup")], torch.tensor([0.0, 1, 0, 0]))
    # classes the file lacks, the background among them, keep N(0, 1) draws
    missing = [i for i, n in enumerate(ACTION_GENOME.objects) if n.split("/")[0] not in ("person", "cup", "light")]
    assert 0.6 < emb[missing].std() < 1.4
    head = build_model("sttran", {**TINY_HEAD, "embed_dim": 4}, None, _context(Mode.SGCLS, class_embeddings=emb))
    for table in (head.subj_embed, head.obj_embed):
        torch.testing.assert_close(table.weight.detach(), emb)
        assert table.weight.requires_grad
    # the object classifier's table covers the 36 object classes (STTran's obj_classes[1:])
    torch.testing.assert_close(head.object_classifier.obj_embed.weight.detach(), emb[1:])


@pytest.mark.parametrize("rsnet", [False, True])
def test_consecutive_frames_without_pairs_stay_finite(rsnet, tmp_path):
    """Frames 1 and 2 have no pair in training (no relation, so no negative either): STTran's
    window (1, 2) is empty (attention over only padding gives NaN rows in torch), and the
    outputs and gradients must stay finite."""
    from store.testing import synthetic_video

    meta = tiny_meta()
    with StoreWriter(tmp_path / "s.h5", meta) as w:
        w.write_video(synthetic_video(meta, "a.mp4", seed=3, num_frames=5, empty_relation_frames=(1, 2)))
    batch = _batch(tmp_path / "s.h5", Mode.PREDCLS, True, videos=(0,))
    assert batch.pair_offsets.diff().tolist()[1:3] == [0, 0]
    model = _model("sttran", Mode.PREDCLS, rsnet)
    out = model(batch)
    assert torch.isfinite(out.attention_logits).all()
    sum(model.loss(out, batch).values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sttran_transformer_details():
    """As lib/transformer.py: the temporal decoder layers have no LayerNorm after the FFN, the
    spatial encoder's do; the 2-slot frame embedding starts uniform in [0, 1)."""
    torch.manual_seed(0)
    head = _model("sttran", Mode.SGDET, False)
    assert all(isinstance(layer.norm2, torch.nn.Identity) for layer in head.temporal_decoder.layers)
    assert all(isinstance(layer.norm2, torch.nn.LayerNorm) for layer in head.spatial_encoder.layers)
    w = head.frame_embed.weight
    assert (w >= 0).all() and (w < 1).all() and w.mean() > 0.3
    # the layers of a stack start as copies of one (STTran's _get_clones)
    first = head.temporal_decoder.layers[0].state_dict()
    for layer in head.temporal_decoder.layers[1:]:
        for k, t in layer.state_dict().items():
            torch.testing.assert_close(t, first[k])
    # the object classifier: BatchNorm on the box, BatchNorm in the decoder, as STTran's
    kinds = [type(m).__name__ for m in head.object_classifier.modules()]
    assert kinds.count("BatchNorm1d") == 2 and "Dropout" in kinds


def _objects_batch(labels, box_frame, pairs, mode=Mode.SGCLS, train=False, object_scores="sttran", is_gt=None):
    """A minimal RelationBatch for the object rules: only boxes, labels and pairs matter."""
    n, m = len(labels), len(pairs)
    frames = int(max(box_frame)) + 1
    box_frame = torch.tensor(box_frame)
    pairs = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    counts = torch.bincount(box_frame, minlength=frames)
    pair_frame = box_frame[pairs[:, 0]]
    from stage2_relations.data import RelationBatch

    return RelationBatch(
        video_names=("v",), frame_names=tuple(str(i) for i in range(frames)), mode=mode, train=train,
        object_scores=object_scores, video_frame_offsets=torch.tensor([0, frames]),
        frame_sizes=torch.full((frames, 2), 100), box_offsets=torch.cat([torch.zeros(1, dtype=torch.long),
                                                                          counts.cumsum(0)]),
        box_frame=box_frame, boxes=torch.zeros(n, 4), box_labels=torch.tensor(labels),
        box_embed_labels=torch.tensor(labels), box_scores=torch.full((n,), 0.7),
        box_is_gt=torch.ones(n, dtype=torch.bool) if is_gt is None else torch.tensor(is_gt),
        features=torch.zeros(n, 16), dists=torch.full((n, 37), 1 / 37),
        pair_offsets=torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(pair_frame, minlength=frames).cumsum(0)]),
        pair_frame=pair_frame, pairs=pairs, union=torch.zeros(m, 8), union_substituted=torch.zeros(m, dtype=torch.bool),
        masks=torch.zeros(m, 2, 27, 27), pair_positive=torch.ones(m, dtype=torch.bool),
        attention_labels=torch.zeros(m, dtype=torch.long), spatial_labels=torch.zeros(m, 6),
        contacting_labels=torch.zeros(m, 17))


def test_sgcls_test_rule_by_hand():
    """One frame of four GT boxes, foreground distributions (person first):
    b0 person 0.2 / cup 0.7; b1 person 0.9; b2 cup 0.6 / book 0.3; b3 cup 0.5 / person 0.4.
    Every box takes its best non-person class (cup, ..., cup, cup); the subject is b1 (0.9);
    cup is then the most frequent label: b0 (0.7) keeps it, b2 and b3 lose it: b2 becomes a
    book (0.3), b3 a person (0.4), so b3 leaves the pairs. Pairs kept: (b1, b0), (b1, b2)."""
    c = 36
    dist = torch.full((4, c), 0.0)
    cup, book = 11 - 1, 5 - 1  # foreground columns of classes 11 and 5
    dist[0, 0], dist[0, cup] = 0.2, 0.7
    dist[1, 0], dist[1, 3] = 0.9, 0.05
    dist[2, cup], dist[2, book] = 0.6, 0.3
    dist[3, cup], dist[3, 0] = 0.5, 0.4
    pairs = [(s, o) for s in range(4) for o in range(4) if s != o]
    batch = _objects_batch([1, 11, 11, 11], [0, 0, 0, 0], pairs)
    labels, scores, keep = sgcls_test_objects(dist, batch, person=ACTION_GENOME.person_index)
    assert labels.tolist() == [11, 1, 5, 1]
    torch.testing.assert_close(scores, torch.tensor([0.7, 0.9, 0.3, 0.4]))
    assert [pairs[i] for i in keep.tolist()] == [(1, 0), (1, 2)]
    # The same frame where the person is class 5 and the book class 1 (columns 4 and 0 trade
    # places): the labels map, scores and pairs stay (with the literal person 1 they would not).
    swap = torch.arange(c)
    swap[[0, book]] = swap[[book, 0]]
    labels, scores, keep = sgcls_test_objects(dist[:, swap], batch, person=5)
    assert labels.tolist() == [11, 5, 1, 5]
    torch.testing.assert_close(scores, torch.tensor([0.7, 0.9, 0.3, 0.4]))
    assert [pairs[i] for i in keep.tolist()] == [(1, 0), (1, 2)]


def test_object_rules_per_mode_and_view():
    torch.manual_seed(0)
    head = _model("sttran", Mode.SGDET, False).eval()
    b = _objects_batch([1, 11, 5], [0, 0, 0], [(0, 1), (0, 2)], mode=Mode.SGDET)
    o = predict_objects(head.object_classifier, b, person=ACTION_GENOME.person_index)
    assert o.logits is None and o.labels.tolist() == [1, 11, 5] and o.pair_index is None  # the detector's
    c = predict_objects(head.object_classifier, _objects_batch([1, 11, 5], [0, 0, 0], [(0, 1)], mode=Mode.SGDET,
                                                               object_scores="classifier"),
                        person=ACTION_GENOME.person_index)
    prob = c.logits.softmax(-1)
    torch.testing.assert_close(c.scores, prob[:, 1:].max(-1).values)  # background stays in the softmax
    assert torch.equal(c.labels, prob[:, 1:].argmax(-1) + 1)
    # training: the given (GT / assigned) labels feed the embeddings; object loss on the mode's targets
    t = _objects_batch([1, 11, 0], [0, 0, 0], [(0, 1)], mode=Mode.SGDET, train=True)
    head.train()
    o = predict_objects(head.object_classifier, t, person=ACTION_GENOME.person_index)
    assert o.embed_labels.tolist() == [1, 11, 0]
    torch.testing.assert_close(object_loss(o.logits, t), torch.nn.functional.cross_entropy(o.logits, t.box_labels))
    s = _objects_batch([1, 11, 2], [0, 0, 0], [(0, 1)], mode=Mode.SGCLS, train=True, is_gt=[True, True, False])
    o = predict_objects(head.object_classifier, s, person=ACTION_GENOME.person_index)
    torch.testing.assert_close(object_loss(o.logits, s),
                               torch.nn.functional.cross_entropy(o.logits[:2], s.box_labels[:2]))
