"""Rendering: one decoded frame of a planned, simulated video as a ``uint8`` RGB image."""

from __future__ import annotations

import numpy as np

from synth import draw
from synth.plan import FrameState, Video
from synth.simulate import int_box, nose_box

def _draw_person(img: np.ndarray, st: FrameState, video: Video, sc: float) -> None:
    parts = st.parts
    draw.draw_rect(img, int_box(parts["torso"]), video.shirt)
    for leg in parts["legs"]:
        draw.draw_rect(img, int_box(leg), video.trousers)
    draw.draw_ellipse(img, int_box(parts["head"]), draw.SKIN)
    hx, hy = parts["head_c"]
    r = parts["r"]
    e = max(round(2 * sc), 1)
    if st.facing == 0:  # seen from the front: two eyes, no nose
        for side in (-1, 1):
            ex, ey = round(hx + side * 0.4 * r), round(hy - 3 * sc)
            draw.draw_rect(img, (ex - e, ey - e, ex + e, ey + e), draw.EYE)
    else:
        draw.draw_rect(img, int_box(nose_box(parts, st.facing, sc)), (200, 140, 105))
        ex, ey = round(hx + st.facing * 0.45 * r), round(hy - 3 * sc)
        draw.draw_rect(img, (ex - e, ey - e, ex + e, ey + e), draw.EYE)
    draw.draw_segment(img, parts["shoulder"], st.hand, 7 * sc, video.shirt)
    hr = 5 * sc
    draw.draw_ellipse(img, int_box((st.hand[0] - hr, st.hand[1] - hr, st.hand[0] + hr, st.hand[1] + hr)), draw.SKIN)


def render(video: Video, t: int, hidden: set[int], sc: float, W: int) -> np.ndarray:
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
