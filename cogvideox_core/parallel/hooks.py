"""The points where sampling on a mesh differs from one process, as one object the pipeline's
sampling loop can call (it cannot import this package, which sits above it): share the inputs
from rank 0, build the denoiser (Ulysses block runner, CFG branches over ranks), agree every
step whether to go on, and close the process group on an error only this rank saw.

Every rank keeps identical latents: the inputs are rank 0's bytes, the guided model output
reaches every rank through the same collectives, and the sampler noise comes from CPU
generators seeded alike that every rank advances the same way (the inputs are computed on every
rank from the seed before being replaced by rank 0's, for that reason).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Iterator

import torch

from ..errors import Interrupted
from ..generation.conditioning import ConditioningLatents
from ..generation.pipeline import GenerateRequest, Models, SamplingHooks, make_model_fn
from ..runtime import Runtime
from ..sampling import Callback, Denoiser
from ..sampling.schedules import Schedule
from .cfg import parallel_cfg_denoiser
from .comm import ParallelError, all_max, broadcast
from .groups import Mesh, close
from .ulysses import UlyssesBlocks

logger = logging.getLogger(__name__)

STOP_INTERRUPT, STOP_ERROR = 1, 2


def blocks_runner(mesh: Mesh) -> UlyssesBlocks | None:
    """The transformer's block runner for this rank (``blocks=`` of its forward), or None."""
    if mesh.ulysses_group is None:
        return None
    return UlyssesBlocks(mesh.ulysses_group, mesh.config.ulysses, mesh.ulysses_rank)


def make_parallel_denoiser(models: Models, conditioning: ConditioningLatents, cond: torch.Tensor,
                           uncond: torch.Tensor | None, request: GenerateRequest, schedule: Schedule,
                           mesh: Mesh) -> Denoiser:
    """The guided ``denoise(x, t) -> v`` of this rank: Ulysses blocks inside the model calls,
    CFG branches over the CFG ranks, context windows as in the single-process pipeline."""
    context = None if request.context is None else request.context.to_latent(models.family)
    model_fn = make_model_fn(models, conditioning, context, schedule, blocks_runner(mesh))  # type: ignore[arg-type]
    return parallel_cfg_denoiser(model_fn, cond, uncond, request.cfg, mesh, batched=request.cfg_batched,
                                 dynamic=request.dynamic_cfg, timesteps=schedule.timesteps)  # type: ignore[arg-type]


def share(x: torch.Tensor | None, mesh: Mesh) -> torch.Tensor | None:
    """Rank 0's ``x`` on every rank (None stays None: every rank has the same plan)."""
    if x is None or mesh.config.world_size == 1:
        return x
    return broadcast(x.contiguous(), src=0)


class _Stop:
    """Whether the last failure was one all ranks raised together (the group stays usable)."""

    together = False


def go_on_together(local: Callable[[], None], mesh: Mesh, stop: _Stop, where: str) -> None:
    """Run ``local`` (a progress report, an interrupt check), then one all-reduce: if it raised on
    any rank, every rank raises here (its own error, or Interrupted / ParallelError naming the
    rank that stopped and ``where``)."""
    error: Exception | None = None
    try:
        local()
    except Exception as e:  # noqa: BLE001 - any error must reach the peers before re-raising
        error = e
    kind = 0 if error is None else STOP_INTERRUPT if isinstance(error, Interrupted) else STOP_ERROR
    worst, who = all_max([kind, mesh.rank + 1 if error is not None else 0])
    if not worst:
        return
    stop.together = True
    if error is not None:
        raise error
    if worst == STOP_INTERRUPT:
        raise Interrupted(f"interrupted on rank {who - 1} {where}")
    raise ParallelError(f"rank {mesh.rank}: stopped because rank {who - 1} failed {where}; its log has the cause")


def synced_callback(local: Callable[[dict[str, Any]], None], mesh: Mesh, stop: _Stop) -> Callback:
    """The sampler callback: ``local(info)`` (progress on rank 0, the interrupt check elsewhere)
    on every rank, then :func:`go_on_together`: all ranks stop at the same step or none."""

    def callback(info: dict[str, Any]) -> None:
        go_on_together(lambda: local(info), mesh, stop, f"at step {info['step'] + 1}/{info['total']}")

    return callback


@contextlib.contextmanager
def stop_peers_on_error(mesh: Mesh, stop: _Stop) -> Iterator[None]:
    """On an error only this rank saw, close its process group so that peers blocked in a
    collective with it fail at once (gloo/NCCL connection errors) rather than at the timeout."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised
        if mesh.config.world_size > 1 and not stop.together:
            logger.error("rank %d stopped (%s: %s); closing its process group", mesh.rank,
                         type(e).__name__, e)
            close()
        raise


class MeshHooks(SamplingHooks):
    """What one rank of ``mesh`` does differently while sampling, called at five points of the
    single-process loop (:func:`~cogvideox_core.generation.pipeline.sample_rows`): ``guard()``
    around it all, ``share`` on the text states, the noise and (``share_conditioning``) the
    conditioning latents, ``denoiser`` instead of the pipeline's ``make_denoiser``,
    ``check_interrupt`` before the sampler and ``callback`` around the progress callback."""

    def __init__(self, mesh: Mesh, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.mesh, self.stop = mesh, _Stop()

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return stop_peers_on_error(self.mesh, self.stop)

    def share(self, x: torch.Tensor | None) -> torch.Tensor | None:
        return share(x, self.mesh)

    def share_conditioning(self, conditioning: ConditioningLatents) -> ConditioningLatents:
        return dataclasses.replace(conditioning, extra=self.share(conditioning.extra),
                                   init_latents=self.share(conditioning.init_latents))

    def denoiser(self, models: Models, conditioning: ConditioningLatents, cond: torch.Tensor,
                 uncond: torch.Tensor | None, request: GenerateRequest, schedule: Schedule,
                 cache: object | None = None) -> Denoiser:
        if cache is not None:  # refused earlier by run.check_request; never silently dropped
            raise ValueError("a step cache with a parallel run: not supported")
        return make_parallel_denoiser(models, conditioning, cond, uncond, request, schedule, self.mesh)

    def check_interrupt(self) -> None:
        go_on_together(self.runtime.check_interrupt, self.mesh, self.stop, "before sampling")

    def callback(self, progress: Callable[[dict[str, Any]], None]) -> Callback:
        """``progress`` on rank 0 (the others only check their interrupt), then all agree."""
        local = progress if self.mesh.is_first else (lambda info: self.runtime.check_interrupt())
        return synced_callback(local, self.mesh, self.stop)


__all__ = ["MeshHooks", "blocks_runner", "make_parallel_denoiser", "share", "go_on_together",
           "synced_callback", "stop_peers_on_error"]
