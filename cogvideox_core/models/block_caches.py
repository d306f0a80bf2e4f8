"""Step caches that skip blocks of the transformer's stack on steps whose input barely changed,
adding the residual the skipped blocks added last time.

* :class:`TeaCache` (Liu et al. 2024, ali-vilab/TeaCache ``TeaCache4CogVideoX1.5/
  teacache_sample_video.py`` ``teacache_forward``): the relative L1 change of the timestep
  embedding ``temb`` between consecutive calls, rescaled by the family's polynomial, is
  accumulated; while the sum stays under the threshold the whole stack is skipped and the cached
  stack residuals (output - input) are added to video and text; at the threshold the stack runs
  and the sum restarts. The first and last call of a run always compute.
* :class:`FirstBlockCache` (diffusers ``hooks/first_block_cache.py``): block 0 always runs; when
  the mean abs change of its video residual relative to the residual of the last computed call
  is at most the threshold, the other blocks are skipped and their cached residual (stack output
  - block 0 output, video and text) is added.

Extra memory: TeaCache holds the stack residual and one timestep embedding per branch (video and
text tokens x width, once per CFG branch: [2, L+N, D] batched); First Block Cache holds that and
block 0's video residual.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..ops import AttentionFn
from .cache_state import StepCache
from .transformer import Rope, run_all_blocks

# TeaCache's rescaling polynomials (np.poly1d, highest power first), per base model
# (TeaCache4CogVideoX1.5/teacache_sample_video.py `coefficients_dict`)
TEACACHE_COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "2b": (-3.10658903e+01, 2.54732368e+01, -5.92380459e+00, 1.75769064e+00, -3.61568434e-03),
    "5b": (-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02),
    "5b-i2v": (-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02),
    "1.5-5b": (2.50210439e+02, -1.65061612e+02, 3.57804877e+01, -7.81551492e-01, 3.58559703e-02),
    "1.5-5b-i2v": (1.22842302e+02, -1.04088754e+02, 2.62981677e+01, -3.06009921e-01, 3.71213220e-02),
}
_FUN_BASE = {"fun-2b-": "2b", "fun-5b-": "5b", "fun-1.5-": "1.5-5b"}  # Fun uses its base model's


def teacache_coefficients(family: str) -> tuple[float, ...]:
    """The rescaling polynomial of ``family`` (a family name, Fun families map to their base)."""
    for prefix, base in _FUN_BASE.items():
        if family.startswith(prefix):
            return TEACACHE_COEFFICIENTS[base]
    if family not in TEACACHE_COEFFICIENTS:
        raise ValueError(f"family={family!r} has no TeaCache coefficients; known: "
                         f"{', '.join(TEACACHE_COEFFICIENTS)} and the Fun families")
    return TEACACHE_COEFFICIENTS[family]


class TeaCache(StepCache):
    """TeaCache over the whole block stack, with the family's rescaling ``coefficients``."""

    method = "teacache"

    def __init__(self, coefficients: Sequence[float], threshold: float) -> None:
        self.rescale, self.threshold = np.poly1d(coefficients), threshold
        super().__init__()

    def should_compute(self, temb: torch.Tensor) -> bool:
        """TeaCache's rule for this call of the current branch (updates its state)."""
        st = self._state()
        count = st.get("count", 0)
        if count in (0, self.steps - 1) or "residual" not in st:
            compute, st["distance"] = True, 0.0
        else:
            prev = st["temb"]
            rel = ((temb - prev).abs().mean() / prev.abs().mean()).item()  # as the reference: temb's dtype
            st["distance"] += float(self.rescale(rel))
            # threshold 0 is off: a rescaled distance can be negative (the reference would skip)
            compute = self.threshold <= 0 or st["distance"] >= self.threshold
            if compute:
                st["distance"] = 0.0
        st["temb"], st["count"] = temb, (count + 1) % max(self.steps, 1)
        return compute

    def run(self, blocks: Sequence[nn.Module], video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
            rope: Rope | None, attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
        compute = self.should_compute(temb)
        st = self._state()
        if not compute:
            self._count(0, len(blocks), False)
            res_v, res_t = st["residual"]  # [B, N, D], [B, L, D]
            return video + res_v, text + res_t
        out_v, out_t = run_all_blocks(blocks, video, text, temb, rope, attention)
        st["residual"] = (out_v - video, out_t - text)
        self._count(len(blocks), len(blocks), True)
        return out_v, out_t


class FirstBlockCache(StepCache):
    """First Block Cache: block 0 decides whether the rest runs."""

    method = "fbc"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        super().__init__()

    def distance(self, residual: torch.Tensor) -> float | None:
        """mean|r - r_prev| / mean|r_prev| against the last computed call's block 0 video
        residual (None before one)."""
        prev = self._state().get("head")
        if prev is None:
            return None
        return ((residual - prev).abs().mean() / prev.abs().mean()).item()

    def run(self, blocks: Sequence[nn.Module], video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
            rope: Rope | None, attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
        if len(blocks) < 2:  # nothing to skip
            self._count(len(blocks), len(blocks), True)
            return run_all_blocks(blocks, video, text, temb, rope, attention)
        head_v, head_t = blocks[0](video, text, temb, rope, attention)
        residual = head_v - video  # [B, N, D]; diffusers compares the video residual only
        st = self._state()
        d = self.distance(residual)
        if d is not None and d <= self.threshold and "tail" in st:
            self._count(1, len(blocks), False)
            tail_v, tail_t = st["tail"]
            return head_v + tail_v, head_t + tail_t
        out_v, out_t = run_all_blocks(blocks[1:], head_v, head_t, temb, rope, attention)
        st["head"], st["tail"] = residual, (out_v - head_v, out_t - head_t)
        self._count(len(blocks), len(blocks), True)
        return out_v, out_t


__all__ = ["TeaCache", "FirstBlockCache", "teacache_coefficients", "TEACACHE_COEFFICIENTS"]
