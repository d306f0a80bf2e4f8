"""Classifier-free guidance as the CogVideoX pipelines compute it, as a denoiser builder.

``model_fn(x, t, cond) -> v``: the model on a batch ``x`` [B, ...] at int timestep ``t`` with
conditioning ``cond`` (a tensor with batch first, e.g. T5 states [B, 226, 4096], or a dict of
such tensors; non-tensor dict values are passed through). Inputs that are the same for both CFG
halves (I2V image latents, Fun mask and masked video, control latents) belong in ``model_fn``'s
closure, expanded to ``x.shape[0]``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import torch

from .samplers import Denoiser

Cond = Union[torch.Tensor, Mapping[str, Any]]
ModelFn = Callable[[torch.Tensor, int, Cond], torch.Tensor]
PairFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]  # (x, t) -> (v_uncond, v_cond)
DynamicMode = Literal["diffusers", "step"]
DYNAMIC_MODES: tuple[str, ...] = ("diffusers", "step")


def dynamic_cfg_scale(scale: float, t: int, timesteps: Sequence[int], mode: DynamicMode) -> float:
    """CogVideoX dynamic CFG scale 1 + scale * (1 - cos(pi * u ** 5)) / 2 at timestep t of a run over ``timesteps``.

    ``"step"``: u = (N - i) / N with i the step index of t and N = len(timesteps), the intended
    schedule (CogVideoX's SAT DynamicCFG): 1 + scale at the first step, falling to about 1.
    ``"diffusers"``: u = (N - t) / N with the raw timestep t (0..999), as every diffusers
    CogVideoX pipeline computes it (a known bug): u is a large negative number, so the scale
    jumps pseudo-randomly between 1 and 1 + scale. Kept to reproduce diffusers outputs.
    """
    _check_dynamic(mode)
    n = len(timesteps)
    if mode == "diffusers":
        u = (n - t) / n
    elif t in timesteps:
        u = (n - list(timesteps).index(t)) / n
    else:
        raise ValueError(f"t={t} is not one of the timesteps {list(timesteps)} dynamic CFG runs over")
    return 1 + scale * ((1 - math.cos(math.pi * u**5.0)) / 2)


def _check_dynamic(mode: str | None) -> None:
    if mode is not None and mode not in DYNAMIC_MODES:
        raise ValueError(f"dynamic={mode!r} is not a dynamic CFG mode; known: None, {', '.join(DYNAMIC_MODES)}")


def _cat_cond(uncond: Cond, cond: Cond) -> Cond:
    """[uncond, cond] along the batch dim: tensors concatenated, other dict values taken from cond."""
    if isinstance(cond, torch.Tensor):
        return torch.cat([uncond, cond])  # type: ignore[list-item]
    if not isinstance(uncond, Mapping) or set(uncond) != set(cond):
        keys = sorted(uncond) if isinstance(uncond, Mapping) else type(uncond).__name__
        raise ValueError(f"uncond={keys} must have the same keys as cond={sorted(cond)}")
    return {k: torch.cat([uncond[k], v]) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}


def cfg_pair(model_fn: ModelFn, cond: Cond, uncond: Cond, batched: bool = True) -> PairFn:
    """``pair(x, t) -> (v_uncond, v_cond)``, the raw model outputs of one guided step: one call on
    [x, x] with conditioning [uncond, cond] (the pipelines' order) or, not ``batched``, two calls
    on x (half the activation memory), same numbers."""
    both = _cat_cond(uncond, cond) if batched else None

    def pair(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if batched:
            v_u, v_c = model_fn(torch.cat([x, x]), t, both).chunk(2)  # type: ignore[arg-type]
            return v_u, v_c
        return model_fn(x, t, uncond), model_fn(x, t, cond)

    return pair


def cfg_denoiser(model_fn: ModelFn, cond: Cond, uncond: Cond | None, scale: float, *, batched: bool = True,
                 dynamic: DynamicMode | None = None, timesteps: Sequence[int] | None = None,
                 pair: PairFn | None = None) -> Denoiser:
    """The ``denoise_fn(x, t) -> v`` of classifier-free guidance (Ho & Salimans 2022), float32.

    ``v = v_u + s * (v_c - v_u)`` with both model outputs cast to float32 first, as the pipelines
    do; the outputs come from ``pair`` (default :func:`cfg_pair` of ``model_fn``, ``batched``
    or not; a step cache may rebuild a branch instead). As in the pipelines, guidance runs only
    when ``scale > 1`` and ``uncond`` is given; otherwise one conditional call. ``dynamic``
    replaces ``scale`` per step by :func:`dynamic_cfg_scale` and needs the run's ``timesteps``
    (``schedule.timesteps``).
    """
    _check_dynamic(dynamic)
    if dynamic is not None and timesteps is None:
        raise ValueError(f"timesteps=None: dynamic={dynamic!r} needs the run's timesteps (schedule.timesteps)")
    if uncond is None or scale <= 1.0:
        return lambda x, t: model_fn(x, t, cond).float()
    pair = pair or cfg_pair(model_fn, cond, uncond, batched)

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        s = scale if dynamic is None else dynamic_cfg_scale(scale, t, timesteps, dynamic)  # type: ignore[arg-type]
        v_u, v_c = (v.float() for v in pair(x, t))
        return v_u + s * (v_c - v_u)

    return denoise
