"""A hand-written Action Genome root, small enough to reason about line by line."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

RAW_OBJECT_CLASSES = [
    "person", "bag", "bed", "blanket", "book", "box", "broom", "chair", "closet/cabinet",
    "clothes", "cup/glass/bottle", "dish", "door", "doorknob", "doorway", "floor", "food",
    "groceries", "laptop", "light", "medicine", "mirror", "paper/notebook", "phone/camera",
    "picture", "pillow", "refrigerator", "sandwich", "shelf", "shoe", "sofa/couch", "table",
    "television", "towel", "vacuum", "window",
]
RAW_PREDICATE_CLASSES = [
    "lookingat", "notlookingat", "unsure", "above", "beneath", "infrontof", "behind",
    "onthesideof", "in", "carrying", "coveredby", "drinkingfrom", "eating", "haveitontheback",
    "holding", "leaningon", "lyingon", "notcontacting", "otherrelationship", "sittingon",
    "standingon", "touching", "twisting", "wearing", "wiping", "writingon",
]

PERSON = np.array([[50.0, 60.0, 150.0, 230.0]], dtype=np.float32)
NO_PERSON = np.zeros((0, 4), dtype=np.float32)


def obj(cls, bbox, att=(), spa=(), con=(), visible=True, split="train", frame="x"):
    return {
        "class": cls,
        "bbox": bbox,
        "attention_relationship": list(att) if visible else None,
        "spatial_relationship": list(spa) if visible else None,
        "contacting_relationship": list(con) if visible else None,
        "visible": visible,
        "metadata": {"tag": frame, "set": split},
    }


def fixture_annotations() -> tuple[dict, dict]:
    """(person_bbox, object_bbox_and_relationship) of the hand-written root.

    AAAAA.mp4 (train): 5 kept; 15 has no person; 25 kept; 35 kept with two bad objects
        skipped (sofa bbox None, chair of width 0) -> 3 frames, kept.
    BBBBB.mp4 (train): 2 frames -> dropped as too short.
    CCCCC.mp4 (test): frames listed 3, 1, 2 (kept, sorted) and 4 (nothing visible).
    """
    persons = {}
    objects = {}

    def add(key, person, objs):
        persons[key] = {"bbox": person, "bbox_size": (320, 240)}
        objects[key] = objs

    add("AAAAA.mp4/000005.png", PERSON, [
        obj("cup", (10, 20, 30, 40), ["looking_at"], ["in_front_of", "beneath"], ["holding"]),
        obj("closet", None, visible=False),
    ])
    add("AAAAA.mp4/000015.png", NO_PERSON, [obj("cup", (10, 20, 30, 40), ["looking_at"], [], ["holding"])])
    add("AAAAA.mp4/000025.png", PERSON, [
        obj("phone", (1, 2, 3, 4), ["not_looking_at"], ["on_the_side_of"], ["not_contacting"]),
    ])
    add("AAAAA.mp4/000035.png", PERSON, [
        obj("sofa", None, ["unsure"], [], ["sitting_on"]),
        obj("chair", (0, 0, 0, 10), ["unsure"], [], ["sitting_on"]),
        obj("table", (100, 100, 20, 10), ["unsure"], [], []),
    ])
    add("BBBBB.mp4/000001.png", PERSON, [obj("book", (5, 5, 10, 10), ["looking_at"], ["above"], [])])
    add("BBBBB.mp4/000002.png", PERSON, [obj("book", (5, 5, 10, 10), ["looking_at"], ["above"], [])])
    for n in (3, 1, 2):
        add(f"CCCCC.mp4/{n:06d}.png", PERSON, [
            obj("dish", (n, 0, 10, 10), ["looking_at"], ["in"], ["wiping", "touching"], split="test"),
        ])
    add("CCCCC.mp4/000004.png", PERSON, [obj("dish", None, visible=False, split="test")])
    return persons, objects


def write_root(root: Path, persons: dict, objects: dict, objects_small: dict | None = None) -> Path:
    """Write an AG root: class files, frame list and the three pickles."""
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "object_classes.txt").write_text("\n".join(RAW_OBJECT_CLASSES) + "\n")
    (ann / "relationship_classes.txt").write_text("\n".join(RAW_PREDICATE_CLASSES) + "\n")
    (ann / "frame_list.txt").write_text("\n".join(objects) + "\n")
    for name, data in (
        ("person_bbox.pkl", persons),
        ("object_bbox_and_relationship.pkl", objects),
        ("object_bbox_and_relationship_filtersmall.pkl", objects if objects_small is None else objects_small),
    ):
        with (ann / name).open("wb") as f:
            pickle.dump(data, f)
    return root


def filtersmall_view(ag, min_frames: int) -> dict:
    """A ``mark_small`` reading restricted as SGCLS / SGDET read it: objects not marked small,
    frames that keep one, videos that keep ``min_frames`` frames. Returns
    ``{video: (pickle set, frames)}``, train and val both under 'train' (the val draw depends
    on the number of videos), to compare with :func:`view_of`."""
    import dataclasses

    out = {}
    for split in ("train", "val", "test"):
        for video in ag.videos(split):
            frames = []
            for f in video.frames:
                kept = tuple(dataclasses.replace(o, small=False) for o in f.objects if not o.small)
                if kept:
                    frames.append(dataclasses.replace(f, objects=kept))
            if len(frames) >= min_frames:
                out[video.name] = ("test" if split == "test" else "train", tuple(frames))
    return out


def view_of(ag) -> dict:
    """``{video: (pickle set, frames)}`` of a reading, train and val both under 'train'."""
    return {v.name: ("test" if split == "test" else "train", v.frames)
            for split in ("train", "val", "test") for v in ag.videos(split)}
