"""What the node files share: the pack's socket types, the objects behind them, input specs.

Pack-specific objects travel on pack-specific sockets (``COGVIDEOX_MODEL``, ``COGVIDEOX_VAE``,
...); standard data uses ComfyUI's types: ``IMAGE`` [F, H, W, C] 0..1, ``MASK`` [F, H, W],
``LATENT`` ``{"samples": [B, C, T, H, W]}`` in unscaled VAE space (ComfyUI's video latents).
"""
from __future__ import annotations

import math
import re
import traceback
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Sequence

import torch

from ..cogvideox_core.errors import CogVideoXError
from ..cogvideox_core.families import LATENT_CHANNELS, Family
from ..cogvideox_core.generation.conditioning import ConditioningInputs
from . import host

MODEL = "COGVIDEOX_MODEL"
VAE = "COGVIDEOX_VAE"
T5 = "COGVIDEOX_T5"
CONDITIONING = "COGVIDEOX_CONDITIONING"
CONTEXT = "COGVIDEOX_CONTEXT"
CACHE = "COGVIDEOX_CACHE"

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

    ``positive``: T5 states [P, 226, D] of P prompts (one video each per batch entry; P is 1
    unless a text encode node's ``prompts_per_line`` is on); ``negative``: [1, 226, D], shared.
    Both on the intermediate device. ``inputs``: the images, videos and masks of the request
    (the core's ``ConditioningInputs``, IMAGE layout); ``vae`` encodes them during sampling,
    with each video's seed, in the diffusers pipelines' order (the I2V/V2V posterior sample is
    drawn before the noise).
    """

    positive: torch.Tensor
    negative: torch.Tensor
    inputs: ConditioningInputs = field(default_factory=ConditioningInputs)
    vae: VAEHandle | None = None

    @property
    def prompts(self) -> int:
        """P: how many prompts ``positive`` holds."""
        return int(self.positive.shape[0])


def one_prompt(name: str, conditioning: PromptConditioning, node: str) -> torch.Tensor:
    """The positive states [1, 226, D] of a conditioning that holds one prompt; a ValueError
    naming input ``name`` of ``node`` when it holds several."""
    if conditioning.prompts != 1:
        raise ValueError(f"{name}: holds {conditioning.prompts} prompts (prompts_per_line on in the text "
                         f"encode node); {node} takes one prompt: turn prompts_per_line off, or give "
                         "one line")
    return conditioning.positive


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


def check_finite(node: Any, **values: Any) -> None:
    """A ValueError naming the first of ``values`` (FLOAT inputs of ``node``) that is not a
    finite number, with the range its widget allows. ComfyUI checks a widget's min/max, but
    NaN passes those comparisons (the API's JSON accepts NaN and Infinity)."""
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise ValueError(f"{name}={value!r} is not allowed: {name} takes a finite number"
                             f"{_widget_range(node, name)}")


def _widget_range(node: Any, name: str) -> str:
    spec = type(node).INPUT_TYPES()
    opts = {**spec.get("required", {}), **spec.get("optional", {})}.get(name, ("", {}))[1]
    return f" from {opts['min']:g} to {opts['max']:g}" if {"min", "max"} <= set(opts) else ""


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
    if 0 in samples.shape:
        raise ValueError(f"{name}: samples {tuple(samples.shape)} are empty: batch, frames, height "
                         "and width must each be at least 1")
    return samples


def images_tensor(name: str, images: Any) -> torch.Tensor:
    """An IMAGE batch [F, H, W, C] (C 3 or 4; alpha dropped) as float; ValueError otherwise."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected IMAGE frames [F, H, W, 3]; got {shape}")
    return images[..., :3].float()


# ---- out of memory ------------------------------------------------------------------------

class OutOfMemory(CogVideoXError, RuntimeError):
    """A node ran out of device or host memory; the message says where and what to change."""


def is_out_of_memory(e: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, and ComfyUI's ``OOM_EXCEPTION``), Python's MemoryError,
    or a RuntimeError of a failed allocation (the CPU allocator, MPS, XPU)."""
    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "DefaultCPUAllocator"))


class out_of_memory:  # noqa: N801 (used as ``with out_of_memory(...)``, like a function)
    """``with out_of_memory(what, changes, *patchers):`` turns an out-of-memory error in the
    block into one :class:`OutOfMemory`: "Out of memory while <what> (<allocation>). To fit,
    change one of: <changes>." Before raising, the failed call's frames are cleared (their
    activations freed) and the host unloads the models (``host.release_memory``: ComfyUI's own
    reaction to an OOM), so none is left half-moved and the next run loads them again. Every
    other exception, the pack's own errors and ``ValueError`` included, passes unchanged."""

    def __init__(self, what: str, changes: Sequence[str], *patchers: Any) -> None:
        self.what, self.changes, self.patchers = what, tuple(changes), patchers

    def __enter__(self) -> "out_of_memory":
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None or isinstance(exc, (CogVideoXError, ValueError)) or not is_out_of_memory(exc):
            return False
        detail = _allocation(exc)
        traceback.clear_frames(tb)  # the failed call's tensors go now, not with the exception
        host.release_memory(*self.patchers)
        raise OutOfMemory(f"Out of memory while {self.what} ({detail}). To fit, change one of: "
                          f"{'; '.join(self.changes)}. The models were unloaded cleanly and load "
                          "again on the next run.") from exc


def _allocation(e: BaseException) -> str:
    """The short part of an allocator message: "tried to allocate 2.00 GiB", else its start."""
    text = " ".join(str(e).split())
    found = re.search(r"tried to allocate ([\d.]+) ?([KMGT]?i?B(?:ytes)?)", text, re.IGNORECASE)
    if found:
        amount, unit = found.groups()
        if unit.lower() == "bytes":  # the CPU allocator counts bytes
            amount, unit = f"{float(amount) / 2**30:.2f}", "GiB"
        return f"{type(e).__name__}: tried to allocate {amount} {unit}"
    return f"{type(e).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"
