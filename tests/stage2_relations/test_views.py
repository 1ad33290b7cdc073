"""The views' structure: one builder per mode, the person class from the store's vocabulary, and
the view options as enums declared once (their names in recipes, run folders and metrics.json)."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import yaml

from common.training_run import config_differences
from rules.modes import Mode
from rules.pairing import AssignmentRule, SgdetBoxes
from stage2_relations.data import negative_rng
from stage2_relations.pool import video_pool
from stage2_relations.recipe import RULES, TrainConfig, check_config
from stage2_relations.train import SAME
from stage2_relations.view_options import CHOICES, VIEW_RULES, NegativeLabels, ObjectScores, ViewOptions
from stage2_relations.views import BUILDERS, ViewBuilder, frame_view
from store import open_store
from store.vocabulary import ACTION_GENOME
from tests.helpers.stage2 import handmade_video, tiny_meta, write_random_store


def test_every_mode_has_one_builder():
    assert set(BUILDERS) == set(Mode) and all(isinstance(b, ViewBuilder) for b in BUILDERS.values())


def _swap(vocabulary, a: str, b: str):
    """``vocabulary`` with the object classes ``a`` and ``b`` trading places, and the id map old -> new."""
    i, j = vocabulary.object_index(a), vocabulary.object_index(b)
    order = list(vocabulary.objects)
    order[i], order[j] = order[j], order[i]
    new_id = np.arange(len(order))
    new_id[[i, j]] = [j, i]
    return dataclasses.replace(vocabulary, objects=tuple(order)), new_id


def _relabelled(rec, new_id):
    """The record in the swapped vocabulary: labels mapped, distribution columns moved (a swap is its own inverse)."""
    return dataclasses.replace(rec, gt_labels=new_id[rec.gt_labels].astype(rec.gt_labels.dtype),
                               det_labels=new_id[rec.det_labels].astype(rec.det_labels.dtype),
                               gt_dists=rec.gt_dists[:, new_id], det_dists=rec.det_dists[:, new_id])


def test_the_person_class_comes_from_the_vocabulary(tmp_path):
    """A store whose vocabulary puts the person at index 2 (bag at 1) gives the views of the AG
    store, labels and distributions mapped: no view rule assumes the person is class 1."""
    swapped, new_id = _swap(ACTION_GENOME, "person", "bag")
    assert swapped.person_index == 2
    store = open_store(write_random_store(tmp_path / "s.h5", n=3))
    options = [ViewOptions(negatives=True, negative_ratio=1e9), ViewOptions(sgdet_boxes="raw"),
               ViewOptions(negatives=True, assignment="strict", negative_labels="assigned")]
    checked = 0
    for video, mode, train, opts in itertools.product(store.videos(), Mode, (False, True), options):
        rec = store.read_video(video)
        other = _relabelled(rec, new_id)
        for f in range(rec.num_frames):
            a = frame_view(rec, f, mode, train=train, options=opts, rng=negative_rng(0, 0, video),
                           vocabulary=ACTION_GENOME)
            b = frame_view(other, f, mode, train=train, options=opts, rng=negative_rng(0, 0, video),
                           vocabulary=swapped)
            _assert_mapped(a, b, new_id)
            checked += len(a.pairs)
    assert checked > 100  # not vacuous


def _assert_mapped(a, b, new_id):
    """View ``b`` is view ``a`` with its labels and distribution columns mapped by ``new_id``."""
    for name in ("boxes", "scores", "is_gt", "features", "pairs", "union_rows", "substituted", "positive",
                 "rel_rows", "joint"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    np.testing.assert_array_equal(b.labels, new_id[a.labels])
    np.testing.assert_array_equal(b.embed_labels, new_id[a.embed_labels])
    np.testing.assert_array_equal(b.dists, a.dists[:, new_id])


def test_the_copied_classes_come_from_the_vocabulary():
    """STTran's SGDET test boxes copy book, chair and food by name: in a vocabulary with the
    person at 2 (bag at 1) and the book at 6 (box at 5) the views and the pair pool are the AG
    views mapped (AG's ids 1 and 5 would take the bag as the person and copy boxes, not books).
    d1 is a book, chair second, table third: copied as a chair, that copy again as a table; the
    classes with boxes keep their order (person, book, chair, cup, table) in both vocabularies."""
    v1, id1 = _swap(ACTION_GENOME, "person", "bag")
    swapped, id2 = _swap(v1, "book", "box")
    new_id = id2[id1]  # two disjoint swaps: still its own inverse
    assert (swapped.person_index, swapped.object_index("book")) == (2, 6)
    person, book, chair, cup, table = (ACTION_GENOME.object_index(n) for n in ("person", "book", "chair", "cup",
                                                                               "table"))
    dists = np.full((3, ACTION_GENOME.num_objects), 0.001, np.float32)
    dists[0, [person, cup]] = 0.5, 0.4
    dists[1, [book, chair, table]] = 0.5, 0.25, 0.15
    dists[2, [cup, person]] = 0.7, 0.2
    frame = dict(gt=[((0, 0, 100, 200), person), ((150, 150, 200, 200), cup)], rel={1: [0]},
                 det=[((0, 0, 100, 200), person), ((300, 0, 350, 50), book), ((150, 150, 200, 200), cup)],
                 det_dists=dists / dists.sum(1, keepdims=True))
    rec = handmade_video(tiny_meta(), [frame] * 2)
    other = _relabelled(rec, new_id)
    for options in (ViewOptions(), ViewOptions(sgdet_boxes="raw")):
        a = frame_view(rec, 0, Mode.SGDET, train=False, options=options, rng=negative_rng(0, 0, rec.name),
                       vocabulary=ACTION_GENOME)
        b = frame_view(other, 0, Mode.SGDET, train=False, options=options, rng=negative_rng(0, 0, rec.name),
                       vocabulary=swapped)
        _assert_mapped(a, b, new_id)
    assert a.labels.tolist() == [person, book, cup] and a.joint.tolist() == [2, 3, 4]  # raw: the detections
    a = frame_view(rec, 0, Mode.SGDET, train=False, options=ViewOptions(), rng=negative_rng(0, 0, rec.name),
                   vocabulary=ACTION_GENOME)
    assert a.labels.tolist() == [person, book, chair, cup, table] and a.joint.tolist() == [2, 3, 3, 4, 3]
    frames = np.arange(rec.num_frames)
    pool_a = video_pool(rec, frames, Mode.SGDET, [a.joint] * 2, ACTION_GENOME)
    pool_b = video_pool(other, frames, Mode.SGDET, [a.joint] * 2, swapped)
    for key, value in pool_a.items():
        np.testing.assert_array_equal(pool_b[key], value, err_msg=key)
    assert pool_a["fallback"].tolist() == [2, 2]  # the person detection, joint 2 + 0


def test_view_options_are_enums_named_as_before():
    o = ViewOptions(assignment="strict", sgdet_boxes="raw", object_scores="classifier", negative_labels="assigned")
    assert (o.assignment, o.sgdet_boxes, o.object_scores, o.negative_labels) == (
        AssignmentRule.STRICT, SgdetBoxes.RAW, ObjectScores.CLASSIFIER, NegativeLabels.ASSIGNED)
    assert o == ViewOptions(assignment=AssignmentRule.STRICT, sgdet_boxes=SgdetBoxes.RAW,
                            object_scores=ObjectScores.CLASSIFIER, negative_labels=NegativeLabels.ASSIGNED)
    # metrics.json and compare's caches hold the names, and read back they compare equal
    written = json.loads(json.dumps(dataclasses.asdict(o)))
    assert written["assignment"] == "strict" and written["object_scores"] == "classifier"
    assert written == dataclasses.asdict(o)
    with pytest.raises(ValueError, match=r"ViewOptions: sgdet_boxes: must be one of 'sttran', 'raw', got 'nms'"):
        ViewOptions(sgdet_boxes="nms")
    with pytest.raises(ValueError, match=r"ViewOptions: negative_iou: must be in \[0, 1\], got 1.5"):
        ViewOptions(negative_iou=1.5)


def test_the_recipe_checks_and_sets_the_view_options_from_their_declaration():
    for name, rule in VIEW_RULES.items():
        assert RULES[name] is rule, name
        assert getattr(TrainConfig, name) == getattr(ViewOptions, name), name  # one default
    assert {n: [r.value for r in kind] for n, kind in CHOICES.items()} == {
        "assignment": ["sttran", "strict"], "sgdet_boxes": ["sttran", "raw"],
        "object_scores": ["sttran", "classifier", "detector"], "negative_labels": ["detector", "assigned"]}
    cfg = check_config({"mode": "sgdet", "assignment": "strict", "negative_labels": "assigned", "negative_iou": 0.3,
                        "rsnet": {}}, "recipe.yaml")
    assert cfg.view_options() == ViewOptions(assignment="strict", negative_labels="assigned", negative_iou=0.3,
                                             negatives=True)


def test_an_old_run_folders_config_is_the_same_config():
    """config.yaml of a run written when the options were strings: the same strings, no difference
    for ``train --resume`` or compare's reuse (yaml cannot write an enum: the recipe keeps names)."""
    cfg = check_config({"mode": "sgdet", "assignment": "strict", "sgdet_boxes": "raw", "object_scores": "classifier",
                        "negative_labels": "assigned"}, "recipe.yaml")
    saved = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    assert saved["assignment"] == "strict" and type(saved["assignment"]) is str
    assert config_differences(saved, cfg.to_dict(), TrainConfig().to_dict(), same=SAME) == []  # train's rule
    assert check_config(saved, "config.yaml").view_options() == cfg.view_options()
