"""A tiny procedural world: one coloured shape moving at a steady speed on a plain background.

A :class:`Scene` (colour, shape, direction, start centre, background) renders to a clip
[F, H, W, 3] float 0..1 (anti-aliased by 4x4 supersampling) and has one English caption of the
form "a red circle moving right on a white background" (:func:`caption`; :func:`parse_caption`
reads it back). Scenes are drawn from a seed (:func:`sample_scenes`), so the same seed gives the
same clips on every machine. The start is drawn so that the shape stays inside the frame for the
whole clip (a shape moving right starts in the left part of the frame), or, for a share
``wrap`` of the clips, anywhere: the world is a torus, a shape leaving one edge comes back at the
opposite one (as in an old arcade game), so a video of any length can keep one shape moving.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

import torch

FRAMES, HEIGHT, WIDTH = 17, 64, 96  # 5 latent frames of 8x12 (CogVideoX's 2:3 frame): the trained clip
HALF_SIZE = 10.0  # px: circle radius, half the square's side
SPEED = 1.0  # px per frame: 65 frames (4x the clip) travel 64 px, more room than most starts leave: the torus
MARGIN = 1.0  # px kept free between the shape and the frame's edge
SUPERSAMPLE = 4  # samples per pixel and axis (anti-aliasing)

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10), "green": (0.10, 0.70, 0.15), "blue": (0.10, 0.20, 0.90),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
SHAPES = ("circle", "square")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_CAPTION = re.compile(r"^an? (\w+) (\w+) moving (\w+) on an? (\w+) background$")


@dataclass(frozen=True)
class Attributes:
    """What a caption says: colour, shape, direction of motion, background."""

    colour: str
    shape: str
    direction: str
    background: str = "white"

    def __post_init__(self) -> None:
        for name, value, known in (("colour", self.colour, COLOURS), ("shape", self.shape, SHAPES),
                                   ("direction", self.direction, DIRECTIONS),
                                   ("background", self.background, BACKGROUNDS)):
            if value not in known:
                raise ValueError(f"{name}={value!r} is not in the world; known: {', '.join(known)}")


@dataclass(frozen=True)
class Scene:
    """One clip: ``attributes`` and the shape's centre (x, y) in pixels at frame 0."""

    attributes: Attributes
    start: tuple[float, float]

    @property
    def caption(self) -> str:
        return caption(self.attributes)

    def centre(self, frame: int) -> tuple[float, float]:
        """The shape's centre (x, y) at ``frame``: ``start + SPEED * frame * direction``."""
        dx, dy = DIRECTIONS[self.attributes.direction]
        return self.start[0] + SPEED * frame * dx, self.start[1] + SPEED * frame * dy


def caption(attributes: Attributes) -> str:
    """"a red circle moving right on a white background"."""
    a = attributes
    return f"a {a.colour} {a.shape} moving {a.direction} on a {a.background} background"


def parse_caption(text: str) -> Attributes:
    """The :class:`Attributes` of a caption made by :func:`caption` (case and outer spaces
    ignored); ``ValueError`` naming the text for anything else."""
    m = _CAPTION.match(" ".join(text.lower().split()))
    if m is None:
        raise ValueError(f"caption={text!r} is not of the form 'a <colour> <shape> moving "
                         "<direction> on a <background> background'")
    return Attributes(*m.groups())


def start_range(direction: str, frames: int = FRAMES, height: int = HEIGHT,
                width: int = WIDTH) -> tuple[tuple[float, float], tuple[float, float]]:
    """((x_min, x_max), (y_min, y_max)) of start centres that keep the shape inside the frame
    for ``frames`` frames moving ``direction``; ``ValueError`` when none does."""
    dx, dy = DIRECTIONS[direction]
    travel = SPEED * (frames - 1)
    lo = HALF_SIZE + MARGIN
    xs = (lo + travel * (dx < 0), width - lo - travel * (dx > 0))
    ys = (lo + travel * (dy < 0), height - lo - travel * (dy > 0))
    if xs[0] > xs[1] or ys[0] > ys[1]:
        raise ValueError(f"frames={frames} at {height}x{width}: a shape moving {direction} at "
                         f"{SPEED} px/frame leaves the frame; use fewer frames or a larger size")
    return xs, ys


def render(scene: Scene, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """The clip [frames, height, width, 3] float 0..1 of ``scene``."""
    a = scene.attributes
    bg = torch.tensor(BACKGROUNDS[a.background])
    fg = torch.tensor(COLOURS[a.colour])
    ys, xs = _sample_grid(height, width)  # [H*s, W*s] pixel coordinates of the samples
    out = []
    for f in range(frames):
        cx, cy = scene.centre(f)
        inside = _inside(a.shape, _torus(xs - cx, width), _torus(ys - cy, height)).float()  # [H*s, W*s]
        cover = torch.nn.functional.avg_pool2d(inside[None, None], SUPERSAMPLE)[0, 0]  # [H, W]
        out.append(bg + cover[..., None] * (fg - bg))  # [H, W, 3]
    return torch.stack(out)


def _torus(d: torch.Tensor, size: int) -> torch.Tensor:
    """Offsets ``d`` taken around a circle of ``size`` px: the nearest of d + k * size, so a shape
    past one edge shows at the opposite one. Offsets already within half a size stay as they are
    (a shape inside the frame renders as on a plane)."""
    return torch.where(d.abs() <= size / 2, d, torch.remainder(d + size / 2, size) - size / 2)


def _sample_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = SUPERSAMPLE
    ys = (torch.arange(height * s, dtype=torch.float32) + 0.5) / s
    xs = (torch.arange(width * s, dtype=torch.float32) + 0.5) / s
    return torch.meshgrid(ys, xs, indexing="ij")


def _inside(shape: str, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Whether each sample (offset dx, dy from the centre) is inside ``shape``."""
    r = HALF_SIZE
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (dx.abs() <= r) & (dy.abs() <= r)
    raise ValueError(f"shape={shape!r}; known: {', '.join(SHAPES)}")


def make_scene(colour: str, shape: str, direction: str, start: tuple[float, float],
               background: str = "white") -> Scene:
    """The scene of one (colour, shape, direction, start centre) tuple."""
    return Scene(Attributes(colour, shape, direction, background), (float(start[0]), float(start[1])))


def make_clip(colour: str, shape: str, direction: str, start: tuple[float, float],
              background: str = "white", frames: int = FRAMES, height: int = HEIGHT,
              width: int = WIDTH) -> torch.Tensor:
    """The clip [frames, height, width, 3] of one (colour, shape, direction, start) tuple."""
    return render(make_scene(colour, shape, direction, start, background), frames, height, width)


def sample_scenes(n: int, seed: int, backgrounds: Sequence[str] = ("white",), frames: int = FRAMES,
                  height: int = HEIGHT, width: int = WIDTH, wrap: float = 0.0) -> list[Scene]:
    """``n`` scenes drawn uniformly (attributes, then a start inside :func:`start_range`) from
    ``seed``; with ``wrap`` > 0, that share of them starts anywhere on the torus instead (its
    shape may cross an edge). ``wrap=0`` draws exactly what it always drew."""
    rng = random.Random(seed)
    scenes = []
    for _ in range(n):
        attrs = Attributes(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS)),
                           rng.choice(list(backgrounds)))
        if wrap > 0 and rng.random() < wrap:
            (x0, x1), (y0, y1) = (0.0, float(width)), (0.0, float(height))
        else:
            (x0, x1), (y0, y1) = start_range(attrs.direction, frames, height, width)
        scenes.append(Scene(attrs, (rng.uniform(x0, x1), rng.uniform(y0, y1))))
    return scenes


def sample_clips(n: int, seed: int, backgrounds: Sequence[str] = ("white",), frames: int = FRAMES,
                 height: int = HEIGHT, width: int = WIDTH) -> list[tuple[str, torch.Tensor]]:
    """``n`` (caption, clip [F, H, W, 3]) pairs from ``seed``."""
    return [(s.caption, render(s, frames, height, width))
            for s in sample_scenes(n, seed, backgrounds, frames, height, width)]


def all_captions(backgrounds: Sequence[str] = ("white",)) -> list[str]:
    """Every caption of the world (with ``backgrounds``), in a fixed order."""
    return [caption(Attributes(c, s, d, b)) for b in backgrounds for c in COLOURS for s in SHAPES
            for d in DIRECTIONS]


__all__ = ["FRAMES", "HEIGHT", "WIDTH", "HALF_SIZE", "SPEED", "COLOURS", "BACKGROUNDS", "SHAPES",
           "DIRECTIONS", "Attributes", "Scene", "caption", "parse_caption", "start_range", "render",
           "make_scene", "make_clip", "sample_scenes", "sample_clips", "all_captions"]
