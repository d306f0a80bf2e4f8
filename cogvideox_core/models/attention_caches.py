"""Step caches that reuse attention outputs between steps instead of skipping blocks.

Each block runs through ``block.reusing(..., attn_out)``: its norms and feed-forward always run;
its joint attention is computed or replaced by a cached output.

* :class:`PyramidAttentionBroadcast` (Zhao et al. 2024; diffusers
  ``hooks/pyramid_attention_broadcast.py`` with its defaults for CogVideoX: every block's
  attention, broadcast range 2, timesteps strictly between 100 and 800): inside the timestep
  range a block's attention is computed on every second call of its branch and the last output
  reused in between; outside it, always computed.
* :class:`FasterCache` (Lv et al. 2024; diffusers ``hooks/faster_cache.py`` with
  ``FasterCacheConfig()``'s defaults): on a full step both CFG branches run and the difference of
  their outputs is kept split into a low and a high spatial-frequency part (FFT over height and
  width, a centred disc of radius min(h, w) // 5); on the steps between (every call but each
  fifth, timesteps under 641, never the first) only the conditional branch runs and the
  unconditional output is rebuilt from it and the kept differences, each scaled by 1.1 in its
  timestep range (low 99..901, high -1..301) and kept scaled. On those cond-only steps the blocks'
  attention is also extrapolated on every second call under timestep 681: ``a_t + 0.5 (a_t -
  a_{t-1})`` from the last two conditional outputs. It needs classifier-free guidance.

Extra memory: PAB keeps one attention output per block of the guided batch (at 49x480x720 on 5B:
42 x 2 x 17776 tokens x 3072 x 2 bytes = 9.2 GB in bf16); FasterCache keeps two conditional ones
per block (the same 9.2 GB) plus the frequency differences of one output in complex64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..ops import AttentionFn
from .cache_state import CallFn, PairFn, StepCache
from .transformer import Rope, run_all_blocks


def _within(t: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] < t < bounds[1]


def _run_reusing(blocks: Sequence[nn.Module], video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
                 rope: Rope | None, attention: AttentionFn, given: Sequence[torch.Tensor | None]
                 ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Every block with attention output ``given[i]`` (None: computed); also the outputs used."""
    used = []
    for block, attn_out in zip(blocks, given):
        video, text, out = block.reusing(video, text, temb, rope, attention, attn_out)
        used.append(out)
    return video, text, used


@dataclass(frozen=True)
class PABSettings:
    """diffusers' ``PyramidAttentionBroadcastConfig`` as applied to CogVideoX by default."""

    skip_range: int = 2
    timestep_range: tuple[int, int] = (100, 800)


class PyramidAttentionBroadcast(StepCache):
    """Attention outputs broadcast to the next call of the same CFG branch."""

    method = "pab"
    unit = "attention evaluations"

    def __init__(self, settings: PABSettings = PABSettings()) -> None:
        self.settings = settings
        super().__init__()

    def run(self, blocks: Sequence[nn.Module], video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
            rope: Rope | None, attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
        st, s = self._state(), self.settings
        iteration, cached = st.get("iteration", 0), st.get("attn")
        reuse = (cached is not None and iteration % s.skip_range != 0
                 and _within(self.timestep, s.timestep_range))
        video, text, st["attn"] = _run_reusing(blocks, video, text, temb, rope, attention,
                                               cached if reuse else [None] * len(blocks))
        st["iteration"] = iteration + 1
        self._count(0 if reuse else len(blocks), len(blocks), not reuse)
        return video, text


@dataclass(frozen=True)
class FasterCacheSettings:
    """diffusers' ``FasterCacheConfig()`` defaults (attention weight: its 0.5 fallback)."""

    attention_skip_range: int = 2
    attention_timestep_range: tuple[int, int] = (-1, 681)
    low_frequency_range: tuple[int, int] = (99, 901)
    high_frequency_range: tuple[int, int] = (-1, 301)
    alpha_low: float = 1.1
    alpha_high: float = 1.1
    uncond_skip_range: int = 5
    uncond_timestep_range: tuple[int, int] = (-1, 641)
    attention_weight: float = 0.5


def split_frequencies(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) parts of the centred 2D spectrum of ``x`` [..., H, W] (float32 in): a disc of
    radius min(H, W) // 5 around the centre, and the rest."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    h, w = x.shape[-2:]
    y, xx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    low = (xx - w // 2) ** 2 + (y - h // 2) ** 2 <= (min(h, w) // 5) ** 2  # [H, W]
    return spectrum * low, spectrum * ~low


def join_frequencies(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The real signal of a centred spectrum given as two parts."""
    return torch.fft.ifft2(torch.fft.ifftshift(low + high, dim=(-2, -1))).real


class FasterCache(StepCache):
    """The unconditional branch rebuilt from the conditional one, and attention extrapolated."""

    method = "fastercache"
    unit = "attention evaluations"

    def __init__(self, settings: FasterCacheSettings = FasterCacheSettings()) -> None:
        self.settings = settings
        super().__init__()

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self.calls = self.uncond_skipped = 0
        self.cond_only = False

    # ---- the guided step -------------------------------------------------------------------

    def guide(self, pair: PairFn, cond_only: CallFn) -> PairFn:
        def step(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            s = self.settings
            skip = (self.calls > 0 and self.calls % s.uncond_skip_range != 0
                    and _within(int(t), s.uncond_timestep_range))
            self.cond_only = skip
            try:
                out = self._approximate(cond_only(x, t), int(t)) if skip else self._measure(*pair(x, t))
            finally:
                self.cond_only = False
            self.calls += 1
            self.uncond_skipped += skip
            return out

        return step

    def _measure(self, uncond: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low_u, high_u = split_frequencies(uncond.float())
        low_c, high_c = split_frequencies(cond.float())
        self._states["delta"] = {"low": low_u - low_c, "high": high_u - high_c}
        return uncond, cond

    def _approximate(self, cond: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, delta = self.settings, self._states["delta"]
        delta["low"] = delta["low"] * (s.alpha_low if _within(t, s.low_frequency_range) else 1.0)
        delta["high"] = delta["high"] * (s.alpha_high if _within(t, s.high_frequency_range) else 1.0)
        low_c, high_c = split_frequencies(cond.float())
        uncond = join_frequencies(delta["low"] + low_c, delta["high"] + high_c)
        return uncond.to(cond.dtype), cond

    # ---- the blocks ------------------------------------------------------------------------

    def run(self, blocks: Sequence[nn.Module], video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
            rope: Rope | None, attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
        if self._branch == "uncond":  # sequential CFG's full step: nothing of it is kept
            self._count(len(blocks), len(blocks), True)
            return run_all_blocks(blocks, video, text, temb, rope, attention)
        st, s = self._states.setdefault("blocks", {}), self.settings
        iteration, kept = st.get("iteration", 0), st.get("attn")
        extrapolate = (self.cond_only and kept is not None and _within(self.timestep, s.attention_timestep_range)
                       and not (iteration > 0 and iteration % s.attention_skip_range == 0))
        given = ([a + (a - a2) * s.attention_weight for a2, a in kept] if extrapolate
                 else [None] * len(blocks))
        video, text, used = _run_reusing(blocks, video, text, temb, rope, attention, given)
        # the cond half, copied: a view would keep the whole [uncond, cond] output alive
        conds = [u.chunk(2)[1].clone() if self._branch == "batch" else u for u in used]
        st["attn"] = [(a, c) for (_, a), c in zip(kept or [(c, c) for c in conds], conds)]
        st["iteration"] = iteration + 1
        self._count(0 if extrapolate else len(blocks), len(blocks), not extrapolate)
        return video, text

    def summary(self) -> str:
        return (f"{super().summary()}; the unconditional branch was rebuilt on {self.uncond_skipped} of "
                f"{self.calls} steps")


def check_guided(method: str, guided: bool) -> None:
    """FasterCache approximates the unconditional branch: a ValueError without guidance."""
    if method == "fastercache" and not guided:
        raise ValueError("cache='fastercache' with cfg <= 1: FasterCache approximates the unconditional "
                         "branch of classifier-free guidance; raise cfg above 1 or use another cache")


__all__ = ["PyramidAttentionBroadcast", "PABSettings", "FasterCache", "FasterCacheSettings",
           "split_frequencies", "join_frequencies", "check_guided"]
