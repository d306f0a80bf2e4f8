"""Context windows: denoise a video longer than the model takes, a window of latent frames at a
time.

Three pure pieces and one small runner, as ComfyUI's ``comfy/context_windows.py``:

- a **schedule** ``(num_frames, length, overlap, step_index, num_steps) -> windows`` gives the
  latent frame indices of every window at one sampling step (:data:`SCHEDULES`);
- a **weights** function ``(length, overlap_start, overlap_end) -> Tensor[length]`` gives each
  frame's blending weight inside one window (:data:`WEIGHTS`); :func:`window_weights` applies it
  to a window list and normalises so the weights of every frame sum to one. One more weighting,
  ``causal``, is a rule over the whole list rather than a shape per window: each frame is taken
  from the first window that covers it (:data:`WEIGHTINGS` names all);
- :func:`run_windows` calls a denoiser per window (or per batch of windows) and blends.

Users think in pixel frames; :class:`ContextOptions` holds pixel lengths and converts them, with
the family's rules (:mod:`cogvideox_core.families`), to a :class:`LatentContext` in latent frames
(what the sampler uses).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..families import Family, latent_frames, pixel_frames

logger = logging.getLogger(__name__)

ScheduleFn = Callable[[int, int, int, int, int], list[list[int]]]
WeightsFn = Callable[[int, int, int], torch.Tensor]
# denoise_fn(x_windows [n*B, L, C, H, W], windows: n index lists) -> prediction, same shape
DenoiseFn = Callable[[torch.Tensor, list[list[int]]], torch.Tensor]


# --- the family rules --------------------------------------------------------------------------

def check_window_length(length: int, family: Family, frames: int | None = None) -> None:
    """Raise ``ValueError`` if ``family``'s transformer cannot take a window of ``length`` latents.

    Every window of a schedule has this length and gets positional tables built for it, so the
    length must be one the family accepts: exactly the learned table's frames for 5B-I2V (the
    table is a fixed weight), at most :attr:`~cogvideox_core.families.Family.max_latent_frames`
    for Fun-2B (its resized sincos table covers 13), an even count for the 1.5 families (time is
    patched by 2; windows are not padded). ``frames`` is the pixel value the user gave, for the
    message.
    """
    tc = family.transformer.temporal_compression
    what = (f"length_frames={frames} ({length} latent frames)" if frames is not None
            else f"length={length} latent frames")
    if length < 1:
        raise ValueError(f"{what}: a window needs at least 1 latent frame")
    if family.transformer.learned_positions:
        need = family.transformer.sample_latent_frames
        if length != need:
            raise ValueError(f"{what}: {family.name} windows must be exactly {need} latent frames "
                             f"({pixel_frames(need, tc)} pixel frames), the size of its "
                             f"learned position table")
    most = family.max_latent_frames
    if most is not None and length > most:
        raise ValueError(f"{what}: {family.name} windows must be at most {most} latent frames "
                         f"({pixel_frames(most, tc)} pixel frames), the frames of its "
                         f"position table")
    if family.latent_frames_even and length % 2:
        raise ValueError(f"{what}: {family.name} windows must be an even number of latent frames "
                         f"(time is patched by 2); nearest pixel lengths: {family.nearest_even(length)}")


def _check_batch(batch_windows: int) -> None:
    if batch_windows < 1:
        raise ValueError(f"batch_windows={batch_windows}: must be at least 1 (windows per model call)")


@dataclass(frozen=True)
class LatentContext:
    """Context windows in latent frames, checked: what schedules and the sampler use."""

    length: int
    overlap: int
    schedule: str = "static"
    weights: str = "pyramid"
    batch_windows: int = 1

    def __post_init__(self) -> None:
        _check_batch(self.batch_windows)
        if self.length < 1:
            raise ValueError(f"length={self.length} latent frames: must be at least 1")
        if not 0 <= self.overlap < self.length:
            raise ValueError(f"overlap={self.overlap} latent frames: must be at least 0 and less "
                             f"than length={self.length}, or windows never advance")
        get_schedule(self.schedule)
        check_weights(self.weights)


@dataclass(frozen=True)
class ContextOptions:
    """Context windows as the user gives them: window length and overlap in PIXEL frames.

    :meth:`to_latent` converts to latent frames for a family and applies its rules.
    ``batch_windows``: windows denoised together in one model call. The transformer's memory
    is that of ``batch_windows`` windows whatever the video's length (1: the least memory; more:
    fewer, larger calls, faster on a GPU with memory to spare).
    """

    length_frames: int = 49
    overlap_frames: int = 16
    schedule: str = "static"
    weights: str = "pyramid"
    batch_windows: int = 1

    def __post_init__(self) -> None:
        _check_batch(self.batch_windows)
        if self.length_frames < 1:
            raise ValueError(f"length_frames={self.length_frames}: must be at least 1")
        if self.overlap_frames < 0:
            raise ValueError(f"overlap_frames={self.overlap_frames}: must be at least 0")
        if self.overlap_frames >= self.length_frames:
            raise ValueError(f"overlap_frames={self.overlap_frames}: must be less than "
                             f"length_frames={self.length_frames}, or windows never advance")
        get_schedule(self.schedule)
        check_weights(self.weights)

    def to_latent(self, family: Family) -> LatentContext:
        """Latent window length and overlap for ``family``; ``ValueError`` if it cannot take
        them."""
        tc = family.transformer.temporal_compression
        length = latent_frames(self.length_frames, tc)
        overlap = latent_frames(self.overlap_frames, tc)
        check_window_length(length, family, frames=self.length_frames)
        if overlap >= length:
            most = pixel_frames(length - 1, tc)
            raise ValueError(f"overlap_frames={self.overlap_frames} is {overlap} latent frames, "
                             f"not less than the {length} of length_frames="
                             f"{self.length_frames}: use at most {most} pixel frames")
        logger.info("context windows for %s: %d latent frames (%d pixel), overlap %d (%d pixel), "
                    "%s schedule, %s weights", family.name, length, self.length_frames, overlap,
                    self.overlap_frames, self.schedule, self.weights)
        return LatentContext(length, overlap, self.schedule, self.weights, self.batch_windows)


# --- schedules ---------------------------------------------------------------------------------

def _check_schedule_args(num_frames: int, length: int, overlap: int, step_index: int,
                         num_steps: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: must be at least 1")
    if length < 1:
        raise ValueError(f"length={length}: a window needs at least 1 frame")
    if not 0 <= overlap < length:
        raise ValueError(f"overlap={overlap}: must be at least 0 and less than length={length}")
    if step_index < 0 or num_steps < 1:
        raise ValueError(f"step_index={step_index}, num_steps={num_steps}: need step_index >= 0 "
                         f"and num_steps >= 1")


def _van_der_corput(n: int) -> float:
    """n's bits mirrored behind the binary point: 0, 1/2, 1/4, 3/4, 1/8, ... (exact floats).

    Successive values land far apart and any run of them fills [0, 1) evenly, so offsets drawn
    from it move seams as far as possible from step to step (ComfyUI's ``ordered_halving``).
    """
    x, scale = 0.0, 0.5
    while n:
        x += scale * (n & 1)
        n, scale = n >> 1, scale / 2
    return x


def schedule_static(num_frames: int, length: int, overlap: int, step_index: int = 0,
                    num_steps: int = 1) -> list[list[int]]:
    """Fixed windows ``length - overlap`` apart, the last one shifted back to end at the last frame.

    Shifted, not shortened: each window gets positional tables for its own length and some
    families take one length only (5B-I2V: 13) or even lengths (1.5), so a short tail window
    would be a different, possibly invalid, model input; the shifted window just overlaps its
    neighbour by more than ``overlap``. The same windows at every step.
    """
    _check_schedule_args(num_frames, length, overlap, step_index, num_steps)
    if num_frames <= length:
        return [list(range(num_frames))]
    last = num_frames - length
    starts = list(range(0, last, length - overlap)) + [last]
    return [list(range(s, s + length)) for s in starts]


def schedule_uniform(num_frames: int, length: int, overlap: int, step_index: int = 0,
                     num_steps: int = 1) -> list[list[int]]:
    """The static grid shifted by an offset that changes with the step, so seams move.

    A seam blended at the same frames at every step can leave a visible join; moving it spreads
    the blend over the video. The offset is the van der Corput fraction of ``step_index`` times
    the stride (0, 1/2, 1/4, 3/4, ... of it): step 0 equals ``static``. Windows stay full length
    (see :func:`schedule_static`): the first starts at frame 0 and the last ends at the last
    frame, so those two overlap their neighbours by more than ``overlap``.
    """
    _check_schedule_args(num_frames, length, overlap, step_index, num_steps)
    if num_frames <= length:
        return [list(range(num_frames))]
    stride, last = length - overlap, num_frames - length
    offset = int(_van_der_corput(step_index) * stride)  # in [0, stride)
    starts = [0] + list(range(offset or stride, last, stride)) + [last]
    return [list(range(s, s + length)) for s in starts]


def schedule_looped(num_frames: int, length: int, overlap: int, step_index: int = 0,
                    num_steps: int = 1) -> list[list[int]]:
    """Windows around a loop: indices modulo ``num_frames``, windows crossing the end wrap.

    For videos meant to loop: the last frames are denoised together with the first, so the join
    is blended like any other seam. ``ceil(F / stride)`` full-length windows close the loop (the
    seam over the wrap overlaps by at least ``overlap``). A loop has no first frame, so the whole
    pattern rotates by the van der Corput fraction of ``step_index`` times ``num_frames`` and
    seams move from step to step as in ``uniform``.
    """
    _check_schedule_args(num_frames, length, overlap, step_index, num_steps)
    if num_frames <= length:
        return [list(range(num_frames))]
    stride = length - overlap
    rotation = int(_van_der_corput(step_index) * num_frames)
    count = -(-num_frames // stride)
    return [[(rotation + k * stride + j) % num_frames for j in range(length)]
            for k in range(count)]


SCHEDULES: dict[str, ScheduleFn] = {
    "static": schedule_static,
    "uniform": schedule_uniform,
    "looped": schedule_looped,
}


def get_schedule(name: str) -> ScheduleFn:
    """The schedule called ``name``; a ``ValueError`` listing the known names otherwise."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"schedule={name!r} is not a context schedule; known: "
                         f"{', '.join(SCHEDULES)}") from None


# --- blending weights --------------------------------------------------------------------------

def weights_flat(length: int, overlap_start: int = 0, overlap_end: int = 0) -> torch.Tensor:
    """Every frame of the window counts the same: a plain average where windows overlap."""
    return torch.ones(length, dtype=torch.float64)


def weights_pyramid(length: int, overlap_start: int = 0, overlap_end: int = 0) -> torch.Tensor:
    """Linear ramps over the overlaps, 1 between: ``(i + 1) / (n + 1)`` over the n shared frames.

    A window's prediction is least reliable at its edges (it sees no context beyond them), so it
    fades out there; two windows sharing n frames then sum to exactly 1 over them. A side with no
    neighbour (overlap 0: the video's first or last frame) is not ramped, since nothing else
    predicts those frames. Ramps that meet (overlaps over half the window) give a peak.
    """
    pos = torch.arange(length, dtype=torch.float64)
    up = ((pos + 1) / (overlap_start + 1)).clamp(max=1.0)
    down = ((length - pos) / (overlap_end + 1)).clamp(max=1.0)
    return torch.minimum(up, down)


WEIGHTS: dict[str, WeightsFn] = {
    "flat": weights_flat,
    "pyramid": weights_pyramid,
}


CAUSAL = "causal"
# every weighting a user can name: the shaped ones, then ``causal`` (see :func:`causal_weights`)
WEIGHTINGS: tuple[str, ...] = (*WEIGHTS, CAUSAL)


def check_weights(name: str) -> str:
    """``name`` if it is one of :data:`WEIGHTINGS`; a ``ValueError`` listing them otherwise."""
    if name not in WEIGHTINGS:
        raise ValueError(f"weights={name!r} is not a context weighting; known: {', '.join(WEIGHTINGS)}")
    return name


def get_weights(name: str) -> WeightsFn:
    """The weights function called ``name`` (a shaped weighting of :data:`WEIGHTS`); a
    ``ValueError`` listing the known names otherwise (``causal`` has no per-window shape: see
    :func:`causal_weights`)."""
    try:
        return WEIGHTS[name]
    except KeyError:
        check_weights(name)
        raise ValueError(f"weights={name!r} is a rule over the whole window list, not a per-window "
                         f"shape: use window_weights") from None


def causal_weights(windows: Sequence[Sequence[int]], num_frames: int,
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Weights 1 where a window is the first in ``windows`` to cover a frame, 0 elsewhere.

    Later windows then never change frames an earlier window covers: they see those frames, at
    every step, as the earlier window makes them, and continue them (the shared frames act as a
    known past), instead of being averaged with them. Two windows that disagree (a shape in two
    places) are not cross-faded into a shape sliding from one place to the other; and the first
    window's frames are exactly what a video of that window's length alone would give (same
    seed, a sampler that draws no noise per step: DDIM). Every frame's weights sum to 1; a
    window whose frames are all covered before it gets all zeros (it is still run).
    """
    _coverage(windows, num_frames)
    seen = torch.zeros(num_frames, dtype=torch.bool)
    out = []
    for w in windows:
        idx = torch.as_tensor(list(w))
        out.append((~seen[idx]).to(dtype))
        seen[idx] = True
    return out


def _check_windows(windows: Sequence[Sequence[int]], num_frames: int) -> None:
    if not windows:
        raise ValueError("windows=[]: need at least one window")
    for i, w in enumerate(windows):
        if not w or min(w) < 0 or max(w) >= num_frames:
            raise ValueError(f"windows[{i}]={list(w)[:8]}...: indices must be in "
                             f"[0, num_frames={num_frames}) and the window not empty")
        if len(set(w)) != len(w):
            raise ValueError(f"windows[{i}]: a frame appears twice in one window")


def _coverage(windows: Sequence[Sequence[int]], num_frames: int) -> list[int]:
    """How many windows cover each frame; ``ValueError`` for bad windows or a frame no window covers."""
    _check_windows(windows, num_frames)
    counts = [0] * num_frames
    for w in windows:
        for f in w:
            counts[f] += 1
    uncovered = [f for f, c in enumerate(counts) if c == 0]
    if uncovered:
        raise ValueError(f"windows leave frames {uncovered[:8]} of num_frames={num_frames} "
                         f"uncovered: every frame must be in a window")
    return counts


def _shared_run(window: Sequence[int], counts: list[int]) -> int:
    """How many of the window's frames, from its start, other windows also cover."""
    n = 0
    for f in window:
        if counts[f] < 2:
            break
        n += 1
    return n


def window_weights(windows: Sequence[Sequence[int]], num_frames: int, weights_name: str = "pyramid",
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Per-window, per-frame weights, normalised so each frame's weights sum to one.

    Each side's overlap is measured from the windows themselves (the frames at a window's start
    or end that other windows also cover), so a shifted last window ramps over its whole actual
    overlap, a window at the video's ends is not ramped there, and wrapped (looped) windows work
    unchanged. Math in float64, then cast to ``dtype``. ``causal``: :func:`causal_weights`.
    """
    if check_weights(weights_name) == CAUSAL:
        return causal_weights(windows, num_frames, dtype)
    fn = get_weights(weights_name)
    counts = _coverage(windows, num_frames)
    memo: dict[tuple[int, int, int], torch.Tensor] = {}  # most windows share one shape
    raw = []
    for w in windows:
        key = (len(w), _shared_run(w, counts), _shared_run(list(w)[::-1], counts))
        if key not in memo:
            memo[key] = fn(*key).to(torch.float64)
        raw.append(memo[key])
    idx = torch.as_tensor([f for w in windows for f in w])
    total = torch.zeros(num_frames, dtype=torch.float64).index_add_(0, idx, torch.cat(raw))
    if not bool((total > 0).all()):
        zero = (total <= 0).nonzero().flatten().tolist()[:8]
        raise ValueError(f"weights={weights_name!r} give frames {zero} zero total weight: "
                         f"cannot normalise")
    normed = (torch.cat(raw) / total[idx]).to(dtype)
    return list(normed.split([len(w) for w in windows]))


def plan_windows(ctx: LatentContext, num_frames: int, step_index: int = 0,
                 num_steps: int = 1) -> tuple[list[list[int]], list[torch.Tensor]]:
    """The windows of ``ctx``'s schedule at one step and their normalised weights (float64, so
    that :func:`run_windows` blends equal predictions back to exactly themselves)."""
    windows = get_schedule(ctx.schedule)(num_frames, ctx.length, ctx.overlap, step_index, num_steps)
    return windows, window_weights(windows, num_frames, ctx.weights, dtype=torch.float64)


# --- running a denoiser per window -------------------------------------------------------------

def slice_windows(t: torch.Tensor, windows: Sequence[Sequence[int]], dim: int = 1) -> torch.Tensor:
    """The frames of each window taken along ``dim`` and stacked on the batch dim (0), window-major.

    [B, F, ...] -> [n*B, L, ...] for n windows of length L: the layout :func:`run_windows` hands
    the denoiser, so a ``denoise_fn`` slices its per-frame conditioning with this same call.
    """
    parts = [t.index_select(dim, torch.as_tensor(list(w), device=t.device)) for w in windows]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _groups(windows: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Consecutive window numbers in groups of at most ``size`` windows of one length."""
    groups: list[list[int]] = []
    for i, w in enumerate(windows):
        g = groups[-1] if groups else None
        if g is not None and len(g) < size and len(windows[g[0]]) == len(w):
            g.append(i)
        else:
            groups.append([i])
    return groups


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def run_windows(denoise_fn: DenoiseFn, x: torch.Tensor, windows: Sequence[Sequence[int]],
                weights: Sequence[torch.Tensor], batch_windows: int = 1) -> torch.Tensor:
    """Denoise ``x`` [B, F, C, H, W] window by window and blend: ``out[:, idx] += w * pred``.

    ``denoise_fn(x_windows, windows)`` gets [n*B, L, C, H, W] (n windows stacked window-major on
    the batch dim, see :func:`slice_windows`) and the n index lists, so it can slice timesteps'
    and conditioning's frames the same way; it returns a prediction of the same shape. With
    ``batch_windows > 1`` up to that many consecutive equal-length windows go in one call (more
    memory, fewer calls). ``weights`` come from :func:`window_weights` (normalised), so frames
    shared by windows get a weighted average. Accumulated through ``index_add_`` (which takes
    wrapped, looped, index lists as they are) in float64, so that windows predicting the same
    values for a frame blend back to exactly those values (float32 on devices without float64:
    MPS); the accumulator is latent-sized, small next to one window's activations. Returned in
    the prediction's dtype. Interrupt checks belong in ``denoise_fn``.
    """
    if len(weights) != len(windows):
        raise ValueError(f"weights: {len(weights)} tensors for {len(windows)} windows")
    if batch_windows < 1:
        raise ValueError(f"batch_windows={batch_windows}: must be at least 1")
    _check_windows(windows, x.shape[1])
    b = x.shape[0]
    acc = torch.zeros(x.shape, dtype=_accumulator_dtype(x.device), device=x.device)
    out_dtype = x.dtype
    groups = _groups(windows, batch_windows)
    for group in groups:
        wins = [list(windows[i]) for i in group]
        x_in = slice_windows(x, wins)  # [n*B, L, C, H, W]
        pred = denoise_fn(x_in, wins)
        if pred.shape != x_in.shape:
            raise ValueError(f"denoise_fn returned shape {tuple(pred.shape)} for input "
                             f"{tuple(x_in.shape)}: it must return the input's shape")
        out_dtype = pred.dtype
        for k, (i, w) in enumerate(zip(group, wins)):
            wt = weights[i].to(acc.device, acc.dtype).view(1, -1, *([1] * (x.ndim - 2)))
            idx = torch.as_tensor(w, device=acc.device)
            acc.index_add_(1, idx, pred[k * b:(k + 1) * b].to(acc.dtype) * wt)
    logger.debug("context windows: %d windows in %d denoiser calls", len(windows), len(groups))
    return acc.to(out_dtype)


__all__ = ["ContextOptions", "LatentContext", "check_window_length", "schedule_static", "schedule_uniform",
           "schedule_looped", "SCHEDULES", "get_schedule", "weights_flat", "weights_pyramid", "WEIGHTS",
           "get_weights", "WEIGHTINGS", "CAUSAL", "check_weights", "causal_weights", "window_weights",
           "plan_windows", "slice_windows", "run_windows", "ScheduleFn", "WeightsFn", "DenoiseFn"]
