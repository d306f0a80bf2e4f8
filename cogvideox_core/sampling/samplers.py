"""Samplers: short functions over a denoiser callable, in k-diffusion's pattern.

``sample_xxx(denoise_fn, x, schedule, *, generator=None, callback=None, ...) -> x``, where
``denoise_fn(x, t)`` returns the guided v-prediction for the int timestep diffusers would pass;
the samplers turn v into x0 themselves. Everything is in VP form so zero terminal SNR stays
finite (README "How it works"). Coefficients are float64 rounded to the tensor's dtype as
diffusers' are, and ``x`` is cast back after each step: seeded ``ddim`` and ``dpm`` runs equal
the diffusers pipelines bit for bit in fp32 and bf16. Randomness comes only from ``generator``,
progress only through ``callback``; a host's callback raises to interrupt.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, Union

import torch

from .schedules import Schedule

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


class RowGenerators:
    """One ``torch.Generator`` per batch row, for batches of videos with their own seeds: row
    ``i`` of every draw is what a batch-1 run with generator ``i`` draws at the same point, so a
    video sampled in a batch equals its single run."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        if not generators:
            raise ValueError("generators=[]: give one torch.Generator per batch row")
        self.generators = list(generators)

    @property
    def device(self) -> torch.device:
        return self.generators[0].device

    def randn(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """Noise [B, ...] on the generators' device, row i from generator i."""
        if shape[0] != len(self.generators):
            raise ValueError(f"noise for {shape[0]} batch rows from {len(self.generators)} generators: "
                             "give one generator per row")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype)
                          for g in self.generators])


Generator = Union[torch.Generator, RowGenerators]


def draw_noise(like: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device (diffusers
    ``randn_tensor``); :class:`RowGenerators` draw each row from its own generator."""
    if isinstance(generator, RowGenerators):
        return generator.randn(like.shape, like.dtype).to(like.device)
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)


def _require_generator(generator: Generator | None, sampler: str) -> Generator:
    if generator is None:
        raise ValueError(f"generator=None: sampler {sampler} is stochastic and draws noise only "
                         f"from an explicit torch.Generator")
    return generator


def _check_eta(eta: float) -> None:
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta} must be in [0, 1]")


def _c(c: float, like: torch.Tensor) -> float:
    """Coefficient c rounded to like's dtype, as diffusers' 0-dim float64 tensors are when they
    multiply a bf16/fp16 tensor (a no-op for float32 arithmetic, which rounds c to float32 anyway)."""
    return float(torch.tensor(c, dtype=like.dtype)) if like.dtype in (torch.bfloat16, torch.float16) else c


def _denoised(denoise_fn: Denoiser, x: torch.Tensor, t: int, a: float) -> torch.Tensor:
    """x0 from the model's v-prediction at alpha_cumprod a (Salimans & Ho 2022, v-parameterisation)."""
    v = denoise_fn(x, t)
    return _c(a**0.5, x) * x - (1 - a) ** 0.5 * v


def _report(callback: Callback | None, i: int, schedule: Schedule, x: torch.Tensor, x0: torch.Tensor) -> None:
    if callback is not None:
        callback({"step": i, "total": len(schedule), "x": x, "denoised": x0, "t": schedule.timesteps[i]})


def _log_snr(a: float) -> float:
    """lambda = log(alpha / sigma) = log(a / (1 - a)) / 2; -inf at a = 0, +inf at a = 1."""
    if a <= 0.0:
        return -math.inf
    if a >= 1.0:
        return math.inf
    return 0.5 * (math.log(a) - math.log1p(-a))


def _dpmpp_step(x: torch.Tensor, x0: torch.Tensor, old_x0: torch.Tensor | None, a: float, a_next: float,
                a_back: float | None, eta: float) -> tuple[torch.Tensor, float]:
    """One DPM-Solver++ step in VP form, 2M (midpoint) when a_back is given, SDE form for eta > 0
    (Lu et al. 2022, Alg. 2; k-diffusion dpmpp_2m / dpmpp_2m_sde); returns (mean, noise std)."""
    h = _log_snr(a_next) - _log_snr(a)
    c_x = ((1 - a_next) / (1 - a)) ** 0.5 * (math.exp(-eta * h) if eta > 0 else 1.0)  # no 0 * inf
    c_d = -math.expm1(-(1 + eta) * h) * a_next**0.5
    std = (1 - a_next) ** 0.5 * (1 - math.exp(-2 * eta * h)) ** 0.5 if eta > 0 else 0.0
    if a_back is not None and old_x0 is not None:
        r = (_log_snr(a) - _log_snr(a_back)) / h  # h_last / h; inf after the zero-SNR step -> first order
        x0 = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * old_x0
    return _c(c_x, x) * x + c_d * x0, std


@torch.no_grad()
def sample_ddim(denoise_fn: Denoiser, x: torch.Tensor, schedule: Schedule, *,
                generator: Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """CogVideoX DDIM (Song et al. 2020, eta = 0) as CogVideoXDDIMScheduler.step: t -> t - T // N; generator unused."""
    for i, t in enumerate(schedule.timesteps):
        a, a_prev = schedule.alpha(t), schedule.alpha(schedule.prev_timesteps[i])
        x0 = _denoised(denoise_fn, x, t, a)
        _report(callback, i, schedule, x, x0)
        c_x = ((1 - a_prev) / (1 - a)) ** 0.5
        x = (_c(c_x, x) * x + (a_prev**0.5 - a**0.5 * c_x) * x0).to(x.dtype)
    return x


@torch.no_grad()
def sample_dpm(denoise_fn: Denoiser, x: torch.Tensor, schedule: Schedule, *,
               generator: Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """CogVideoX's stochastic DPM-Solver++(2M) (Lu et al. 2022; CogVideoXDPMScheduler.step, SDE eta = 1).

    First and last steps are first order; steps go t -> t - T // N; the 2M history uses the
    previously listed timestep. On second-order steps the scheduler draws a first-order noise
    and discards it before drawing the one it uses: drawn here too, so seeded runs match.
    """
    generator = _require_generator(generator, "dpm")
    old_x0 = None
    for i, t in enumerate(schedule.timesteps):
        t_prev = schedule.prev_timesteps[i]
        a = schedule.alpha(t)
        x0 = _denoised(denoise_fn, x, t, a)
        _report(callback, i, schedule, x, x0)
        second = old_x0 is not None and t_prev >= 0
        a_back = schedule.alpha(schedule.timesteps[i - 1]) if second else None
        mean, std = _dpmpp_step(x, x0, old_x0, a, schedule.alpha(t_prev), a_back, eta=1.0)
        noise = draw_noise(x, generator)
        if second:
            noise = draw_noise(x, generator)  # the first draw is the discarded first-order sample's
        x, old_x0 = (mean + _c(std, noise) * noise).to(x.dtype), x0
    return x


@torch.no_grad()
def sample_euler(denoise_fn: Denoiser, x: torch.Tensor, schedule: Schedule, *, eta: float = 0.0,
                 generator: Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler on the probability-flow ODE (Karras et al. 2022, Alg. 2), ancestral when eta > 0 (DDIM eta).

    Euler in k-diffusion's VE coordinates (x / alpha, sigma / alpha) written in VP form, so the
    infinite first sigma never appears; it steps between listed timesteps (to -1 after the last).
    """
    _check_eta(eta)
    if eta > 0:
        generator = _require_generator(generator, f"euler (eta={eta})")
    for i, t in enumerate(schedule.timesteps):
        a, a_next = schedule.alpha(t), schedule.alpha(schedule.next_timestep(i))
        x0 = _denoised(denoise_fn, x, t, a)
        _report(callback, i, schedule, x, x0)
        eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
        s_up = eta * ((1 - a_next) / (1 - a) * (1 - a / a_next)) ** 0.5  # ancestral noise std
        x_new = a_next**0.5 * x0 + max(1 - a_next - s_up * s_up, 0.0) ** 0.5 * eps
        if s_up > 0:
            x_new = x_new + s_up * draw_noise(x, generator)
        x = x_new.to(x.dtype)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise_fn: Denoiser, x: torch.Tensor, schedule: Schedule, *, eta: float = 0.0,
                    generator: Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) in VP form, SDE variant when eta > 0; first and last steps first order.

    Steps between listed timesteps (to -1 after the last); the zero-SNR first step is the exact
    h = inf limit (see the module docstring), after which the 2M history term vanishes (r = inf).
    """
    _check_eta(eta)
    if eta > 0:
        generator = _require_generator(generator, f"dpmpp_2m (eta={eta})")
    old_x0 = None
    for i, t in enumerate(schedule.timesteps):
        t_next = schedule.next_timestep(i)
        a = schedule.alpha(t)
        x0 = _denoised(denoise_fn, x, t, a)
        _report(callback, i, schedule, x, x0)
        a_back = schedule.alpha(schedule.timesteps[i - 1]) if old_x0 is not None and t_next >= 0 else None
        mean, std = _dpmpp_step(x, x0, old_x0, a, schedule.alpha(t_next), a_back, eta)
        if std > 0:
            mean = mean + std * draw_noise(x, generator)
        x, old_x0 = mean.to(x.dtype), x0
    return x
