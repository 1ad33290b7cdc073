"""The labelling rules: pure functions from the drawn geometry to AG's relation labels.

Each rule looks only at its arguments (boxes in integer pixels, xyxy), so that a test can
check it on hand-worked boxes and :mod:`synth.annotate` applies it to every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from synth.world import ATTENTION_RANGE, SEATS

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
