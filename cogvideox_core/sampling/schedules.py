"""Noise schedules of the CogVideoX checkpoints as pure functions.

The shipped ``scheduler/scheduler_config.json`` (``CogVideoXDDIMScheduler``; the DPM scheduler
reads the same file) defines everything here: scaled-linear betas 0.00085..0.012 over 1000
training steps, ``alphas_cumprod`` in float64, the SNR shift ``a / (s + (1 - s) a)`` (s = 3.0 for
2B, 1.0 for every other family), then the zero-terminal-SNR rescale (Lin et al. 2023, Alg. 1),
which makes ``alphas_cumprod[999]`` exactly 0: the last training timestep is pure noise, its VE
sigma is infinite and its log-SNR is -inf. The samplers therefore work in VP form (``alpha_cumprod``)
and never divide by it.

Timesteps ("trailing" spacing): ``round(arange(1000, 0, -1000 / N)) - 1``. The CogVideoX
DDIM/DPM ``step`` goes from t to ``t - 1000 // N``, which is the next listed timestep only when N
divides 1000 (N = 3: the list is 999, 666, 332 but the steps go 999 -> 666 -> 333 -> -1). A
:class:`Schedule` carries both, and -1 means "clean" (``alpha_cumprod`` 1 with
``set_alpha_to_one``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

BETA_SCHEDULES = ("scaled_linear", "linear")
SPACINGS = ("trailing", "leading", "linspace")
CONFIG_FILE = "scheduler_config.json"
# In CogVideoX scheduler configs but without effect on CogVideoX's step (it never clips).
_NO_EFFECT_KEYS = frozenset({"clip_sample", "clip_sample_range", "sample_max_value", "thresholding",
                             "dynamic_thresholding_ratio"})
_COGVIDEOX_CLASSES = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")


@dataclass(frozen=True)
class SchedulerConfig:
    """The fields of a CogVideoX ``scheduler_config.json`` that change the numbers.

    Defaults are the shipped checkpoints' values with ``snr_shift_scale`` 1.0 (every family but
    2B, which ships 3.0), not the diffusers class defaults.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    trained_betas: tuple[float, ...] | None = None
    set_alpha_to_one: bool = True
    steps_offset: int = 0  # used by "leading" spacing only
    prediction_type: str = "v_prediction"
    timestep_spacing: str = "trailing"
    rescale_betas_zero_snr: bool = True
    snr_shift_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("timestep_spacing", self.timestep_spacing, SPACINGS)
        _check_choice("prediction_type", self.prediction_type, ("v_prediction",))
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps={self.num_train_timesteps} must be >= 1")
        if not self.snr_shift_scale > 0:
            raise ValueError(f"snr_shift_scale={self.snr_shift_scale} must be > 0")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError(f"trained_betas has {len(self.trained_betas)} values; "
                             f"num_train_timesteps={self.num_train_timesteps} needs as many")

    @classmethod
    def from_json(cls, source: str | os.PathLike[str] | Mapping[str, Any]) -> "SchedulerConfig":
        """Read a diffusers scheduler config: a dict or a ``scheduler_config.json`` file. Unknown
        keys are logged as warnings and not used. (Which file belongs to a model:
        :func:`cogvideox_core.loading.files.find_scheduler_file`.)"""
        cfg = dict(source) if isinstance(source, Mapping) else _read_config(Path(source))
        names = {f.name for f in dataclasses.fields(cls)}
        cls_name = cfg.get("_class_name")
        if cls_name is not None and cls_name not in _COGVIDEOX_CLASSES:
            logger.warning("scheduler _class_name %r is not a CogVideoX scheduler; read as one", cls_name)
        for key in sorted(set(cfg) - names - _NO_EFFECT_KEYS):
            if not key.startswith("_"):
                logger.warning("scheduler config key %r is not used by this pack", key)
        kwargs = {k: v for k, v in cfg.items() if k in names}
        if kwargs.get("trained_betas") is not None:
            kwargs["trained_betas"] = tuple(float(b) for b in kwargs["trained_betas"])
        return cls(**kwargs)


def _check_choice(name: str, value: object, known: Sequence[str]) -> None:
    if value not in known:
        raise ValueError(f"{name}={value!r} is not supported; known: {', '.join(known)}")


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"source={str(path)!r} is not a {CONFIG_FILE} file")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _betas(config: SchedulerConfig) -> torch.Tensor:
    """Betas in the dtype diffusers builds them in (float64 for scaled_linear, else float32)."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        return torch.tensor(config.trained_betas, dtype=torch.float32)
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
    return torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=torch.float64) ** 2


def _rescale_zero_terminal_snr(a: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alphas_cumprod) so the last is 0 and the first unchanged (Lin et al. 2023, Alg. 1)."""
    s = a.sqrt()
    first, last = s[0].clone(), s[-1].clone()
    return ((s - last) * (first / (first - last))) ** 2


def alphas_cumprod(config: SchedulerConfig = SchedulerConfig()) -> torch.Tensor:
    """alphas_cumprod [num_train_timesteps], float64: cumprod(1 - betas), SNR shift, zero-SNR rescale."""
    a = torch.cumprod(1.0 - _betas(config), dim=0)
    s = config.snr_shift_scale
    a = a / (s + (1 - s) * a)  # SNR divided by s: snr' = snr / s
    if config.rescale_betas_zero_snr:
        a = _rescale_zero_terminal_snr(a)
    return a.to(torch.float64)


def final_alpha_cumprod(config: SchedulerConfig = SchedulerConfig()) -> float:
    """alpha_cumprod after the last step (timestep -1): 1.0, or alphas_cumprod[0] without set_alpha_to_one."""
    return 1.0 if config.set_alpha_to_one else float(alphas_cumprod(config)[0])


def spaced_timesteps(steps: int, config: SchedulerConfig = SchedulerConfig()) -> list[int]:
    """The model timesteps of an N-step run, high to low, as the scheduler's ``set_timesteps``.

    "trailing" keeps the first N values: numpy's float ``arange`` yields N + 1 for some N (61,
    103, ...), and diffusers then runs an extra step at timestep -1 (alphas_cumprod[-1]).
    """
    n_train = config.num_train_timesteps
    if not 1 <= steps <= n_train:
        raise ValueError(f"steps={steps} must be in 1..num_train_timesteps={n_train}")
    if config.timestep_spacing == "trailing":
        ts = np.round(np.arange(n_train, 0, -n_train / steps))[:steps].astype(np.int64) - 1
    elif config.timestep_spacing == "leading":
        ts = (np.arange(0, steps) * (n_train // steps))[::-1] + config.steps_offset
    else:  # linspace
        ts = np.linspace(0, n_train - 1, steps).round()[::-1].astype(np.int64)
    return [int(t) for t in ts]


def timesteps_for_strength(steps: int, strength: float, config: SchedulerConfig = SchedulerConfig()) -> list[int]:
    """The last ``int(steps * strength)`` timesteps of an N-step run (V2V pipeline ``get_timesteps``)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength={strength} must be in (0, 1]")
    ts = spaced_timesteps(steps, config)
    keep = min(int(steps * strength), steps)
    if keep < 1:
        raise ValueError(f"strength={strength} with steps={steps} runs int(steps * strength) = 0 steps; "
                         f"steps * strength must be >= 1")
    return ts[steps - keep:]


@dataclass(frozen=True, eq=False)
class Schedule:
    """One sampling run: the model timesteps, where each CogVideoX step goes, and alphas_cumprod."""

    alphas_cumprod: torch.Tensor  # [num_train_timesteps] float64
    timesteps: tuple[int, ...]  # the model's timesteps, high to low
    prev_timesteps: tuple[int, ...]  # CogVideoX DDIM/DPM step target t - T // N; -1 is clean
    final_alpha: float = 1.0  # alpha_cumprod at timestep -1

    def __len__(self) -> int:
        return len(self.timesteps)

    def alpha(self, t: int) -> float:
        """alpha_cumprod at timestep t as a float64 Python float; ``final_alpha`` for t < 0."""
        return self.final_alpha if t < 0 else float(self.alphas_cumprod[t])

    def next_timestep(self, i: int) -> int:
        """The timestep listed after step i, -1 after the last (the target of k-diffusion-style samplers)."""
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1


def make_schedule(steps: int, config: SchedulerConfig = SchedulerConfig(), *, strength: float = 1.0) -> Schedule:
    """The schedule of an N-step run, truncated to its last int(N * strength) steps for V2V."""
    ts = timesteps_for_strength(steps, strength, config)
    stride = config.num_train_timesteps // steps  # the step size uses the full N, also for V2V
    logger.debug("schedule: %d of %d steps, timesteps %s", len(ts), steps, ts)
    return Schedule(alphas_cumprod(config), tuple(ts), tuple(t - stride for t in ts),
                    final_alpha_cumprod(config))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """sqrt(a_t) x0 + sqrt(1 - a_t) noise in x0's dtype (the scheduler's ``add_noise``); t an int or [B],
    ``alphas`` the alphas_cumprod [T]."""
    a = alphas.to(device=x0.device, dtype=x0.dtype)[torch.as_tensor(t, device=x0.device)]
    a = a.flatten().view(-1, *([1] * (x0.ndim - 1)))  # [B or 1, 1, ...]
    return a**0.5 * x0 + (1 - a) ** 0.5 * noise


def schedule_sigmas(schedule: Schedule) -> torch.Tensor:
    """VE sigmas sqrt((1 - a) / a) of the timesteps then 0, float64 [n + 1]; inf where a = 0 (zero SNR)."""
    a = torch.tensor([schedule.alpha(t) for t in schedule.timesteps], dtype=torch.float64)
    sig = torch.where(a > 0, ((1 - a) / a.clamp_min(1e-300)).sqrt(), torch.full_like(a, math.inf))
    return torch.cat([sig, sig.new_zeros(1)])
