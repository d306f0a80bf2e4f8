"""Stage 1: the tiny CogVideoX VAE (:class:`~cogvideox_core.vae.model.CogVideoXVAE`) trained
for reconstruction on fresh world clips.

Loss: L1 + MSE of the decoded posterior sample against the input (pixels in -1..1), each pixel
of the shape weighted :data:`SHAPE_WEIGHT` times a background pixel (the shape covers ~6% of a
frame: unweighted, a short run learns a grey blob and no colour), plus a small KL to N(0, 1), plus a penalty holding the posterior mean's RMS near 1 (the families'
fixed scaling factors, 1.15 for 2B and 0.7 for Fun, then give the transformers latents of about
unit scale), and a penalty holding the latents of a plain white clip at zero: the latents'
energy is then the shape's, not the background's, so at the noise levels where a sampler decides
where the shape goes and what it is, the shape already stands out of the noise (with the
background carrying most of the energy, the shape emerges only in the last, low-noise steps,
as scattered blobs). The decoder sees the posterior sample plus noise of std :data:`DECODER_NOISE`: the
latents a transformer makes are never exact, and a decoder trained only on the encoder's
(almost deterministic) latents turns small errors into scattered blobs. A quarter of the clips are InP masked videos (frames not known set to -1, as
:func:`~cogvideox_core.generation.conditioning.masked_video` makes them), so the encoder has
seen what the Fun InP conditioning feeds it.
"""
from __future__ import annotations

import logging
import random

import torch

from cogvideox_core.generation.conditioning import known_frames_mask, masked_video
from cogvideox_core.tiny import init_random
from cogvideox_core.vae.model import CogVideoXVAE, DiagonalGaussian
from cogvideox_core.video_io import frames_to_video

from .loop import Budget, make_optimizer, run
from .world import FRAMES, HEIGHT, WIDTH, render, sample_scenes

logger = logging.getLogger(__name__)

KL_WEIGHT = 1e-3
DECODER_NOISE = 0.1  # std of Gaussian noise added to the posterior sample the decoder sees (latent RMS ~1)
RMS_WEIGHT = 0.1
BACKGROUND_WEIGHT = 1.0
MASKED_SHARE = 0.25
SHAPE_WEIGHT = 10.0


def clip_batch(step: int, batch: int, seed: int, shape_weight: float = SHAPE_WEIGHT, wrap: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(videos [B, 3, F, H, W] in -1..1, loss weights [B, 1, F, H, W]): fresh world clips for
    ``step`` (a share ``wrap`` of them anywhere on the torus), some InP-masked; weight
    ``shape_weight`` on the shape's pixels of frames kept."""
    rng = random.Random(seed * 1_000_003 + step)
    scenes = sample_scenes(batch, rng.randrange(2**31), wrap=wrap)
    videos, weights = [], []
    for scene in scenes:
        video = frames_to_video(render(scene))  # [1, 3, F, H, W]
        shape = (video.min(dim=1, keepdim=True).values < 0.9).float()  # [1, 1, F, H, W]: not white
        if rng.random() < MASKED_SHARE:
            known = [0] if rng.random() < 0.5 else [0, FRAMES - 1]
            mask = known_frames_mask(FRAMES, known, HEIGHT, WIDTH)
            video, shape = masked_video(video, mask), shape * (1 - mask)
        videos.append(video)
        weights.append(1 + (shape_weight - 1) * shape)
    return torch.cat(videos), torch.cat(weights)


def vae_loss(vae: CogVideoXVAE, x: torch.Tensor, weight: torch.Tensor,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
    # the clips and a plain white one in one batch (a batch of one runs ATen's slow conv backward)
    both = vae.encode(torch.cat([x, torch.ones_like(x[:1])]))
    background = both.mean[-1:].pow(2).mean()  # the white background's latents, held at zero
    post = DiagonalGaussian(both.mean[:-1], both.logvar[:-1])
    z = post.sample(generator)
    z = z + DECODER_NOISE * torch.randn(z.shape, generator=generator)
    y = vae.decode(z)[:, :, : x.shape[2]]
    kl = 0.5 * (post.mean.pow(2) + post.logvar.exp() - 1 - post.logvar).mean()
    rms = (post.mean.pow(2).mean() - 1).pow(2)
    err = y - x
    l1, mse = (weight * err.abs()).mean(), (weight * err.pow(2)).mean()
    return {"loss": l1 + mse + KL_WEIGHT * kl + RMS_WEIGHT * rms + BACKGROUND_WEIGHT * background,
            "l1": l1, "mse": mse, "kl": kl, "z_rms": post.mean.pow(2).mean().sqrt(), "bg": background}


def train_vae(config, budget: Budget, seed: int, batch: int = 2, lr: float = 2e-3,
              init: CogVideoXVAE | None = None, shape_weight: float = SHAPE_WEIGHT, wrap: float = 0.0
              ) -> tuple[CogVideoXVAE, dict]:
    """A trained :class:`CogVideoXVAE` of ``config`` (from ``init``'s weights when given, else
    from a seeded random initialisation) and the run's summary; ``wrap``: the share of clips
    crossing the torus' edges."""
    torch.manual_seed(seed)
    vae = init_random(CogVideoXVAE(config), seed) if init is None else init.float()
    vae.train().requires_grad_(True)
    opt = make_optimizer(vae.parameters(), lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    def step(i: int) -> dict[str, float]:
        parts = vae_loss(vae, *clip_batch(i, batch, seed, shape_weight, wrap), gen)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return {k: float(v.detach()) for k, v in parts.items()}

    summary = run("vae", step, opt, budget, log_every=25)
    return vae.eval().requires_grad_(False), summary


__all__ = ["train_vae", "clip_batch", "vae_loss"]
