"""The Action Genome reader on a hand-written root (tests/helpers/ag.py)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest

from rules.modes import Mode
from stage1_detect.action_genome import (
    AnnotationError,
    ReaderOptions,
    Split,
    describe,
    kept_in_filtersmall,
    load_action_genome,
    validation_videos,
)
from store.vocabulary import ACTION_GENOME as V
from tests.helpers.ag import NO_PERSON, filtersmall_view, fixture_annotations, obj, view_of, write_root

NO_VAL = ReaderOptions(val_fraction=0.0)


@pytest.fixture
def root(ag_root):
    return ag_root


def test_frames_boxes_and_labels(root):
    ag = load_action_genome(root, NO_VAL)
    train = ag.videos("train")
    assert [v.name for v in train] == ["AAAAA.mp4"]
    video = train[0]
    assert [f.frame_number for f in video.frames] == [5, 25, 35]
    assert [f.name for f in video.frames] == ["AAAAA.mp4/000005.png", "AAAAA.mp4/000025.png", "AAAAA.mp4/000035.png"]

    f5 = video.frames[0]
    assert (f5.width, f5.height) == (320, 240)
    assert f5.person_box == (50.0, 60.0, 150.0, 230.0)
    (cup,) = f5.objects  # the invisible closet is dropped
    assert cup.label == V.object_index("cup") == 11
    assert cup.box == (10.0, 20.0, 40.0, 60.0)  # xywh (10, 20, 30, 40) -> xyxy
    assert cup.attention == (0,)
    assert cup.spatial == (5, 4)  # in_front_of, beneath: file order kept
    assert cup.contacting == (14,)  # holding
    assert f5.num_relations == 4

    (phone,) = video.frames[1].objects
    assert phone.label == 24 and phone.box == (1.0, 2.0, 4.0, 6.0)
    assert phone.predicates == (1, 7, 17)

    (table,) = video.frames[2].objects  # sofa (bbox None) and chair (width 0) skipped
    assert table.label == 32 and table.box == (100.0, 100.0, 120.0, 110.0)
    assert table.attention == (2,) and table.spatial == () and table.contacting == ()

    np.testing.assert_array_equal(f5.boxes(), np.array([[50, 60, 150, 230], [10, 20, 40, 60]], np.float32))
    np.testing.assert_array_equal(f5.labels(), [1, 11])

    (test_video,) = ag.videos(Split.TEST)
    assert test_video.name == "CCCCC.mp4" and test_video.split is Split.TEST
    assert [f.frame_number for f in test_video.frames] == [1, 2, 3]  # sorted, not pickle order
    assert test_video.frames[2].objects[0].box == (3.0, 0.0, 13.0, 10.0)
    assert test_video.frames[0].objects[0].contacting == (24, 21)  # wiping, touching
    assert ag.videos("val") == ()


def test_filter_counts(root):
    r = load_action_genome(root, NO_VAL).report
    assert r.frames_seen == {"train": 6, "test": 4}
    assert r.frames_no_person_box == {"train": 1}
    assert r.frames_no_visible_object == {"test": 1}
    assert r.objects_invisible == {"train": 1}  # objects of dropped frames are not counted
    assert r.objects_without_box == {"train": 1}
    assert r.objects_degenerate_box == {"train": 1}
    assert r.videos_too_short == {"train": 1}
    assert r.frames_in_short_videos == {"train": 2}
    assert len(r.skipped) == 2 and all("AAAAA.mp4/000035.png" in line for line in r.skipped)
    assert ("videos_too_short", "train", 1) in r.as_rows()


def test_summary(root):
    rows = {r["split"]: r for r in load_action_genome(root, NO_VAL).summary()}
    assert rows["train"] == {"split": "train", "videos": 1, "frames": 3, "objects": 3, "relations": 8}
    assert rows["test"] == {"split": "test", "videos": 1, "frames": 3, "objects": 3, "relations": 12}
    assert rows["val"]["videos"] == 0


def test_each_filter_can_be_turned_off(root):
    keep_all = ReaderOptions(val_fraction=0.0, require_person_box=False, min_frames=1)
    ag = load_action_genome(root, keep_all)
    names = {v.name: v for v in ag.videos("train")}
    assert set(names) == {"AAAAA.mp4", "BBBBB.mp4"}
    a = names["AAAAA.mp4"]
    assert [f.frame_number for f in a.frames] == [5, 15, 25, 35]
    assert not a.frames[1].has_person and math.isnan(a.frames[1].person_box[0])
    assert a.frames[0].has_person

    ag = load_action_genome(root, ReaderOptions(val_fraction=0.0, require_visible_object=False, min_frames=1))
    (c,) = ag.videos("test")
    assert [len(f.objects) for f in c.frames] == [1, 1, 1, 0]  # frame 4 kept, empty

    persons, objects = fixture_annotations()
    objects["CCCCC.mp4/000004.png"][0]["bbox"] = (7, 8, 9, 10)  # an invisible object with a box
    ag = load_action_genome(write_root(root.parent / "inv", persons, objects),
                            ReaderOptions(val_fraction=0.0, visible_only=False, require_visible_object=False))
    assert [len(f.objects) for f in ag.videos("test")[0].frames] == [1, 1, 1, 1]
    assert ag.videos("test")[0].frames[3].objects[0].box == (7.0, 8.0, 16.0, 18.0)


def test_filtersmall_for_sgcls_and_sgdet(tmp_path):
    persons, objects = fixture_annotations()
    small = copy.deepcopy(objects)
    del small["AAAAA.mp4/000005.png"][0]  # the cup removed: only the invisible closet is left
    root = write_root(tmp_path, persons, objects, small)

    assert ReaderOptions.for_mode(Mode.PREDCLS).filter_small is False
    assert ReaderOptions.for_mode(Mode.SGDET).filter_small is True
    ag = load_action_genome(root, ReaderOptions.for_mode("sgcls", val_fraction=0.0))
    assert ag.videos("train") == ()  # AAAAA now has 2 frames
    assert ag.report.frames_no_visible_object == {"train": 1, "test": 1}
    assert ag.report.videos_too_short == {"train": 2}


def _marked_root(tmp_path):
    """The fixture with a second, identical phone in frame 25; its _filtersmall file lacks the
    cup of frame 5, the second phone, and the whole of CCCCC's frame 2."""
    persons, objects = fixture_annotations()
    objects["AAAAA.mp4/000025.png"].append(copy.deepcopy(objects["AAAAA.mp4/000025.png"][0]))
    small = copy.deepcopy(objects)
    del small["AAAAA.mp4/000005.png"][0]
    small["AAAAA.mp4/000025.png"].pop()
    del small["CCCCC.mp4/000002.png"]
    return persons, objects, small


def test_mark_small_marks_the_objects_absent_from_filtersmall(tmp_path):
    root = write_root(tmp_path / "ag", *_marked_root(tmp_path))
    ag = load_action_genome(root, ReaderOptions(val_fraction=0.0, mark_small=True))
    (a,) = ag.videos("train")
    # Frame 5: the cup; frame 25: the second of two identical phones; frame 35: nothing.
    assert [[o.small for o in f.objects] for f in a.frames] == [[True], [False, True], [False]]
    assert a.frames[1].objects[0].box == a.frames[1].objects[1].box
    (c,) = ag.videos("test")
    assert [[o.small for o in f.objects] for f in c.frames] == [[False], [True], [False]]  # frame 2 missing
    assert ag.report.objects_small == {"train": 2, "test": 1}
    # Everything but the flags is the plain full reading; without mark_small nothing is marked.
    plain = load_action_genome(root, ReaderOptions(val_fraction=0.0))
    assert [[o.small for f in v.frames for o in f.objects] for v in plain.videos("train")] == [[False] * 4]
    assert [[dataclasses.replace(o, small=False) for o in f.objects] for f in a.frames] == [
        list(f.objects) for f in plain.videos("train")[0].frames]
    assert "objects marked small (absent from _filtersmall): test 1, train 2" in describe(ag)
    # Restricted to the unmarked objects, it is the _filtersmall reading: here nothing is left
    # (AAAAA and CCCCC keep 2 frames each), and with min_frames=2 both videos.
    for min_frames in (3, 2):
        marked = load_action_genome(root, ReaderOptions(val_fraction=0.0, mark_small=True, min_frames=1))
        filtered = load_action_genome(root, ReaderOptions(val_fraction=0.0, filter_small=True, min_frames=min_frames))
        assert filtersmall_view(marked, min_frames) == view_of(filtered)
        assert len(view_of(filtered)) == {3: 0, 2: 3}[min_frames]
    # With filter_small there is nothing to mark.
    ag = load_action_genome(root, ReaderOptions(val_fraction=0.0, filter_small=True, mark_small=True, min_frames=2))
    assert not any(o.small for v in ag.videos("train") for f in v.frames for o in f.objects)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s["AAAAA.mp4/000025.png"][0].update({"bbox": (1, 2, 3, 5)}),
         r"frame 'AAAAA.mp4/000025.png': object 'phone' with bbox \[1.0, 2.0, 3.0, 5.0\] has no counterpart"),
        (lambda s: s["AAAAA.mp4/000035.png"].append(copy.deepcopy(s["AAAAA.mp4/000035.png"][-1])),
         r"frame 'AAAAA.mp4/000035.png': object 'table' .* no counterpart in object_bbox_and_relationship\.pkl"),
        (lambda s: s.update({"ZZZZZ.mp4/000001.png": [obj("bed", (0, 0, 50, 50), ["looking_at"])]}),
         r"frame 'ZZZZZ.mp4/000001.png': object 'bed'"),
    ],
    ids=["other-box", "one-too-many", "frame-not-in-full"],
)
def test_filtersmall_objects_without_counterpart_are_errors(tmp_path, edit, message):
    persons, objects, small = _marked_root(tmp_path)
    edit(small)
    root = write_root(tmp_path / "ag", persons, objects, small)
    with pytest.raises(AnnotationError, match=r"object_bbox_and_relationship_filtersmall\.pkl, " + message):
        load_action_genome(root, ReaderOptions(mark_small=True))
    # Without mark_small the _filtersmall file is not read.
    load_action_genome(root, ReaderOptions())


def test_kept_in_filtersmall_matches_multisets_in_order():
    a, b = (11, (1.0, 2.0, 3.0, 4.0)), (12, (1.0, 2.0, 3.0, 4.0))
    assert kept_in_filtersmall([a, b, a, a], [a, b, a]) == [True, True, True, False]
    assert kept_in_filtersmall([a, None, b], [b, b]) == [False, False, True]
    assert kept_in_filtersmall([a], []) == [False]


def test_validation_split_is_seeded_and_stable(tmp_path):
    persons, objects = fixture_annotations()
    # Twenty more train videos of three frames each.
    for v in range(20):
        for n in range(3):
            key = f"V{v:04d}.mp4/{n:06d}.png"
            persons[key] = {"bbox": persons["AAAAA.mp4/000005.png"]["bbox"], "bbox_size": (320, 240)}
            objects[key] = [obj("bed", (0, 0, 50, 50), ["looking_at"], [], ["lying_on"])]
    root = write_root(tmp_path, persons, objects)
    options = ReaderOptions(val_fraction=0.1, val_seed=3)
    a = load_action_genome(root, options)
    b = load_action_genome(root, options)
    val = [v.name for v in a.videos("val")]
    assert len(val) == 3  # ceil(0.1 * 21)
    assert val == [v.name for v in b.videos("val")]
    assert all(v.split is Split.VAL for v in a.videos("val"))
    train = {v.name for v in a.videos("train")}
    assert len(train) == 18 and not train & set(val)
    other_seed = load_action_genome(root, ReaderOptions(val_fraction=0.1, val_seed=4))
    assert {v.name for v in other_seed.videos("val")} != set(val)

    # Stable: the choice depends on names and seed, not on the order of the list,
    # and adding videos never moves a video into validation that was not chosen before
    # except by displacing it.
    names = sorted(train | set(val))
    assert validation_videos(names, 0.1, 3) == validation_videos(names[::-1], 0.1, 3) == frozenset(val)
    assert validation_videos(names, 0.0, 3) == frozenset()


# --- bad input ---------------------------------------------------------------------------


def test_missing_annotation_file(root):
    (root / "annotations" / "person_bbox.pkl").unlink()
    with pytest.raises(AnnotationError, match=r"person_bbox\.pkl: missing"):
        load_action_genome(root)


def test_missing_class_file(root):
    (root / "annotations" / "relationship_classes.txt").unlink()
    with pytest.raises(AnnotationError, match=r"relationship_classes\.txt: missing"):
        load_action_genome(root)


def test_truncated_pickle(root):
    path = root / "annotations" / "object_bbox_and_relationship.pkl"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(AnnotationError, match=r"object_bbox_and_relationship\.pkl: cannot be unpickled"):
        load_action_genome(root)


def test_class_file_out_of_order(root):
    path = root / "annotations" / "object_classes.txt"
    lines = path.read_text().split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines))
    with pytest.raises(AnnotationError, match=r"object_classes\.txt: lists 36 classes that are not"):
        load_action_genome(root)


def test_unknown_class_in_class_file(root):
    path = root / "annotations" / "relationship_classes.txt"
    path.write_text(path.read_text().replace("twisting", "juggling"))
    with pytest.raises(AnnotationError, match=r"relationship_classes\.txt: line 23: unknown class name 'juggling'"):
        load_action_genome(root)


def _broken(tmp_path, edit):
    persons, objects = fixture_annotations()
    edit(persons, objects)
    return write_root(tmp_path / "broken", persons, objects)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p, o: o["AAAAA.mp4/000005.png"][0].update({"class": "unicorn"}),
         r"object_bbox_and_relationship\.pkl, frame 'AAAAA.mp4/000005.png': object 0: unknown class 'unicorn'"),
        (lambda p, o: o["AAAAA.mp4/000025.png"][0].update({"spatial_relationship": ["inside_of"]}),
         r"frame 'AAAAA.mp4/000025.png': unknown predicate 'inside_of' in spatial_relationship"),
        (lambda p, o: o["AAAAA.mp4/000025.png"][0].update({"attention_relationship": ["holding"]}),
         r"frame 'AAAAA.mp4/000025.png': predicate 'holding' is not a attention predicate"),
        (lambda p, o: o.update({"AAAAA.mp4/frame9.png": o["AAAAA.mp4/000005.png"]}),
         r"frame \"'AAAAA.mp4/frame9.png'\": malformed frame key"),
        (lambda p, o: p["AAAAA.mp4/000025.png"].update({"bbox": np.array([[10, 10, 5, 50]], np.float32)}),
         r"person_bbox\.pkl, frame 'AAAAA.mp4/000025.png': degenerate person box"),
        (lambda p, o: p.pop("AAAAA.mp4/000025.png"),
         r"person_bbox\.pkl, frame 'AAAAA.mp4/000025.png': frame missing"),
        (lambda p, o: o["AAAAA.mp4/000025.png"][0].update({"bbox": (1, 2, "wide")}),
         r"frame 'AAAAA.mp4/000025.png': object 0: bbox \(1, 2, 'wide'\) is not \(x, y, w, h\)"),
        (lambda p, o: o["CCCCC.mp4/000001.png"][0]["metadata"].update({"set": "train"}),
         r"video 'CCCCC.mp4' has frames in both train and test"),
    ],
    ids=["unknown-class", "unknown-predicate", "wrong-group", "malformed-key", "degenerate-person",
         "person-frame-missing", "bbox-not-xywh", "video-in-two-sets"],
)
def test_bad_input_names_file_and_frame(tmp_path, edit, message):
    with pytest.raises(AnnotationError, match=message):
        load_action_genome(_broken(tmp_path, edit))


def test_bad_objects_raise_when_asked(root):
    with pytest.raises(AnnotationError, match=r"frame 'AAAAA.mp4/000035.png': object 0 \(sofa\): no box"):
        load_action_genome(root, ReaderOptions(on_bad_object="error"))


def test_frames_without_person_are_counted_not_read(tmp_path):
    # A frame without a person and without a visible object counts once, as no visible object.
    root = _broken(tmp_path, lambda p, o: p["CCCCC.mp4/000004.png"].update({"bbox": NO_PERSON}))
    r = load_action_genome(root, NO_VAL).report
    assert r.frames_no_visible_object == {"test": 1}
    assert r.frames_no_person_box == {"train": 1}


def test_options_are_validated():
    with pytest.raises(ValueError, match="on_bad_object"):
        ReaderOptions(on_bad_object="ignore")
    with pytest.raises(ValueError, match="val_fraction"):
        ReaderOptions(val_fraction=1.0)
