"""The shared training loop: a step or minute budget, warm-up + cosine learning rate, EMA, logs.

A minute budget is turned into a step count once, after :data:`PROBE_STEPS` timed steps, and
logged: re-running with ``--<stage>-steps`` set to it repeats the run exactly (the learning-rate
schedule depends on the step count only). The loop also stops at :data:`OVERRUN` times the
minutes, so a machine that slows down mid-run cannot push the stage past its slot.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

PROBE_STEPS = 20
OVERRUN = 1.15
WARMUP = 100
FINAL_LR = 0.1
CHECKPOINT_MINUTES = 10.0  # the cosine ends at this share of the peak learning rate


@dataclass(frozen=True)
class Budget:
    """Stop after ``steps`` if given, else after about ``minutes``."""

    minutes: float = 1.0
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.steps is None and not self.minutes > 0:
            raise ValueError(f"minutes={self.minutes}: give a positive number of minutes or steps")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps}: must be at least 1")


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up over :data:`WARMUP` steps (a tenth of a shorter run), then cosine down
    to :data:`FINAL_LR`."""
    warmup = min(WARMUP, max(1, total // 10))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """An exponential moving average of a model's parameters (the weights that are saved)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # short warm-up of the average
        for ema, p in zip(self.model.parameters(), model.parameters()):
            ema.lerp_(p.detach(), 1 - d)


StepFn = Callable[[int], dict[str, float]]


def run(name: str, step_fn: StepFn, optimizer: torch.optim.Optimizer, budget: Budget,
        log_every: int = 50, checkpoint: Callable[[int], None] | None = None) -> dict[str, float]:
    """Call ``step_fn(step)`` (one optimiser step; returns its losses) until the budget ends,
    setting each group's lr from its ``peak_lr``; ``checkpoint(step)`` every
    :data:`CHECKPOINT_MINUTES`. Returns a summary (steps, minutes, last losses)."""
    start = saved = time.monotonic()
    total = budget.steps or 10**9
    sums: dict[str, float] = {}
    last: dict[str, float] = {}
    step = 0
    while step < total:
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(step, total)
        for key, value in step_fn(step).items():
            sums[key] = sums.get(key, 0.0) + value
        step += 1
        elapsed = time.monotonic() - start
        if budget.steps is None and step == PROBE_STEPS:
            total = max(PROBE_STEPS + 1, int(budget.minutes * 60 / (elapsed / step)))
            logger.info("%s: %.2f s/step over %d steps: %d steps for %.1f min (re-run with "
                        "--%s-steps %d to repeat)", name, elapsed / step, step, total, budget.minutes,
                        name, total)
        if step % log_every == 0 or step == total:
            last = {k: v / log_every if step % log_every == 0 else v / (step % log_every)
                    for k, v in sums.items()}
            logger.info("%s step %d/%d  %s  %.1f min", name, step, total,
                        "  ".join(f"{k} {v:.4f}" for k, v in last.items()), elapsed / 60)
            sums = {}
        if checkpoint is not None and time.monotonic() - saved > CHECKPOINT_MINUTES * 60:
            checkpoint(step)
            saved = time.monotonic()
        if budget.steps is None and elapsed > OVERRUN * budget.minutes * 60:
            logger.warning("%s: stopped at step %d of %d: %.1f min passed (budget %.1f)", name, step,
                           total, elapsed / 60, budget.minutes)
            break
    minutes = (time.monotonic() - start) / 60
    logger.info("%s done: %d steps in %.1f min", name, step, minutes)
    return {"steps": step, "minutes": round(minutes, 2), **{k: round(v, 5) for k, v in last.items()}}


def make_optimizer(params, lr: float, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW whose groups carry ``peak_lr`` for :func:`run`."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    for group in opt.param_groups:
        group["peak_lr"] = lr
    return opt


__all__ = ["Budget", "EMA", "lr_factor", "run", "make_optimizer"]
