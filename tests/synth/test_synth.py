"""The synthetic Action Genome generator: layout, determinism, video/PNG agreement, the
edge cases, the relation rules and the round trip through the reader."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from click.testing import CliRunner

import cli
from tests.helpers.ag import filtersmall_view, view_of
from stage1_detect.action_genome import ReaderOptions, load_action_genome
from synth import (
    ACTIVITY_BY_NAME,
    META_FILE,
    PICKLE_CLASS_NAME,
    RAW_OBJECT_CLASSES,
    RAW_PREDICATE_CLASSES,
    SMALL_EDGE,
    ContactState,
    SynthConfig,
    attention_label,
    contact_labels,
    edge_case_plan,
    generate_synthetic_ag,
    is_test_video,
    spatial_labels,
)
from store.vocabulary import ACTION_GENOME, PredicateGroup

# 4 videos cover every edge case of edge_case_plan (indices 0..3) and one test video.
CONFIG = SynthConfig(videos=4, frames_per_video=8, seed=0)
ANN = "annotations"
PICKLES = ("person_bbox.pkl", "object_bbox_and_relationship.pkl", "object_bbox_and_relationship_filtersmall.pkl")
TEXT_FILES = ("object_classes.txt", "relationship_classes.txt", "frame_list.txt")
WORLD_NAME = {raw: name for name, raw in PICKLE_CLASS_NAME.items()}  # cup/glass/bottle -> cup
OBJECT_KEYS = {"class", "bbox", "attention_relationship", "spatial_relationship", "contacting_relationship",
               "visible", "metadata"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ag"
    summary = generate_synthetic_ag(out, CONFIG, progress=False)
    assert summary.videos == 4 and summary.frames > 0 and summary.root == out
    return out


@pytest.fixture(scope="module")
def data(root):
    def load(name):
        with open(root / ANN / name, "rb") as fh:
            return pickle.load(fh)

    persons, objects, small = (load(n) for n in PICKLES)
    meta = json.loads((root / META_FILE).read_text())
    return persons, objects, small, meta


def _xyxy(bbox):
    x, y, w, h = bbox
    return (x, y, x + w, y + h)


# --- layout -------------------------------------------------------------------------------


def test_layout_is_the_real_one(root, data):
    persons, objects, small, meta = data
    ann = root / ANN
    assert sorted(p.name for p in ann.iterdir()) == sorted(PICKLES + TEXT_FILES)
    assert (ann / "object_classes.txt").read_text().splitlines() == list(RAW_OBJECT_CLASSES)
    assert len(RAW_OBJECT_CLASSES) == 36 and RAW_OBJECT_CLASSES[8] == "closet/cabinet"
    assert (ann / "relationship_classes.txt").read_text().splitlines() == list(RAW_PREDICATE_CLASSES)
    assert RAW_PREDICATE_CLASSES[:3] == ("lookingat", "notlookingat", "unsure") and len(RAW_PREDICATE_CLASSES) == 26
    frame_list = (ann / "frame_list.txt").read_text().splitlines()
    assert frame_list == sorted(frame_list)
    assert set(frame_list) == set(persons) == set(objects) == set(small)
    assert list(persons) == list(objects) == frame_list
    videos = {k.split("/")[0] for k in frame_list}
    assert videos == set(meta["videos"]) and len(videos) == 4
    for key in frame_list:
        m = re.fullmatch(r"([0-9A-Z]{5}\.mp4)/(\d{6})\.png", key)
        assert m, key
        png = root / "frames" / key
        assert png.is_file(), png
        with Image.open(png) as im:
            assert im.size == (CONFIG.width, CONFIG.height) and im.mode == "RGB"
    assert sorted(p.name for p in (root / "videos").iterdir()) == sorted(videos)
    # Only the annotated frames are dumped as PNG (png_all_frames=False), and they are sparse.
    for name, v in meta["videos"].items():
        pngs = sorted(p.name for p in (root / "frames" / name).iterdir())
        assert pngs == [f"{n:06d}.png" for n in v["frame_numbers"]]
        assert v["decoded_frames"] == len(v["frame_numbers"]) * CONFIG.frame_stride


def test_pickle_entries_have_the_real_structure(data):
    persons, objects, _, meta = data
    predicates = set(ACTION_GENOME.predicates)
    groups = {g: set(ACTION_GENOME.predicates[slice(*ACTION_GENOME.group_range(g))]) for g in PredicateGroup}
    classes = set(RAW_OBJECT_CLASSES[1:])  # AG's spelling: cup/glass/bottle, never cup
    for key, entry in persons.items():
        assert set(entry) == {"bbox", "bbox_size"}
        assert entry["bbox"].dtype == np.float32 and entry["bbox"].shape in ((1, 4), (0, 4))
        assert entry["bbox_size"] == (CONFIG.width, CONFIG.height)
        if len(entry["bbox"]):
            x1, y1, x2, y2 = entry["bbox"][0]
            assert 0 <= x1 < x2 <= CONFIG.width and 0 <= y1 < y2 <= CONFIG.height
    for key, objs in objects.items():
        video, number = key.split("/")
        split = meta["videos"][video]["split"]
        for o in objs:
            assert set(o) == OBJECT_KEYS
            assert o["class"] in classes
            assert o["metadata"] == {"tag": f"{video}/person/{number[:6]}", "set": split}
            if not o["visible"]:
                assert o["bbox"] is None
                assert o["attention_relationship"] is o["spatial_relationship"] is o["contacting_relationship"] is None
                continue
            assert len(o["attention_relationship"]) == 1
            assert set(o["attention_relationship"]) <= groups[PredicateGroup.ATTENTION]
            assert 1 <= len(o["spatial_relationship"]) and set(o["spatial_relationship"]) <= groups[PredicateGroup.SPATIAL]
            assert 1 <= len(o["contacting_relationship"])
            assert set(o["contacting_relationship"]) <= groups[PredicateGroup.CONTACTING]
            assert set(o["attention_relationship"] + o["spatial_relationship"]) <= predicates
            if o["bbox"] is not None:
                assert isinstance(o["bbox"], tuple) and len(o["bbox"]) == 4
                assert all(isinstance(v, float) for v in o["bbox"])
                x1, y1, x2, y2 = _xyxy(o["bbox"])
                assert 0 <= x1 < x2 <= CONFIG.width and 0 <= y1 < y2 <= CONFIG.height
    # A video has one split; the split rule gives exactly floor(N f) test videos.
    assert [v["split"] for v in sorted(meta["videos"].values(), key=lambda v: v["index"])] == [
        "train", "train", "train", "test"]
    assert sum(is_test_video(i, 0.25) for i in range(40)) == 10


def test_filtersmall_drops_exactly_the_short_edge_boxes(data):
    _, objects, small, _ = data
    dropped = 0
    for key, objs in objects.items():
        kept = [o for o in objs if o["bbox"] is None or min(o["bbox"][2], o["bbox"][3]) >= SMALL_EDGE]
        assert small[key] == kept
        dropped += len(objs) - len(kept)
    assert dropped > 0  # the tiny-object edge case of video 2


# --- determinism ----------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_output(root, tmp_path):
    again = tmp_path / "again"
    generate_synthetic_ag(again, CONFIG, progress=False)
    for name in PICKLES + TEXT_FILES:
        assert (again / ANN / name).read_bytes() == (root / ANN / name).read_bytes(), name
    assert (again / META_FILE).read_bytes() == (root / META_FILE).read_bytes()
    pngs = sorted(p.relative_to(root) for p in (root / "frames").rglob("*.png"))
    assert pngs == sorted(p.relative_to(again) for p in (again / "frames").rglob("*.png"))
    for rel in pngs:
        assert (again / rel).read_bytes() == (root / rel).read_bytes(), rel


def test_different_seed_differs_and_videos_do_not_depend_on_their_number(root, tmp_path):
    other = tmp_path / "other"
    generate_synthetic_ag(other, SynthConfig(videos=4, frames_per_video=8, seed=1, write_png=False, write_mp4=False),
                          progress=False)
    assert (other / ANN / PICKLES[1]).read_bytes() != (root / ANN / PICKLES[1]).read_bytes()
    assert not (other / "frames").exists() and not (other / "videos").exists()
    # Video i depends on (seed, i) only: the first 2 of 4 videos equal a 2-video run.
    two = tmp_path / "two"
    generate_synthetic_ag(two, SynthConfig(videos=2, frames_per_video=8, seed=0, write_png=False, write_mp4=False),
                          progress=False)
    with open(two / ANN / PICKLES[1], "rb") as fh:
        objects_two = pickle.load(fh)
    with open(root / ANN / PICKLES[1], "rb") as fh:
        objects_four = pickle.load(fh)
    assert objects_two == {k: v for k, v in objects_four.items() if k.split("/")[0] in
                           {k2.split("/")[0] for k2 in objects_two}}
    assert len({k.split("/")[0] for k in objects_two}) == 2


def test_decoded_mp4_frames_equal_the_pngs(root, data):
    """libx264rgb at qp 0 is lossless: measured max abs error 0 (tolerance 0). PNG ``NNNNNN.png``
    is decoded frame NNNNNN - 1: AG's dump numbers from 1, and the synthetic mp4 has a constant
    rate from 0, so the dump writes every decoded frame once."""
    meta = data[3]
    for name, v in meta["videos"].items():
        with av.open(str(root / "videos" / name)) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) == v["decoded_frames"]
        assert min(v["frame_numbers"]) >= 1
        for n in v["frame_numbers"]:
            png = np.asarray(Image.open(root / "frames" / name / f"{n:06d}.png").convert("RGB"))
            err = np.abs(decoded[n - 1].astype(np.int16) - png.astype(np.int16)).max()
            assert err == 0, (name, n, err)
        # Consecutive frames differ: the scene moves (person walking, camera panning).
        assert any(not np.array_equal(a, b) for a, b in zip(decoded, decoded[1:]))


@pytest.mark.skipif(shutil.which("ffmpeg") is None,
                    reason="needs the ffmpeg command-line tool (apt-get install ffmpeg)")
def test_pngs_are_what_the_dump_command_writes(root, data, tmp_path):
    """Each synthetic PNG is, bit for bit, the picture AG's ``ffmpeg -i VIDEO.mp4 %06d.png``
    writes under its name, and the dump writes one picture per decoded frame."""
    meta = data[3]
    for name, v in list(meta["videos"].items())[:2]:
        out = tmp_path / name
        out.mkdir()
        subprocess.run([shutil.which("ffmpeg"), "-loglevel", "error", "-i", str(root / "videos" / name),
                        str(out / "%06d.png")], check=True)
        assert sorted(p.name for p in out.iterdir()) == [f"{n:06d}.png" for n in range(1, v["decoded_frames"] + 1)]
        for n in v["frame_numbers"]:
            ours = np.asarray(Image.open(root / "frames" / name / f"{n:06d}.png").convert("RGB"))
            theirs = np.asarray(Image.open(out / f"{n:06d}.png").convert("RGB"))
            assert np.array_equal(ours, theirs), (name, n)


# --- edge cases --------------------------------------------------------------------------------


def test_edge_cases_are_present(data):
    persons, objects, small, meta = data
    by_index = {v["index"]: (name, v) for name, v in meta["videos"].items()}
    plans = [edge_case_plan(i, CONFIG.frames_per_video) for i in range(4)]
    assert [p["short"] for p in plans] == [False, True, False, False]

    def key(i, k):
        name, v = by_index[i]
        return f"{name}/{v['frame_numbers'][k]:06d}.png"

    # no person box (detector miss) at frame 1 of videos 0 and 3
    for i in (0, 3):
        assert persons[key(i, 1)]["bbox"].shape == (0, 4)
    assert sum(p["bbox"].shape[0] == 0 for p in persons.values()) == 2
    # a short video with 2 annotated frames
    assert len(by_index[1][1]["frame_numbers"]) == 2
    # invisible objects at frame 1 of videos 1 and 3
    for i in (1, 3):
        assert any(not o["visible"] and o["bbox"] is None for o in objects[key(i, 1)])
    # a frame with no visible object (last frame of video 2)
    assert objects[key(2, 7)] and not any(o["visible"] for o in objects[key(2, 7)])
    # a visible object with bbox None (video 3, frame 1), only in a frame without a person box
    assert [o["visible"] for o in objects[key(3, 1)] if o["bbox"] is None] == [True, False]
    for k, objs in objects.items():
        if any(o["visible"] and o["bbox"] is None for o in objs):
            assert persons[k]["bbox"].shape == (0, 4), k
    # a tiny box in video 2: short edge < 16 in the full pickle, absent from _filtersmall
    tiny = [o for k, objs in objects.items() if k.startswith(by_index[2][0]) for o in objs
            if o["bbox"] is not None and min(o["bbox"][2:]) < SMALL_EDGE]
    assert tiny and all(8 <= min(o["bbox"][2:]) <= 14 for o in tiny)
    # test-set frames
    assert any(o["metadata"]["set"] == "test" for objs in objects.values() for o in objs)


# --- relation rules -------------------------------------------------------------------------------


def test_spatial_rules_on_hand_worked_boxes():
    person = (100, 50, 140, 250)  # height 200: top 50, 80 % line at 210
    assert spatial_labels(person, (110, 0, 130, 40), False) == ["above"]
    assert spatial_labels(person, (160, 100, 180, 140), False) == ["on_the_side_of"]
    assert spatial_labels(person, (0, 0, 60, 20), False) == ["above", "on_the_side_of"]
    assert spatial_labels(person, (110, 120, 130, 140), True) == ["in_front_of"]
    assert spatial_labels(person, (110, 120, 130, 140), False) == ["behind"]
    assert spatial_labels(person, (90, 220, 150, 240), True) == ["beneath", "in_front_of"]
    assert spatial_labels(person, (90, 100, 150, 140), False, supports_person=True) == ["beneath", "behind"]
    assert spatial_labels(person, (80, 40, 160, 260), False) == ["behind", "in"]


def test_attention_rule():
    head = (100.0, 50.0)
    assert attention_label(head, 1, (120, 40, 140, 60), 320) == "looking_at"
    assert attention_label(head, -1, (120, 40, 140, 60), 320) == "not_looking_at"
    assert attention_label(head, 1, (290, 40, 310, 60), 320) == "not_looking_at"  # 190 px > 0.55 * 320
    assert attention_label(head, 0, (120, 40, 140, 60), 320) == "unsure"


def test_contact_rules():
    base = dict(cls="cup", box=(100, 100, 120, 130), attached=False, drawn_in_front=False, posture="stand",
                hip=(0.0, 0.0), hand=(110.0, 115.0), hand_extended=False, hand_free=True, hand_speed=0.0, person_speed=0.0,
                head_box=(0, 0, 10, 10), person_box=(90, 0, 130, 200))
    assert contact_labels(ContactState(**base)) == ["not_contacting"]  # a hand hanging at rest touches nothing
    assert contact_labels(ContactState(**base | {"hand_extended": True})) == ["touching"]
    # A hand that holds something else touches nothing (the pillow carried over a sofa).
    assert contact_labels(ContactState(**base | {"hand_extended": True, "hand_free": False})) == ["not_contacting"]
    assert contact_labels(ContactState(**base | {"attached": True})) == ["holding"]
    assert contact_labels(ContactState(**base | {"attached": True, "person_speed": 3.0})) == ["carrying", "holding"]
    assert contact_labels(ContactState(**base | {"attached": True, "head_box": (95, 90, 115, 110)})) == [
        "drinking_from", "holding"]
    assert contact_labels(ContactState(**base | {"cls": "food", "attached": True, "head_box": (95, 90, 115, 110)})) == [
        "eating", "holding"]
    assert contact_labels(ContactState(**base | {"cls": "paper", "hand_extended": True, "hand_speed": 3.0})) == [
        "writing_on"]
    assert contact_labels(ContactState(**base | {"cls": "sofa", "posture": "sit", "hip": (105.0, 110.0)})) == [
        "sitting_on"]
    assert contact_labels(ContactState(**base | {"cls": "bed", "posture": "lie", "hip": (105.0, 110.0)})) == [
        "lying_on"]
    assert contact_labels(ContactState(**base | {"cls": "blanket", "drawn_in_front": True,
                                                 "box": (80, 100, 140, 200)})) == ["covered_by"]


def test_generated_relations_follow_the_rules(data):
    persons, objects, _, meta = data
    held_frames = 0
    counts = Counter()
    for name, v in meta["videos"].items():
        activity = ACTIVITY_BY_NAME[v["activity"]]
        assert set(v["relevant"]) <= set(activity.classes)
        assert not set(v["bystanders"]) & set(activity.classes)
        held_centres, free_centres = [], []
        for n in v["frame_numbers"]:
            key = f"{name}/{n:06d}.png"
            truth = v["frames"][key]
            annotated = {WORLD_NAME[o["class"]] for o in objects[key]}
            # Bystanders are drawn (listed in the truth with their boxes) but never annotated.
            assert not annotated & set(v["bystanders"])
            assert annotated <= set(v["relevant"])
            for n_entry, o in enumerate(objects[key]):
                if not o["visible"] or o["bbox"] is None:
                    continue
                counts.update(o["contacting_relationship"])
                x1, y1, x2, y2 = _xyxy(o["bbox"])
                if truth["held_entry"] == n_entry:
                    assert truth["held"] == WORLD_NAME[o["class"]]
                    # A held object is centred on the hand (it moves with the hand).
                    hx, hy = truth["hand"]
                    assert abs((x1 + x2) / 2 - hx) <= 1 and abs((y1 + y2) / 2 - hy) <= 1
                    assert "holding" in o["contacting_relationship"]
                    held_centres.append((n_entry, ((x1 + x2) / 2, (y1 + y2) / 2)))
                    held_frames += 1
                else:
                    assert "holding" not in o["contacting_relationship"]
                    free_centres.append((n_entry, ((x1 + x2) / 2, (y1 + y2) / 2)))
                if "sitting_on" in o["contacting_relationship"]:
                    assert truth["posture"] == "sit" and o["class"] in ("chair", "sofa/couch")
                    assert "beneath" in o["spatial_relationship"]
                if truth["facing"] == 0:
                    assert o["attention_relationship"] == ["unsure"]
        for entry in {e for e, _ in held_centres}:
            # The held object was picked up from somewhere else: it moved with the hand.
            assert {c for e, c in free_centres if e == entry} - {c for e, c in held_centres if e == entry}
    assert held_frames > 0
    assert counts["not_contacting"] > 0 and len(counts) >= 3


def test_room_cue_is_visible_in_only_part_of_each_video(data):
    meta = data[3]
    for v in meta["videos"].values():
        if len(v["frame_numbers"]) < 8:
            continue
        seen = [f["room_visible_fraction"] > 0 for f in v["frames"].values()]
        assert 0 < sum(seen) < len(seen)


# --- reader round trip ---------------------------------------------------------------------------


def test_round_trip_through_the_reader(root, data):
    persons, objects, _, meta = data
    ag = load_action_genome(root, ReaderOptions(val_fraction=0.0))
    predicate = {name: i for i, name in enumerate(ACTION_GENOME.predicates)}
    videos = {v.name: v for split in ("train", "test") for v in ag.videos(split)}
    short = next(name for name, v in meta["videos"].items() if len(v["frame_numbers"]) == 2)
    assert short not in videos
    assert set(videos) == set(meta["videos"]) - {short}
    n_frames = 0
    for name, video in videos.items():
        assert video.split.value == meta["videos"][name]["split"]
        for frame in video.frames:
            n_frames += 1
            assert (frame.width, frame.height) == (CONFIG.width, CONFIG.height)
            raw_person = persons[frame.name]["bbox"]
            assert raw_person.shape == (1, 4)
            np.testing.assert_allclose(frame.person_box, raw_person[0])
            raw = [o for o in objects[frame.name] if o["visible"] and o["bbox"] is not None]
            assert len(frame.objects) == len(raw)
            for got, want in zip(frame.objects, raw):
                assert ACTION_GENOME.objects[got.label] == WORLD_NAME[want["class"]]
                np.testing.assert_allclose(got.box, _xyxy(want["bbox"]))
                assert got.attention == tuple(predicate[p] for p in want["attention_relationship"])
                assert set(got.spatial) == {predicate[p] for p in want["spatial_relationship"]}
                assert set(got.contacting) == {predicate[p] for p in want["contacting_relationship"]}
    # Frames that the filters drop: no person (2), no visible object (1); the short video's 2.
    assert n_frames == len(objects) - 2 - 1 - 2
    bad = sum(o["visible"] and o["bbox"] is None for objs in objects.values() for o in objs)
    assert bad == 1
    # The malformed object is in a frame without a person box: counted once that frame is kept.
    assert sum(ag.report.objects_without_box.values()) == 0
    with_missed = load_action_genome(root, ReaderOptions(val_fraction=0.0, require_person_box=False))
    assert sum(with_missed.report.objects_without_box.values()) == bad


def _shrink_objects(root: Path) -> None:
    """Make every object of the first frame of video 0 and of the first three frames of video 1
    tiny (10 px), and write _filtersmall again by the generator's rule: whole frames, and a video
    at min_frames 6, then exist only in the full annotations (the generator makes no such frame)."""
    ann = root / ANN
    with open(ann / PICKLES[1], "rb") as fh:
        objects = pickle.load(fh)
    videos = sorted({k.split("/")[0] for k in objects})
    for video, count in ((videos[0], 1), (videos[1], 3)):
        for key in sorted(k for k in objects if k.startswith(video))[:count]:
            for o in objects[key]:
                if o["bbox"] is not None:
                    o["bbox"] = (o["bbox"][0], o["bbox"][1], 10.0, 10.0)
    small = {k: [o for o in v if o["bbox"] is None or min(o["bbox"][2:]) >= SMALL_EDGE] for k, v in objects.items()}
    for name, content in ((PICKLES[1], objects), (PICKLES[2], small)):
        with open(ann / name, "wb") as fh:
            pickle.dump(content, fh)


@pytest.mark.parametrize("min_frames", [3, 6])
def test_marked_full_reading_restricted_is_the_filtersmall_reading(tmp_path_factory, min_frames):
    """One reading of the full pickle with the small objects marked serves SGCLS / SGDET:
    restricted to unmarked objects, frames that keep one and videos that keep min_frames such
    frames, it is the _filtersmall reading, frame for frame and object for object (train and
    val together: the validation draw depends on the number of videos)."""
    root = tmp_path_factory.getbasetemp() / "synth_small"
    if not root.exists():
        result = CliRunner().invoke(cli.main, ["synth", "--out", str(root), "--videos", "12", "--frames", "8",
                                               "--seed", "3", "--no-png"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        _shrink_objects(root)
    marked = load_action_genome(root, ReaderOptions(mark_small=True, min_frames=min_frames, val_fraction=0.2))
    filtered = load_action_genome(root, ReaderOptions(filter_small=True, min_frames=min_frames, val_fraction=0.2))
    view = filtersmall_view(marked, min_frames)
    assert view == view_of(filtered)
    # Not vacuous: objects are marked, and the restriction drops frames (and, at 6, videos).
    assert sum(marked.report.objects_small.values()) > 0
    n_frames = sum(len(v.frames) for split in ("train", "val", "test") for v in marked.videos(split))
    assert sum(len(frames) for _, frames in view.values()) < n_frames
    if min_frames == 6:
        assert len(view) < len(view_of(marked))
    assert all(o.small is False for _, frames in view.values() for f in frames for o in f.objects)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="frames_per_video"):
        SynthConfig(frames_per_video=2)
    with pytest.raises(ValueError, match="frame size"):
        SynthConfig(width=321)
    with pytest.raises(ValueError, match="test_fraction"):
        SynthConfig(test_fraction=1.5)


def test_every_edge_case_reaches_both_splits():
    from synth import edge_case_plan, is_test_video

    plans = [(is_test_video(i, 0.25), edge_case_plan(i, 16)) for i in range(40)]
    for case in ("short", "no_person", "invisible", "no_visible", "tiny", "bbox_none"):
        splits = {test for test, plan in plans if plan[case] is not None and plan[case] is not False}
        assert splits == {False, True}, case
