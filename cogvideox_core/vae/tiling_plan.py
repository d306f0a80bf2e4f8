"""Tile geometry for the tiled VAE: pure functions over sizes, no tensors of activations.

Two kinds of tiling use it (see :mod:`cogvideox_core.vae.tiling`):

- **exact** tiling splits every layer's output into a grid of non-overlapping regions; a region
  reads its input with a *halo* (the conv's receptive-field margin, 1 pixel for a 3x3 kernel),
  so every region computes exactly what the whole frame would. The user's ``tile`` only sets a
  memory *budget* (elements of the largest tile tensor); each layer takes the fewest regions
  whose tensors fit it, so low-resolution layers run in one piece.
- **fast** tiling cuts the latents into overlapping tiles that are decoded on their own and
  blended with linear ramps (:func:`overlapping_spans`, :func:`blend_ramp`).

A region is ``(r0, r1, c0, c1)``: rows ``r0:r1`` and columns ``c0:c1`` of a frame.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

Region = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1

HALO = 1  # every spatial kernel of the VAE is 3x3 with stride 1 or 2: a 1-pixel margin
REF_FRAMES = 11  # the frames of the widest tile tensor: a 9-frame first chunk + 2 cached frames


def check_pair(name: str, value: int | Sequence[int] | None, multiple: int,
               minimum: int) -> tuple[int, int] | None:
    """``value`` (an int or an (h, w) pair, or None) as an (h, w) pair of ints, each a multiple
    of ``multiple`` and at least ``minimum``; ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name}={value!r} must be an int or a pair of ints (height, width)")
    for v in pair:
        if v < minimum or v % multiple:
            raise ValueError(f"{name}={value!r}: each side must be a multiple of {multiple} "
                             f"(the VAE's spatial compression) and at least {minimum}")
    return pair[0], pair[1]


def even_spans(size: int, parts: int) -> list[tuple[int, int]]:
    """``size`` split into ``parts`` contiguous spans whose lengths differ by at most one."""
    if not 1 <= parts <= size:
        raise ValueError(f"parts={parts} must be in 1..{size} (size={size})")
    bounds = [size * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def grid_shape(height: int, width: int, max_area: int, halo: int = HALO) -> tuple[int, int]:
    """The fewest rows x columns of regions such that a region plus its halo (on the sides that
    face another region) covers at most ``max_area`` pixels; ties go to the squarer region.

    ``ValueError`` when even 1-pixel regions do not fit.
    """
    best: tuple[int, int, int] | None = None  # (count, halo pixels, rows) -> pick the smallest
    for rows in range(1, height + 1):
        th = math.ceil(height / rows) + (2 * halo if rows > 1 else 0)
        if th > max_area:
            continue
        cols = _fewest_parts(width, max_area // th, halo)
        if cols is None:
            continue
        tw = math.ceil(width / cols) + (2 * halo if cols > 1 else 0)
        key = (rows * cols, th * tw * rows * cols, rows)
        if best is None or key < best:
            best = key
        if rows * cols == 1:
            break
    if best is None:
        raise ValueError(f"a tile budget of {max_area} pixels cannot hold a 1-pixel region with its "
                         f"{halo}-pixel halo (frame {height}x{width}); use a larger tile")
    rows = best[2]
    th = math.ceil(height / rows) + (2 * halo if rows > 1 else 0)
    return rows, _fewest_parts(width, max_area // th, halo) or 1


def _fewest_parts(size: int, max_len: int, halo: int) -> int | None:
    """Fewest parts of ``size`` whose longest part plus halo is at most ``max_len``."""
    if size <= max_len:
        return 1
    if max_len < 1 + 2 * halo:
        return None
    return math.ceil(size / (max_len - 2 * halo))


def grid_regions(height: int, width: int, rows: int, cols: int) -> list[Region]:
    """Non-overlapping regions covering a ``height x width`` frame, row-major."""
    return [(r0, r1, c0, c1) for r0, r1 in even_spans(height, rows) for c0, c1 in even_spans(width, cols)]


def regions_for_budget(height: int, width: int, max_area: int) -> list[Region]:
    """The regions of :func:`grid_shape` for a frame and a pixel budget per region (halo included)."""
    return grid_regions(height, width, *grid_shape(height, width, max_area))


def split_region(region: Region) -> list[Region]:
    """A region cut in two along its longer side (the out-of-memory retry); [] when 1x1."""
    r0, r1, c0, c1 = region
    if r1 - r0 >= c1 - c0 and r1 - r0 > 1:
        m = (r0 + r1) // 2
        return [(r0, m, c0, c1), (m, r1, c0, c1)]
    if c1 - c0 > 1:
        m = (c0 + c1) // 2
        return [(r0, r1, c0, m), (r0, r1, m, c1)]
    return []


def with_halo(region: Region, height: int, width: int, halo: int = HALO) -> Region:
    """``region`` grown by ``halo`` on every side, clipped to the frame."""
    r0, r1, c0, c1 = region
    return max(r0 - halo, 0), min(r1 + halo, height), max(c0 - halo, 0), min(c1 + halo, width)


def upsample_source(region: Region, height: int, width: int, halo: int = HALO) -> tuple[Region, Region]:
    """For an output region of a 2x nearest upsample + 3x3 conv on a ``height x width`` output:
    the source region (at half size) to upsample, and the crop of the upsampled source that is
    the conv's input (relative to the upsampled source's origin)."""
    u0, u1, v0, v1 = with_halo(region, height, width, halo)  # conv input, upsampled coordinates
    s0, s1, t0, t1 = u0 // 2, (u1 + 1) // 2, v0 // 2, (v1 + 1) // 2
    return (s0, s1, t0, t1), (u0 - 2 * s0, u1 - 2 * s0, v0 - 2 * t0, v1 - 2 * t0)


def downsample_source(region: Region, height: int, width: int) -> tuple[Region, tuple[int, int]]:
    """For an output region of the encoder's downsample (pad right/bottom by one zero, 3x3 conv,
    stride 2) of a ``height x width`` input: the input region to read and the (bottom, right)
    zero padding it needs (1 only where it reaches the padded edge)."""
    r0, r1, c0, c1 = region
    rows, cols = (2 * r0, 2 * r1 + 1), (2 * c0, 2 * c1 + 1)
    src = (rows[0], min(rows[1], height), cols[0], min(cols[1], width))
    return src, (rows[1] - src[1], cols[1] - src[3])


def downsampled_size(size: int) -> int:
    """Output size of pad-by-one then a 3-wide stride-2 conv: ``(size - 2) // 2 + 1``."""
    return (size - 2) // 2 + 1


def budget_elements(tile: tuple[int, int], channels: int, frames: int = REF_FRAMES, halo: int = HALO) -> int:
    """The element budget of a tile tensor: ``channels x frames`` of a ``tile`` region with its halo."""
    return channels * frames * (tile[0] + 2 * halo) * (tile[1] + 2 * halo)


def tile_for_budget(elements: int, channels: int, frames: int = REF_FRAMES, multiple: int = 8,
                    halo: int = HALO) -> tuple[int, int]:
    """The largest square tile (sides a multiple of ``multiple``, at least ``multiple``) whose
    tensor of ``channels x frames`` fits ``elements`` (the inverse of :func:`budget_elements`)."""
    side = math.isqrt(max(elements // (channels * frames), 1)) - 2 * halo
    side = max(side // multiple * multiple, multiple)
    return side, side


# ---- fast (blended) tiling ---------------------------------------------------------------------

def overlapping_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of length ``min(tile, size)`` covering ``0:size``, neighbours overlapping by at least
    ``overlap``; the first starts at 0 and the last ends at ``size`` (so the output is exactly
    ``size`` long, whatever tile and overlap)."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap={overlap} must be in 0..{tile - 1} (below the tile, {tile})")
    if size <= tile:
        return [(0, size)]
    count = math.ceil((size - overlap) / (tile - overlap))
    starts = [round(i * (size - tile) / (count - 1)) for i in range(count)]
    return [(s, s + tile) for s in starts]


def blend_ramp(span: tuple[int, int], spans: Sequence[tuple[int, int]], scale: int = 1) -> torch.Tensor:
    """Weights along one axis for ``span`` among ``spans`` (latent units; ``scale`` pixels per unit),
    in float64: a linear ramp over each overlap with a neighbour, 1 elsewhere, then divided by the
    sum of all spans' weights so the weights of every pixel sum to one."""
    lo, hi = span[0] * scale, span[1] * scale
    total = torch.zeros(max(e for _, e in spans) * scale, dtype=torch.float64)
    for s in spans:
        total[s[0] * scale:s[1] * scale] += _ramp(s, spans, scale)
    return _ramp(span, spans, scale) / total[lo:hi]


def _ramp(span: tuple[int, int], spans: Sequence[tuple[int, int]], scale: int) -> torch.Tensor:
    lo, hi = span[0] * scale, span[1] * scale
    w = torch.ones(hi - lo, dtype=torch.float64)
    prev_end = max((e * scale for s, e in spans if s < span[0] and e > span[0]), default=lo)
    next_start = min((s * scale for s, e in spans if s > span[0] and s < span[1]), default=hi)
    if prev_end > lo:  # rising over the overlap with the previous span: (i + 0.5) / n
        n = prev_end - lo
        w[:n] = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    if next_start < hi:  # falling over the overlap with the next span
        n = hi - next_start
        w[-n:] = torch.minimum(w[-n:], 1 - (torch.arange(n, dtype=torch.float64) + 0.5) / n)
    return w


__all__ = ["Region", "HALO", "REF_FRAMES", "check_pair", "even_spans", "grid_shape", "grid_regions",
           "regions_for_budget", "split_region", "with_halo", "upsample_source", "downsample_source",
           "downsampled_size", "budget_elements", "tile_for_budget", "overlapping_spans", "blend_ramp"]
