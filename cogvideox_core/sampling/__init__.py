"""Sampling: CogVideoX schedules, guidance and samplers as small functions (k-diffusion's style).

Typical use::

    schedule = make_schedule(50, SchedulerConfig(snr_shift_scale=family.snr_shift_scale))
    denoise = cfg_denoiser(model_fn, cond, uncond, 6.0, timesteps=schedule.timesteps)
    x = get_sampler("dpm")(denoise, noise, schedule, generator=gen, callback=on_step)
"""
from __future__ import annotations

from functools import partial
from typing import Any, Protocol

import torch

from .guidance import DYNAMIC_MODES, Cond, ModelFn, cfg_denoiser, dynamic_cfg_scale
from .samplers import (Callback, Denoiser, Generator, RowGenerators, draw_noise, sample_ddim, sample_dpm,
                       sample_dpmpp_2m, sample_euler)
from .schedules import (Schedule, SchedulerConfig, add_noise, alphas_cumprod, final_alpha_cumprod,
                        make_schedule, schedule_sigmas, spaced_timesteps, timesteps_for_strength)


class Sampler(Protocol):
    def __call__(self, denoise_fn: Denoiser, x: torch.Tensor, schedule: Schedule, *,
                 generator: Generator | None = None, callback: Callback | None = None,
                 **kwargs: Any) -> torch.Tensor: ...


SAMPLERS: dict[str, Sampler] = {
    "ddim": sample_ddim,  # CogVideoXDDIMScheduler, recommended for 2B
    "dpm": sample_dpm,  # CogVideoXDPMScheduler, recommended for 5B
    "euler": sample_euler,
    "euler_ancestral": partial(sample_euler, eta=1.0),
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": partial(sample_dpmpp_2m, eta=1.0),
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
STOCHASTIC_SAMPLERS: frozenset[str] = frozenset({"dpm", "euler_ancestral", "dpmpp_2m_sde"})


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name``; a ``ValueError`` listing the known names otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"sampler={name!r} is not a known sampler; known: {', '.join(SAMPLER_NAMES)}") from None


__all__ = [
    "Callback", "Cond", "DYNAMIC_MODES", "Denoiser", "Generator", "ModelFn", "RowGenerators", "SAMPLERS", "SAMPLER_NAMES",
    "STOCHASTIC_SAMPLERS", "Sampler", "Schedule", "SchedulerConfig", "add_noise", "alphas_cumprod",
    "cfg_denoiser", "draw_noise", "dynamic_cfg_scale", "final_alpha_cumprod", "get_sampler",
    "make_schedule", "sample_ddim", "sample_dpm", "sample_dpmpp_2m", "sample_euler",
    "schedule_sigmas", "spaced_timesteps", "timesteps_for_strength",
]
