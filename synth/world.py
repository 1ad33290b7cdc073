"""The synthetic world: Action Genome's raw class names, the activities with their rooms
and relevant objects, and the sizes and placement classes of the objects.

Everything here is a constant; the rules that label what happens are in
:mod:`synth.rules`, the motion in :mod:`synth.simulate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.vocabulary import ACTION_GENOME

# Raw names of the real release's class files (compound names and no underscores).
RAW_OBJECT_CLASSES: tuple[str, ...] = (
    "person", "bag", "bed", "blanket", "book", "box", "broom", "chair", "closet/cabinet",
    "clothes", "cup/glass/bottle", "dish", "door", "doorknob", "doorway", "floor", "food",
    "groceries", "laptop", "light", "medicine", "mirror", "paper/notebook", "phone/camera",
    "picture", "pillow", "refrigerator", "sandwich", "shelf", "shoe", "sofa/couch", "table",
    "television", "towel", "vacuum", "window",
)
PICKLE_CLASS_NAME: dict[str, str] = {raw.split("/")[0]: raw for raw in RAW_OBJECT_CLASSES}
"""The class names the world uses (``cup``) -> the names AG's pickles hold (``cup/glass/bottle``).

STTran's loader looks every pickle name up in its class list, which holds the compounds."""
RAW_PREDICATE_CLASSES: tuple[str, ...] = tuple(p.replace("_", "") for p in ACTION_GENOME.predicates)

SMALL_EDGE = 16
"""The ``_filtersmall`` pickle drops boxes whose short edge is below this many pixels."""


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
