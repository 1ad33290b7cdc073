"""Synthetic Action Genome: a small dataset written in exactly the real AG layout.

``generate_synthetic_ag(out, SynthConfig(...))`` writes::

    out/frames/VIDEO.mp4/NNNNNN.png       the annotated frames (all frames with png_all_frames)
    out/videos/VIDEO.mp4                  every frame, lossless H.264 (libx264rgb, qp 0)
    out/annotations/person_bbox.pkl
    out/annotations/object_bbox_and_relationship.pkl
    out/annotations/object_bbox_and_relationship_filtersmall.pkl
    out/annotations/object_classes.txt    36 raw names
    out/annotations/relationship_classes.txt  26 raw names
    out/annotations/frame_list.txt
    out/synth_meta.json                   generator truth; NOT part of the AG layout

``NNNNNN`` is the decoded frame index in ``videos/VIDEO.mp4``; only every
``frame_stride``-th frame or so is annotated, as in AG.

What is drawn and why (see ``docs/synthetic.md`` for the full rules):

* a person (head with a visible facing direction, torso, legs, one arm with a hand) and
  objects of 15 Action Genome classes, each with its own shape, colours and texture
  (:mod:`stage1_detect.synth_draw`), over a room background;
* every video has an *activity* (kitchen, living room, bedroom, office). The activity
  decides which of the objects present the person interacts with: those are annotated in
  every frame; the other objects of the video ("bystanders") belong to other activities'
  classes and are drawn but never annotated. The room's wall pattern, the only global
  cue to the activity, is in view in only part of the video's frames (the camera pans),
  and the interactions happen in only part of the frames, so a model that sees the whole
  video can tell meaningful pairs from bystanders better than one that sees two frames;
* relation labels are computed from the drawn geometry by the pure rule functions
  :func:`attention_label`, :func:`spatial_labels` and :func:`contact_labels`.

Generation is deterministic: video ``i`` draws from ``numpy.random.default_rng([seed, i])``
only, so it does not depend on the number of videos asked for.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from stage1_detect import synth_draw as draw
from store.vocabulary import ACTION_GENOME

log = logging.getLogger(__name__)

META_FILE = "synth_meta.json"

# Raw names of the real release's class files (compound names and no underscores).
RAW_OBJECT_CLASSES: tuple[str, ...] = (
    "person", "bag", "bed", "blanket", "book", "box", "broom", "chair", "closet/cabinet",
    "clothes", "cup/glass/bottle", "dish", "door", "doorknob", "doorway", "floor", "food",
    "groceries", "laptop", "light", "medicine", "mirror", "paper/notebook", "phone/camera",
    "picture", "pillow", "refrigerator", "sandwich", "shelf", "shoe", "sofa/couch", "table",
    "television", "towel", "vacuum", "window",
)
RAW_PREDICATE_CLASSES: tuple[str, ...] = tuple(p.replace("_", "") for p in ACTION_GENOME.predicates)

SMALL_EDGE = 16
"""The ``_filtersmall`` pickle drops boxes whose short edge is below this many pixels."""


# --- the world --------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """A relevant object of an activity and what the person does with it."""

    cls: str
    action: str  # sit | lie | cover | hold | drink | eat | touch | write | watch | none


@dataclass(frozen=True)
class Activity:
    """An activity: its room (wall pattern and colours) and its relevant objects.

    Every video of the activity has all ``required`` roles and 1-2 of ``optional``.
    """

    name: str
    wall_texture: str
    wall_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    required: tuple[Role, ...]
    optional: tuple[Role, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(r.cls for r in self.required + self.optional)


ACTIVITIES: tuple[Activity, ...] = (
    Activity("kitchen", "grid", ((236, 240, 246), (110, 150, 200)),
             (Role("cup", "drink"),), (Role("dish", "hold"), Role("food", "eat"), Role("refrigerator", "touch"))),
    Activity("living_room", "vstripes", ((226, 200, 150), (180, 140, 95)),
             (Role("sofa", "sit"),), (Role("television", "watch"), Role("pillow", "hold"))),
    Activity("bedroom", "dots", ((205, 190, 232), (140, 110, 185)),
             (Role("bed", "lie"),), (Role("blanket", "cover"), Role("clothes", "hold"))),
    Activity("office", "hstripes", ((172, 176, 182), (105, 110, 122)),
             (Role("chair", "sit"),), (Role("laptop", "touch"), Role("paper", "write"), Role("phone", "hold"),
                                       Role("book", "hold"))),
)
ACTIVITY_BY_NAME = {a.name: a for a in ACTIVITIES}

FURNITURE = frozenset({"bed", "sofa", "chair", "refrigerator"})
"""Stand on the wall line behind the person."""
WALL_MOUNTED = frozenset({"television"})
SEATS = frozenset({"chair", "sofa"})

# Object sizes (w, h) in pixels of a 320x240 frame; scaled with the frame.
CLASS_SIZE: dict[str, tuple[int, int]] = {
    "bed": (150, 56), "sofa": (112, 62), "chair": (38, 70), "refrigerator": (48, 130),
    "television": (70, 46), "blanket": (72, 30), "clothes": (40, 34), "cup": (18, 26),
    "dish": (36, 20), "food": (28, 22), "laptop": (46, 34), "paper": (30, 38), "phone": (18, 30),
    "book": (26, 34), "pillow": (44, 26),
}

ATTENTION_RANGE = 0.55
"""looking_at needs the object centre within this fraction of the frame width of the head."""


# --- configuration and result -----------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Sizes are pixels; the defaults are the project's demo dataset."""

    videos: int = 40
    frames_per_video: int = 16
    """Annotated frames per video (short edge-case videos have 2)."""
    width: int = 320
    height: int = 240
    seed: int = 0
    test_fraction: float = 0.25
    """Video i is a test video when floor((i+1)f) > floor(i f): exactly floor(N f) of N."""
    write_png: bool = True
    write_mp4: bool = True
    frame_stride: int = 3
    """Decoded frames per annotated frame; annotated frame k is one of [k s, (k+1) s)."""
    png_all_frames: bool = False
    """Write a PNG for every decoded frame (the real dump does) instead of the annotated ones."""
    fps: int = 24
    bystanders: tuple[int, int] = (2, 3)
    """Inclusive range of unannotated objects per video (all of one other activity's classes)."""
    edge_cases: bool = True
    """Include the edge cases the reader's filters exist for (see :func:`edge_case_plan`)."""

    def __post_init__(self) -> None:
        if self.videos < 1:
            raise ValueError(f"videos must be >= 1, got {self.videos}")
        if self.frames_per_video < 3:
            raise ValueError(f"frames_per_video must be >= 3, got {self.frames_per_video}")
        if self.width < 160 or self.height < 120 or self.width % 2 or self.height % 2:
            raise ValueError(f"frame size must be even and at least 160x120, got {self.width}x{self.height}")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"test_fraction must be in [0, 1], got {self.test_fraction}")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if not 0 <= self.bystanders[0] <= self.bystanders[1]:
            raise ValueError(f"bystanders must be a (low, high) range, got {self.bystanders}")


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_synthetic_ag` wrote."""

    root: Path
    videos: int
    frames: int
    """Annotated frames (keys of the pickles)."""
    objects: int
    """Object entries of the full object pickle, invisible ones included."""
    relations: int
    """Relation labels over all object entries (attention + spatial + contacting)."""
    seconds: float
    train_videos: int = 0
    test_videos: int = 0
    decoded_frames: int = 0
    """Frames in all the mp4 files together."""
    codec: str = ""

    def line(self) -> str:
        return (f"synthetic AG at {self.root}: {self.videos} videos ({self.train_videos} train, "
                f"{self.test_videos} test), {self.frames} annotated frames, {self.objects} objects, "
                f"{self.relations} relation labels, {self.decoded_frames} video frames in {self.seconds:.1f} s")


# --- relation rules (pure functions of the drawn geometry) ------------------------------


def _area(b) -> float:
    return max(b[2] - b[0], 0) * max(b[3] - b[1], 0)


def _intersection(a, b) -> float:
    return max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)


def _inside(point, box) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def attention_label(head_centre: tuple[float, float], facing: int, obj_box, frame_width: int) -> str:
    """``unsure`` when the head is seen from the front (``facing == 0``); ``looking_at`` when
    the object's centre is in the half-plane the head faces and within ``ATTENTION_RANGE``
    frame widths of the head centre; ``not_looking_at`` otherwise."""
    if facing == 0:
        return "unsure"
    cx, cy = (obj_box[0] + obj_box[2]) / 2, (obj_box[1] + obj_box[3]) / 2
    ahead = (cx - head_centre[0]) * facing > 0
    near = math.hypot(cx - head_centre[0], cy - head_centre[1]) <= ATTENTION_RANGE * frame_width
    return "looking_at" if ahead and near else "not_looking_at"


def spatial_labels(person_box, obj_box, drawn_in_front: bool, supports_person: bool = False) -> list[str]:
    """Where the object is relative to the person (AG's spatial labels), in vocabulary order.

    above: object centre above the top of the person box; beneath: object centre below 80 %
    of the person's height, or the object supports the person (``supports_person``: the
    person sits or lies on it); in_front_of / behind: the boxes overlap and the object is
    drawn over / under the person; on_the_side_of: the boxes do not overlap horizontally;
    in: at least 80 % of the person box lies inside the object box. At least one label
    always fires (no horizontal overlap -> side; overlap in both axes -> front or behind;
    otherwise the object lies wholly above or below the person box).
    """
    px1, py1, px2, py2 = person_box
    ph = py2 - py1
    cy = (obj_box[1] + obj_box[3]) / 2
    overlap = _intersection(person_box, obj_box) > 0
    labels = []
    if cy < py1:
        labels.append("above")
    if cy > py1 + 0.8 * ph or supports_person:
        labels.append("beneath")
    if overlap and drawn_in_front:
        labels.append("in_front_of")
    if overlap and not drawn_in_front:
        labels.append("behind")
    if obj_box[2] <= px1 or obj_box[0] >= px2:
        labels.append("on_the_side_of")
    if _area(person_box) > 0 and _intersection(person_box, obj_box) >= 0.8 * _area(person_box):
        labels.append("in")
    return labels


@dataclass(frozen=True)
class ContactState:
    """What the contact rules look at for one person-object pair in one frame."""

    cls: str
    box: tuple[int, int, int, int]
    attached: bool
    """The object is fixed to the hand (it moves with the hand)."""
    drawn_in_front: bool
    posture: str  # stand | sit | lie
    hip: tuple[float, float]
    hand: tuple[float, float]
    hand_extended: bool
    """The arm reaches out (the hand is not hanging at its rest place)."""
    hand_free: bool
    """No object is attached to the hand (a hand holding one thing touches nothing else)."""
    hand_speed: float
    """Hand displacement in pixels between the previous and the next decoded frame."""
    person_speed: float
    """Person displacement in pixels between the previous and the next decoded frame."""
    head_box: tuple[int, int, int, int]
    person_box: tuple[int, int, int, int]


def contact_labels(s: ContactState) -> list[str]:
    """AG's contacting labels from geometry and motion, in vocabulary order.

    holding: attached to the hand; carrying: attached while the person moves (> 1 px over
    two decoded frames); drinking_from / eating: an attached cup / food overlapping the
    head; covered_by: a blanket drawn over the person covering >= 30 % of the person box;
    lying_on: lying posture with the hip inside a bed; sitting_on: sitting posture with
    the hip inside a chair or sofa; writing_on: the free, extended hand inside a paper
    while moving; touching: the free, extended hand inside any other object box (or a
    still hand on paper);
    not_contacting: none of these.
    """
    out = []
    at_head = _intersection(s.box, s.head_box) > 0
    hand_in = s.hand_free and s.hand_extended and _inside(s.hand, s.box)
    writing = hand_in and s.cls == "paper" and s.hand_speed > 1.0
    if s.attached and s.person_speed > 1.0:
        out.append("carrying")
    if (s.cls == "blanket" and s.drawn_in_front and _area(s.person_box) > 0
            and _intersection(s.box, s.person_box) >= 0.3 * _area(s.person_box)):
        out.append("covered_by")
    if s.attached and s.cls == "cup" and at_head:
        out.append("drinking_from")
    if s.attached and s.cls == "food" and at_head:
        out.append("eating")
    if s.attached:
        out.append("holding")
    if s.posture == "lie" and s.cls == "bed" and _inside(s.hip, s.box):
        out.append("lying_on")
    if s.posture == "sit" and s.cls in SEATS and _inside(s.hip, s.box):
        out.append("sitting_on")
    if hand_in and not writing:
        out.append("touching")
    if writing:
        out.append("writing_on")
    if not out:
        out.append("not_contacting")
    return out


# --- per-video plan -----------------------------------------------------------------------


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
    * ``bbox_none`` (i % 5 == 3): at annotated frame 0 the first visible object has
      ``visible=True`` but ``bbox`` None (malformed; the reader skips and counts it).
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
        "bbox_none": 0 if index % 5 == 3 else None,
    }


_NAME_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


def _video_name(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(_NAME_ALPHABET, size=5)) + ".mp4"
        if name not in taken:
            return name


@dataclass
class _Object:
    cls: str
    relevant: bool
    role: str
    size: tuple[int, int]
    rest: tuple[float, float]  # centre x, bottom y
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]


@dataclass
class _FrameState:
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


@dataclass
class _Video:
    index: int
    name: str
    split: str
    activity: Activity
    distractor: Activity
    objects: list[_Object]
    frame_numbers: list[int]
    decoded: int
    edges: dict
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    panorama: np.ndarray
    frontal_frame: int | None
    states: list[_FrameState] = field(default_factory=list)


def _jitter(rng: np.random.Generator, colour, amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _plan_video(index: int, config: SynthConfig, taken: set[str]) -> _Video:
    rng = np.random.default_rng([config.seed, index])
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
    objects: list[_Object] = []
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
        objects.append(_Object(cls, relevant, action, (w, h), (cx, bottom), (_jitter(rng, look.colour), _jitter(rng, look.colour2))))
    if edges["tiny"]:
        pool = [r.cls for r in activity.optional + activity.required if r.cls not in FURNITURE | WALL_MOUNTED]
        unused = [c for c in pool if c not in {o.cls for o in objects}]
        cls = (unused or pool)[int(rng.integers(len(unused or pool)))]
        w, h = CLASS_SIZE[cls]
        short_edge = int(rng.integers(8, 15))
        f = short_edge / min(w, h)
        look = draw.CLASS_APPEARANCE[cls]
        cx = W * (0.06 if rng.random() < 0.5 else 0.94)
        objects.append(_Object(cls, True, "none", (max(round(w * f), short_edge), max(round(h * f), short_edge)),
                               (cx, round(0.3 * H)), (look.colour, look.colour2)))

    split = "test" if is_test_video(index, config.test_fraction) else "train"
    shirt = tuple(int(c) for c in rng.integers(30, 230, size=3))
    trousers = tuple(int(c) for c in rng.integers(20, 90, size=3))
    panorama = draw.room_panorama(rng, activity.wall_texture, activity.wall_colours, H, W, wall_y)
    frontal = int(rng.integers(1, n_frames)) if rng.random() < 0.35 else None
    video = _Video(index, name, split, activity, distractor, objects, frame_numbers, decoded, edges, shirt, trousers,
                   panorama, frontal)
    video.states = _simulate(video, rng, W, H, sc)
    return video


# --- motion -----------------------------------------------------------------------------------


def _person_parts(posture: str, px: float, facing: int, hand, sc: float, feet_y: float, anchor) -> dict:
    """Part geometry of the person (float boxes xyxy, points)."""
    r = 11 * sc
    look = facing if facing != 0 else 1
    if posture == "stand":
        head_c = (px, feet_y - 125 * sc + r)
        torso = (px - 13 * sc, head_c[1] + r, px + 13 * sc, head_c[1] + r + 52 * sc)
        legs = [(px - 10 * sc, torso[3], px + 10 * sc, feet_y)]
        shoulder = (px, torso[1] + 8 * sc)
        hip = (px, torso[3] - 4 * sc)
    elif posture == "sit":
        hip_y = anchor[1] + 0.5 * (anchor[3] - anchor[1]) + 2 * sc
        torso = (px - 13 * sc, hip_y - 52 * sc, px + 13 * sc, hip_y)
        head_c = (px, torso[1] - r)
        knee = px + look * 34 * sc
        legs = [(min(px, knee), hip_y - 16 * sc, max(px, knee), hip_y),
                (min(knee, knee - look * 16 * sc), hip_y - 16 * sc, max(knee, knee - look * 16 * sc), feet_y)]
        shoulder = (px, torso[1] + 8 * sc)
        hip = (px, hip_y - 8 * sc)
    elif posture == "lie":
        top = anchor[1] + 0.4 * (anchor[3] - anchor[1])
        head_c = (anchor[0] + 14 * sc + r, top - r - 1)
        torso = (head_c[0] + r, top - 24 * sc, head_c[0] + r + 52 * sc, top)
        legs = [(torso[2], top - 18 * sc, torso[2] + 56 * sc, top)]
        shoulder = (torso[0] + 8 * sc, top - 14 * sc)
        hip = (torso[2] - 4 * sc, top - 10 * sc)
    else:
        raise ValueError(posture)
    head = (head_c[0] - r, head_c[1] - r, head_c[0] + r, head_c[1] + r)
    return {"head": head, "head_c": head_c, "torso": torso, "legs": legs, "shoulder": shoulder,
            "hip": hip, "hand": hand, "r": r}


def _rest_hand(posture: str, parts: dict, facing: int, sc: float):
    f = facing if facing != 0 else 1
    sx, sy = parts["shoulder"]
    if posture == "stand":
        return (sx + f * 12 * sc, sy + 40 * sc)
    if posture == "sit":
        return (sx + f * 18 * sc, sy + 34 * sc)
    return (sx + 24 * sc, sy + 6 * sc)


def _smooth(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3 - 2 * u)


def _obj_box(cx: float, bottom: float, size) -> tuple[int, int, int, int]:
    w, h = size
    x1 = round(cx - w / 2)
    y2 = round(bottom)
    return (x1, y2 - h, x1 + w, y2)


def _obj_box_centre(cx: float, cy: float, size) -> tuple[int, int, int, int]:
    return _obj_box(cx, cy + size[1] / 2, size)


def _simulate(video: _Video, rng: np.random.Generator, W: int, H: int, sc: float) -> list[_FrameState]:
    """Script the person's episodes and return the state of every decoded frame.

    The video's time is cut into one segment per interacting relevant object (random
    order); in each the person first walks to the object (30 %), then acts (70 %):
    sit / lie on it, pick it up, carry it a few steps, bring it to the mouth (cup, food)
    and put it down where they stand; touch it; scribble on it; or face it (television).
    A blanket covers the lying person in the second half of the lying episode.
    """
    objs = video.objects
    feet_y = round(0.92 * H)
    lo, hi = 0.1 * W, 0.9 * W
    episodes = [j for j, o in enumerate(objs) if o.relevant and o.role not in ("none", "cover")]
    episodes = [episodes[i] for i in rng.permutation(len(episodes))]
    cover = next((j for j, o in enumerate(objs) if o.role == "cover"), None)
    n_ep = max(len(episodes), 1)
    # Per episode: where to stand, which way to face, the direction of a carrying walk.
    plans = []
    for j in episodes:
        o = objs[j]
        ox = o.rest[0]
        f0 = 1 if ox > W / 2 else -1
        if o.role in ("sit", "lie"):
            stand = ox
            f0 = 1 if rng.random() < 0.5 else -1
        elif o.role == "watch":
            stand = ox - f0 * 60 * sc
        elif o.role == "touch" or o.role == "write":
            stand = ox - f0 * (o.size[0] / 2 + 14 * sc)
        else:
            stand = ox - f0 * 26 * sc
        plans.append({"obj": j, "stand": float(np.clip(stand, lo, hi)), "facing": f0,
                      "walk": -f0 * float(rng.uniform(30, 50)) * sc})
    start_x = float(rng.uniform(lo, hi))
    pan_start = float(rng.uniform(0.15, 0.55))
    pan_reverse = bool(rng.random() < 0.5)
    rest = [o.rest for o in objs]
    x_now = start_x
    last_facing = 1 if rng.random() < 0.5 else -1
    states: list[_FrameState] = []
    D = video.decoded
    frontal_t = None
    if video.frontal_frame is not None:
        frontal_t = video.frame_numbers[video.frontal_frame]
    seg_start_x = [None] * n_ep
    for t in range(D):
        s = t / max(D - 1, 1)
        seg = min(int(s * n_ep), n_ep - 1)
        u_seg = s * n_ep - seg
        posture, facing, hand, attached_j, covering = "stand", last_facing, None, None, False
        anchor = None
        if plans:
            p = plans[seg]
            o = objs[p["obj"]]
            if seg_start_x[seg] is None:
                seg_start_x[seg] = x_now
            x0 = seg_start_x[seg]
            if u_seg < 0.3:  # walk to the episode's place
                w = _smooth(u_seg / 0.3)
                x_now = x0 + (p["stand"] - x0) * w
                if abs(p["stand"] - x0) > 2:
                    facing = 1 if p["stand"] > x0 else -1
            else:
                u = (u_seg - 0.3) / 0.7
                x_now = p["stand"]
                facing = p["facing"]
                ob = _obj_box(rest[p["obj"]][0], rest[p["obj"]][1], o.size)
                if o.role in ("sit", "lie") and 0.1 <= u < 0.9:
                    posture, anchor = o.role, ob
                    if o.role == "lie" and cover is not None and u >= 0.4:
                        covering = True
                elif o.role in ("hold", "drink", "eat"):
                    if 0.15 <= u < 0.45:  # carry it away
                        x_now = p["stand"] + p["walk"] * _smooth((u - 0.15) / 0.3)
                        if abs(p["walk"]) > 2:
                            facing = 1 if p["walk"] > 0 else -1
                    elif u >= 0.45:
                        x_now = p["stand"] + p["walk"]
                    x_now = float(np.clip(x_now, lo, hi))
                    if 0.15 <= u < 0.85:
                        attached_j = p["obj"]
                # watch: stand and face the television
            parts = _person_parts(posture, x_now, facing, None, sc, feet_y, anchor)
            if u_seg >= 0.3:  # where the hand goes during the action
                u = (u_seg - 0.3) / 0.7
                f = facing
                sx, sy = parts["shoulder"]
                ob = _obj_box(rest[p["obj"]][0], rest[p["obj"]][1], o.size)
                if o.role in ("hold", "drink", "eat"):
                    counter_y = (ob[1] + ob[3]) / 2
                    chest = (sx + f * 24 * sc, sy + 16 * sc)
                    if u < 0.15:  # reach: the free hand on the object
                        hand = ((ob[0] + ob[2]) / 2, counter_y)
                    elif u < 0.5 or (u < 0.75 and o.role == "hold"):
                        hand = chest
                    elif u < 0.75:  # to the mouth
                        hc = parts["head_c"]
                        hand = (hc[0] + f * (parts["r"] + 5 * sc), hc[1] + 4 * sc)
                    elif u < 0.85:  # lower it to the counter
                        w = _smooth((u - 0.75) / 0.1)
                        hand = (chest[0], chest[1] + (counter_y - chest[1]) * w)
                    elif not p.get("dropped"):
                        # Released where the hand put it down: it stays there afterwards.
                        rest[p["obj"]] = (chest[0], o.rest[1])
                        p["dropped"] = True
                elif o.role in ("touch", "write") and 0.2 <= u < 0.8:
                    edge = ob[0] if f > 0 else ob[2]
                    hy = float(np.clip(sy + 10 * sc, ob[1] + 4 * sc, ob[3] - 4 * sc))
                    if o.role == "touch":
                        hand = (edge + f * 6 * sc, hy)
                    else:  # a scribbling hand: moves 3 px every decoded frame
                        span = max(ob[2] - ob[0] - 8 * sc, 1)
                        hand = (ob[0] + 4 * sc + (t * 3 * sc) % span, hy)
        else:
            parts = _person_parts(posture, x_now, facing, None, sc, feet_y, anchor)
        extended = hand is not None
        if hand is None:
            hand = _rest_hand(posture, parts, facing, sc)
        last_facing = facing
        draw_facing = 0 if t == frontal_t else facing
        # A frontal head changes only the face; the body keeps its pose.
        parts = _person_parts(posture, x_now, facing, hand, sc, feet_y, anchor) | {"hand": hand}

        boxes, attached, front = [], [], []
        for j, o in enumerate(objs):
            if j == attached_j:
                box = _obj_box_centre(hand[0], hand[1], o.size)
                is_front = True
            elif j == cover and covering:
                hip = parts["hip"]
                legs_end = parts["legs"][-1][2]
                box = (round(hip[0] - 14 * sc), round(parts["torso"][1] - 4 * sc), round(legs_end + 4 * sc),
                       round(parts["torso"][3] + 6 * sc))
                is_front = True
            else:
                box = _obj_box(rest[j][0], rest[j][1], o.size)
                is_front = box[3] > feet_y
            boxes.append(box)
            attached.append(j == attached_j)
            front.append(is_front)
        if pan_reverse:
            pan = round(W * (1 - _smooth((s - (1 - pan_start - 0.3)) / 0.3)))
        else:
            pan = round(W * _smooth((s - pan_start) / 0.3))
        st = _FrameState(posture, draw_facing, x_now, hand, parts, boxes, attached, front, pan=pan,
                         hand_extended=extended)
        st.person_box = _person_box(parts, sc, W, H, draw_facing)
        states.append(st)
    return states


def _nose_box(parts: dict, facing: int, sc: float):
    hx, hy = parts["head_c"]
    r = parts["r"]
    x_a, x_b = hx + facing * (r - 2 * sc), hx + facing * (r + 4 * sc)
    return (min(x_a, x_b), hy - 2 * sc, max(x_a, x_b), hy + 3 * sc)


def _int_box(b) -> tuple[int, int, int, int]:
    return (math.floor(b[0]), math.floor(b[1]), math.ceil(b[2]), math.ceil(b[3]))


def _person_box(parts: dict, sc: float, W: int, H: int, facing: int) -> tuple[int, int, int, int]:
    """Tight box of every drawn part, clipped to the frame."""
    hand = parts["hand"]
    hr = 5 * sc
    boxes = [parts["head"], parts["torso"], *parts["legs"],
             draw.segment_box(parts["shoulder"], hand, 7 * sc),
             (hand[0] - hr, hand[1] - hr, hand[0] + hr, hand[1] + hr)]
    if facing != 0:
        boxes.append(_nose_box(parts, facing, sc))
    ib = [_int_box(b) for b in boxes]
    x1 = max(min(b[0] for b in ib), 0)
    y1 = max(min(b[1] for b in ib), 0)
    x2 = min(max(b[2] for b in ib), W)
    y2 = min(max(b[3] for b in ib), H)
    return (x1, y1, x2, y2)


# --- rendering ----------------------------------------------------------------------------------


def _draw_person(img: np.ndarray, st: _FrameState, video: _Video, sc: float) -> None:
    parts = st.parts
    draw.draw_rect(img, _int_box(parts["torso"]), video.shirt)
    for leg in parts["legs"]:
        draw.draw_rect(img, _int_box(leg), video.trousers)
    draw.draw_ellipse(img, _int_box(parts["head"]), draw.SKIN)
    hx, hy = parts["head_c"]
    r = parts["r"]
    e = max(round(2 * sc), 1)
    if st.facing == 0:  # seen from the front: two eyes, no nose
        for side in (-1, 1):
            ex, ey = round(hx + side * 0.4 * r), round(hy - 3 * sc)
            draw.draw_rect(img, (ex - e, ey - e, ex + e, ey + e), draw.EYE)
    else:
        draw.draw_rect(img, _int_box(_nose_box(parts, st.facing, sc)), (200, 140, 105))
        ex, ey = round(hx + st.facing * 0.45 * r), round(hy - 3 * sc)
        draw.draw_rect(img, (ex - e, ey - e, ex + e, ey + e), draw.EYE)
    draw.draw_segment(img, parts["shoulder"], st.hand, 7 * sc, video.shirt)
    hr = 5 * sc
    draw.draw_ellipse(img, _int_box((st.hand[0] - hr, st.hand[1] - hr, st.hand[0] + hr, st.hand[1] + hr)), draw.SKIN)


def _render(video: _Video, t: int, hidden: set[int], sc: float, W: int) -> np.ndarray:
    st = video.states[t]
    img = np.ascontiguousarray(video.panorama[:, st.pan : st.pan + W])
    order = sorted(range(len(video.objects)), key=lambda j: (st.boxes[j][3], j))
    behind = [j for j in order if not st.front[j] and j not in hidden]
    front = [j for j in order if st.front[j] and not st.attached[j] and j not in hidden]
    held = [j for j in order if st.attached[j] and j not in hidden]

    def paint(j):
        o = video.objects[j]
        draw.draw_object(img, st.boxes[j], draw.CLASS_APPEARANCE[o.cls], *o.colours)

    for j in behind:
        paint(j)
    _draw_person(img, st, video, sc)
    for j in front + held:
        paint(j)
    return img


# --- annotations ----------------------------------------------------------------------------------


def _hidden_at(video: _Video, k: int) -> set[int]:
    """Relevant objects not drawn at annotated frame k (edge cases)."""
    relevant = [j for j, o in enumerate(video.objects) if o.relevant]
    hidden = set()
    if video.edges["invisible"] == k:
        hidden.add(relevant[-1])
    if video.edges["no_visible"] == k:
        hidden.update(relevant)
    return hidden


def _clip_box(box, W: int, H: int):
    x1, y1, x2, y2 = max(box[0], 0), max(box[1], 0), min(box[2], W), min(box[3], H)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def _annotate_frame(video: _Video, k: int, W: int, H: int, sc: float) -> tuple[list[dict], dict]:
    """Object entries of annotated frame k and the frame's truth for synth_meta.json."""
    t = video.frame_numbers[k]
    st = video.states[t]
    hidden = _hidden_at(video, k)
    prev_st, next_st = video.states[max(t - 1, 0)], video.states[min(t + 1, video.decoded - 1)]
    hand_speed = math.hypot(next_st.hand[0] - prev_st.hand[0], next_st.hand[1] - prev_st.hand[1])
    person_speed = abs(next_st.px - prev_st.px)
    tag = f"{video.name}/person/{t:06d}"
    entries, bystanders = [], []
    bbox_none_pending = video.edges["bbox_none"] == k
    for j, o in enumerate(video.objects):
        box = _clip_box(st.boxes[j], W, H)
        if not o.relevant:
            if box is not None:
                bystanders.append({"class": o.cls, "box": list(box)})
            continue
        if j in hidden or box is None:
            entries.append({"class": o.cls, "bbox": None, "attention_relationship": None,
                            "spatial_relationship": None, "contacting_relationship": None,
                            "metadata": {"tag": tag, "set": video.split}, "visible": False})
            continue
        state = ContactState(cls=o.cls, box=box, attached=st.attached[j], drawn_in_front=st.front[j],
                             posture=st.posture, hip=st.parts["hip"], hand=st.hand,
                             hand_extended=st.hand_extended, hand_free=not any(st.attached),
                             hand_speed=hand_speed,
                             person_speed=person_speed, head_box=_int_box(st.parts["head"]),
                             person_box=st.person_box)
        bbox = (float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1]))
        if bbox_none_pending:
            bbox, bbox_none_pending = None, False
        contacting = contact_labels(state)
        supports = "sitting_on" in contacting or "lying_on" in contacting
        entries.append({
            "class": o.cls,
            "bbox": bbox,
            "attention_relationship": [attention_label(st.parts["head_c"], st.facing, box, W)],
            "spatial_relationship": spatial_labels(st.person_box, box, st.front[j], supports),
            "contacting_relationship": contacting,
            "metadata": {"tag": tag, "set": video.split},
            "visible": True,
        })
    truth = {
        "person_box_drawn": list(st.person_box),
        "person_detected": video.edges["no_person"] != k,
        "posture": st.posture,
        "facing": st.facing,
        "hand": [round(st.hand[0], 3), round(st.hand[1], 3)],
        "held": next((video.objects[j].cls for j in range(len(video.objects)) if st.attached[j]), None),
        "held_entry": next((n for n, j in enumerate(j for j, o in enumerate(video.objects) if o.relevant)
                            if st.attached[j]), None),
        "room_visible_fraction": round(max(0.0, draw.ROOM_FRACTION * W - st.pan) / W, 3),
        "bystanders": bystanders,
    }
    return entries, truth


def _write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> str:
    import av

    codec, pix_fmt = ("libx264rgb", "rgb24") if "libx264rgb" in av.codecs_available else ("libx264", "yuv444p")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = pix_fmt
        # qp 0 is lossless for libx264rgb (max abs error 0 after decoding to rgb24).
        stream.options = {"qp": "0", "preset": "ultrafast"}
        stream.codec_context.thread_count = 1
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def _clear_previous(root: Path) -> None:
    import shutil

    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder")
    if any(root.iterdir()) and not (root / META_FILE).is_file():
        raise FileExistsError(f"{root}: not empty and not a synthetic dataset (no {META_FILE}); refusing to write into it")
    for sub in ("frames", "videos", "annotations"):
        if (root / sub).is_dir():
            shutil.rmtree(root / sub)


def generate_synthetic_ag(out: Path | str, config: SynthConfig = SynthConfig(), progress: bool = True) -> SynthSummary:
    """Write a synthetic Action Genome root at ``out``.

    ``out`` must be missing, empty, or an earlier synthetic root (it has ``synth_meta.json``),
    whose ``frames/``, ``videos/`` and ``annotations/`` are then replaced, so that no file of
    a larger earlier run survives. Anything else is refused: a real AG root is never touched.

    Returns counts and the wall time. Same ``config`` => byte-identical pickles, class
    files, frame list, PNGs and ``synth_meta.json``.
    """
    started = time.perf_counter()
    root = Path(out)
    _clear_previous(root)
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    W, H = config.width, config.height
    sc = min(W / 320, H / 240)
    persons: dict[str, dict] = {}
    objects: dict[str, list] = {}
    meta_videos: dict[str, dict] = {}
    taken: set[str] = set()
    n_objects = n_relations = decoded_total = 0
    codec = ""
    splits = {"train": 0, "test": 0}
    for index in tqdm(range(config.videos), desc="synth videos", unit="video", disable=not progress):
        video = _plan_video(index, config, taken)
        taken.add(video.name)
        splits[video.split] += 1
        hidden_by_t = {t: _hidden_at(video, k) for k, t in enumerate(video.frame_numbers)}
        frame_dir = root / "frames" / video.name
        if config.write_png:
            frame_dir.mkdir(parents=True, exist_ok=True)
        need_all = config.write_mp4 or (config.write_png and config.png_all_frames)
        render_ts = range(video.decoded) if need_all else video.frame_numbers
        rendered = []
        for t in render_ts:
            img = _render(video, t, hidden_by_t.get(t, set()), sc, W)
            if config.write_png and (config.png_all_frames or t in hidden_by_t):
                Image.fromarray(img).save(frame_dir / f"{t:06d}.png", compress_level=1)
            if config.write_mp4:
                rendered.append(img)
        if config.write_mp4:
            (root / "videos").mkdir(parents=True, exist_ok=True)
            codec = _write_mp4(root / "videos" / video.name, rendered, config.fps)
        decoded_total += video.decoded
        truths = {}
        for k, t in enumerate(video.frame_numbers):
            key = f"{video.name}/{t:06d}.png"
            entries, truth = _annotate_frame(video, k, W, H, sc)
            box = np.array([video.states[t].person_box], dtype=np.float32)
            if not truth["person_detected"]:
                box = np.zeros((0, 4), dtype=np.float32)
            persons[key] = {"bbox": box, "bbox_size": (W, H)}
            objects[key] = entries
            truths[key] = truth
            n_objects += len(entries)
            n_relations += sum(len(e["attention_relationship"] or []) + len(e["spatial_relationship"] or [])
                               + len(e["contacting_relationship"] or []) for e in entries)
        meta_videos[video.name] = {
            "index": index,
            "activity": video.activity.name,
            "bystander_activity": video.distractor.name,
            "split": video.split,
            "relevant": [o.cls for o in video.objects if o.relevant],
            "roles": [o.role for o in video.objects if o.relevant],
            "bystanders": [o.cls for o in video.objects if not o.relevant],
            "decoded_frames": video.decoded,
            "frame_numbers": video.frame_numbers,
            "edge_cases": video.edges,
            "frames": truths,
        }
    keys = sorted(objects)
    persons = {k: persons[k] for k in keys}
    objects = {k: objects[k] for k in keys}
    small = {k: [e for e in v if e["bbox"] is None or min(e["bbox"][2], e["bbox"][3]) >= SMALL_EDGE]
             for k, v in objects.items()}
    for name, data in (("person_bbox.pkl", persons), ("object_bbox_and_relationship.pkl", objects),
                       ("object_bbox_and_relationship_filtersmall.pkl", small)):
        with open(ann_dir / name, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
    (ann_dir / "object_classes.txt").write_text("\n".join(RAW_OBJECT_CLASSES) + "\n")
    (ann_dir / "relationship_classes.txt").write_text("\n".join(RAW_PREDICATE_CLASSES) + "\n")
    (ann_dir / "frame_list.txt").write_text("\n".join(keys) + "\n")
    meta = {
        "note": "Generator truth of stage1_detect.synth; not part of the Action Genome layout.",
        "config": asdict(config),
        "activities": {a.name: {"relevant_classes": list(a.classes)} for a in ACTIVITIES},
        "videos": meta_videos,
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    summary = SynthSummary(root=root, videos=config.videos, frames=len(keys), objects=n_objects,
                           relations=n_relations, seconds=time.perf_counter() - started,
                           train_videos=splits["train"], test_videos=splits["test"],
                           decoded_frames=decoded_total, codec=codec)
    log.info(summary.line())
    return summary
