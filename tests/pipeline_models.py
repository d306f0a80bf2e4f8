"""Tiny diffusers CogVideoX components with seeded random weights, and ours loaded from them.

Shared by the pipeline tests and ``benchmarks/sampling.py``: a diffusers transformer (2 layers,
2 heads x 16, every parameter N(0, 0.2), the 5B-I2V learned table N(0, 1)), a 4-block
``AutoencoderKLCogVideoX`` (real block types, widths 8-16, GroupNorm affine randomised), a
2-layer ``T5EncoderModel`` with T5's vocabulary (32128) and the real tokenizer. Our transformer
and VAE load the diffusers state dicts with ``strict=True``; the T5 module is shared.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler,
                       CogVideoXTransformer3DModel)
from scaffold import randomize_norms
from transformers import T5EncoderModel

from cogvideox_core.tiny import tiny_family, tiny_t5_config, tiny_vae_config
from cogvideox_core.families import Family
from cogvideox_core.generation.pipeline import Models
from cogvideox_core.sampling import SchedulerConfig
from cogvideox_core.loading.text import TextEncoder, load_tokenizer
from cogvideox_core.models.transformer import CogVideoXTransformer
from cogvideox_core.vae.model import CogVideoXVAE

SCHEDULERS = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}


def scheduler_kwargs(snr: float) -> dict[str, object]:
    """The scheduler_config.json the checkpoints ship (2B: snr 3.0, others 1.0)."""
    return {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True, "set_alpha_to_one": True, "snr_shift_scale": snr,
            "steps_offset": 0, "timestep_spacing": "trailing"}


def ref_transformer(family: Family, seed: int = 0, std: float = 0.2) -> CogVideoXTransformer3DModel:
    torch.manual_seed(seed)
    ref = CogVideoXTransformer3DModel(**family.transformer.to_diffusers()).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        if family.transformer.learned_positions:
            ref.patch_embed.pos_embedding.copy_(torch.randn(ref.patch_embed.pos_embedding.shape, generator=gen))
    return ref


def ref_vae(family: Family, seed: int = 0) -> AutoencoderKLCogVideoX:
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(**tiny_vae_config(family).to_diffusers()).eval()
    return randomize_norms(vae, torch.Generator().manual_seed(seed + 1))


def tiny_t5(seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed + 2)
    return T5EncoderModel(tiny_t5_config()).eval()


def build(name: str, seed: int = 0, layers: int = 2):
    """(diffusers components dict, our Models) with the same weights, for family ``name``."""
    family = tiny_family(name, layers=layers)
    ref_t, ref_v, t5, tok = ref_transformer(family, seed), ref_vae(family, seed), tiny_t5(seed), load_tokenizer()
    ours_t = CogVideoXTransformer(family.transformer).eval()
    ours_t.load_state_dict(ref_t.state_dict(), strict=True)
    ours_v = CogVideoXVAE(tiny_vae_config(family)).eval()
    ours_v.load_state_dict(ref_v.state_dict(), strict=True)
    models = Models(ours_t, family, ours_v, TextEncoder(t5, tok),
                    SchedulerConfig(snr_shift_scale=family.snr_shift_scale))
    ref = {"transformer": ref_t, "vae": ref_v, "text_encoder": t5, "tokenizer": tok}
    return ref, models


def save_tree(name: str, root: Path, seed: int = 0):
    """A tiny random ``name`` model saved as a diffusers tree at ``root`` (``save_pretrained``);
    returns our :class:`Models` of the same weights."""
    ref, models = build(name, seed)
    for part in ("transformer", "vae", "text_encoder", "tokenizer"):
        ref[part].save_pretrained(root / part)
    CogVideoXDDIMScheduler(**scheduler_kwargs(models.family.snr_shift_scale)).save_pretrained(root / "scheduler")
    return models


def ref_pipeline(cls, ref: dict[str, object], sampler: str, family: Family):
    scheduler = SCHEDULERS[sampler](**scheduler_kwargs(family.snr_shift_scale))
    pipe = cls(scheduler=scheduler, **ref)
    pipe.set_progress_bar_config(disable=True)
    return pipe
