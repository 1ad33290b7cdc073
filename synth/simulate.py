"""The simulation: the person's episodes with each relevant object, in phases per decoded
frame (where the body is, where the hand goes, where each object is, where the camera
looks), and the person's part geometry.

Boxes are xyxy pixels of the frame; ``sc`` scales the 320x240 design to the frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from synth import draw
from synth.plan import FrameState, Video


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


def simulate(video: Video, rng: np.random.Generator, W: int, H: int, sc: float) -> list[FrameState]:
    """Script the person's episodes and return the state of every decoded frame.

    The video's time is cut into one segment per interacting relevant object (random
    order); in each the person first walks to the object (30 %), then acts (70 %):
    sit / lie on it, pick it up, carry it a few steps, bring it to the mouth (cup, food)
    and put it down where they stand; touch it; scribble on it; or face it (television).
    A blanket covers the lying person in the second half of the lying episode.

    Each decoded frame goes through four phases: :func:`_body` (where the person is and
    how), :func:`_hand` (where the hand goes), :func:`_object_boxes` and :func:`_pan`.
    """
    objs = video.objects
    feet_y = round(0.92 * H)
    lo, hi = 0.1 * W, 0.9 * W
    plans = _plan_episodes(objs, rng, W, sc, lo, hi)
    cover = next((j for j, o in enumerate(objs) if o.role == "cover"), None)
    n_ep = max(len(plans), 1)
    start_x = float(rng.uniform(lo, hi))
    pan_start = float(rng.uniform(0.15, 0.55))
    pan_reverse = bool(rng.random() < 0.5)
    rest = [o.rest for o in objs]
    x_now = start_x
    last_facing = 1 if rng.random() < 0.5 else -1
    states: list[FrameState] = []
    D = video.decoded
    frontal_t = None
    if video.frontal_frame is not None:
        frontal_t = video.frame_numbers[video.frontal_frame]
    seg_start_x = [None] * n_ep
    for t in range(D):
        s = t / max(D - 1, 1)
        seg = min(int(s * n_ep), n_ep - 1)
        u_seg = s * n_ep - seg
        body = _Body(x_now, last_facing)
        hand = None
        if plans:
            p = plans[seg]
            if seg_start_x[seg] is None:
                seg_start_x[seg] = x_now
            body = _body(p, objs[p["obj"]], u_seg, seg_start_x[seg], rest[p["obj"]], last_facing, cover, lo, hi)
        parts = _person_parts(body.posture, body.x, body.facing, None, sc, feet_y, body.anchor)
        if plans and u_seg >= 0.3:
            hand = _hand(p, objs[p["obj"]], (u_seg - 0.3) / 0.7, t, body.facing, parts, rest, sc)
        x_now = body.x
        extended = hand is not None
        if hand is None:
            hand = _rest_hand(body.posture, parts, body.facing, sc)
        last_facing = body.facing
        draw_facing = 0 if t == frontal_t else body.facing
        # A frontal head changes only the face; the body keeps its pose.
        parts = _person_parts(body.posture, x_now, body.facing, hand, sc, feet_y, body.anchor) | {"hand": hand}
        boxes, attached, front = _object_boxes(objs, rest, body, cover, hand, parts, feet_y, sc)
        st = FrameState(body.posture, draw_facing, x_now, hand, parts, boxes, attached, front,
                        pan=_pan(s, W, pan_start, pan_reverse), hand_extended=extended)
        st.person_box = _person_box(parts, sc, W, H, draw_facing)
        states.append(st)
    return states


def _plan_episodes(objs: list, rng: np.random.Generator, W: int, sc: float, lo: float, hi: float) -> list[dict]:
    """Per episode, in the drawn order: the object, where to stand, which way to face, and
    the direction of a carrying walk."""
    episodes = [j for j, o in enumerate(objs) if o.relevant and o.role not in ("none", "cover")]
    episodes = [episodes[i] for i in rng.permutation(len(episodes))]
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
    return plans


@dataclass(frozen=True)
class _Body:
    """Phase 1 of a frame: where the person is, which way they face, their posture."""

    x: float
    facing: int
    posture: str = "stand"
    anchor: tuple | None = None
    """The box the person sits or lies on."""
    attached: int | None = None
    """Index of the object in the hand."""
    covering: bool = False
    """The blanket covers the lying person."""


def _body(p: dict, o, u_seg: float, x0: float, rest, last_facing: int, cover: int | None,
          lo: float, hi: float) -> _Body:
    """Walk to the episode's place (the first 30 % of the segment), then act there."""
    if u_seg < 0.3:
        facing = last_facing
        if abs(p["stand"] - x0) > 2:
            facing = 1 if p["stand"] > x0 else -1
        return _Body(x0 + (p["stand"] - x0) * _smooth(u_seg / 0.3), facing)
    u = (u_seg - 0.3) / 0.7
    x, facing = p["stand"], p["facing"]
    ob = _obj_box(rest[0], rest[1], o.size)
    if o.role in ("sit", "lie") and 0.1 <= u < 0.9:
        return _Body(x, facing, o.role, ob, covering=o.role == "lie" and cover is not None and u >= 0.4)
    if o.role in ("hold", "drink", "eat"):
        if 0.15 <= u < 0.45:  # carry it away
            x = p["stand"] + p["walk"] * _smooth((u - 0.15) / 0.3)
            if abs(p["walk"]) > 2:
                facing = 1 if p["walk"] > 0 else -1
        elif u >= 0.45:
            x = p["stand"] + p["walk"]
        x = float(np.clip(x, lo, hi))
        return _Body(x, facing, attached=p["obj"] if 0.15 <= u < 0.85 else None)
    return _Body(x, facing)  # watch: stand and face the television


def _hand(p: dict, o, u: float, t: int, f: int, parts: dict, rest: list, sc: float):
    """Phase 2: where the hand is during the action (``u`` in [0, 1)), or None at rest.

    A put-down object stays where the hand released it: ``rest`` is updated once.
    """
    sx, sy = parts["shoulder"]
    ob = _obj_box(rest[p["obj"]][0], rest[p["obj"]][1], o.size)
    if o.role in ("hold", "drink", "eat"):
        counter_y = (ob[1] + ob[3]) / 2
        chest = (sx + f * 24 * sc, sy + 16 * sc)
        if u < 0.15:  # reach: the free hand on the object
            return ((ob[0] + ob[2]) / 2, counter_y)
        if u < 0.5 or (u < 0.75 and o.role == "hold"):
            return chest
        if u < 0.75:  # to the mouth
            hc = parts["head_c"]
            return (hc[0] + f * (parts["r"] + 5 * sc), hc[1] + 4 * sc)
        if u < 0.85:  # lower it to the counter
            w = _smooth((u - 0.75) / 0.1)
            return (chest[0], chest[1] + (counter_y - chest[1]) * w)
        if not p.get("dropped"):
            # Released where the hand put it down: it stays there afterwards.
            rest[p["obj"]] = (chest[0], o.rest[1])
            p["dropped"] = True
        return None
    if o.role in ("touch", "write") and 0.2 <= u < 0.8:
        edge = ob[0] if f > 0 else ob[2]
        hy = float(np.clip(sy + 10 * sc, ob[1] + 4 * sc, ob[3] - 4 * sc))
        if o.role == "touch":
            return (edge + f * 6 * sc, hy)
        # a scribbling hand: moves 3 px every decoded frame
        span = max(ob[2] - ob[0] - 8 * sc, 1)
        return (ob[0] + 4 * sc + (t * 3 * sc) % span, hy)
    return None


def _object_boxes(objs: list, rest: list, body: _Body, cover: int | None, hand, parts: dict, feet_y: float,
                  sc: float) -> tuple[list, list, list]:
    """Phase 3: every object's box, whether it is in the hand, whether it is drawn in front."""
    boxes, attached, front = [], [], []
    for j, o in enumerate(objs):
        if j == body.attached:
            box = _obj_box_centre(hand[0], hand[1], o.size)
            is_front = True
        elif j == cover and body.covering:
            hip = parts["hip"]
            legs_end = parts["legs"][-1][2]
            box = (round(hip[0] - 14 * sc), round(parts["torso"][1] - 4 * sc), round(legs_end + 4 * sc),
                   round(parts["torso"][3] + 6 * sc))
            is_front = True
        else:
            box = _obj_box(rest[j][0], rest[j][1], o.size)
            is_front = box[3] > feet_y
        boxes.append(box)
        attached.append(j == body.attached)
        front.append(is_front)
    return boxes, attached, front


def _pan(s: float, W: int, pan_start: float, pan_reverse: bool) -> int:
    """Phase 4: the camera's offset into the panorama at video time ``s`` in [0, 1]."""
    if pan_reverse:
        return round(W * (1 - _smooth((s - (1 - pan_start - 0.3)) / 0.3)))
    return round(W * _smooth((s - pan_start) / 0.3))


def nose_box(parts: dict, facing: int, sc: float):
    hx, hy = parts["head_c"]
    r = parts["r"]
    x_a, x_b = hx + facing * (r - 2 * sc), hx + facing * (r + 4 * sc)
    return (min(x_a, x_b), hy - 2 * sc, max(x_a, x_b), hy + 3 * sc)


def int_box(b) -> tuple[int, int, int, int]:
    return (math.floor(b[0]), math.floor(b[1]), math.ceil(b[2]), math.ceil(b[3]))


def _person_box(parts: dict, sc: float, W: int, H: int, facing: int) -> tuple[int, int, int, int]:
    """Tight box of every drawn part, clipped to the frame."""
    hand = parts["hand"]
    hr = 5 * sc
    boxes = [parts["head"], parts["torso"], *parts["legs"],
             draw.segment_box(parts["shoulder"], hand, 7 * sc),
             (hand[0] - hr, hand[1] - hr, hand[0] + hr, hand[1] + hr)]
    if facing != 0:
        boxes.append(nose_box(parts, facing, sc))
    ib = [int_box(b) for b in boxes]
    x1 = max(min(b[0] for b in ib), 0)
    y1 = max(min(b[1] for b in ib), 0)
    x2 = min(max(b[2] for b in ib), W)
    y2 = min(max(b[3] for b in ib), H)
    return (x1, y1, x2, y2)
