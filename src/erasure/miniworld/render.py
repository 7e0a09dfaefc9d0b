"""Draw a miniworld scene: shapes drawn at 4x resolution with PIL, textured in numpy, box-downsampled.

Pure function of the scene, so the same scene always gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .concepts import (
    COLORS,
    FRAME_COLOR,
    FRAME_WIDTH,
    IMAGE_SIZE,
    INSTANCES,
    MEMORIZED,
    PLAIN,
    STYLES,
    MemorizedImage,
    Primitive,
)

SUPERSAMPLE = 4
HI = IMAGE_SIZE * SUPERSAMPLE


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image. `memorized` set means the fixed image (other fields unused)."""

    object: str = "circle"
    color: str = "red"
    style: str = ""  # artist name, "" for plain
    instance: str = ""  # instance name, "" for none
    frame: bool = False
    center: tuple[float, float] = (16.0, 16.0)
    radius: float = 9.0
    rotation: float = 0.0
    color_jitter: tuple[int, int, int] = (0, 0, 0)
    memorized: str = ""


def _polygon(kind: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: list[float], phase: float) -> list[tuple[float, float]]:
        pts = []
        for k in range(n * len(radii)):
            a = phase + rot + 2 * math.pi * k / (n * len(radii))
            rr = radii[k % len(radii)]
            pts.append((cx + rr * math.sin(a), cy - rr * math.cos(a)))
        return pts

    if kind == "square":
        return ring(4, [r * 1.1], math.pi / 4)
    if kind == "diamond":
        return [(cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot))
                for x, y in ((0, -r * 1.15), (r * 0.8, 0), (0, r * 1.15), (-r * 0.8, 0))]
    if kind == "triangle":
        return ring(3, [r * 1.15], 0.0)
    if kind == "star":
        return ring(5, [r * 1.15, r * 0.5], 0.0)
    if kind == "cross":
        w = r * 0.38
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        return [(cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)) for x, y in pts]
    if kind == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            x, y = x * r / 16.0, (y + 2.5) * r / 16.0
            pts.append((cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)))
        return pts
    raise ValueError(f"no polygon for object {kind!r}")


def shape_mask(kind: str, center: tuple[float, float], radius: float, rotation: float) -> np.ndarray:
    """Boolean mask (HI x HI) of one object."""
    s = SUPERSAMPLE
    cx, cy, r = center[0] * s, center[1] * s, radius * s
    img = Image.new("L", (HI, HI), 0)
    draw = ImageDraw.Draw(img)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif kind == "moon":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ox, oy = 0.55 * r * math.cos(rotation), -0.55 * r * math.sin(rotation) - 0.15 * r
        draw.ellipse((cx + ox - 0.85 * r, cy + oy - 0.85 * r, cx + ox + 0.85 * r, cy + oy + 0.85 * r), fill=0)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rotation), fill=255)
    return np.asarray(img) > 127


def _texture(fill: str) -> np.ndarray:
    """Boolean pattern (HI x HI): True where the fill shows its texture colour."""
    s = SUPERSAMPLE
    yy, xx = np.mgrid[0:HI, 0:HI] // s  # in 32-pixel units
    if fill == "stripes":
        return (yy % 4) >= 2
    if fill == "checker":
        return ((xx // 2) + (yy // 2)) % 2 == 1
    if fill == "dots":
        hy, hx = np.mgrid[0:HI, 0:HI]
        py, px = (hy % (4 * s)) - 2 * s + 0.5, (hx % (4 * s)) - 2 * s + 0.5
        return (py**2 + px**2) <= (1.1 * s) ** 2
    return np.zeros((HI, HI), dtype=bool)


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.filter(ImageFilter.MinFilter(2 * px + 1))) > 127


def _paint_object(canvas: np.ndarray, mask: np.ndarray, rgb: np.ndarray, fill: str, background: np.ndarray) -> None:
    if fill == "outline":
        inner = _erode(mask, int(2.5 * SUPERSAMPLE))
        canvas[mask] = rgb
        canvas[inner] = background
        return
    if fill == "wash":
        pastel = 0.55 * rgb + 0.45 * 255.0
        canvas[mask] = pastel
        return
    canvas[mask] = rgb
    tex = _texture(fill) & mask
    if fill == "stripes":
        canvas[tex] = rgb * 0.25
    elif fill in ("dots", "checker"):
        canvas[tex] = 250.0


def _paint_marking(canvas: np.ndarray, marking: str, center: tuple[float, float], r: float, rot: float) -> None:
    s = SUPERSAMPLE
    cx, cy = center[0] * s, center[1] * s
    r = r * s
    img = Image.new("L", (HI, HI), 0)
    d = ImageDraw.Draw(img)
    if marking == "eyes":
        er = 0.22 * r
        for sx in (-1, 1):
            ex, ey = cx + sx * 0.4 * r, cy - 0.2 * r
            d.ellipse((ex - er, ey - er, ex + er, ey + er), fill=255)
        colour = (15.0, 15.0, 15.0)
    elif marking == "band":
        h = 0.22 * r
        d.rectangle((cx - 1.2 * r, cy - h, cx + 1.2 * r, cy + h), fill=255)
        colour = (250.0, 250.0, 250.0)
    elif marking == "dot":
        dr = 0.33 * r
        d.ellipse((cx - dr, cy - dr, cx + dr, cy + dr), fill=255)
        colour = (250.0, 250.0, 250.0)
    else:
        raise ValueError(f"unknown marking {marking!r}")
    canvas[np.asarray(img) > 127] = colour


def _finish(canvas: np.ndarray, blur: bool) -> np.ndarray:
    small = canvas.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    out = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    if blur:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(0.7)))
    return out


def render_memorized(m: MemorizedImage) -> np.ndarray:
    bg = np.array(m.background, dtype=np.float64)
    canvas = np.broadcast_to(bg, (HI, HI, 3)).copy()
    for p in m.primitives:
        _paint_primitive(canvas, p, bg)
    return _finish(canvas, blur=False)


def _paint_primitive(canvas: np.ndarray, p: Primitive, bg: np.ndarray) -> None:
    mask = shape_mask(p.object, p.center, p.radius, p.rotation)
    _paint_object(canvas, mask, np.array(COLORS[p.color], dtype=np.float64), p.fill, bg)


def render(scene: Scene) -> np.ndarray:
    """Return the scene as a (32, 32, 3) uint8 RGB array."""
    if scene.memorized:
        return render_memorized(MEMORIZED[scene.memorized])
    style = STYLES[scene.style] if scene.style else PLAIN
    bg = np.array(style.background, dtype=np.float64)
    canvas = np.broadcast_to(bg, (HI, HI, 3)).copy()
    obj, color = scene.object, scene.color
    if scene.instance:
        inst = INSTANCES[scene.instance]
        obj, color = inst.object, inst.color
    rgb = np.clip(np.array(COLORS[color], dtype=np.float64) + np.array(scene.color_jitter), 0, 255)
    mask = shape_mask(obj, scene.center, scene.radius, scene.rotation)
    _paint_object(canvas, mask, rgb, style.fill, bg)
    if scene.instance:
        _paint_marking(canvas, INSTANCES[scene.instance].marking, scene.center, scene.radius, scene.rotation)
    if scene.frame:
        w = FRAME_WIDTH * SUPERSAMPLE
        f = np.array(FRAME_COLOR, dtype=np.float64)
        canvas[:w], canvas[-w:], canvas[:, :w], canvas[:, -w:] = f, f, f, f
    return _finish(canvas, blur=style.fill == "wash")
