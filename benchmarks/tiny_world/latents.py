"""Stage 2: a pool of world clips encoded once by the trained VAE, and the prompt embeddings.

For every clip: the posterior mean and std [F_lat, 16, h, w] (frames first, unscaled; the
transformer stages draw a fresh posterior sample each step), its caption index, and the Fun InP
conditioning channels for a known start frame and for known start + end frames, built with the
pack's own functions exactly as :func:`~cogvideox_core.generation.conditioning.build_conditioning`
builds them at inference (:func:`check_inp_extra` compares the two on one clip). Prompt
embeddings: the frozen T5 over every caption of the world and "" (the negative prompt).
"""
from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvideox_core.families import Family
from cogvideox_core.generation.conditioning import (ConditioningInputs, build_conditioning, inp_mask_channel,
                                                    known_frames_mask, masked_video, plan_conditioning)
from cogvideox_core.loading.text import TextEncoder
from cogvideox_core.vae.model import CogVideoXVAE
from cogvideox_core.video_io import frames_to_video

from .world import FRAMES, HEIGHT, WIDTH, Scene, all_captions, render, sample_scenes

logger = logging.getLogger(__name__)

KNOWN_SETS = {"start": [0], "start_end": [0, FRAMES - 1]}


@dataclass
class Pool:
    """Encoded clips: ``mean``/``std`` [N, F_lat, 16, h, w] unscaled; ``caption`` [N] indices
    into ``embeds`` [K + 1, 226, D] (the last row is ""); ``extras`` per known set
    [N, F_lat, 17, h, w] unscaled (mask channel and masked-video latents divided by the scale)."""

    mean: torch.Tensor
    std: torch.Tensor
    caption: torch.Tensor
    embeds: torch.Tensor
    captions: list[str]
    extras: dict[str, torch.Tensor]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.__dict__, path)

    @classmethod
    def load(cls, path: Path) -> "Pool":
        return cls(**torch.load(path, weights_only=True))


def encode_captions(text: TextEncoder, captions: list[str]) -> torch.Tensor:
    """[K + 1, 226, D]: each caption, then "" (each prompt encoded on its own, as the pipeline)."""
    return torch.cat([text.encode(c) for c in [*captions, ""]]).float()


def _inp_extra(vae: CogVideoXVAE, video: torch.Tensor, known: list[int]) -> torch.Tensor:
    """Unscaled InP channels [B, F_lat, 17, h, w] of videos [B, 3, F, H, W] with ``known`` frames."""
    mask = known_frames_mask(FRAMES, known, HEIGHT, WIDTH)  # [1, 1, F, H, W]
    z = vae.encode(masked_video(video, mask)).mode().permute(0, 2, 1, 3, 4)  # [B, F_lat, 16, h, w]
    m = inp_mask_channel(mask, z.shape[1], z.shape[3], z.shape[4], 1.0)  # [1, F_lat, 1, h, w]
    return torch.cat([m.expand(z.shape[0], -1, -1, -1, -1), z], dim=2)


@torch.no_grad()
def build_pool(vae: CogVideoXVAE, text: TextEncoder, n: int, seed: int, batch: int = 16,
               colour: str | None = None, inp_extras: bool = True, wrap: float = 0.0) -> Pool:
    """Render and encode ``n`` clips drawn from ``seed``; with ``colour``, every shape painted
    that colour while each clip keeps the caption of its drawn scene (the LoRA's clips);
    ``inp_extras=False``: no InP channels (``extras`` empty); ``wrap``: the share of clips
    anywhere on the torus (:func:`~.world.sample_scenes`)."""
    captions = all_captions()
    index = {c: i for i, c in enumerate(captions)}
    scenes = sample_scenes(n, seed, wrap=wrap)
    means, stds = [], []
    extras: dict[str, list[torch.Tensor]] = {k: [] for k in KNOWN_SETS} if inp_extras else {}
    for start in range(0, n, batch):
        shown = [s if colour is None else recoloured(s, colour) for s in scenes[start:start + batch]]
        video = torch.cat([frames_to_video(render(s)) for s in shown])
        post = vae.encode(video)
        means.append(post.mean.permute(0, 2, 1, 3, 4))
        stds.append(post.std.permute(0, 2, 1, 3, 4))
        for name in extras:
            extras[name].append(_inp_extra(vae, video, KNOWN_SETS[name]))
        if (start // batch) % 32 == 0:
            logger.info("pool: encoded %d of %d clips", start + len(video), n)
    return Pool(torch.cat(means), torch.cat(stds), torch.tensor([index[s.caption] for s in scenes]),
                encode_captions(text, captions), captions, {k: torch.cat(v) for k, v in extras.items()})


def recoloured(scene: Scene, colour: str) -> Scene:
    """``scene`` with its shape painted ``colour``; ``ValueError`` for a colour not in the world."""
    return dataclasses.replace(scene, attributes=dataclasses.replace(scene.attributes, colour=colour))


@torch.no_grad()
def check_inp_extra(vae: CogVideoXVAE, family: Family, seed: int) -> float:
    """Largest difference between this module's InP channels (scaled) and the pipeline's
    ``build_conditioning`` for one clip with known start and end frames; ``RuntimeError`` if
    they differ beyond float noise."""
    clip = render(sample_scenes(1, seed)[0])
    inputs = ConditioningInputs(image=clip[:1], end_image=clip[-1:])
    plan = plan_conditioning(family, inputs, FRAMES, HEIGHT, WIDTH)
    ref = build_conditioning(plan, inputs, family, vae, torch.Generator().manual_seed(0)).extra
    ours = family.vae_scaling_factor * _inp_extra(vae, frames_to_video(clip), KNOWN_SETS["start_end"])
    diff = float((ref - ours).abs().max())  # type: ignore[operator]
    if diff > 1e-4:
        raise RuntimeError(f"InP channels differ from build_conditioning's by {diff}")
    return diff


__all__ = ["Pool", "KNOWN_SETS", "build_pool", "recoloured", "encode_captions", "check_inp_extra"]
