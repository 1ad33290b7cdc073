"""The annotations of one annotated frame: AG's object entries (labelled by
:mod:`synth.rules`) and the generator's truth for ``synth_meta.json``."""

from __future__ import annotations

import math

from synth import draw
from synth.plan import FIRST_NUMBER, Video
from synth.rules import ContactState, attention_label, contact_labels, spatial_labels
from synth.simulate import int_box
from synth.world import PICKLE_CLASS_NAME

def hidden_at(video: Video, k: int) -> set[int]:
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


def annotate_frame(video: Video, k: int, W: int, H: int, sc: float) -> tuple[list[dict], dict]:
    """Object entries of annotated frame k and the frame's truth for synth_meta.json."""
    t = video.frame_numbers[k]
    st = video.states[t]
    hidden = hidden_at(video, k)
    prev_st, next_st = video.states[max(t - 1, 0)], video.states[min(t + 1, video.decoded - 1)]
    hand_speed = math.hypot(next_st.hand[0] - prev_st.hand[0], next_st.hand[1] - prev_st.hand[1])
    person_speed = abs(next_st.px - prev_st.px)
    tag = f"{video.name}/person/{t + FIRST_NUMBER:06d}"  # AG: the number of the frame key
    entries, bystanders = [], []
    bbox_none_pending = video.edges["bbox_none"] == k
    for j, o in enumerate(video.objects):
        box = _clip_box(st.boxes[j], W, H)
        if not o.relevant:
            if box is not None:
                bystanders.append({"class": o.cls, "box": list(box)})
            continue
        if j in hidden or box is None:
            entries.append({"class": PICKLE_CLASS_NAME[o.cls], "bbox": None, "attention_relationship": None,
                            "spatial_relationship": None, "contacting_relationship": None,
                            "metadata": {"tag": tag, "set": video.split}, "visible": False})
            continue
        state = ContactState(cls=o.cls, box=box, attached=st.attached[j], drawn_in_front=st.front[j],
                             posture=st.posture, hip=st.parts["hip"], hand=st.hand,
                             hand_extended=st.hand_extended, hand_free=not any(st.attached),
                             hand_speed=hand_speed,
                             person_speed=person_speed, head_box=int_box(st.parts["head"]),
                             person_box=st.person_box)
        bbox = (float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1]))
        if bbox_none_pending:
            bbox, bbox_none_pending = None, False
        contacting = contact_labels(state)
        supports = "sitting_on" in contacting or "lying_on" in contacting
        entries.append({
            "class": PICKLE_CLASS_NAME[o.cls],
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
