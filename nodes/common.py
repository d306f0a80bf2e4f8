"""What the node files share: the pack's socket types, the objects behind them, input specs.

Pack-specific objects travel on pack-specific sockets (``COGVIDEOX_MODEL``, ``COGVIDEOX_VAE``,
...); standard data uses ComfyUI's types: ``IMAGE`` [F, H, W, C] 0..1, ``MASK`` [F, H, W],
``LATENT`` ``{"samples": [B, C, T, H, W]}`` in unscaled VAE space (ComfyUI's video latents).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..cogvideox_core.families import LATENT_CHANNELS, Family
from ..cogvideox_core.generation.conditioning import ConditioningInputs

MODEL = "COGVIDEOX_MODEL"
VAE = "COGVIDEOX_VAE"
T5 = "COGVIDEOX_T5"
CONDITIONING = "COGVIDEOX_CONDITIONING"
CONTEXT = "COGVIDEOX_CONTEXT"

MAX_RESOLUTION = 8192
MAX_FRAMES = 4097


@dataclass(frozen=True)
class ModelHandle:
    """A loaded CogVideoX transformer: its patcher (weights and LoRA patches) and family."""

    patcher: Any  # comfy ModelPatcher, or host.compute.PlainPatcher without ComfyUI; .model is the core transformer
    family: Family
    dtype: torch.dtype
    name: str
    scheduler: Any = None  # the root's shipped SchedulerConfig, None = the family's default
    loras: tuple[str, ...] = ()  # "file:strength" of the LoRAs added, in order

    @property
    def model(self) -> Any:
        return self.patcher.model


@dataclass(frozen=True)
class VAEHandle:
    patcher: Any  # .model is the core CogVideoXVAE
    dtype: torch.dtype
    name: str

    @property
    def model(self) -> Any:
        return self.patcher.model


@dataclass(frozen=True)
class T5Handle:
    patcher: Any  # .model is the core's T5Encoder
    tokenizer: Any
    name: str


@dataclass(frozen=True)
class PromptConditioning:
    """What travels on the ``COGVIDEOX_CONDITIONING`` socket: prompt embeddings plus what the
    conditioning nodes add, for the sampler.

    ``positive``/``negative``: T5 states [1, 226, D] on the intermediate device. ``inputs``:
    the images, videos and masks of the request (the core's ``ConditioningInputs``, IMAGE
    layout); ``vae`` encodes them during sampling, with the sampler's seed, in the diffusers
    pipelines' order (the I2V/V2V posterior sample is drawn before the noise).
    """

    positive: torch.Tensor
    negative: torch.Tensor
    inputs: ConditioningInputs = field(default_factory=ConditioningInputs)
    vae: VAEHandle | None = None


def tip(kind: str, tooltip: str, **opts: Any) -> tuple:
    """An input spec ``(kind, {"tooltip": ..., **opts})``; ``kind`` a type or a list of choices."""
    return (kind, {"tooltip": tooltip, **opts})


def int_input(tooltip: str, default: int, lo: int, hi: int, step: int = 1, **opts: Any) -> tuple:
    return ("INT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tooltip, **opts})


def float_input(tooltip: str, default: float, lo: float, hi: float, step: float = 0.01, **opts: Any) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tooltip, **opts})


def choice(name: str, value: str, allowed: tuple[str, ...] | list[str]) -> str:
    """``value`` if it is one of ``allowed``; a ValueError naming the input otherwise."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    return value


def latent_samples(name: str, latent: Any) -> torch.Tensor:
    """The [B, C, T, H, W] tensor of a LATENT; a ValueError naming ``name`` otherwise."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"{name}: a CogVideoX LATENT holds samples [B, C, T, H, W] (a video latent); "
                         f"got {shape}: an image latent or another model's latent")
    if samples.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"{name}: samples have {samples.shape[1]} channels; CogVideoX latents have "
                         f"{LATENT_CHANNELS}")
    return samples


def images_tensor(name: str, images: Any) -> torch.Tensor:
    """An IMAGE batch [F, H, W, C] (C 3 or 4; alpha dropped) as float; ValueError otherwise."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected IMAGE frames [F, H, W, 3]; got {shape}")
    return images[..., :3].float()
