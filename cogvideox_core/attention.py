"""The attention function of a standalone run: ``auto``, ``sdpa``, ``sage`` or ``flash``.

Every choice has the signature of :func:`~cogvideox_core.ops.sdpa_attention` (q, k, v
[B, S, heads*head_dim], heads -> [B, S, heads*head_dim]), so the transformer takes any of them.

- ``sdpa``: torch's ``scaled_dot_product_attention``, whichever backend torch picks.
- ``flash``: the same call restricted to torch's FlashAttention backend (CUDA, fp16/bf16,
  compute capability 8.0+); torch raises rather than silently using another kernel.
- ``sage``: SageAttention (``pip install sageattention``; CUDA, fp16/bf16, capability 8.0+),
  which quantises q and k to int8 (and p, v to fp8 on 8.9+): faster than FlashAttention-2 at a
  small cost in accuracy (its authors report end-to-end metrics unchanged on CogVideoX).
- ``auto``: sage where it can run, else flash, else sdpa (logged).

A choice that cannot run on the device and dtype is a ``ValueError`` naming what is missing,
raised when the choice is made (before any weights load). ComfyUI does not use this module:
there the pack keeps ComfyUI's attention, which follows ComfyUI's own flags.
"""
from __future__ import annotations

import importlib
import logging

import torch

from .ops import AttentionFn, sdpa_attention

logger = logging.getLogger(__name__)

ATTENTION_CHOICES = ("auto", "sdpa", "sage", "flash")
HALF_DTYPES = (torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 0)  # Ampere: FlashAttention-2 in torch and SageAttention's kernels


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """:func:`sdpa_attention` on torch's FlashAttention backend only."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return sdpa_attention(q, k, v, heads)


def sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """SageAttention's ``sageattn`` on [B, S, H, D] views of q, k, v (its NHD layout: no copy)."""
    from sageattention import sageattn

    b, s, inner = q.shape
    q, k, v = (t.view(b, -1, heads, inner // heads) for t in (q, k, v))  # [B, S, H, D]
    out = sageattn(q, k, v, tensor_layout="NHD", is_causal=False)  # [B, S, H, D]
    return out.reshape(b, s, inner)


def _gpu_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why a CUDA fp16/bf16 kernel for capability 8.0+ cannot run on ``device``/``dtype``, or None."""
    if device.type != "cuda" or torch.version.cuda is None or not torch.cuda.is_available():
        return f"needs a CUDA GPU (got device {device}{'' if torch.version.cuda else ', a torch without CUDA'})"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"needs a GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or "
                f"newer (Ampere); {device} is {capability[0]}.{capability[1]}")
    if dtype not in HALF_DTYPES:
        return f"needs dtype bfloat16 or float16 (got {str(dtype).removeprefix('torch.')})"
    return None


def flash_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``flash`` cannot run on ``device`` in ``dtype``, or None."""
    problem = _gpu_problem(device, dtype)
    check = getattr(torch.backends.cuda, "is_flash_attention_available", None)
    if problem is None and check is not None and not check():
        problem = "this torch build has no FlashAttention kernels"
    return problem


def sage_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``sage`` cannot run on ``device`` in ``dtype``, or None."""
    problems = [_sage_package_problem(), _gpu_problem(device, dtype)]
    return "; ".join(p for p in problems if p) or None


def _sage_package_problem() -> str | None:
    try:
        module = importlib.import_module("sageattention")
    except ImportError as e:  # not installed, or installed without its compiled kernels
        return f"the sageattention package does not import ({e}): pip install sageattention"
    if not hasattr(module, "sageattn"):
        return "the installed sageattention has no sageattn function: pip install -U sageattention"
    return None


_CHECKS = {"flash": (flash_problem, flash_attention), "sage": (sage_problem, sage_attention)}


def select_attention(name: str, device: torch.device | str, dtype: torch.dtype) -> AttentionFn:
    """The attention function for ``name`` (one of :data:`ATTENTION_CHOICES`) on ``device`` in
    ``dtype``; a ``ValueError`` naming what is missing when it cannot run there."""
    if name not in ATTENTION_CHOICES:
        raise ValueError(f"--attention {name!r}: must be one of {', '.join(ATTENTION_CHOICES)}")
    device = torch.device(device)
    if name == "sdpa":
        return sdpa_attention
    if name == "auto":
        return _auto(device, dtype)
    problem, fn = _CHECKS[name]
    reason = problem(device, dtype)
    if reason is not None:
        raise ValueError(f"--attention {name} on {device} in {str(dtype).removeprefix('torch.')}: "
                         f"{reason}; use --attention sdpa (or auto)")
    logger.info("attention: %s", name)
    return fn


def _auto(device: torch.device, dtype: torch.dtype) -> AttentionFn:
    """sage, else flash, else sdpa: the first that can run, logged with why the others cannot."""
    skipped = []
    for name in ("sage", "flash"):
        problem, fn = _CHECKS[name]
        reason = problem(device, dtype)
        if reason is None:
            logger.info("attention auto: %s%s", name, _why_not(skipped))
            return fn
        skipped.append(f"{name}: {reason}")
    logger.info("attention auto: sdpa%s", _why_not(skipped))
    return sdpa_attention


def _why_not(skipped: list[str]) -> str:
    return f" ({'; '.join(skipped)})" if skipped else ""


__all__ = [
    "ATTENTION_CHOICES",
    "flash_attention",
    "flash_problem",
    "sage_attention",
    "sage_problem",
    "select_attention",
]
