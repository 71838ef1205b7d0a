"""Drawing one garment: a 224x224 RGB picture of its category with every applicable attribute visible.

Garments are designed on the 224 px canvas around x = 112 (right half mirrored) and placed with a
random scale and shift. Everything an attribute depends on is drawn at least ~8 px wide at full
size so that it survives the 64 px input of the tiny model (patch 8); thin details would vanish.
Each image has its own random stream (`item_rng`), so the pixels do not depend on drawing order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from sdfn.data.attributes import COLOR_RGB

IMAGE_SIZE = 224
Point = tuple[float, float]
CENTER_X = IMAGE_SIZE / 2
OUTLINE = (34, 32, 38)
INNER_DARK = (52, 46, 54)
SKIN = (232, 194, 164)
BUCKLE = (226, 186, 62)


@dataclass
class Garment:
    """A garment's shape in design coordinates: filled parts back to front, and where details go."""

    parts: list[list[Point]]
    neck_y: float | None = None
    placket_end: float | None = None  # the button placket runs from the neckline down to here
    waist: tuple[float, float] | None = None  # (y, half width) of a belt
    graphic_at: Point = (CENTER_X, 100.0)  # below any neckline cut-out, which would hide it
    graphic_radius: float = 28.0
    cuffs: list[list[Point]] = field(default_factory=list)
    bands: list[list[Point]] = field(default_factory=list)  # rib hems, waistbands: a darker shade


def _mirror(right: Sequence[Point]) -> list[Point]:
    """A symmetric outline from its right half (x offsets from the centre, listed top to bottom)."""
    return [(CENTER_X + x, y) for x, y in right] + [(CENTER_X - x, y) for x, y in reversed(right)]


def _across(shoulder: Point, armpit: Point, angle: float, length: float, width: float) -> list[Point]:
    """The outer and inner point of a sleeve `length` down its axis, which leaves the middle of the
    armhole at `angle` degrees from vertical (right side; x as offset from the centre)."""
    mx, my = (shoulder[0] + armpit[0]) / 2, (shoulder[1] + armpit[1]) / 2
    rad = math.radians(angle)
    ex, ey = mx + math.sin(rad) * length, my + math.cos(rad) * length
    px, py = math.cos(rad) * width / 2, -math.sin(rad) * width / 2
    return [(ex + px, ey + py), (ex - px, ey - py)]


def _sleeves(attrs: Mapping[str, str], shoulder: Point, armpit: Point, angles: tuple[float, float],
             lengths: tuple[float, float]) -> tuple[list[list[Point]], list[list[Point]]]:
    """Both sleeves (none when sleeveless) and, for long sleeves, a cuff band at each end. Short
    sleeves stop near the armpit line, long ones at hip height: unmistakable even at 64 px."""
    if attrs["sleeve"] == "sleeveless":
        return [], []
    long = attrs["sleeve"] == "long"
    loose = attrs["fit"] == "loose"
    angle, length = angles[long], lengths[long]
    width = (38 if long else 36) if loose else (18 if long else 24)
    end = _across(shoulder, armpit, angle, length, width)
    right_sleeve = [shoulder, *end, armpit]
    right_cuffs = [[*end, *reversed(_across(shoulder, armpit, angle, length - 12, width))]] if long else []

    def both(right: list[Point]) -> list[list[Point]]:
        return [[(CENTER_X + side * x, y) for x, y in right] for side in (1, -1)]

    return both(right_sleeve), [cuff for right in right_cuffs for cuff in both(right)]


_DRESS_HEM_Y = {"short": 150.0, "knee": 182.0, "long": 212.0}
_SKIRT_HEM_Y = {"short": 108.0, "knee": 158.0, "long": 206.0}
_TROUSER_HEM_Y = {"short": 122.0, "knee": 162.0, "long": 210.0}


def _dress(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    hem_y = _DRESS_HEM_Y[attrs["length"]]
    hem = {"short": 76, "knee": 86, "long": 94}[attrs["length"]] if loose else 44
    if attrs["sleeve"] == "sleeveless":
        top = [(22, 24), (30, 26), (34, 48), (38, 64)]
    else:
        top = [(40, 26), (44, 32), (40, 64)]
    body = [(46, 64), (hem, hem_y)] if loose else [(36, 66), (26, 98), (38, 122), (hem, hem_y)]
    outline = _mirror([*top, *body, (hem * 0.5, hem_y + 3), (0, hem_y + 4)])
    sleeves, cuffs = _sleeves(attrs, (42, 30), (40, 62), (28, 20), (36, 100))
    waist = (98.0, 46.0 if loose else 27.0)
    # A button-front dress buttons down to the hem, so the row stays long whatever the neckline and belt.
    return Garment([*sleeves, outline], neck_y=24, placket_end=min(hem_y - 14, 176), waist=waist,
                   graphic_at=(CENTER_X, min(134.0, hem_y - 26)), graphic_radius=24, cuffs=cuffs)


def _shirt(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    top = [(24, 20), (30, 22)] if attrs["sleeve"] == "sleeveless" else [(42, 22), (48, 30)]
    side = [(48, 62), (54, 120), (54, 170)] if loose else [(42, 64), (36, 110), (42, 170)]
    hem = [(side[-1][0] * 0.7, 182), (0, 190)]
    armhole = [(36, 44), (44, 62)] if attrs["sleeve"] == "sleeveless" else []
    outline = _mirror([*top, *armhole, *side, *hem])
    sleeves, cuffs = _sleeves(attrs, (47, 28), (44, 62), (36, 22), (40, 108))
    return Garment([*sleeves, outline], neck_y=20, placket_end=176, graphic_at=(CENTER_X, 114.0), cuffs=cuffs)


def _toptee(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    if attrs["sleeve"] == "sleeveless":
        top = [(22, 44), (32, 46), (38, 70), (46, 90)]
    else:
        top = [(34, 44), (50, 50), (46, 80)]
    side = [(56, 150)] if loose else [(34, 118), (42, 150)]
    outline = _mirror([*top, *side])
    # A rib band along the straight hem: the t-shirt's cue next to the shirt's curved tail.
    (x0, y0), (x1, y1) = [*top, *side][-2:]
    band_x = x0 + (x1 - x0) * (140 - y0) / (y1 - y0)
    band = _mirror([(band_x, 140), (x1, 150)])
    sleeves, cuffs = _sleeves(attrs, (49, 50), (46, 78), (62, 28), (30, 92))
    return Garment([*sleeves, outline], neck_y=44, graphic_at=(CENTER_X, 120.0), graphic_radius=24, cuffs=cuffs,
                   bands=[band])


def _skirt(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    hem_y = _SKIRT_HEM_Y[attrs["length"]]
    hem = {"short": 76, "knee": 88, "long": 96}[attrs["length"]] if loose else 44
    side = [(42, 42), (hem, hem_y)] if loose else [(42, 42), (50, 76), (hem, hem_y)]
    outline = _mirror([*side, (hem * 0.5, hem_y + 3), (0, hem_y + 4)])
    band = _mirror([(42, 24), (42, 44)])
    return Garment([outline], waist=(34.0, 43.0), graphic_at=(CENTER_X, 80.0 + (hem_y - 108) / 3),
                   bands=[band])


def _trousers(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    hem_y = _TROUSER_HEM_Y[attrs["length"]]
    outer, inner = (64, 4) if loose else (42, 10)
    if attrs["length"] == "short":
        outer, inner = (outer + 6, inner) if loose else (50, 8)
    outline = _mirror([(44, 22), (48, 60), (outer, hem_y), (inner, hem_y), (0, 96)])
    band = _mirror([(44, 20), (44, 34)])
    return Garment([outline], waist=(27.0, 45.0), graphic_at=(CENTER_X + 26, 78.0), bands=[band])


_SHAPES = {"dress": _dress, "shirt": _shirt, "toptee": _toptee, "skirt": _skirt, "trousers": _trousers}


@dataclass(frozen=True)
class Placement:
    """Random scale and shift of a design, so that no two images are pixel-identical."""

    scale: float
    dx: float
    dy: float

    def point(self, p: Point) -> Point:
        x, y = p
        return (CENTER_X + self.scale * (x - CENTER_X) + self.dx, CENTER_X + self.scale * (y - CENTER_X) + self.dy)

    def points(self, ps: Iterable[Point]) -> list[Point]:
        return [self.point(p) for p in ps]

    def size(self, v: float) -> float:
        return v * self.scale


def _luma(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _shade(rgb: Sequence[float], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in rgb)  # type: ignore[return-value]


def _jitter(rgb: Sequence[int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _background(main: Sequence[int], rng: random.Random) -> np.ndarray:
    """A plain or softly graded light backdrop; darker for light garments so they never melt into it."""
    level = rng.uniform(118, 160) if _luma(main) > 170 else rng.uniform(208, 246)
    top = np.array([level + rng.uniform(-10, 10) for _ in range(3)], np.float32)
    bottom = top + np.float32(rng.uniform(-16, 16) if rng.random() < 0.6 else 0.0)
    t = _ramp(rng.uniform(0, 2 * math.pi))[..., None]
    return np.clip(top + (bottom - top) * t, 0, 255)


_AXIS = np.linspace(-0.5, 0.5, IMAGE_SIZE, dtype=np.float32)


def _ramp(angle: float) -> np.ndarray:
    """0..1 over the canvas along `angle`; (224, 224) float32."""
    cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
    ramp = _AXIS[None, :] * np.float32(math.cos(angle)) + _AXIS[:, None] * np.float32(math.sin(angle))
    return ramp / np.float32(cos + sin) + np.float32(0.5)


def _pattern_color(main: Sequence[int]) -> tuple[int, int, int]:
    return (244, 242, 236) if _luma(main) < 140 else (36, 34, 40)


def _texture(attrs: Mapping[str, str], garment: Garment, place: Placement, main: tuple[int, int, int],
             rng: random.Random) -> Image.Image:
    """The fabric over the whole canvas: main colour, the pattern in a contrasting colour."""
    fabric = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), main)
    draw = ImageDraw.Draw(fabric)
    ink = _pattern_color(main)
    pattern = attrs["pattern"]
    phase_x, phase_y = rng.uniform(0, 1), rng.uniform(0, 1)
    if pattern == "striped":
        period, band = place.size(24), place.size(9)
        y = -period * (1 + phase_y)
        while y < IMAGE_SIZE:
            draw.rectangle((0, y, IMAGE_SIZE, y + band), fill=ink)
            y += period
    elif pattern == "polka dot":
        _dots(draw, place.size(26), place.size(6.5), phase_x, phase_y, ink)
    elif pattern == "plaid":
        _plaid(fabric, place.size(30), place.size(8), phase_x, phase_y, ink)
    elif pattern == "floral":
        _flowers(draw, place.size(44), place.scale, phase_x, phase_y, ink, rng)
    elif pattern == "graphic":
        x, y = garment.graphic_at
        radius = garment.graphic_radius
        if attrs["buttons"] == "yes":  # beside the placket, like a chest print, not hidden under it
            x, radius = x + 26, radius * 0.75
        _graphic(draw, place.point((x, y)), place.size(radius), ink, rng)
    return fabric


def _grid(period: float, phase_x: float, phase_y: float) -> Iterable[Point]:
    """Centres of a staggered grid (every other row shifted by half a period) covering the canvas."""
    row = 0
    y = -period * (1 + phase_y)
    while y < IMAGE_SIZE + period:
        x = -period * (1 + phase_x) + (period / 2 if row % 2 else 0)
        while x < IMAGE_SIZE + period:
            yield x, y
            x += period
        y += period
        row += 1


def _dots(draw: ImageDraw.ImageDraw, period: float, radius: float, phase_x: float, phase_y: float,
          ink: tuple[int, int, int]) -> None:
    for x, y in _grid(period, phase_x, phase_y):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)


def _plaid(fabric: Image.Image, period: float, width: float, phase_x: float, phase_y: float,
           ink: tuple[int, int, int]) -> None:
    """Crossing bands in both directions; where they cross they darken/lighten twice, like woven checks."""
    layer = Image.new("L", fabric.size, 0)
    draw = ImageDraw.Draw(layer)
    offset = -period * (1 + phase_x)
    while offset < IMAGE_SIZE:
        draw.rectangle((offset, 0, offset + width, IMAGE_SIZE), fill=150)
        offset += period
    band = Image.new("L", fabric.size, 0)
    band_draw = ImageDraw.Draw(band)
    offset = -period * (1 + phase_y)
    while offset < IMAGE_SIZE:
        band_draw.rectangle((0, offset, IMAGE_SIZE, offset + width), fill=150)
        offset += period
    alpha = np.minimum(np.asarray(layer, np.uint16) + np.asarray(band, np.uint16), 230).astype(np.uint8)
    fabric.paste(ink, (0, 0, *fabric.size), Image.fromarray(alpha))


def _flowers(draw: ImageDraw.ImageDraw, period: float, scale: float, phase_x: float, phase_y: float,
             ink: tuple[int, int, int], rng: random.Random) -> None:
    """Five-petal flowers, about 32 px across, on a jittered grid."""
    petal, reach = 7.5 * scale, 9.5 * scale
    for x, y in _grid(period, phase_x, phase_y):
        cx, cy = x + rng.uniform(-5, 5) * scale, y + rng.uniform(-5, 5) * scale
        turn = rng.uniform(0, 2 * math.pi)
        for k in range(5):
            a = turn + 2 * math.pi * k / 5
            px, py = cx + reach * math.cos(a), cy + reach * math.sin(a)
            draw.ellipse((px - petal, py - petal, px + petal, py + petal), fill=ink)
        draw.ellipse((cx - 4 * scale, cy - 4 * scale, cx + 4 * scale, cy + 4 * scale), fill=BUCKLE)


def _graphic(draw: ImageDraw.ImageDraw, center: Point, radius: float, ink: tuple[int, int, int],
             rng: random.Random) -> None:
    """One big motif on the front: a star, a ring or a block letter."""
    cx, cy = center
    kind = rng.choice(("star", "star", "ring", "letter"))
    if kind == "star":
        turn = rng.uniform(-0.3, 0.3)
        points = [(cx + (radius if k % 2 == 0 else radius * 0.45) * math.sin(turn + math.pi * k / 5),
                   cy - (radius if k % 2 == 0 else radius * 0.45) * math.cos(turn + math.pi * k / 5))
                  for k in range(10)]
        draw.polygon(points, fill=ink)
    elif kind == "ring":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=ink)
        inner = radius * 0.5
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=_pattern_color(ink))
    else:
        w = radius * 0.38
        draw.line((cx - radius * 0.7, cy + radius, cx, cy - radius), fill=ink, width=round(w))
        draw.line((cx, cy - radius, cx + radius * 0.7, cy + radius), fill=ink, width=round(w))
        draw.line((cx - radius * 0.4, cy + radius * 0.2, cx + radius * 0.4, cy + radius * 0.2), fill=ink,
                  width=round(w * 0.8))


def _lighting(fabric: Image.Image, rng: random.Random) -> Image.Image:
    """A soft light gradient over the garment (about +-7%), too weak to change a colour's name."""
    strength = rng.uniform(0.04, 0.08)
    light = 1 - strength + 2 * strength * _ramp(rng.uniform(0, 2 * math.pi))
    lit = np.asarray(fabric, np.float32) * light[..., None]
    return Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))


def _inner_color(main: Sequence[int]) -> tuple[int, int, int]:
    """What shows through a neckline: the dark inside back, or skin on dark garments."""
    return INNER_DARK if _luma(main) > 110 else SKIN


def _draw_neckline(draw: ImageDraw.ImageDraw, neckline: str, neck_y: float, place: Placement,
                   main: tuple[int, int, int]) -> float:
    """Cut the neckline (big, filled with a contrasting inside); returns where a placket may start."""
    inner = _inner_color(main)
    width = max(3, round(place.size(4)))
    if neckline == "round":
        box = [place.point((CENTER_X - 24, neck_y - 20)), place.point((CENTER_X + 24, neck_y + 20))]
        draw.chord([*box[0], *box[1]], 0, 180, fill=inner, outline=OUTLINE, width=width)
        return neck_y + 20
    if neckline == "v-neck":
        v = [(CENTER_X - 24, neck_y - 1), (CENTER_X + 24, neck_y - 1), (CENTER_X, neck_y + 56)]
        draw.polygon(place.points(v), fill=inner, outline=OUTLINE, width=width)
        return neck_y + 56
    _draw_collar(draw, neck_y, place, main, inner, width)
    return neck_y + 24


def _draw_collar(draw: ImageDraw.ImageDraw, neck_y: float, place: Placement, main: tuple[int, int, int],
                 inner: tuple[int, int, int], width: int) -> None:
    """A band standing up behind the neck (above the shoulder line, where no cut-out neckline reaches)
    and two broad pointed flaps in a plain shade with a thick outline; only a narrow gap between them,
    unlike the wide triangle of a v-neck."""
    stand = _mirror([(28, neck_y - 16), (30, neck_y + 2)])
    draw.polygon(place.points(stand), fill=_shade(main, 0.75), outline=OUTLINE, width=width)
    gap = [(CENTER_X - 10, neck_y - 8), (CENTER_X + 10, neck_y - 8), (CENTER_X, neck_y + 22)]
    draw.polygon(place.points(gap), fill=inner, outline=OUTLINE, width=width)
    flap_color = _shade(main, 1.2) if _luma(main) < 200 else _shade(main, 0.88)
    for side in (1, -1):
        flap = [(1, neck_y + 20), (22, neck_y - 10), (44, neck_y + 6), (16, neck_y + 42)]
        draw.polygon(place.points([(CENTER_X + side * x, y) for x, y in flap]), fill=flap_color, outline=OUTLINE,
                     width=width)


def _draw_buttons(draw: ImageDraw.ImageDraw, y_top: float, y_bottom: float, place: Placement,
                  main: tuple[int, int, int]) -> None:
    """A plain placket strip with big contrasting buttons, so they read on any pattern."""
    width = max(2, round(place.size(3)))
    strip = [(CENTER_X - 9, y_top), (CENTER_X + 9, y_bottom)]
    a, b = place.points(strip)
    draw.rectangle((*a, *b), fill=_shade(main, 0.92), outline=OUTLINE, width=width)
    ink = _pattern_color(main)
    radius = place.size(6.5)
    y = y_top + 14
    while y < y_bottom - 8:
        cx, cy = place.point((CENTER_X, y))
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=ink, outline=OUTLINE, width=width)
        y += 24


def _draw_belt(draw: ImageDraw.ImageDraw, waist: tuple[float, float], place: Placement,
               main: tuple[int, int, int]) -> None:
    """A band across the waist in a colour far from the garment's, with a gold buckle."""
    y, half = waist
    belt_color = (66, 40, 24) if _luma(main) > 110 else (204, 168, 116)
    width = max(2, round(place.size(3)))
    a, b = place.points([(CENTER_X - half - 4, y - 9), (CENTER_X + half + 4, y + 9)])
    draw.rectangle((*a, *b), fill=belt_color, outline=OUTLINE, width=width)
    a, b = place.points([(CENTER_X - 16, y - 14), (CENTER_X + 16, y + 14)])
    draw.rectangle((*a, *b), fill=BUCKLE, outline=OUTLINE, width=width)
    a, b = place.points([(CENTER_X - 6, y - 5), (CENTER_X + 6, y + 5)])
    draw.rectangle((*a, *b), fill=belt_color)


def render_item(category: str, attrs: Mapping[str, str], rng: random.Random) -> Image.Image:
    """Draw one garment as a 224x224 RGB image."""
    garment = _SHAPES[category](attrs)
    place = Placement(rng.uniform(0.8, 1.0), rng.uniform(-12, 12), rng.uniform(-8, 8))
    main = _jitter(COLOR_RGB[attrs["color"]], rng, 6)
    canvas = Image.fromarray(_background(main, rng).astype(np.uint8))
    fabric = _lighting(_texture(attrs, garment, place, main, rng), rng)
    draw = ImageDraw.Draw(canvas)
    outline_width = max(3, round(place.size(4)))
    for part in garment.parts:
        points = place.points(part)
        mask = Image.new("L", canvas.size, 0)
        ImageDraw.Draw(mask).polygon(points, fill=255)
        canvas.paste(fabric, (0, 0), mask)
        draw.polygon(points, outline=OUTLINE, width=outline_width)
    for band in garment.bands + garment.cuffs:
        draw.polygon(place.points(band), fill=_shade(main, 0.78), outline=OUTLINE, width=outline_width)
    if garment.neck_y is not None:
        neck_bottom = _draw_neckline(draw, attrs["neckline"], garment.neck_y, place, main)
        if attrs["buttons"] == "yes" and garment.placket_end is not None:
            _draw_buttons(draw, neck_bottom, garment.placket_end, place, main)
    if attrs["belt"] == "yes" and garment.waist is not None:
        _draw_belt(draw, garment.waist, place, main)
    return canvas


def item_rng(seed: int, item_id: str) -> random.Random:
    """Each image's own random stream: independent of drawing order and of the number of workers."""
    return random.Random(f"sdfn-synth/{seed}/draw/{item_id}")
