"""The plan of one video: its split, its edge cases, its activity, its objects and where
they rest, the person's clothes and the room. :mod:`synth.simulate` then moves the person.

A video draws from ``numpy.random.default_rng([seed, index])`` only: :func:`plan_video`
takes the first draws, :func:`synth.simulate.simulate` the rest, in that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from synth import draw
from synth.config import SynthConfig
from synth.world import ACTIVITIES, CLASS_SIZE, FURNITURE, WALL_MOUNTED, Activity, Role

def is_test_video(index: int, fraction: float) -> bool:
    """Exactly floor(N * fraction) of the first N videos are test videos, spread evenly."""
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


def edge_case_plan(index: int, frames: int, enabled: bool = True) -> dict:
    """The edge cases of video ``index`` (``frames`` annotated frames before shortening).

    * ``short`` (i % 8 == 1 or i % 24 == 7): the video has only 2 annotated frames (the
      reader drops it);
    * ``no_person`` (i % 3 == 0): annotated frame 1 has no person box (detector miss; the
      person is drawn);
    * ``invisible`` (i % 2 == 1): at annotated frame 1 the last relevant object is not drawn
      and is annotated ``visible=False`` with ``bbox`` None;
    * ``no_visible`` (i % 3 == 2): at the last annotated frame no relevant object is drawn;
    * ``tiny`` (i % 4 in (2, 3)): one extra relevant object, drawn with a short edge of
      8-14 px (in the full pickle, not in ``_filtersmall``);
    * ``bbox_none`` (i % 15 == 3, i.e. i % 5 == 3 among the ``no_person`` videos): at
      annotated frame 1, the frame without a person box, the first visible object has
      ``visible=True`` but ``bbox`` None (malformed; the reader skips and counts it when it
      keeps frames without a person). Only there: STTran's loader asserts that a visible
      object has a box in every frame with a person box, and the real AG never has one.
    Values are annotated-frame indices (or booleans); None / False when absent. With the
    default test fraction 0.25 the test videos are i % 4 == 3, so every case reaches both
    splits.
    """
    if not enabled:
        return {"short": False, "no_person": None, "invisible": None, "no_visible": None,
                "tiny": False, "bbox_none": None}
    short = index % 8 == 1 or index % 24 == 7
    n = 2 if short else frames
    return {
        "short": short,
        "no_person": 1 if index % 3 == 0 else None,
        "invisible": 1 if index % 2 == 1 else None,
        "no_visible": n - 1 if index % 3 == 2 else None,
        "tiny": index % 4 in (2, 3),
        "bbox_none": 1 if index % 15 == 3 else None,
    }


_NAME_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


def _video_name(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(_NAME_ALPHABET, size=5)) + ".mp4"
        if name not in taken:
            return name


@dataclass
class SceneObject:
    cls: str
    relevant: bool
    role: str
    size: tuple[int, int]
    rest: tuple[float, float]  # centre x, bottom y
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]


@dataclass
class FrameState:
    """Everything about one decoded frame: the person's geometry and every object's box."""

    posture: str
    facing: int
    px: float
    hand: tuple[float, float]
    parts: dict
    boxes: list  # per object: int xyxy or None when not drawn
    attached: list
    front: list
    person_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    pan: int = 0
    hand_extended: bool = False

FIRST_NUMBER = 1
"""Decoded frame ``t`` (0-based) is frame number ``t + FIRST_NUMBER`` in the AG keys. AG's PNGs
are ``ffmpeg -i VIDEO.mp4 %06d.png``, numbered from 1 (image2's ``-start_number``); the mp4s
written here have one stream at a constant rate from 0, so ffmpeg writes each decoded frame
once, in order: picture ``t + 1`` is decoded frame ``t``."""


def frame_key(video: str, t: int) -> str:
    """The AG key (``'VIDEO.mp4/000001.png'``) of decoded frame ``t`` (0-based) of ``video``."""
    return f"{video}/{t + FIRST_NUMBER:06d}.png"


@dataclass
class Video:
    """One planned video. ``frame_numbers``: the annotated frames as decoded frame indices
    (0-based, indexing ``states``); their AG keys are :func:`frame_key`."""

    index: int
    name: str
    split: str
    activity: Activity
    distractor: Activity
    objects: list[SceneObject]
    frame_numbers: list[int]
    decoded: int
    edges: dict
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    panorama: np.ndarray
    frontal_frame: int | None
    states: list[FrameState] = field(default_factory=list)


def _jitter(rng: np.random.Generator, colour, amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def plan_video(rng: np.random.Generator, index: int, config: SynthConfig, taken: set[str]) -> Video:
    """Video ``index``'s plan, drawn from ``rng``; ``states`` is left empty for
    :func:`synth.simulate.simulate`. ``taken``: names of the videos planned before."""
    W, H = config.width, config.height
    sc = min(W / 320, H / 240)
    name = _video_name(rng, taken)
    activity = ACTIVITIES[int(rng.integers(len(ACTIVITIES)))]
    edges = edge_case_plan(index, config.frames_per_video, config.edge_cases)
    n_frames = 2 if edges["short"] else config.frames_per_video
    stride = config.frame_stride
    decoded = n_frames * stride
    frame_numbers = [k * stride + int(rng.integers(stride)) for k in range(n_frames)]

    n_opt = int(rng.integers(1, min(2, len(activity.optional)) + 1))
    opt_idx = sorted(rng.choice(len(activity.optional), size=n_opt, replace=False).tolist())
    roles = list(activity.required) + [activity.optional[i] for i in opt_idx]
    if any(r.action == "cover" for r in roles) and not any(r.action == "lie" for r in roles):
        roles = [Role(r.cls, "hold") if r.action == "cover" else r for r in roles]
    # Bystanders all come from one other activity's classes, so that the classes in view
    # do not tell the activity by a majority vote: two groups of objects, one relevant.
    distractors = [a for a in ACTIVITIES if a is not activity]
    distractor = distractors[int(rng.integers(len(distractors)))]
    others = [c for c in distractor.classes if c not in activity.classes]
    n_by = int(rng.integers(config.bystanders[0], config.bystanders[1] + 1))
    bystander_classes = [others[i] for i in rng.choice(len(others), size=min(n_by, len(others)), replace=False)]

    wall_y = round(0.74 * H)
    objects: list[SceneObject] = []
    entries = [(r.cls, True, r.action) for r in roles] + [(c, False, "none") for c in bystander_classes]
    slots = rng.permutation(len(entries))
    for (cls, relevant, action), slot in zip(entries, slots):
        w, h = CLASS_SIZE[cls]
        w, h = max(round(w * sc), 4), max(round(h * sc), 4)
        cx = W * (0.12 + 0.76 * (slot + 0.5) / len(entries)) + rng.uniform(-8, 8) * sc
        if cls in FURNITURE:
            bottom = wall_y
        elif cls in WALL_MOUNTED:
            bottom = round(H * rng.uniform(0.26, 0.32))
        else:  # on a counter at hand height, relevant or not
            bottom = round(H * rng.uniform(0.52, 0.62))
        look = draw.CLASS_APPEARANCE[cls]
        objects.append(SceneObject(cls, relevant, action, (w, h), (cx, bottom), (_jitter(rng, look.colour), _jitter(rng, look.colour2))))
    if edges["tiny"]:
        pool = [r.cls for r in activity.optional + activity.required if r.cls not in FURNITURE | WALL_MOUNTED]
        unused = [c for c in pool if c not in {o.cls for o in objects}]
        cls = (unused or pool)[int(rng.integers(len(unused or pool)))]
        w, h = CLASS_SIZE[cls]
        short_edge = int(rng.integers(8, 15))
        f = short_edge / min(w, h)
        look = draw.CLASS_APPEARANCE[cls]
        cx = W * (0.06 if rng.random() < 0.5 else 0.94)
        objects.append(SceneObject(cls, True, "none", (max(round(w * f), short_edge), max(round(h * f), short_edge)),
                                   (cx, round(0.3 * H)), (look.colour, look.colour2)))

    split = "test" if is_test_video(index, config.test_fraction) else "train"
    shirt = tuple(int(c) for c in rng.integers(30, 230, size=3))
    trousers = tuple(int(c) for c in rng.integers(20, 90, size=3))
    panorama = draw.room_panorama(rng, activity.wall_texture, activity.wall_colours, H, W, wall_y)
    frontal = int(rng.integers(1, n_frames)) if rng.random() < 0.35 else None
    return Video(index, name, split, activity, distractor, objects, frame_numbers, decoded, edges, shirt, trousers,
                 panorama, frontal)
