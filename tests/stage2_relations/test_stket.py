"""STKET: priors counted by hand, knowledge-embedded attention, the class-keyed history, the
contact sets, the loss terms, the full-size parameter count, and a run whose checkpoint is
evaluated on a store without its training split. (The registry tests in test_heads.py
cover STKET x RS-Net x every mode.)"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from rules.modes import Mode
from stage2_relations.data import Collator, VideoDataset
from stage2_relations.heads import HeadContext, build_head, build_model, count_parameters, head_class
from stage2_relations.heads.stket import (
    LOSS_BRANCHES,
    STKET,
    KnowledgeLayer,
    class_history,
    contact_sets,
    with_output_branch,
)
from stage2_relations.heads.stket_priors import INITIAL_KEY, SPECIFIC_KEY, count_priors, priors_json
from stage2_relations.view_options import ViewOptions
from store import StoreWriter, open_store
from store.vocabulary import ACTION_GENOME as V
from tests.helpers import REPO
from tests.helpers.stage2 import (
    TINY_HEADS,
    handmade_video,
    one_thread,
    tiny_meta,
    write_learnable_store,
    write_random_store,
)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

P = V.predicate_index
CUP, BOOK, PERSON = V.object_index("cup"), V.object_index("book"), V.person_index
C0 = P("carrying")  # first contacting predicate
NC = P("not_contacting") - C0  # local contact ids
HOLDING, TOUCHING = P("holding") - C0, P("touching") - C0
TINY = TINY_HEADS["stket"]

BOX_P, BOX_A, BOX_B = (0, 0, 100, 200), (50, 50, 80, 80), (120, 40, 160, 90)


def _frame(objects, small=None):
    """A frame: the person, then (label, predicates or None) objects; None: no relation row."""
    gt = [(BOX_P, PERSON)] + [((BOX_A if i % 2 == 0 else BOX_B), lab) for i, (lab, _) in enumerate(objects)]
    rel = {i + 1: preds for i, (_, preds) in enumerate(objects) if preds is not None}
    return {"gt": gt, "rel": rel, "small": [0] + (small or [0] * len(objects))}


def _hand_store(path):
    meta = tiny_meta()
    la, nla, un = P("looking_at"), P("not_looking_at"), P("unsure")
    front, behind, side = P("in_front_of"), P("behind"), P("on_the_side_of")
    hold, nc, touch = P("holding"), P("not_contacting"), P("touching")
    a = [  # video A (train); cup rows r0..r3, r1 is a second cup in frame 0 and a small object
        _frame([(CUP, [la, front, hold]), (CUP, [nla, side, nc])], small=[0, 1]),
        _frame([(CUP, [la, front, hold])]),
        _frame([(CUP, [un, front, touch]), (BOOK, [un, side, nc])]),
    ]
    b = [  # video B (train); cup rows r0, r1; a book without any relation row
        _frame([(CUP, [la, front, hold])]),
        _frame([(CUP, [la, behind, hold]), (BOOK, None)]),
    ]
    other = [_frame([(CUP, [un, side, touch])]), _frame([(CUP, [un, side, touch])])]
    with StoreWriter(path, meta) as w:
        w.write_video(handmade_video(meta, a, name="a.mp4", split="train"))
        w.write_video(handmade_video(meta, b, name="b.mp4", split="train"))
        w.write_video(handmade_video(meta, other, name="v.mp4", split="val"))
        w.write_video(handmade_video(meta, other, name="t.mp4", split="test"))
    return path


def _row(**weights):
    x = torch.zeros(V.num_predicates)
    for name, value in weights.items():
        x[P(name)] = value
    return x


def test_priors_counted_by_hand(tmp_path):
    path = _hand_store(tmp_path / "hand.h5")
    # the training mode does not matter: the full GT set (the small cup too), train videos only
    ds = VideoDataset(str(path), "train", Mode.SGDET, train=True)
    derived = STKET.derive({}, ds)
    initial, specific = derived[INITIAL_KEY], derived[SPECIFIC_KEY]
    assert initial.shape == (V.num_objects, V.num_predicates)
    assert specific.shape == (V.num_objects, 17, V.num_predicates)
    # cup rows: A r0 {la, front, hold}, r1 {nla, side, nc} (same frame), r2 {la, front, hold},
    # r3 {unsure, front, touch}; B r0 {la, front, hold}, r1 {la, behind, hold}: 6 rows
    want_cup = _row(looking_at=4 / 6, not_looking_at=1 / 6, unsure=1 / 6, in_front_of=4 / 6, on_the_side_of=1 / 6,
                    behind=1 / 6, holding=4 / 6, not_contacting=1 / 6, touching=1 / 6)
    torch.testing.assert_close(initial[CUP], want_cup)
    # book rows: A {unsure, side, nc}; B a zero row (no relation row)
    torch.testing.assert_close(initial[BOOK], _row(unsure=0.5, on_the_side_of=0.5, not_contacting=0.5))
    assert not initial[PERSON].any() and not initial[0].any()
    # specific[cup, holding]: A's holding rows before its last are r0 and r2, followed by r1
    # (the other cup of the same frame) and r3: mean_A = (r1 + r3) / 2; B: r0 -> r1, mean_B = r1;
    # then the mean of the two videos (not of the three followers)
    want_hold = (0.5 * (_row(not_looking_at=1, on_the_side_of=1, not_contacting=1)
                        + _row(unsure=1, in_front_of=1, touching=1)) + _row(looking_at=1, behind=1, holding=1)) / 2
    torch.testing.assert_close(specific[CUP, HOLDING], want_hold)
    # specific[cup, not_contacting]: A r1 -> r2 only
    torch.testing.assert_close(specific[CUP, NC], _row(looking_at=1, in_front_of=1, holding=1))
    # touching only in A's last row, and a book never has a follower: zero rows
    assert not specific[CUP, TOUCHING].any() and not specific[BOOK].any()
    # the JSON layout lists touching among the cup's contacts, with its zero row
    js = priors_json(count_priors([open_store(path).read_video(v) for v in ("a.mp4", "b.mp4")], V), V)
    assert set(js) == {str(CUP), str(BOOK)} and js[str(CUP)]["c_rel_idx"] == sorted([HOLDING, NC, TOUCHING])
    assert js[str(CUP)]["specific_prior"][js[str(CUP)]["c_rel_idx"].index(TOUCHING)] == [0.0] * V.num_predicates


def test_priors_cli(tmp_path, capsys):
    from stage2_relations.heads.stket_priors import main

    path = _hand_store(tmp_path / "hand.h5")
    main(["--store", str(path), "--out", str(tmp_path / "p.json")])
    import json

    data = json.loads((tmp_path / "p.json").read_text())
    assert data[str(CUP)]["obj_cls_name"] == "cup" and len(data[str(CUP)]["initial_prior"]) == V.num_predicates
    assert "2 classes" in capsys.readouterr().out


def test_priors_from_stkets_json_layout(tmp_path):
    """``prior_file``: priors loaded from a file in STKET's ``TrainPrior.json`` layout, filled as
    its ``lib/transformer.py`` does: initial rows by class key, specific rows by ``c_rel_idx``
    (local contact ids), zeros elsewhere. Names are STKET's (STTran's renamed classes)."""
    import json

    from common.errors import FileError
    from stage2_relations.heads.stket_priors import load_priors_json

    cup_init = [0.0] * V.num_predicates
    cup_init[P("looking_at")], cup_init[P("holding")], cup_init[P("not_contacting")] = 0.75, 0.5, 0.5
    hold_row, nc_row = [0.0] * V.num_predicates, [0.0] * V.num_predicates
    hold_row[P("holding")], nc_row[P("touching")] = 1.0, 0.25
    data = {str(CUP): {"obj_cls_name": "cup/glass/bottle", "c_rel_name": ["holding", "not_contacting"],
                       "c_rel_idx": [HOLDING, NC], "initial_prior": cup_init, "specific_prior": [hold_row, nc_row]}}
    path = tmp_path / "TrainPrior.json"
    path.write_text(json.dumps(data))
    got = load_priors_json(path, V)
    initial, specific = got[INITIAL_KEY], got[SPECIFIC_KEY]
    assert initial.shape == (V.num_objects, V.num_predicates) and specific.shape == (V.num_objects, 17, V.num_predicates)
    torch.testing.assert_close(initial[CUP], torch.tensor(cup_init))
    torch.testing.assert_close(specific[CUP, HOLDING], torch.tensor(hold_row))
    torch.testing.assert_close(specific[CUP, NC], torch.tensor(nc_row))
    assert not specific[CUP, TOUCHING].any() and not initial[BOOK].any() and not specific[BOOK].any()
    # the recipe option: derive loads the file instead of counting (the store's counts differ)
    store = _hand_store(tmp_path / "hand.h5")
    ds = VideoDataset(str(store), "train", Mode.PREDCLS, train=True)
    derived = STKET.derive({"prior_file": str(path)}, ds)
    torch.testing.assert_close(derived[INITIAL_KEY], initial)
    assert not torch.allclose(STKET.derive({}, ds)[INITIAL_KEY][CUP], initial[CUP])
    head = build_model("stket", {**TINY, "prior_file": str(path)}, None, _context(Mode.PREDCLS, derived))
    torch.testing.assert_close(head.temporal_specific_prior.detach()[CUP, HOLDING], torch.tensor(hold_row))
    # what this module writes loads back to the counted priors
    written = tmp_path / "counted.json"
    counted = count_priors([open_store(store).read_video(v) for v in ("a.mp4", "b.mp4")], V)
    written.write_text(json.dumps(priors_json(counted, V)))
    back = load_priors_json(written, V)
    torch.testing.assert_close(back[INITIAL_KEY], counted.initial)
    torch.testing.assert_close(back[SPECIFIC_KEY], counted.specific)
    # a class named otherwise, or a row of another width: one line naming the file
    for bad in ({str(BOOK): data[str(CUP)]}, {str(CUP): {**data[str(CUP)], "initial_prior": [0.0]}}):
        path.write_text(json.dumps(bad))
        with pytest.raises(FileError, match="TrainPrior.json: class"):
            load_priors_json(path, V)


def test_full_size_parameter_count():
    head = build_head("stket", vocabulary=V, mode=Mode.SGDET, feature_dim=2048, union_shape=(1024, 7, 7))
    # spec C: object classifier 2,481,869 + relation representation 9,107,024 + spatial encoder
    # (2 x 34,191,808 + prior 962 + state_fc 1,161,232) + temporal decoder (2 x 34,187,936 +
    # frame embedding 3,872 + priors 962 + 16,354 + state_fc 1,161,232) + ensemble decoder
    # (2 x 34,187,936 + positions 7,744) + 4 x 50,362 heads = 219,278,059
    assert count_parameters(head) == 219_278_059
    assert count_parameters(head.base_heads) == 50_362
    layer = head.spatial_encoder.layers[0]
    assert count_parameters(layer) == 34_191_808 and count_parameters(head.temporal_decoder.layers[0]) == 34_187_936
    assert count_parameters(head.spatial_state_fc) == 1_161_232


def test_knowledge_attention_adds_the_prior_to_queries_and_keys_only():
    torch.manual_seed(0)
    layer = KnowledgeLayer(2, 1, 4, dropout=0.0)
    with torch.no_grad():  # every projection the identity, so the attention is visible as it is
        for lin in (layer.w_q, layer.w_k, layer.w_v, layer.attn.out_proj):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
        layer.attn.in_proj_weight.copy_(torch.eye(2).repeat(3, 1))
        layer.attn.in_proj_bias.zero_()
    seen = {}
    layer.attn.register_forward_pre_hook(lambda m, args: seen.update(qkv=args))
    layer.attn.register_forward_hook(lambda m, args, out: seen.update(out=out[0]))
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    layer(x, p)
    q, k, v = seen["qkv"]
    torch.testing.assert_close(q, x + p)
    torch.testing.assert_close(k, x + p)
    torch.testing.assert_close(v, x)
    # q = k = [[1, 0], [2, 1]], v = x; scores q k^T / sqrt(2): row 0 [1, 2] / sqrt 2, row 1 [2, 5] / sqrt 2
    def soft(a, b):
        ea, eb = math.exp(a / math.sqrt(2)), math.exp(b / math.sqrt(2))
        return [ea / (ea + eb), eb / (ea + eb)]
    torch.testing.assert_close(seen["out"], torch.tensor([[soft(1, 2), soft(2, 5)]]))
    # with a position term too: added after Wq / Wk, still not to v
    with torch.no_grad():
        layer.w_q.weight.mul_(2.0)
    pos = torch.ones(1, 2, 2)
    layer(x, p, pos)
    q, k, v = seen["qkv"]
    torch.testing.assert_close(q, 2 * (x + p) + pos)
    torch.testing.assert_close(k, x + p + pos)
    torch.testing.assert_close(v, x)


def test_class_history_rules():
    #        i:  0    1    2    3    4     5    6    7    8    9    10    11
    frame = [0, 0, 0, 0, 1, 2, 3, 4, 5, 8, 8, 1]
    label = [CUP, CUP, CUP, CUP, BOOK, CUP, CUP, CUP, CUP, CUP, BOOK, CUP]
    score = [0.5, 0.9, 0.7, 0.9, 0.8, 0.6, 0.6, 0.6, 0.6, 0.6, 0.9, 0.6]
    video = [0] * 11 + [1]
    t = lambda x, dt=torch.long: torch.tensor(x, dtype=dt)  # noqa: E731
    args = (t(video), t(frame), t(label), t(score, torch.float))

    train = class_history(*args, keep_best=False, window=4)
    # training: each pair reads its own slot; the (cup, frame 0) slot ends with the last, pair 3
    assert train.current.tolist() == list(range(12))
    # the previous frame within 2: pair 5 (frame 2) -> frame 0's slot (pair 3); 6 -> 5; 7 -> 6; 8 -> 7;
    # pair 9 (frame 8): frame 5 is 3 away, so its own slot; the book at 8: frame 1 is 7 away;
    # video 1's cup sees nothing of video 0
    assert train.previous.tolist() == [0, 1, 2, 3, 4, 3, 5, 6, 7, 9, 10, 11]
    keys = [row[:n] for row, n in zip(train.keys.tolist(), train.lengths.tolist())]
    # key frames: own frame, then earlier ones of the class each within 2 of the last taken, 4 at most
    assert keys[5] == [3, 5] and keys[6] == [3, 5, 6] and keys[7] == [3, 5, 6, 7]  # frames 0, 2, 3, 4
    assert keys[8] == [5, 6, 7, 8] and keys[9] == [9] and keys[11] == [11]
    assert (train.keys[7] >= 0).all() and train.keys[9, 1:].tolist() == [-1, -1, -1]

    test = class_history(*args, keep_best=True, window=4)
    # test (SGCLS / SGDET): the highest score so far holds the slot; 0.7 < 0.9 and a tie do not take it
    assert test.current.tolist()[:4] == [0, 1, 1, 1]
    assert test.previous[5] == 1
    keys = [row[:n] for row, n in zip(test.keys.tolist(), test.lengths.tolist())]
    assert keys[2] == [1] and keys[7] == [1, 5, 6, 7]
    with pytest.raises(ValueError, match="window_size"):
        class_history(*args, keep_best=False, window=1)


def test_contact_set_rule():
    probs = torch.full((5, 17), 0.1)
    probs[0, NC], probs[0, HOLDING] = 0.9, 0.85             # not_contacting on top: {not_contacting}
    probs[1, HOLDING], probs[1, TOUCHING], probs[1, NC] = 0.95, 0.8, 0.85  # >= 0.8 but not_contacting
    probs[2, HOLDING] = 0.7                                  # nothing reaches 0.8: the empty set
    probs[3, NC], probs[3, HOLDING] = 0.9, 0.9               # a tie: the first maximum (holding) wins
    probs[4, NC] = 0.5                                       # argmax not_contacting, below the threshold
    sets = contact_sets(probs, NC, 0.8)
    got = [set(torch.nonzero(r)[:, 0].tolist()) for r in sets]
    assert got == [{NC}, {HOLDING, TOUCHING}, set(), {HOLDING}, {NC}]
    assert [set(torch.nonzero(r)[:, 0].tolist()) for r in contact_sets(probs, NC, 0.69)][2] == {HOLDING}


def _context(mode, derived):
    meta = tiny_meta()
    return HeadContext(vocabulary=meta.vocabulary, mode=Mode(mode), feature_dim=meta.feature_dim,
                       union_shape=meta.union_shape, derived=derived)


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    return write_random_store(tmp_path_factory.mktemp("stket") / "tiny.h5", n=6)


def _head(store, mode=Mode.PREDCLS, **cfg):
    derived = head_class("stket").derive({}, VideoDataset(str(store), "train", mode))
    torch.manual_seed(0)
    return build_model("stket", {**TINY, **cfg}, None, _context(mode, derived))


def _batch(store, mode=Mode.PREDCLS, train=True, videos=(0, 3)):
    ds = VideoDataset(str(store), "train", mode, train=train, options=ViewOptions())
    return Collator.of(ds)([ds[i] for i in videos])


def test_specific_prior_mean_and_fallback(random_store):
    head = _head(random_store)
    head.temporal_state_fc = nn.Identity()  # see the rows themselves
    sets = torch.zeros(2, 17, dtype=torch.bool)
    sets[0, HOLDING] = sets[0, NC] = True
    got = head._specific(torch.tensor([CUP, CUP]), sets)
    spec, init = head.temporal_specific_prior.detach(), head.temporal_initial_prior.detach()
    torch.testing.assert_close(got[0], (spec[CUP, HOLDING] + spec[CUP, NC]) / 2)
    torch.testing.assert_close(got[1], init[CUP])  # empty set: the initial prior


@pytest.mark.parametrize("mode", [Mode.PREDCLS, Mode.SGDET])
def test_loss_has_15_relation_terms_plus_object(random_store, mode):
    head = _head(random_store, mode)
    batch = _batch(random_store, mode)
    out = head(batch)
    losses = head.loss(out, batch)
    names = {"attention", "spatial", "contacting"} | {f"{b}_{g}" for b in LOSS_BRANCHES if b != "ensemble"
                                                      for g in ("attention", "spatial", "contacting")}
    assert set(losses) == names | ({"object"} if mode is not Mode.PREDCLS else set())
    assert len(names) == 15
    pos = batch.pair_positive
    # the main branch is the ensemble; the others come from aux, BCE on the sigmoid scores
    lg = out.aux["logits"]["temporal_prior"]
    want = nn.BCELoss()(lg.contacting[pos].sigmoid(), batch.contacting_labels[pos])
    torch.testing.assert_close(losses["temporal_prior_contacting"], want)
    ok = pos & (batch.attention_labels >= 0)
    torch.testing.assert_close(losses["attention"], nn.CrossEntropyLoss()(out.attention_logits[ok],
                                                                         batch.attention_labels[ok]))
    # the main output is the ensemble heads on the ensemble feature
    f = head.encode(batch)
    torch.testing.assert_close(out.attention_logits, head.ensemble_heads(f.relation).attention)
    # another output branch: its terms are the unprefixed ones, the ensemble's are prefixed
    spatial = _head(random_store, mode, output_branch="spatial")
    out_s = spatial(batch)
    assert "ensemble_attention" in spatial.loss(out_s, batch) and "spatial_attention" not in spatial.loss(out_s, batch)
    torch.testing.assert_close(out_s.attention_logits, spatial.spatial_heads(spatial.encode(batch).relation).attention)


def test_windows_priors_and_ensemble_readout(tmp_path):
    """Frame 0's window takes the initial prior on both frames, later windows the specific prior
    (of the pair's own contact set in PREDCLS; the GT sets here, so that they are not empty) on
    their earlier frame; the ensemble output is the current frame's token of its key-frame sequence."""
    path = _hand_store(tmp_path / "hand.h5")
    meta = tiny_meta()
    derived = STKET.derive({}, VideoDataset(str(path), "train", Mode.PREDCLS))
    torch.manual_seed(0)
    head = build_model("stket", {**TINY, "contact_source": "gt"}, None, _context(Mode.PREDCLS, derived)).eval()
    ds = VideoDataset(str(path), "train", Mode.PREDCLS, train=False)
    batch = Collator.of(ds)([ds[0]])  # video A: frames with 2, 1, 2 object pairs
    assert batch.pair_offsets.tolist() == [0, 2, 3, 5]
    seen = {}
    head.temporal_decoder.register_forward_pre_hook(lambda m, args: seen.update(args=args))
    with torch.no_grad():
        f = head.encode(batch)
        x, prior, pos, pad = seen["args"]
        labels = batch.box_labels[batch.pairs[:, 1]]
        initial = head.temporal_state_fc(head.temporal_initial_prior[labels])
        specific = head._specific(labels, f.aux["contact_sets"])
        assert f.aux["contact_sets"].any(1).all() and not torch.isclose(specific, initial).all(1).any()
        # window (0, 1): pairs 0, 1 | 2; window (1, 2): pair 2 | 3, 4
        torch.testing.assert_close(prior[0, :3], initial[[0, 1, 2]])
        torch.testing.assert_close(prior[1, 0], specific[2])
        torch.testing.assert_close(prior[1, 1:3], initial[[3, 4]])
        torch.testing.assert_close(pos[0, :3], head.frame_embed.weight[[0, 0, 1]])
        # the ensemble: pair 3 (cup, frame 2) takes frames 0 (its last cup: pair 1), 1 (pair 2)
        # and 2 (itself); pair 4 (the book of frame 2) has no earlier book
        x0 = head.pair_representation(batch, batch.box_labels)
        s = head._spatial(x0, head.spatial_state_fc(head.spatial_initial_prior[labels]), batch)
        t = head._temporal(s, labels, specific, batch)
        fused = (s + t) / 2
        seq = fused[[1, 2, 3]][None]
        want = head.ensemble_decoder(seq, None, head.ensemble_position.weight[None, :3], None)[0, 2]
        torch.testing.assert_close(f.relation[3], want)
        alone = head.ensemble_decoder(fused[[4]][None], None, head.ensemble_position.weight[None, :1], None)[0, 0]
        torch.testing.assert_close(f.relation[4], alone)
    assert meta.vocabulary.num_predicates == V.num_predicates


def test_one_frame_video_has_no_temporal_feature(tmp_path):
    meta = tiny_meta()
    with StoreWriter(tmp_path / "one.h5", meta) as w:
        w.write_video(handmade_video(meta, [_frame([(CUP, [P("looking_at"), P("in_front_of"), P("holding")])])],
                                     name="one.mp4", split="train"))
    head = _head(tmp_path / "one.h5")
    batch = _batch(tmp_path / "one.h5", videos=(0,))
    out = head(batch)
    torch.testing.assert_close(out.aux["logits"]["temporal"].attention[0], head.temporal_heads.attention.bias)


def test_gt_contact_source(random_store):
    with pytest.raises(ValueError, match="SGDET"):
        _head(random_store, Mode.SGDET, contact_source="gt")
    head = _head(random_store, Mode.PREDCLS, contact_source="gt").eval()
    batch = _batch(random_store, train=False)
    with torch.no_grad():
        out = head(batch)
    sets = out.aux["contact_sets"]
    assert torch.equal(sets, batch.contacting_labels > 0)
    assert (~batch.pair_positive).any() and not sets[~batch.pair_positive].any()  # no GT: the empty set
    # training uses the predicted sets whatever the source
    train = _batch(random_store)
    out = head.train()(train)
    want = contact_sets(out.aux["logits"]["spatial"].contacting.detach().sigmoid(), NC, 0.8)
    assert torch.equal(out.aux["contact_sets"], want)


def _copy_without_train(src, dst):
    store = open_store(src)
    with StoreWriter(dst, store.meta) as w:
        for v in store.videos():
            if store.split_of(v) != "train":
                w.write_video(store.read_video(v))
    return dst


def test_run_carries_priors_and_evaluates_without_the_training_split(tmp_path):
    from stage2_relations.eval_request import EvalRequest, Protocol
    from stage2_relations.evaluate_checkpoint import evaluate_checkpoint
    from stage2_relations.recipe import TrainConfig
    from stage2_relations.train import train

    store = write_learnable_store(tmp_path / "learn.h5", n_train=6, n_val=3)
    cfg = TrainConfig(store=str(store), mode="predcls", head="stket", head_cfg={**TINY, "base_heads": True},
                      epochs=1, lr=1e-3, videos_per_batch=2, preload=True, device="cpu", seed=0,
                      plateau_patience=0, plateau_threshold=1e-3)
    train(cfg, tmp_path / "run", progress=False, echo=lambda s: None)
    want = count_priors((open_store(store).read_video(v) for v in open_store(store).videos("train")), V)
    derived = torch.load(tmp_path / "run" / "derived.pt", weights_only=False)
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=False)
    for d in (derived, ckpt["derived"]):
        torch.testing.assert_close(d[INITIAL_KEY], want.initial)
        torch.testing.assert_close(d[SPECIFIC_KEY], want.specific)
    # the priors are parameters: they start from the counts and train
    assert not torch.equal(ckpt["model"]["spatial_initial_prior"], want.initial)
    # STKET's base heads are never trained: AdamW holds no state for them, and for every other parameter
    names = [k for k, _ in build_model("stket", cfg.head_cfg, None, _context(Mode.PREDCLS, derived)).named_parameters()]
    trained = {names[i] for i in ckpt["optimizer"]["state"]}
    assert trained == {k for k in names if not k.startswith("base_heads.")}

    copy = _copy_without_train(store, tmp_path / "heldout.h5")
    assert not open_store(copy).videos("train")
    with pytest.raises(ValueError, match="no GT object"):
        STKET.derive({}, VideoDataset(str(copy), "train", Mode.PREDCLS))
    with_only = Protocol(constraints=("with",))
    res = evaluate_checkpoint(EvalRequest(checkpoint=tmp_path / "run" / "last.pth", store_path=str(copy), split="val",
                                          protocol=with_only, out_dir=tmp_path / "eval"), echo=lambda s: None)
    assert 0 <= res["results"]["with"].recall[20] <= 1
    # another branch of the same weights
    other = with_output_branch(tmp_path / "run" / "last.pth", "temporal", tmp_path / "temporal.pth")
    res_t = evaluate_checkpoint(EvalRequest(checkpoint=other, store_path=str(copy), split="val", protocol=with_only,
                                            out_dir=tmp_path / "eval_t"), echo=lambda s: None)
    assert res_t["parameters"] == res["parameters"]


def _two_cups_store(path):
    """SGDET: 3 frames, each with a person and two cup detections, the first more probable."""
    meta = tiny_meta()

    def dist(label, p):
        x = np.full(V.num_objects, (1 - p) / (V.num_objects - 1))
        x[label] = p
        return x

    frame = {"gt": [(BOX_P, PERSON), (BOX_A, CUP)], "rel": {1: [P("looking_at"), P("in_front_of"), P("holding")]},
             "det": [(BOX_P, PERSON), (BOX_A, CUP), ((300, 300, 340, 350), CUP)],
             "det_dists": np.stack([dist(PERSON, 0.9), dist(CUP, 0.9), dist(CUP, 0.6)])}
    with StoreWriter(path, meta) as w:
        w.write_video(handmade_video(meta, [frame] * 3, name="cups.mp4", split="train"))
    return path


def test_sgdet_test_reads_the_best_scored_same_class_pair(tmp_path, monkeypatch):
    """At SGDET test the second cup of a frame (lower score) reads the first one's slot: its
    contact set (the temporal prior of its earlier-frame token) and its ensemble feature, so its
    ensemble output is the first cup's. In training each pair reads its own."""
    from stage2_relations.heads import stket

    path = _two_cups_store(tmp_path / "cups.h5")
    head = _head(path, Mode.SGDET).eval()
    ds = VideoDataset(str(path), "train", Mode.SGDET, train=False)
    batch = Collator.of(ds)([ds[0]])
    # pairs (person, cup 0.9), (person, cup 0.6) in each of the 3 frames
    assert batch.pair_offsets.tolist() == [0, 2, 4, 6]
    scores = batch.box_scores[batch.pairs[:, 1]]
    assert (scores[0::2] > scores[1::2]).all() and (batch.box_labels[batch.pairs[:, 1]] == CUP).all()
    sets = torch.zeros(6, 17, dtype=torch.bool)
    sets[0::2, HOLDING] = True  # the first cups: {holding}, the second ones: {touching}
    sets[1::2, TOUCHING] = True
    monkeypatch.setattr(stket, "contact_sets", lambda probs, nc, threshold: sets.clone())
    seen = {}
    head.temporal_decoder.register_forward_pre_hook(lambda m, args: seen.update(prior=args[1]))
    with torch.no_grad():
        f = head.encode(batch)
        for second, first in ((1, 0), (3, 2), (5, 4)):
            torch.testing.assert_close(f.relation[second], f.relation[first])
        # window (1, 2): tokens pair 2, pair 3 | pair 4, pair 5; pair 3 takes pair 2's set {holding}
        labels = torch.full((1,), CUP)
        holding, touching = head._specific(labels, sets[[0]])[0], head._specific(labels, sets[[1]])[0]
        assert not torch.allclose(holding, touching)
        torch.testing.assert_close(seen["prior"][1, 1], holding)
        # training: each its own slot
        f_train = head.train().encode(batch)
        torch.testing.assert_close(seen["prior"][1, 1], touching)
        # the auxiliary temporal prior: the previous frame's slot, whose last writer in training is
        # the second cup (pair 2 reads pair 1's {touching}); frame 0 has no previous frame and takes
        # its own slot (STKET's code), not the initial prior
        aux = f_train.aux["logits"]["temporal_prior"].attention
        torch.testing.assert_close(aux[2], head.temporal_heads.attention(touching))
        torch.testing.assert_close(aux[0], head.temporal_heads.attention(holding))
    assert not torch.allclose(f_train.relation[1], f_train.relation[0])


@pytest.mark.parametrize("recipe", ["stket_sgdet", "stket_rsnet_sgdet", "demo_stket", "demo_stket_rsnet"])
def test_recipes(recipe, tmp_path):
    from stage2_relations.recipe import load_config
    from stage2_relations.train import train

    cfg = load_config(REPO / "configs" / f"{recipe}.yaml")
    assert cfg.head == "stket" and cfg.plateau_patience == 0 and cfg.plateau_threshold == 1e-3
    assert (cfg.rsnet is not None) == ("rsnet" in recipe)
    if not recipe.startswith("demo"):
        assert cfg.lr == 2e-5 and cfg.head_cfg == {} and cfg.mode == "sgdet"
        return
    store = write_learnable_store(tmp_path / "learn.h5", n_train=3, n_val=2)
    res = train(dataclasses.replace(cfg, store=str(store), epochs=1), tmp_path / "run", progress=False,
                echo=lambda s: None)
    assert math.isfinite(res["history"][0]["loss_total"])


def test_training_beats_untrained(tmp_path):
    from stage2_relations.recipe import TrainConfig
    from stage2_relations.scoring import score_model
    from stage2_relations.train import build_from_config, derive, train

    store = write_learnable_store(tmp_path / "learn.h5")
    cfg = TrainConfig(store=str(store), mode="predcls", head="stket", head_cfg=TINY, epochs=3, lr=3e-3,
                      videos_per_batch=2, preload=True, device="cpu", seed=0)
    torch.manual_seed(0)
    derived = derive(cfg, VideoDataset(str(store), "train", "predcls"))
    untrained = build_from_config(cfg, open_store(store).meta, derived)
    val = VideoDataset(str(store), "val", "predcls", train=False)
    r20 = score_model(untrained, val, constraints=("with",))[0]["with"].recall[20]
    h = train(cfg, tmp_path / "run", progress=False, echo=lambda s: None)["history"]
    assert h[-1]["loss_total"] < h[0]["loss_total"]
    assert h[-1]["val_R@20"] > r20 + 0.1, (r20, h)


# --- RS-Net's negatives read the history, never write it (issue 18, item 5) ---------------


def _cup_and_negative_store(path):
    """SGDET: 3 frames, each with the GT person and a GT cup (holding), detected, plus a second
    cup detection far from it that no GT box claims: RS-Net's negative (person, second cup) of
    the cup's class, after the positive in the frame."""
    meta = tiny_meta()
    frame = {"gt": [(BOX_P, PERSON), (BOX_A, CUP)], "rel": {1: [P("looking_at"), P("in_front_of"), P("holding")]},
             "det": [(BOX_P, PERSON), (BOX_A, CUP), ((300, 300, 340, 350), CUP)]}
    with StoreWriter(path, meta) as w:
        w.write_video(handmade_video(meta, [frame] * 3, name="neg.mp4", split="train"))
    return path


def test_class_history_negatives_read_and_never_write():
    """Frames 0, 0, 1, 1 of one cup class; pairs 1 and 3 are negatives (they come after the
    positive of their frame, as the view puts them). Writers only: pair 2 (frame 1) reads frame
    0's slot, pair 0 (the last *writer* there), not pair 1; pair 3 reads its frame's slot (pair 2)."""
    t = lambda x, dt=torch.long: torch.tensor(x, dtype=dt)  # noqa: E731
    args = (t([0, 0, 0, 0]), t([0, 0, 1, 1]), t([CUP] * 4), t([0.5] * 4, torch.float))
    h = class_history(*args, keep_best=False, window=4, writes=t([True, False, True, False], torch.bool))
    assert h.current.tolist() == [0, 0, 2, 2] and h.previous.tolist() == [0, 0, 0, 0]
    keys = [row[:n] for row, n in zip(h.keys.tolist(), h.lengths.tolist())]
    assert keys == [[0], [0], [0, 2], [0, 2]]
    # everyone writes (the default): the last writer of frame 0 is the negative, pair 1
    h_all = class_history(*args, keep_best=False, window=4)
    assert h_all.previous.tolist() == [0, 1, 1, 1]
    # a reader in a frame no writer holds reads itself, and gives its class no frame
    h2 = class_history(t([0, 0, 0]), t([0, 1, 2]), t([CUP] * 3), t([0.5] * 3, torch.float), keep_best=False, window=4,
                       writes=t([True, False, True], torch.bool))
    assert h2.current.tolist() == [0, 1, 2] and h2.previous.tolist() == [0, 0, 0]
    assert [row[:n] for row, n in zip(h2.keys.tolist(), h2.lengths.tolist())] == [[0], [0, 1], [0, 2]]


def test_rsnet_negatives_leave_the_baselines_history_and_priors(tmp_path, monkeypatch):
    """The same SGDET training batch with RS-Net's negatives and without them (the baseline's
    batch: its positives): every positive reads the same history (own slot, previous slot and
    key-frame slots, as positives), hence the same temporal priors. Before the fix a negative of
    the cup's class, last in its frame, took the frame's slot: the next frame's positive read its
    contact set."""
    from stage2_relations.heads import stket

    path = _cup_and_negative_store(tmp_path / "neg.h5")
    ds = VideoDataset(str(path), "train", Mode.SGDET, train=True, options=ViewOptions(negatives=True))
    with_neg = Collator.of(ds)([ds[0]])
    pos = torch.nonzero(with_neg.pair_positive)[:, 0]
    assert with_neg.pair_positive.tolist() == [True, False] * 3  # (positive, negative) in each frame
    without = with_neg.select_pairs(pos)
    head = _head(path, Mode.SGDET).train()
    labels = lambda b: b.box_embed_labels[b.pairs[:, 1]]  # noqa: E731
    assert (labels(with_neg) == CUP).all()
    h_neg = head.history(with_neg, labels(with_neg), with_neg.box_scores[with_neg.pairs[:, 1]])
    h_pos = head.history(without, labels(without), without.box_scores[without.pairs[:, 1]])
    for field in ("current", "previous"):
        assert getattr(h_neg, field)[pos].tolist() == pos[getattr(h_pos, field)].tolist()
    assert h_neg.lengths[pos].tolist() == h_pos.lengths.tolist() == [1, 2, 3]
    keys_neg = [row[:n] for row, n in zip(h_neg.keys[pos].tolist(), h_neg.lengths[pos].tolist())]
    keys_pos = [pos[row[:n]].tolist() for row, n in zip(h_pos.keys.tolist(), h_pos.lengths.tolist())]
    assert keys_neg == keys_pos == [[0], [0, 2], [0, 2, 4]]
    # the temporal priors: positives {holding}, negatives {touching}; with the negatives present
    # the positives' auxiliary temporal priors are still those of their positive predecessors
    def sets_of(b):
        s = torch.zeros(b.num_pairs, 17, dtype=torch.bool)
        s[b.pair_positive, HOLDING] = True
        s[~b.pair_positive, TOUCHING] = True
        return s

    batches = iter([with_neg, without])
    monkeypatch.setattr(stket, "contact_sets", lambda probs, nc, threshold: sets_of(next(batches)))
    tokens = []
    head.temporal_decoder.register_forward_pre_hook(lambda m, args: tokens.append(args[1]))
    with torch.no_grad():
        aux_neg = head.encode(with_neg).aux["logits"]["temporal_prior"].attention[pos]
        aux_pos = head.encode(without).aux["logits"]["temporal_prior"].attention
        torch.testing.assert_close(aux_neg, aux_pos)
        holding = head._specific(torch.tensor([CUP]), sets_of(without)[:1])[0]
        torch.testing.assert_close(aux_pos, head.temporal_heads.attention(holding).expand(3, -1))
        # the earlier frame's positive token in window (0, 1) / (1, 2) takes {holding}'s prior
        # (window (0, 1): frame 0 takes the initial prior; window (1, 2): slot 0 is frame 1's positive)
        torch.testing.assert_close(tokens[0][1, 0], holding)
        torch.testing.assert_close(tokens[1][1, 0], holding)


def test_temporal_mask_zero_rows_is_stkets_rule(tmp_path):
    """STKET's temporal decoder masks every token whose feature row sums to exactly 0
    (``mask = sum(rel_input) == 0``), real tokens included. Three frames, one pair each:
    window (0, 1) holds pair 0 (slot 0) and pair 1 (slot 1), whose output pair 1 reads. Pair 0's
    row is (1, -1, 0, ...), sum 0: by default no token attends to it, so pair 1's temporal
    feature is the same when it becomes (2, -2, 0, ...); with ``temporal_mask: padding`` pair 1
    attends to it and its feature changes."""
    from stage2_relations.heads.stket import TEMPORAL_MASKS

    assert TEMPORAL_MASKS == ("zero_rows", "padding")
    path = _cup_and_negative_store(tmp_path / "neg.h5")
    batch = _batch(path, Mode.SGDET, videos=(0,))
    assert batch.pair_offsets.tolist() == [0, 1, 2, 3]
    labels = torch.full((3,), CUP)
    got = {}
    for rule in TEMPORAL_MASKS:
        head = _head(path, Mode.SGDET, temporal_mask=rule).eval()
        d = head.relation_dim
        s = torch.randn(3, d, generator=torch.Generator().manual_seed(1))
        specific = head._specific(labels, torch.zeros(3, 17, dtype=torch.bool))
        outs = []
        for scale in (1.0, 2.0):
            s[0] = 0.0
            s[0, 0], s[0, 1] = scale, -scale
            with torch.no_grad():
                outs.append(head._temporal(s, labels, specific, batch)[1])
        got[rule] = outs
    torch.testing.assert_close(got["zero_rows"][0], got["zero_rows"][1])
    assert not torch.allclose(got["padding"][0], got["padding"][1])
    with pytest.raises(ValueError, match="temporal_mask"):
        build_head("stket", vocabulary=V, mode=Mode.PREDCLS, feature_dim=16, union_shape=(8,), temporal_mask="x",
                   **TINY)
