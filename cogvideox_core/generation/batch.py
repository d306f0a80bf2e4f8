"""Many videos as one job: prompts x seeds, sampled in batches, handed over one by one.

Each prompt (and the negative prompt) is encoded once. The videos are sampled in batches of as
many rows as the device's free memory holds (:func:`~cogvideox_core.memory.rows_that_fit`; CFG
batched with them), each row with its own seed's generator
(:func:`~cogvideox_core.generation.pipeline.sample_rows`): a video equals the single run with its
seed. After each batch the videos are decoded one at a time and handed to the caller, so memory
does not grow with the job and an interrupt keeps every video handed over before it. One
progress bar counts the model calls of the whole job. A step cache or context windows decide per
model call for the whole batch, so with either the videos are sampled one at a time (to stay
equal to their single runs).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .conditioning import ConditioningPlan
from .pipeline import (GenerateRequest, Models, encode_text, final_latents, latents_to_frames, progress_callback,
                       run_memory, sample_rows, validate)
from ..memory import rows_that_fit
from ..runtime import Runtime, TorchRuntime

logger = logging.getLogger(__name__)

MAX_SEED = 2**64


@dataclass(frozen=True)
class BatchItem:
    """One video of a job: ``prompt`` (the prefix joined), its ``index`` in the prompt list
    (from 0) and its ``seed``."""

    prompt: str
    seed: int
    index: int = 0


@dataclass(frozen=True)
class Row:
    """One video to sample: T5 states ``cond`` [1, L, D], ``uncond`` [1, L, D] or None, ``seed``."""

    cond: torch.Tensor
    uncond: torch.Tensor | None
    seed: int


@dataclass(frozen=True)
class FinishedVideo:
    """A video of the job, decoded: frames [F, H, W, 3] 0..1; ``seconds``: its share of its
    batch's sampling plus its own decode."""

    item: BatchItem
    frames: torch.Tensor
    seconds: float


def join_prefix(prefix: str, prompt: str) -> str:
    """``prefix`` and ``prompt`` joined by one space (either may be empty)."""
    return " ".join(part for part in (prefix.strip(), prompt.strip()) if part)


def check_seed(seed: int) -> None:
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed={seed}: must be in 0..2**64-1")


def batch_items(prompts: Sequence[str], seeds: Sequence[int], prefix: str = "") -> list[BatchItem]:
    """Every prompt (``prefix`` joined) with every seed, prompt by prompt; ``ValueError`` for
    an empty list, a blank prompt or a seed outside 0..2**64-1."""
    if not prompts:
        raise ValueError("prompts=[]: give at least one prompt")
    if not seeds:
        raise ValueError("seeds=[]: give at least one seed")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i + 1} is empty: give one prompt per non-empty line")
    for seed in seeds:
        check_seed(seed)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={list(seeds)}: a seed is repeated (the same prompt and seed make the "
                         "same video); give distinct seeds")
    return [BatchItem(join_prefix(prefix, p), s, i) for i, p in enumerate(prompts) for s in seeds]


# ---- sampling in batches --------------------------------------------------------------------

def batch_rows(models: Models, request: GenerateRequest, plan: ConditioningPlan, runtime: Runtime,
               count: int, max_batch: int | None = None) -> int:
    """How many of ``count`` videos to sample together: what the device's free memory holds
    after the transformer is loaded (at most ``max_batch``); 1 with a step cache or context
    windows (they decide per model call for the whole batch)."""
    limit = max(1, min(count, max_batch or count))
    if request.cache is not None or request.context is not None:
        if limit > 1:
            logger.info("one video at a time: a %s decides per model call for the whole batch",
                        "step cache" if request.cache is not None else "context window run")
        return 1
    one = run_memory(models, request, plan, runtime.device.type)
    runtime.load(models.transformer, one.total())
    rows = rows_that_fit(one, runtime.free_memory(), limit)
    logger.info("sampling %d video(s) at a time (%d in all)", rows, count)
    return rows


def sample_batches(models: Models, request: GenerateRequest, plan: ConditioningPlan, rows: Sequence[Row],
                   runtime: Runtime, max_batch: int | None = None
                   ) -> Iterator[tuple[range, torch.Tensor, float]]:
    """(row indices, unscaled final latents [b, C, F_lat, h, w] padding dropped, sampling
    seconds) batch after batch; progress counts the model calls of all batches."""
    size = batch_rows(models, request, plan, runtime, len(rows), max_batch)
    batches = [range(i, min(i + size, len(rows))) for i in range(0, len(rows), size)]
    for n, batch in enumerate(batches):
        start = time.monotonic()
        chunk = [rows[i] for i in batch]
        cond = torch.cat([r.cond for r in chunk])
        uncond = None if chunk[0].uncond is None else torch.cat([r.uncond for r in chunk])  # type: ignore[misc]
        scaled = sample_rows(models, request, runtime, plan, cond, uncond, [r.seed for r in chunk],
                             progress_callback(runtime, plan, models.family, n, len(batches)))
        yield batch, final_latents(scaled, plan, models.family), time.monotonic() - start


# ---- the job ----------------------------------------------------------------------------------

def encode_items(models: Models, request: GenerateRequest, items: Sequence[BatchItem], runtime: Runtime
                 ) -> list[Row]:
    """One :class:`Row` per item, each distinct prompt (and the negative prompt) encoded once."""
    first = dataclasses.replace(request, prompt=items[0].prompt)
    cond, negative = encode_text(models, first, runtime)  # the negative prompt once, with the first
    states = {items[0].prompt: cond}
    for item in items:
        if item.prompt not in states:  # cfg=1: the prompt alone, no second negative encode
            states[item.prompt] = encode_text(models, dataclasses.replace(request, prompt=item.prompt,
                                                                          cfg=1.0), runtime)[0]
            runtime.check_interrupt()
    return [Row(states[item.prompt], negative, item.seed) for item in items]


@torch.no_grad()
def generate_batch(models: Models, request: GenerateRequest, items: Sequence[BatchItem],
                   on_video: Callable[[FinishedVideo], None], runtime: Runtime | None = None,
                   max_batch: int | None = None) -> int:
    """Make every video of ``items`` with ``request``'s settings (its prompt and seed are the
    items'), calling ``on_video`` with each as soon as it is decoded, in item order. Returns the
    number of videos made. Everything that can be refused is refused before any model runs;
    an interrupt (:class:`~cogvideox_core.errors.Interrupted`) ends the job after the videos
    already handed over."""
    if not items:
        raise ValueError("items=[]: give at least one prompt and seed")
    runtime = runtime or TorchRuntime(show_progress=False)
    plan = validate(models, dataclasses.replace(request, prompt=items[0].prompt, seed=items[0].seed))
    for item in items:
        check_seed(item.seed)
    rows = encode_items(models, request, items, runtime)
    done = 0
    for batch, latents, seconds in sample_batches(models, request, plan, rows, runtime, max_batch):
        for j, i in enumerate(batch):
            start = time.monotonic()
            frames = latents_to_frames(models, latents[j:j + 1], runtime, frames=plan.frames)
            share = seconds / len(batch) + time.monotonic() - start
            on_video(FinishedVideo(items[i], frames, round(share, 2)))
            done += 1
            runtime.check_interrupt()
    return done


__all__ = ["BatchItem", "FinishedVideo", "Row", "batch_items", "batch_rows", "encode_items", "generate_batch",
           "join_prefix", "sample_batches"]
