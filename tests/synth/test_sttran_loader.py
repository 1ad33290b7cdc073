"""STTran's own Action Genome loader, run on ``cli.py synth`` output, accepts it, and keeps
exactly what the project's reader keeps.

:func:`sttran_ag` restates, by hand, the rules of STTran's ``AG`` dataset
(``dataloader/action_genome.py`` of yrcong/STTran, the loader every AG baseline copies):

* class names: ``__background__`` + ``object_classes.txt``, entries 9, 11, 23, 24, 31
  replaced by the compounds (``cup/glass/bottle``, ...); predicates from
  ``relationship_classes.txt`` with 14 entries replaced by their underscored spelling;
  every pickle name is looked up in those lists (``list.index``: an unknown name fails);
* set membership: a frame belongs to the split named by its *first* object's
  ``metadata['set']``; it is valid when one of its objects is visible;
* the person-box filter: a frame whose ``person_bbox`` has no row is dropped;
* in a kept frame, a visible object must have a box (an assertion);
* a video is kept when it has more than two kept frames.

Only the filter mode that the baselines run (``filter_nonperson_box_frame=True``) is
restated: with False, that loader keeps no video at all (it appends frames to the video
only inside the filter's branch). "Both filter modes" below are the two object pickles
(``filter_small_box``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from stage1_detect.action_genome import ReaderOptions, load_action_genome

COMPOUNDS = {9: "closet/cabinet", 11: "cup/glass/bottle", 23: "paper/notebook", 24: "phone/camera",
             31: "sofa/couch"}
PREDICATE_SPELLING = {0: "looking_at", 1: "not_looking_at", 5: "in_front_of", 7: "on_the_side_of",
                      10: "covered_by", 11: "drinking_from", 13: "have_it_on_the_back", 15: "leaning_on",
                      16: "lying_on", 17: "not_contacting", 18: "other_relationship", 19: "sitting_on",
                      20: "standing_on", 25: "writing_on"}


def _lines(path: Path) -> list[str]:
    return [line.strip("\n") for line in path.read_text().splitlines(keepends=True)]


def sttran_ag(root: Path, split: str, filter_small_box: bool) -> dict[str, list[tuple]]:
    """What STTran's ``AG(mode=split, filter_small_box=...)`` keeps, per video:
    ``[(frame key, person box, [(class id, xyxy box, global predicate ids), ...]), ...]``."""
    ann = root / "annotations"
    object_classes = ["__background__"] + _lines(ann / "object_classes.txt")
    for i, name in COMPOUNDS.items():
        object_classes[i] = name
    relationship_classes = _lines(ann / "relationship_classes.txt")
    for i, name in PREDICATE_SPELLING.items():
        relationship_classes[i] = name
    attention, spatial, contacting = relationship_classes[0:3], relationship_classes[3:9], relationship_classes[9:]
    with open(ann / "person_bbox.pkl", "rb") as fh:
        person_bbox = pickle.load(fh)
    name = "object_bbox_and_relationship_filtersmall.pkl" if filter_small_box else "object_bbox_and_relationship.pkl"
    with open(ann / name, "rb") as fh:
        object_bbox = pickle.load(fh)

    video_dict: dict[str, list[str]] = {}
    for key in person_bbox:
        if object_bbox[key][0]["metadata"]["set"] == split:  # IndexError on a frame without objects
            if any(o["visible"] for o in object_bbox[key]):
                video_dict.setdefault(key.split("/")[0], []).append(key)

    kept = {}
    for video, keys in video_dict.items():
        frames = []
        for key in keys:
            if person_bbox[key]["bbox"].shape[0] == 0:
                continue
            objects = []
            for o in object_bbox[key]:
                if o["visible"]:
                    assert o["bbox"] is not None, "warning! The object is visible without bbox"
                    x, y, w, h = o["bbox"]
                    predicates = ([attention.index(r) for r in o["attention_relationship"]]
                                  + [3 + spatial.index(r) for r in o["spatial_relationship"]]
                                  + [9 + contacting.index(r) for r in o["contacting_relationship"]])
                    objects.append((object_classes.index(o["class"]), (x, y, x + w, y + h), tuple(predicates)))
            frames.append((key, tuple(person_bbox[key]["bbox"][0].tolist()), objects))
        if len(frames) > 2:
            kept[video] = frames
    return kept


def project_reading(root: Path, split: str, filter_small: bool) -> dict[str, list[tuple]]:
    """The same view of the project's reader (no validation split, defaults otherwise)."""
    ag = load_action_genome(root, ReaderOptions(filter_small=filter_small, val_fraction=0.0))
    return {v.name: [(f.name, tuple(np.float32(c).item() for c in f.person_box),
                      [(o.label, o.box, o.predicates) for o in f.objects]) for f in v.frames]
            for v in ag.videos(split)}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    # 16 videos: every edge case of edge_case_plan, the malformed object (video 3) included.
    out = tmp_path_factory.mktemp("sttran") / "ag"
    result = CliRunner().invoke(cli.main, ["synth", "--out", str(out), "--videos", "16", "--frames", "6",
                                           "--no-png"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("filter_small", [False, True], ids=["full", "filtersmall"])
def test_sttran_loader_accepts_synth_and_keeps_what_the_reader_keeps(root, filter_small):
    for split in ("train", "test"):
        theirs = sttran_ag(root, split, filter_small)
        ours = project_reading(root, split, filter_small)
        assert theirs, f"STTran's loader keeps no {split} video"
        assert sorted(theirs) == sorted(ours)
        for video, frames in theirs.items():
            assert sorted(frames) == sorted(ours[video]), video


def test_the_loader_rules_reject_what_the_synth_used_to_write(root, tmp_path):
    """The restated rules are not vacuous: short class names, or a visible object without a box
    in a frame with a person box, make them fail as STTran's loader does."""
    import shutil

    copy = tmp_path / "ag"
    shutil.copytree(root / "annotations", copy / "annotations")
    path = copy / "annotations" / "object_bbox_and_relationship.pkl"
    with open(path, "rb") as fh:
        objects = pickle.load(fh)
    with open(copy / "annotations" / "person_bbox.pkl", "rb") as fh:
        persons = pickle.load(fh)
    train = next(k for k, objs in objects.items() if objs[0]["metadata"]["set"] == "train"
                 and persons[k]["bbox"].shape[0] and objs[0]["visible"])

    def write_and_load(objs):
        with open(path, "wb") as fh:
            pickle.dump(objects | {train: objs}, fh)
        return sttran_ag(copy, "train", False)

    original = objects[train]
    with pytest.raises(ValueError, match="is not in list"):
        write_and_load([{**original[0], "class": "cup"}] + original[1:])  # AG writes cup/glass/bottle
    with pytest.raises(AssertionError, match="visible without bbox"):
        write_and_load([{**original[0], "bbox": None}] + original[1:])
