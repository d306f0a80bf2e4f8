"""CFG parallel: the unconditional branch on CFG rank 0, the conditional on rank 1.

Each rank runs the model once per step on its own text (batch 1 instead of the [uncond, cond]
batch of 2), one all-gather hands both outputs to both ranks, and both combine them with the
same :func:`~cogvideox_core.sampling.cfg_denoiser` formula (dynamic CFG included), so both
keep identical latents and the result equals the single-process run with either
``cfg_batched`` (up to float summation order).
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..sampling import Cond, Denoiser, ModelFn, cfg_denoiser
from ..sampling.guidance import DynamicMode, PairFn
from .comm import all_gather
from .groups import Mesh

logger = logging.getLogger(__name__)


def cfg_parallel_pair(model_fn: ModelFn, cond: Cond, uncond: Cond, mesh: Mesh) -> PairFn:
    """``pair(x, t) -> (v_uncond, v_cond)`` with one model call per rank and one all-gather."""
    if mesh.cfg_group is None:
        raise ValueError(f"cfg_parallel_pair on a mesh without a CFG group ({mesh.config})")
    mine = uncond if mesh.cfg_rank == 0 else cond

    def pair(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        v_u, v_c = all_gather(model_fn(x, t, mine), mesh.cfg_group)  # group order = [uncond, cond]
        return v_u, v_c

    return pair


def parallel_cfg_denoiser(model_fn: ModelFn, cond: Cond, uncond: Cond | None, scale: float, mesh: Mesh, *,
                          batched: bool = True, dynamic: DynamicMode | None = None,
                          timesteps: Sequence[int] | None = None) -> Denoiser:
    """:func:`~cogvideox_core.sampling.cfg_denoiser` with the two branches on the mesh's CFG
    ranks. Without guidance (``scale <= 1`` or no ``uncond``) both CFG ranks run the one
    conditional call (same result, no speed-up; logged)."""
    guided = uncond is not None and scale > 1.0
    pair = None
    if mesh.cfg_group is not None and guided:
        pair = cfg_parallel_pair(model_fn, cond, uncond, mesh)  # type: ignore[arg-type]
    elif mesh.cfg_group is not None:
        logger.warning("parallel cfg=2 with guidance off (cfg=%s): both CFG ranks compute the same "
                       "conditional branch; use --parallel ulysses=N to split the work instead", scale)
    return cfg_denoiser(model_fn, cond, uncond, scale, batched=batched, dynamic=dynamic,
                        timesteps=timesteps, pair=pair)


__all__ = ["cfg_parallel_pair", "parallel_cfg_denoiser"]
