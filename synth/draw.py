"""Raster drawing for the synthetic Action Genome generator (:mod:`synth`).

Everything here is pure numpy on ``uint8`` RGB images of shape ``(H, W, 3)``; boxes are
integer pixel edges ``(x1, y1, x2, y2)`` (``x2``/``y2`` exclusive) in frame coordinates and
may extend past the frame, in which case only the visible part is painted. Shapes and
textures are computed in the object's own coordinates, so a texture moves with its object.

Each object class has one :class:`Appearance` (shape, two colours, texture, period) chosen
so that no two classes share both shape and texture: a small detector can tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Appearance:
    """How one object class looks.

    ``shape`` names a mask function of the unit square (see :func:`shape_mask`),
    ``texture`` a two-colour pattern (see :func:`texture_mask`) with ``period`` pixels;
    texture pixels take ``colour2``, the rest ``colour``.
    """

    shape: str
    colour: RGB
    texture: str
    colour2: RGB
    period: int = 6


CLASS_APPEARANCE: dict[str, Appearance] = {
    "bed": Appearance("bed", (150, 90, 50), "hstripes", (235, 230, 205), 7),
    "blanket": Appearance("rect", (60, 120, 205), "checker", (225, 230, 250), 6),
    "book": Appearance("rect", (150, 25, 60), "vstripes", (240, 215, 110), 5),
    "chair": Appearance("chair", (115, 70, 30), "solid", (115, 70, 30)),
    "clothes": Appearance("shirt", (40, 160, 90), "diag", (20, 95, 50), 5),
    "cup": Appearance("cup", (215, 45, 40), "hstripes", (250, 225, 205), 4),
    "dish": Appearance("ellipse", (240, 240, 232), "border", (70, 110, 205), 3),
    "food": Appearance("ellipse", (230, 170, 35), "dots", (140, 65, 20), 5),
    "laptop": Appearance("laptop", (60, 60, 70), "grid", (170, 180, 200), 5),
    "paper": Appearance("rect", (250, 250, 240), "hstripes", (110, 130, 220), 5),
    "phone": Appearance("roundrect", (25, 25, 30), "screen", (90, 200, 235), 3),
    "pillow": Appearance("ellipse", (240, 195, 220), "vstripes", (195, 110, 160), 4),
    "refrigerator": Appearance("fridge", (205, 222, 230), "solid", (60, 70, 80)),
    "sofa": Appearance("sofa", (205, 120, 40), "dots", (240, 190, 120), 6),
    "television": Appearance("tv", (20, 20, 22), "diag", (70, 105, 215), 6),
}

SKIN: RGB = (235, 190, 150)
EYE: RGB = (15, 15, 15)


def _clip(box: Box, width: int, height: int) -> tuple[int, int, int, int] | None:
    x1, y1, x2, y2 = box
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if cx2 <= cx1 or cy2 <= cy1:
        return None
    return cx1, cy1, cx2, cy2


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` at unit-square coordinates ``u`` (right), ``v`` (down) in [0, 1)."""
    if shape == "rect":
        return np.ones(np.broadcast(u, v).shape, dtype=bool)
    if shape == "ellipse":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "roundrect":
        du = np.clip(np.abs(u - 0.5) - 0.3, 0, None)
        dv = np.clip(np.abs(v - 0.5) - 0.3, 0, None)
        return du**2 + dv**2 <= 0.04
    if shape == "cup":  # wider at the top
        half = 0.5 - 0.18 * v
        return np.abs(u - 0.5) <= half
    if shape == "shirt":  # body plus sleeves across the top third
        return (np.abs(u - 0.5) <= 0.27) | (v < 0.35)
    if shape == "chair":  # backrest on the left, seat, two legs
        return (u < 0.2) | ((v > 0.45) & (v < 0.6)) | ((v >= 0.6) & (u > 0.82))
    if shape == "sofa":  # back, armrests, seat, feet
        back = (v < 0.4) & (u > 0.1) & (u < 0.9)
        arms = (v >= 0.2) & (v < 0.4) & ((u <= 0.1) | (u >= 0.9))
        seat = (v >= 0.4) & (v < 0.85)
        feet = (v >= 0.85) & ((u < 0.08) | (u > 0.92))
        return back | arms | seat | feet
    if shape == "bed":  # headboard on the left, mattress on the lower 60 %
        return (u < 0.08) | (v > 0.4)
    if shape == "fridge":
        return np.ones(np.broadcast(u, v).shape, dtype=bool)
    if shape == "tv":
        return np.ones(np.broadcast(u, v).shape, dtype=bool)
    if shape == "laptop":  # screen above, wider keyboard base below
        screen = (v < 0.62) & (np.abs(u - 0.5) <= 0.4)
        return screen | (v >= 0.62)
    raise ValueError(f"unknown shape {shape!r}")


def texture_mask(texture: str, x: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray, period: int) -> np.ndarray:
    """Pixels that take the second colour; ``x, y`` are integer pixels in the object's frame."""
    half = max(period // 2, 1)
    if texture == "solid":
        return np.zeros(np.broadcast(x, y).shape, dtype=bool)
    if texture == "hstripes":
        return (y % period) < half + np.zeros_like(x)
    if texture == "vstripes":
        return (x % period) < half + np.zeros_like(y)
    if texture == "checker":
        return ((x // period) + (y // period)) % 2 == 0
    if texture == "dots":
        return ((x % period) - period // 2) ** 2 + ((y % period) - period // 2) ** 2 <= max(period // 3, 1) ** 2
    if texture == "diag":
        return ((x + y) % period) < half
    if texture == "grid":
        return ((x % period) == 0) | ((y % period) == 0)
    if texture == "border":
        return ((u - 0.5) ** 2 + (v - 0.5) ** 2 >= 0.12) & ((u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.19)
    if texture == "screen":
        return (np.abs(u - 0.5) < 0.35) & (v > 0.12) & (v < 0.8)
    raise ValueError(f"unknown texture {texture!r}")


def _special_texture(shape: str, u: np.ndarray, v: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """Class-specific details drawn in the second colour on top of the texture."""
    if shape == "tv":  # a screen inside a black frame carries the texture
        return tex & (u > 0.08) & (u < 0.92) & (v > 0.1) & (v < 0.9)
    if shape == "fridge":  # door split and a handle
        return tex | ((v > 0.33) & (v < 0.36)) | ((u > 0.8) & (u < 0.87) & (np.abs(v - 0.2) < 0.08)) | (
            (u > 0.8) & (u < 0.87) & (np.abs(v - 0.55) < 0.12)
        )
    if shape == "laptop":  # keyboard grid only on the base, the screen is plain light
        return (tex & (v >= 0.62)) | ((v < 0.56) & (np.abs(u - 0.5) <= 0.34) & (v > 0.06))
    if shape == "bed":  # headboard plain
        return tex & (u >= 0.08)
    return tex


def draw_object(img: np.ndarray, box: Box, look: Appearance, colour: RGB | None = None, colour2: RGB | None = None) -> None:
    """Paint one object of appearance ``look`` into ``img`` (in place) filling ``box``.

    ``colour``/``colour2`` override the appearance's colours (per-video jitter).
    """
    height, width = img.shape[:2]
    clipped = _clip(box, width, height)
    if clipped is None:
        return
    x1, y1, x2, y2 = box
    bw, bh = max(x2 - x1, 1), max(y2 - y1, 1)
    cx1, cy1, cx2, cy2 = clipped
    ys = np.arange(cy1, cy2)[:, None] - y1
    xs = np.arange(cx1, cx2)[None, :] - x1
    u = (xs + 0.5) / bw
    v = (ys + 0.5) / bh
    mask = shape_mask(look.shape, u, v)
    tex = texture_mask(look.texture, xs, ys, u, v, look.period)
    tex = _special_texture(look.shape, u, v, tex)
    c1 = np.asarray(colour if colour is not None else look.colour, dtype=np.uint8)
    c2 = np.asarray(colour2 if colour2 is not None else look.colour2, dtype=np.uint8)
    patch = np.where(tex[..., None], c2, c1)
    region = img[cy1:cy2, cx1:cx2]
    region[mask] = patch[mask]


def draw_ellipse(img: np.ndarray, box: Box, colour: RGB) -> None:
    draw_object(img, box, Appearance("ellipse", colour, "solid", colour))


def draw_rect(img: np.ndarray, box: Box, colour: RGB) -> None:
    clipped = _clip(box, img.shape[1], img.shape[0])
    if clipped is not None:
        x1, y1, x2, y2 = clipped
        img[y1:y2, x1:x2] = colour


def segment_box(p: tuple[float, float], q: tuple[float, float], thickness: float) -> Box:
    """Integer box around the segment ``p``-``q`` drawn with ``thickness``."""
    r = thickness / 2
    return (
        int(np.floor(min(p[0], q[0]) - r)),
        int(np.floor(min(p[1], q[1]) - r)),
        int(np.ceil(max(p[0], q[0]) + r)),
        int(np.ceil(max(p[1], q[1]) + r)),
    )


def draw_segment(img: np.ndarray, p: tuple[float, float], q: tuple[float, float], thickness: float, colour: RGB) -> None:
    """Thick line from ``p`` to ``q`` (pixel-centre distance to the segment <= thickness/2)."""
    clipped = _clip(segment_box(p, q, thickness), img.shape[1], img.shape[0])
    if clipped is None:
        return
    x1, y1, x2, y2 = clipped
    px = np.arange(x1, x2)[None, :] + 0.5
    py = np.arange(y1, y2)[:, None] + 0.5
    dx, dy = q[0] - p[0], q[1] - p[1]
    length2 = dx * dx + dy * dy
    if length2 == 0:
        t = np.zeros_like(px + py)
    else:
        t = np.clip(((px - p[0]) * dx + (py - p[1]) * dy) / length2, 0.0, 1.0)
    d2 = (px - p[0] - t * dx) ** 2 + (py - p[1] - t * dy) ** 2
    region = img[y1:y2, x1:x2]
    region[d2 <= (thickness / 2) ** 2] = colour


ROOM_FRACTION = 0.6
"""Width of the room's patterned wall, in frame widths, at the left of the panorama."""


def room_panorama(rng: np.random.Generator, activity_texture: str, room_colours: tuple[RGB, RGB], height: int, width: int, floor_y: int) -> np.ndarray:
    """Background twice as wide as the frame: the room's patterned wall on the left part,
    a plain wall of a random colour on the right part, a floor below ``floor_y``.

    The camera pans across it, so the room pattern (the activity cue) is in view in only
    part of a video's frames.
    """
    pano_w = 2 * width
    img = np.empty((height, pano_w, 3), dtype=np.uint8)
    plain = tuple(int(c) for c in rng.integers(90, 200, size=3))
    img[:floor_y] = plain
    room_w = int(ROOM_FRACTION * width)
    ys = np.arange(floor_y)[:, None]
    xs = np.arange(room_w)[None, :]
    period = 12
    pattern = texture_mask(activity_texture, xs, ys, xs / room_w, ys / max(floor_y, 1), period)
    c1, c2 = (np.asarray(c, dtype=np.uint8) for c in room_colours)
    img[:floor_y, :room_w] = np.where(pattern[..., None], c2, c1)
    # A skirting band marks where the room's wall ends.
    img[:floor_y, room_w : room_w + 3] = (60, 60, 60)
    floor_colour = rng.integers(70, 170, size=3)
    img[floor_y:] = floor_colour.astype(np.uint8)
    # Mild blotches (8x8 px cells) so that no two backgrounds are identical; coarse so that
    # PNG and the lossless video still compress.
    cells = rng.integers(-8, 9, size=(-(-height // 8), -(-pano_w // 8), 1))
    noise = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[:height, :pano_w]
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
