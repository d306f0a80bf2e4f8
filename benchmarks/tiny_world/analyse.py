"""Read back what a clip of the tiny world shows: the shape's colour, kind and motion.

The background is the median colour of the clip's border pixels; the foreground mask is the
pixels farther than :data:`THRESHOLD` (RGB distance) from it. Colour: the hue of the mean
foreground colour, nearest of the world's colours by hue. Shape: the fill ratio of the mask in
its bounding box, per frame, median over frames (circle pi/4 ~ 0.785, square 1): square from
:data:`SQUARE_FILL` (blur rounds the corners), or the nearest of calibrated prototypes. Motion: the track of the mask's centroid; the direction is the larger axis
of the displacement from the first to the last frame with a mask, if it moved at least
:data:`MIN_TRAVEL` pixels. The track is kept for seam and jump checks (:func:`largest_step`).

The world is a torus (:mod:`.world`): a shape crossing an edge shows in two parts at opposite
edges. A frame whose mask touches both ends of an axis is rolled along it (:func:`recentre`)
so the shape is whole before its box, fill and centroid are read, and the track is unwrapped
(each step taken the short way round), so a shape leaving right and coming back left keeps
moving right. A frame touching no edge is read exactly as on a plane.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .world import COLOURS, Attributes

THRESHOLD = 0.35  # RGB distance from the background that counts as foreground
MIN_PIXELS = 8  # a frame with fewer foreground pixels has no shape in it
MIN_TRAVEL = 4.0  # px: less displacement over the clip is "still"
SHAPE_FILL = {"circle": math.pi / 4, "square": 1.0}
SQUARE_FILL = 0.86  # fill ratio from which a round-or-square shape is the square (blur rounds corners)


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyse` found; None where it could not tell."""

    colour: str | None
    shape: str | None
    direction: str | None
    hue: float | None  # degrees
    fill: float | None  # median fill ratio of the bounding box
    depth: float | None  # median centroid depth in the bounding box (0 top, 1 bottom)
    track: torch.Tensor = field(repr=False)  # [F, 2] centroid (x, y) px, NaN where no shape
    coverage: float = 0.0  # share of frames with a shape

    def matches(self, attributes: Attributes) -> dict[str, bool]:
        """Per attribute (colour, shape, direction): whether the clip shows what was asked."""
        return {"colour": self.colour == attributes.colour, "shape": self.shape == attributes.shape,
                "direction": self.direction == attributes.direction}


def hue_of(rgb: torch.Tensor) -> float:
    """Hue in degrees [0, 360) of one RGB colour [3]."""
    r, g, b = (float(v) for v in rgb)
    hi, lo = max(r, g, b), min(r, g, b)
    if hi - lo < 1e-6:
        return 0.0
    if hi == r:
        h = (g - b) / (hi - lo) % 6
    elif hi == g:
        h = (b - r) / (hi - lo) + 2
    else:
        h = (r - g) / (hi - lo) + 4
    return 60.0 * h % 360.0


COLOUR_HUES = {name: hue_of(torch.tensor(rgb)) for name, rgb in COLOURS.items()}


def background_colour(clip: torch.Tensor) -> torch.Tensor:
    """The median colour [3] of the clip's border pixels (clip [F, H, W, 3])."""
    border = torch.cat([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]], dim=1)  # [F, N, 3]
    return border.reshape(-1, 3).median(dim=0).values


def foreground_mask(clip: torch.Tensor, background: torch.Tensor | None = None) -> torch.Tensor:
    """[F, H, W] bool: pixels farther than :data:`THRESHOLD` from the background colour."""
    bg = background_colour(clip) if background is None else background
    return (clip - bg).norm(dim=-1) > THRESHOLD


def _roll_of(occupied: torch.Tensor) -> int:
    """How far to roll an axis whose ``occupied`` [N] bools touch both ends so that the middle
    of its longest empty run lands on the ends (0 when it does not touch both ends, or is full)."""
    n = len(occupied)
    if not (bool(occupied[0]) and bool(occupied[-1])) or bool(occupied.all()):
        return 0
    best_len, best_mid, run = 0, 0, 0
    for i in range(n):  # one pass: empty runs cannot cross the ends (both are occupied)
        run = 0 if bool(occupied[i]) else run + 1
        if run > best_len:
            best_len, best_mid = run, i - run // 2
    return -best_mid


def recentre(frame_mask: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(mask rolled so a shape crossing an edge is whole, roll along y, roll along x) of one
    frame [H, W]; rolls of 0 (the mask itself) when it touches no two opposite edges."""
    dy, dx = _roll_of(frame_mask.any(dim=1)), _roll_of(frame_mask.any(dim=0))
    if dy or dx:
        frame_mask = torch.roll(frame_mask, shifts=(dy, dx), dims=(0, 1))
    return frame_mask, dy, dx


def centroid_track(mask: torch.Tensor) -> torch.Tensor:
    """[F, 2] centroid (x, y) in pixel centres of each frame's mask, unwrapped around the torus
    (see the module's notes); NaN for an empty frame."""
    f, h, w = mask.shape
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    track = torch.full((f, 2), float("nan"))
    prev = None
    for i in range(f):
        m, dy, dx = recentre(mask[i])
        count = float(m.sum())
        if count < MIN_PIXELS:
            continue
        m = m.float()
        point = torch.tensor([float((m * xs).sum()) / count - dx, float((m * ys).sum()) / count - dy])
        if dy or dx or (prev is not None and bool(((point - prev).abs() > torch.tensor([w, h]) / 2).any())):
            point = _nearest_image(point, prev, w, h)
        track[i] = prev = point
    return track


def _nearest_image(point: torch.Tensor, prev: torch.Tensor | None, w: int, h: int) -> torch.Tensor:
    """``point`` moved by whole frame sizes: into the frame when there is no ``prev``, else to
    the copy nearest ``prev`` (a step taken the short way round the torus)."""
    size = torch.tensor([float(w), float(h)])
    if prev is None:
        return torch.remainder(point, size)
    return prev + torch.remainder(point - prev + size / 2, size) - size / 2


def fill_ratio(frame_mask: torch.Tensor) -> float | None:
    """Foreground share of the mask's bounding box in one frame [H, W]; None if nearly empty."""
    frame_mask = recentre(frame_mask)[0]
    box = _box(frame_mask)
    if box is None:
        return None
    top, bottom, left, right = box
    return float(frame_mask.sum()) / ((bottom - top + 1) * (right - left + 1))


def centroid_depth(frame_mask: torch.Tensor) -> float | None:
    """Where the mask's centroid sits in its bounding box, 0 at the top, 1 at the bottom (0.5 for
    a circle or square); None if nearly empty."""
    frame_mask = recentre(frame_mask)[0]
    box = _box(frame_mask)
    if box is None:
        return None
    top, bottom = box[0], box[1]
    rows = torch.arange(frame_mask.shape[0], dtype=torch.float32) + 0.5
    cy = float((frame_mask.float().sum(dim=1) * rows).sum() / frame_mask.sum())
    return (cy - top) / (bottom - top + 1)


def _box(frame_mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) rows/columns of the mask, inclusive; None if nearly empty."""
    if int(frame_mask.sum()) < MIN_PIXELS:
        return None
    rows = frame_mask.any(dim=1).nonzero()
    cols = frame_mask.any(dim=0).nonzero()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def classify_colour(hue: float) -> str:
    """The world's colour nearest to ``hue`` (degrees, on the circle)."""
    return min(COLOUR_HUES, key=lambda name: _hue_distance(hue, COLOUR_HUES[name]))


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


@dataclass(frozen=True)
class Prototypes:
    """Per shape the mean (fill, depth) a decoder renders it with, and the within-shape std of
    each feature: :func:`classify_shape` then picks the nearest prototype in std units."""

    means: dict[str, tuple[float, float]]
    std: tuple[float, float]


def calibrate(pairs: list[tuple[str, torch.Tensor]]) -> Prototypes:
    """:class:`Prototypes` from (shape, clip) pairs, e.g. the world's clips through a VAE."""
    feats: dict[str, list[tuple[float, float]]] = {}
    for shape, clip in pairs:
        a = analyse(clip)
        if a.fill is not None and a.depth is not None:
            feats.setdefault(shape, []).append((a.fill, a.depth))
    means = {k: tuple(torch.tensor(v).mean(dim=0).tolist()) for k, v in feats.items()}
    resid = torch.cat([torch.tensor(v) - torch.tensor(means[k]) for k, v in feats.items()])
    std = resid.pow(2).mean(dim=0).sqrt().clamp_min(1e-3)
    return Prototypes(means, (float(std[0]), float(std[1])))  # type: ignore[arg-type]


def classify_shape(fill: float, depth: float = 0.5, prototypes: Prototypes | None = None) -> str:
    """With ``prototypes``: the nearest one (by ``fill`` and ``depth``). Else square from a
    ``fill`` ratio of :data:`SQUARE_FILL`, else circle."""
    if prototypes is not None:
        (sf, sd), means = prototypes.std, prototypes.means
        return min(means, key=lambda k: ((fill - means[k][0]) / sf) ** 2 + ((depth - means[k][1]) / sd) ** 2)
    return "square" if fill >= SQUARE_FILL else "circle"


def motion_direction(track: torch.Tensor) -> str | None:
    """left/right/up/down from the first to the last valid centroid of ``track`` [F, 2]; None
    if fewer than two frames have a shape or it moved less than :data:`MIN_TRAVEL` px."""
    valid = track[~track.isnan().any(dim=1)]
    if len(valid) < 2:
        return None
    dx, dy = (float(v) for v in valid[-1] - valid[0])
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _steps(track: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames of ``track`` with a shape [N, 2] and the centroid move between consecutive
    ones [N - 1] (px)."""
    valid = track[~track.isnan().any(dim=1)]
    return valid, (valid[1:] - valid[:-1]).norm(dim=1)


def largest_step(track: torch.Tensor) -> float:
    """The largest centroid move between consecutive frames with a shape (px; 0 if none):
    a jump at a context-window seam shows here."""
    steps = _steps(track)[1]
    return float(steps.max()) if len(steps) else 0.0


def largest_step_inside(track: torch.Tensor, width: int, height: int, margin: float) -> float:
    """:func:`largest_step` over the steps whose two frames show the shape inside the frame: its
    centroid, read on the torus, at least ``margin`` px from every edge in both (0 if none). What
    a video does while its shape crosses an edge is left out; a jump anywhere else shows here."""
    size = torch.tensor([float(width), float(height)])
    valid, steps = _steps(track)
    on_frame = torch.remainder(valid, size)
    inside = ((on_frame >= margin) & (on_frame <= size - margin)).all(dim=1)
    steps = steps[inside[1:] & inside[:-1]]
    return float(steps.max()) if len(steps) else 0.0


def analyse(clip: torch.Tensor, prototypes: Prototypes | None = None) -> Analysis:
    """Colour, shape, direction and centroid track of a clip [F, H, W, 3] float 0..1; shapes
    by ``prototypes`` when given (:func:`calibrate`), else by the clean world's rules."""
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"clip has shape {tuple(clip.shape)}; expected [F, H, W, 3] (float 0..1)")
    clip = clip.float()
    mask = foreground_mask(clip)
    track = centroid_track(mask)
    fills = [r for r in (fill_ratio(m) for m in mask) if r is not None]
    coverage = len(fills) / clip.shape[0]
    if not fills:
        return Analysis(None, None, None, None, None, None, track, 0.0)
    hue = hue_of(clip[mask].mean(dim=0))
    fill = float(torch.tensor(fills).median())
    depth = float(torch.tensor([d for d in (centroid_depth(m) for m in mask) if d is not None]).median())
    return Analysis(classify_colour(hue), classify_shape(fill, depth, prototypes), motion_direction(track), hue,
                    fill, depth, track, coverage)


__all__ = ["Prototypes", "calibrate", "THRESHOLD", "SHAPE_FILL", "COLOUR_HUES", "Analysis", "hue_of", "background_colour",
           "foreground_mask", "recentre", "centroid_track", "fill_ratio", "centroid_depth", "classify_colour", "classify_shape",
           "motion_direction", "largest_step", "largest_step_inside", "analyse"]
