"""Step caches: spend less transformer work on sampling steps whose input barely changed.

The entry point: :class:`CacheOptions` (what a request asks for) and :func:`make_step_cache`
(the cache object of one run). The methods live in :mod:`.block_caches` (TeaCache, First Block
Cache: skip blocks, add their last residual) and :mod:`.attention_caches` (Pyramid Attention
Broadcast, FasterCache: reuse or extrapolate attention outputs; FasterCache also rebuilds the
unconditional CFG branch). All are block runners the transformer's forward takes as ``blocks``
with state per CFG branch (:mod:`.cache_state`); none is a hook patched onto a module.

What each costs (measured in ``benchmarks/step_cache.py``; the published figures are in the
README): TeaCache and FBC hold one residual of the token sequence per CFG branch and change the
frames slightly, more with a higher threshold; PAB holds one attention output per block and
FasterCache two, i.e. several GB at full size, for a fixed speed-up with a small loss.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from .attention_caches import FasterCache, PyramidAttentionBroadcast, check_guided
from .block_caches import TEACACHE_COEFFICIENTS, FirstBlockCache, TeaCache, teacache_coefficients
from .cache_state import StepCache

logger = logging.getLogger(__name__)  # the CLI shows its INFO lines: the run's cache summary

METHODS = ("teacache", "fbc", "pab", "fastercache")
THRESHOLDED = ("teacache", "fbc")

# default thresholds: TeaCache's recommended 0.2 (t2v) / 0.1 (image-conditioned), diffusers' FBC 0.05
DEFAULT_THRESHOLDS = {"teacache": 0.2, "teacache-image": 0.1, "fbc": 0.05}
_IMAGE_MODES = ("i2v", "inp")


@dataclass(frozen=True)
class CacheOptions:
    """A step cache for one generation: ``method`` one of :data:`METHODS`; ``threshold`` (TeaCache
    and FBC only) None takes the default (TeaCache 0.2 for t2v and 0.1 for image-conditioned
    modes, FBC 0.05). Higher skips more steps; 0 skips none. PAB and FasterCache run with
    diffusers' default settings and take no threshold."""

    method: str
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"cache method={self.method!r}: known: {', '.join(METHODS)}")
        t = self.threshold
        if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
            raise ValueError(f"cache threshold={t!r}: must be a finite number >= 0")
        if t is not None and self.method not in THRESHOLDED:
            raise ValueError(f"cache threshold={t!r} with method={self.method!r}: only "
                             f"{' and '.join(THRESHOLDED)} take a threshold ({self.method} runs with "
                             "diffusers' default settings)")

    def resolved_threshold(self, mode: str) -> float:
        """The threshold for a run in conditioning ``mode`` ("t2v", "i2v", ...)."""
        if self.threshold is not None:
            return float(self.threshold)
        if self.method == "teacache":
            return DEFAULT_THRESHOLDS["teacache-image" if mode in _IMAGE_MODES else "teacache"]
        return DEFAULT_THRESHOLDS.get(self.method, 0.0)


def make_step_cache(options: CacheOptions, family: str, mode: str) -> StepCache:
    """The cache ``options`` ask for, for a ``family`` run in conditioning ``mode``."""
    if options.method == "pab":
        return PyramidAttentionBroadcast()
    if options.method == "fastercache":
        return FasterCache()
    threshold = options.resolved_threshold(mode)
    if options.method == "teacache":
        return TeaCache(teacache_coefficients(family), threshold)
    return FirstBlockCache(threshold)


def held_bytes(method: str, *, layers: int, seq: int, video_tokens: int, dim: int, elem: int,
               guided: bool, batched: bool, output_numel: int) -> int:
    """What a ``method`` cache holds at most during a run (what :meth:`StepCache.held_bytes`
    measures at its end): ``seq`` = text + ``video_tokens`` tokens of width ``dim`` in ``elem``-byte
    elements, ``output_numel`` the elements of one branch's model output. TeaCache: the stack
    residual per CFG state (batched: one state of 2 samples; sequential: one per branch) and a
    timestep embedding; FBC: also block 0's video residual; PAB: one attention output per block
    and state; FasterCache: two conditional attention outputs per block and two complex64
    spectra of an output."""
    states = 2 if guided else 1  # samples over all states: [2, ...] batched or 1 + 1 sequential
    token_row = seq * dim * elem
    if method == "teacache":
        return states * token_row
    if method == "fbc":
        return states * (token_row + video_tokens * dim * elem)
    if method == "pab":
        return layers * states * token_row
    if method == "fastercache":
        return layers * 2 * token_row + 2 * output_numel * 8
    raise ValueError(f"cache method={method!r}: known: {', '.join(METHODS)}")


def report(cache: StepCache) -> None:
    """Log what ``cache`` saved in the run (evaluations ran of the uncached count, memory held)."""
    logger.info(cache.summary())


__all__ = ["report", "held_bytes", "CacheOptions", "StepCache", "TeaCache", "FirstBlockCache", "PyramidAttentionBroadcast",
           "FasterCache", "make_step_cache", "teacache_coefficients", "check_guided",
           "TEACACHE_COEFFICIENTS", "METHODS", "THRESHOLDED"]
