"""Stages 3 and 4: the CogVideoX transformers on the pool's latents, with the real objective.

Each step draws clips from the :class:`~.latents.Pool`, a fresh posterior sample of each
(scaled by the family's VAE scaling factor, frames first [B, F_lat, 16, h, w], as the sampler
sees them), a timestep uniform in 0..999 and noise, and noises them with the family's
``alphas_cumprod`` (:mod:`cogvideox_core.sampling.schedules`: scaled linear betas, the family's
SNR shift, zero terminal SNR). The target is the v-prediction ``sqrt(a) eps - sqrt(1 - a) x0``
(the samplers read x0 as ``sqrt(a) x_t - sqrt(1 - a) v``); loss: MSE. The caption is replaced by
"" for :data:`UNCOND_SHARE` of the clips, so classifier-free guidance works. The Fun InP model
gets its 17 extra channels (mask + masked-video latents, scaled): none known (zeros, as the
pipeline gives an InP model without images), the start frame, or start and end frames, each a
third of the time. The saved weights are the EMA.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from cogvideox_core.families import Family
from cogvideox_core.models.transformer import CogVideoXTransformer, fit_text
from cogvideox_core.sampling.schedules import SchedulerConfig, add_noise, alphas_cumprod
from cogvideox_core.tiny import init_random

from .latents import KNOWN_SETS, Pool
from .loop import EMA, Budget, make_optimizer, run

logger = logging.getLogger(__name__)

UNCOND_SHARE = 0.1
EMA_DECAY = 0.998


class Batches:
    """Training batches from a pool, all randomness from one seeded generator."""

    def __init__(self, pool: Pool, family: Family, batch: int, seed: int,
                 known_weights: tuple[float, ...] | None = None) -> None:
        self.pool, self.family, self.batch = pool, family, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.alphas = alphas_cumprod(SchedulerConfig(snr_shift_scale=family.snr_shift_scale)).float()
        self.scale = family.vae_scaling_factor
        self.inp = family.conditioning == "inp"
        if known_weights is not None and len(known_weights) != 1 + len(KNOWN_SETS):
            raise ValueError(f"known_weights={known_weights}: need {1 + len(KNOWN_SETS)} weights "
                             f"(none, {', '.join(KNOWN_SETS)})")
        self.known_weights = None if known_weights is None else torch.tensor(known_weights, dtype=torch.float64)

    def draw(self) -> tuple[torch.Tensor, ...]:
        """(model input [B, F, C_in, h, w], timesteps [B], text [B, L, D] (the 226 states fitted to
        the family: ``fit_text``, as the pipeline fits them), v target [B, F, 16, h, w])."""
        g, p, b = self.gen, self.pool, self.batch
        idx = torch.randint(len(p.mean), (b,), generator=g)
        x0 = self.scale * (p.mean[idx] + p.std[idx] * torch.randn(p.mean[idx].shape, generator=g))
        t = torch.randint(0, len(self.alphas), (b,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        xt = add_noise(x0, eps, t, self.alphas)
        a = self.alphas[t].view(-1, 1, 1, 1, 1)
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        caps = torch.where(torch.rand(b, generator=g) < UNCOND_SHARE, len(p.embeds) - 1, p.caption[idx])
        if self.inp:
            xt = torch.cat([xt, self._extra(idx)], dim=2)
        return xt, t, fit_text(self.family.transformer, p.embeds[caps]), v

    def _extra(self, idx: torch.Tensor) -> torch.Tensor:
        """Scaled InP channels [B, F, 17, h, w]: per clip none / start / start+end known (a
        third each, or in the proportions of ``known_weights``)."""
        if self.known_weights is None:  # the shipped models' draw: keep its random stream
            mode = torch.randint(0, 1 + len(KNOWN_SETS), (len(idx),), generator=self.gen)
        else:
            mode = torch.multinomial(self.known_weights, len(idx), replacement=True, generator=self.gen)
        out = torch.zeros(len(idx), *self.pool.extras["start"].shape[1:])
        for k, name in enumerate(KNOWN_SETS, start=1):
            pick = mode == k
            out[pick] = self.pool.extras[name][idx[pick]]
        return self.scale * out


def v_step(model: nn.Module, batches: Batches, opt: torch.optim.Optimizer, trained: nn.Module) -> float:
    """One optimiser step of the v-prediction MSE on a fresh batch, gradients of ``trained``'s
    parameters clipped to norm 1; returns the loss."""
    x, t, text, v = batches.draw()
    loss = (model(x, t, text) - v).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def inp_from_t2v(t2v: nn.Module, family: Family) -> CogVideoXTransformer:
    """A Fun InP transformer of ``family`` that starts as the text-to-video model ``t2v`` (the
    way the Fun InP models were made from CogVideoX): every weight copied, the patch embedding's
    extra input channels (mask + masked-video latents) zero, so before training it ignores them
    and predicts what ``t2v`` predicts for the same noisy latents."""
    model = CogVideoXTransformer(family.transformer)
    state = {k: v.detach().float().clone() for k, v in t2v.state_dict().items()}
    key = "patch_embed.proj.weight"
    weight = torch.zeros_like(model.state_dict()[key])
    if weight.shape[1] < state[key].shape[1] or weight.shape[0] != state[key].shape[0]:
        raise ValueError(f"{key}: the InP model's {tuple(weight.shape)} cannot hold the text-to-video "
                         f"model's {tuple(state[key].shape)}")
    weight[:, : state[key].shape[1]] = state[key]
    state[key] = weight
    model.load_state_dict(state)
    return model


def train_transformer(family: Family, pool: Pool, budget: Budget, seed: int, batch: int = 16,
                      lr: float = 1e-3, save: Callable[[nn.Module], object] | None = None,
                      init: nn.Module | None = None,
                      known_weights: tuple[float, ...] | None = None) -> tuple[CogVideoXTransformer, dict]:
    """The EMA weights of a :class:`CogVideoXTransformer` of ``family`` trained on ``pool``
    (from ``init``'s weights when given: a continued run); ``save(ema_model)`` is called every
    few minutes (so a run cut short leaves its weights). ``known_weights``: the Fun InP model's
    shares of none / start / start+end known (default a third each)."""
    torch.manual_seed(seed)
    model = init_random(CogVideoXTransformer(family.transformer), seed)
    if init is not None:
        model.load_state_dict({k: v.float() for k, v in init.state_dict().items()})
    model.train()
    ema = EMA(model, EMA_DECAY)
    opt = make_optimizer(model.parameters(), lr)
    batches = Batches(pool, family, batch, seed, known_weights)
    name = "t2v" if family.conditioning == "t2v" else "inp"

    def step(i: int) -> dict[str, float]:
        loss = v_step(model, batches, opt, model)
        ema.update(model, i)
        return {"loss": loss}

    def checkpoint(i: int) -> None:
        if save is not None:
            save(ema.model)
            logger.info("%s: EMA weights of step %d saved", name, i)

    summary = run(name, step, opt, budget, log_every=100, checkpoint=checkpoint)
    return ema.model, summary


__all__ = ["Batches", "v_step", "inp_from_t2v", "train_transformer", "UNCOND_SHARE"]
