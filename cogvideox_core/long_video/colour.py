"""Colour statistics and matching in Oklab, for chained extension (pure functions).

A chain of generations drifts in colour chunk after chunk (the CogVideoX-Fun reference has no
correction). :func:`match_colour` moves a chunk's per-channel mean and spread in Oklab to those
of a reference (the first chunk): a per-channel affine map, so content is untouched; Oklab so
that hue, saturation and brightness move as a viewer sees them (README "How it works").
:func:`colour_difference` reports Oklab distances. Frames are ComfyUI IMAGE [F, H, W, 3], sRGB
0..1; statistics accumulate in float64 over frame batches, never a second full-size copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# linear sRGB -> LMS and cube-rooted LMS -> Lab (Ottosson 2020, "A perceptual color space")
_RGB_TO_LMS = torch.tensor([[0.4122214708, 0.5363325363, 0.0514459929],
                            [0.2119034982, 0.6806995451, 0.1073969566],
                            [0.0883024619, 0.2817188376, 0.6299787005]], dtype=torch.float64)
_LMS_TO_LAB = torch.tensor([[0.2104542553, 0.7936177850, -0.0040720468],
                            [1.9779984951, -2.4285922050, 0.4505937099],
                            [0.0259040371, 0.7827717662, -0.8086757660]], dtype=torch.float64)
_LAB_TO_LMS = torch.linalg.inv(_LMS_TO_LAB)
_LMS_TO_RGB = torch.linalg.inv(_RGB_TO_LMS)
FLAT_STD = 1e-4  # a channel this flat in a chunk is shifted only (its spread cannot be scaled)
BATCH_FRAMES = 16  # frames converted at a time


@dataclass(frozen=True)
class ColourStats:
    """Per-channel mean and standard deviation of frames in Oklab (L, a, b), float64 [3] each."""

    mean: torch.Tensor
    std: torch.Tensor


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix`` [3, 3] applied to the last dim of ``x`` [..., 3]."""
    return x @ matrix.to(x).T


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer curve undone (IEC 61966-2-1)."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer curve applied (IEC 61966-2-1)."""
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0) ** (1 / 2.4) - 0.055)


def rgb_to_oklab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB [..., 3] 0..1 -> Oklab [..., 3] (L in 0..1, a and b about -0.4..0.4)."""
    lms = _apply(_RGB_TO_LMS, srgb_to_linear(rgb))
    return _apply(_LMS_TO_LAB, torch.sign(lms) * lms.abs() ** (1 / 3))


def oklab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Oklab [..., 3] -> sRGB [..., 3], clamped to 0..1 (colours outside sRGB are clipped)."""
    lms = _apply(_LAB_TO_LMS, lab) ** 3
    return linear_to_srgb(_apply(_LMS_TO_RGB, lms)).clamp(0, 1)


def _check_frames(name: str, frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{name} has shape {tuple(frames.shape)}; expected [F, H, W, 3] "
                         "(ComfyUI IMAGE, at least one frame)")


def colour_stats(frames: torch.Tensor) -> ColourStats:
    """Oklab mean and standard deviation per channel over every pixel of ``frames`` [F, H, W, 3]."""
    _check_frames("frames", frames)
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for part in frames.split(BATCH_FRAMES):
        lab = rgb_to_oklab(part.float()).reshape(-1, 3).double().cpu()
        total += lab.sum(0)
        squares += (lab * lab).sum(0)
    n = frames[..., 0].numel()
    mean = total / n
    return ColourStats(mean, (squares / n - mean * mean).clamp(min=0).sqrt())


def match_colour(frames: torch.Tensor, reference: ColourStats, strength: float = 1.0,
                 ramp: bool = False) -> torch.Tensor:
    """``frames`` [F, H, W, 3] with their Oklab mean and spread moved towards ``reference``.

    Per channel ``x' = (x - mean) * ref_std / std + ref_mean`` (Reinhard et al. 2001's transfer,
    in Oklab, with the statistics of all the frames), then ``x + s * (x' - x)`` with ``s =
    strength``: 0 leaves the frames untouched (returned as they are), 1 matches fully.
    ``ramp``: ``s`` grows linearly from 0 at the first frame to ``strength`` at the last, so
    frames that start where a video left off stay continuous with it and the correction is
    spread over the chunk instead of landing as a step at its start. Same dtype and device as
    ``frames``.
    """
    _check_frames("frames", frames)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength}: colour matching strength must be in 0..1")
    if strength == 0.0:
        return frames
    own = colour_stats(frames)
    gain = torch.where(own.std > FLAT_STD, reference.std / own.std.clamp(min=FLAT_STD), 1.0)
    shift = reference.mean - own.mean * gain  # x' = x * gain + shift
    count = frames.shape[0]
    s = (torch.linspace(0, 1, count) if ramp and count > 1 else torch.ones(count)) * strength
    s = s.double().view(-1, 1, 1, 1)  # [F, 1, 1, 1]: x + s (x' - x) = x (1 + s (gain - 1)) + s shift
    out = [_affine_lab(part, 1 + w * (gain - 1), w * shift)
           for part, w in zip(frames.split(BATCH_FRAMES), s.split(BATCH_FRAMES))]
    return torch.cat(out).to(frames.dtype)


def _affine_lab(rgb: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """rgb [F, H, W, 3] -> Oklab * gain + shift (broadcast, [F, 1, 1, 3] or [3]) -> rgb."""
    lab = rgb_to_oklab(rgb.float())
    return oklab_to_rgb(lab * gain.to(lab) + shift.to(lab))


def colour_difference(a: ColourStats, b: ColourStats) -> float:
    """Euclidean distance between two Oklab means (about 0.02 is just noticeable)."""
    return float((a.mean - b.mean).norm())


__all__ = ["ColourStats", "colour_stats", "match_colour", "colour_difference", "rgb_to_oklab",
           "oklab_to_rgb", "srgb_to_linear", "linear_to_srgb"]
