"""One generation on a ``cfg x ulysses`` mesh, composed of the pipeline's public pieces and
:class:`~cogvideox_core.parallel.hooks.MeshHooks` (what differs from one process).

Every rank runs the same code on the same request and keeps identical latents; rank 0 reports
progress, decodes and returns frames. An interrupt, or an error in any rank's progress
callback, stops all ranks at the same step with one message; an error elsewhere (in a model
call) closes that rank's process group, so peers waiting on it fail at once with
:class:`~cogvideox_core.parallel.comm.ParallelError` instead of hanging until the timeout.
"""
from __future__ import annotations

import logging

import torch

from ..families import Family
from ..generation.conditioning import ConditioningPlan
from ..generation.pipeline import (GenerateRequest, Models, encode_text, final_latents, latents_to_frames,
                                   progress_callback, sample_rows, validate)
from ..runtime import Runtime, TorchRuntime
from .config import ParallelConfig
from .groups import Mesh
from .hooks import MeshHooks, share

logger = logging.getLogger(__name__)


def check_request(models: Models, request: GenerateRequest, config: ParallelConfig) -> None:
    """``ValueError`` for what the parallel modes do not do (step caches) or the model cannot
    (heads not divisible by ulysses), before any process group work."""
    check_family(models.family, request, config)


def check_family(family: Family, request: GenerateRequest, config: ParallelConfig) -> None:
    """:func:`check_request` from the family alone (the CLI: before any weights load)."""
    config.check_heads(family.transformer.num_heads, family.name)
    if request.cache is not None and config.world_size > 1:
        raise ValueError(f"cache={request.cache.method!r} with --parallel {config}: not supported "
                         "(a step cache keeps per-branch state that CFG ranks do not share); "
                         "drop the cache or the parallel run")


def quiet_other_ranks(mesh: Mesh) -> None:
    """Only errors from the core's loggers on ranks other than 0 (rank 0 says everything once)."""
    if not mesh.is_first:
        logging.getLogger("cogvideox_core").setLevel(logging.ERROR)


def sample_latents(models: Models, request: GenerateRequest, runtime: Runtime, plan: ConditioningPlan,
                   mesh: Mesh) -> torch.Tensor:
    """This rank's scaled final latents [1, F_total, C, h, w] (padding included), the
    pipeline's draw order; equal on every rank."""
    check_request(models, request, mesh.config)
    cond, uncond = encode_text(models, request, runtime)
    return sample_rows(models, request, runtime, plan, cond, uncond, [request.seed],
                       progress_callback(runtime, plan, models.family), hooks=MeshHooks(mesh, runtime))


def agree(x: torch.Tensor, mesh: Mesh, what: str) -> torch.Tensor:
    """Rank 0's ``x``; a warning on any rank whose own ``x`` differs (never expected: a sign of
    non-deterministic kernels or a different device type between ranks)."""
    first = share(x.clone(), mesh)
    diff = float((first - x).abs().max()) if x.numel() else 0.0
    if diff:
        logger.warning("rank %d: %s differ from rank 0's by up to %.3g; using rank 0's", mesh.rank, what, diff)
    return first  # type: ignore[return-value]


@torch.no_grad()
def generate_latents(models: Models, request: GenerateRequest, mesh: Mesh, runtime: Runtime | None = None,
                     plan: ConditioningPlan | None = None) -> torch.Tensor:
    """Final latents [1, C, F_lat, H_lat, W_lat] (unscaled, padding dropped) on every rank,
    equal to :func:`~cogvideox_core.generation.pipeline.generate_latents` of one process."""
    runtime = runtime or TorchRuntime(show_progress=False)
    plan = plan or validate(models, request)
    check_request(models, request, mesh.config)
    scaled = agree(sample_latents(models, request, runtime, plan, mesh), mesh, "the sampled latents")
    return final_latents(scaled, plan, models.family)


@torch.no_grad()
def generate(models: Models, request: GenerateRequest, mesh: Mesh, runtime: Runtime | None = None
             ) -> torch.Tensor | None:
    """Frames [F, H, W, 3] 0..1 on rank 0 (it alone decodes), None on the other ranks."""
    runtime = runtime or TorchRuntime(show_progress=False)
    plan = validate(models, request)
    latents = generate_latents(models, request, mesh, runtime, plan=plan)
    if not mesh.is_first:
        return None
    return latents_to_frames(models, latents, runtime, frames=plan.frames)


__all__ = ["check_request", "check_family", "quiet_other_ranks", "sample_latents", "agree", "generate_latents", "generate"]
