"""Tiny random models of the real families: the one factory the demo, the tests and the
benchmarks share.

A tiny model keeps a family's architecture (positions, patching, input channels, ofs, learned
table) and shrinks the widths: 2 layers of 2 heads x 16, a 4-block VAE of widths 8-16 with the
real 8x/4x compression, and a 2-layer T5 encoder with T5's real vocabulary (32128) read through
the shipped tokenizer, so prompts go through the real tokenization. Weights are random (PyTorch's
default initialisation, seeded): the video is noise, the code path is the real one.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from .families import FAMILIES, Family, TransformerConfig, VAEConfig, get_family

logger = logging.getLogger(__name__)

TEXT_DIM = 32  # d_model of the tiny T5 and text_dim of the tiny transformers
T5_VOCAB = 32128  # T5's embedding rows (32100 pieces + 28 unused)
TINY_VAE = dict(block_out_channels=(8, 8, 16, 16), latent_channels=16, layers_per_block=1,
                norm_num_groups=4)


def tiny_transformer_config(name: str, text_dim: int = TEXT_DIM, layers: int = 2,
                            small_grid: bool = True) -> TransformerConfig:
    """The family's transformer with 2 heads x 16 and ``layers`` layers.

    ``small_grid`` shrinks the trained grid (positional tables) to 9 frames of 64x96 px (1.0)
    or 17 frames of 96x96 (1.5), so 5B-I2V's fixed size and Fun-2B's frame limit are tiny too.
    """
    base = FAMILIES[name].transformer
    cfg = dataclasses.replace(base, num_layers=layers, num_heads=2, head_dim=16, text_dim=text_dim,
                              time_embed_dim=16, ofs_embed_dim=16 if base.ofs_embed_dim else None)
    if not small_grid:
        return cfg
    is15 = base.patch_size_t is not None
    return dataclasses.replace(cfg, sample_height=12 if is15 else 8, sample_width=12,
                               sample_frames=17 if is15 else 9)


def tiny_family(name: str, **kwargs: object) -> Family:
    """The family with its transformer replaced by :func:`tiny_transformer_config`."""
    cfg = tiny_transformer_config(name, **kwargs)  # type: ignore[arg-type]
    return dataclasses.replace(get_family(name), transformer=cfg)


def tiny_vae_config(family: Family) -> VAEConfig:
    return VAEConfig(**TINY_VAE, scaling_factor=family.vae_scaling_factor,  # type: ignore[arg-type]
                     invert_scale_latents=family.invert_scale_latents)


def tiny_t5_config(d_model: int = TEXT_DIM):
    from transformers import T5Config

    return T5Config(vocab_size=T5_VOCAB, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                    num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                    feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)


def init_random(model: nn.Module, seed: int) -> nn.Module:
    """PyTorch's default initialisation of every layer (the core's layers skip it), seeded,
    without touching the global RNG; a learned position table gets N(0, 1)."""
    kinds = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.GroupNorm)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            kind = next((k for k in kinds if isinstance(m, k)), None)
            if kind is not None:
                kind.reset_parameters(m)  # type: ignore[attr-defined]
        for name, buf in model.named_buffers():
            if name.endswith("pos_embedding"):
                buf.normal_()
    return model


def random_models(name: str = "5b", seed: int = 0, small_grid: bool = True,
                  dtype: torch.dtype = torch.float32):
    """:class:`~cogvideox_core.generation.pipeline.Models` of a tiny random ``name`` family, in memory."""
    from transformers import T5EncoderModel

    from .generation.pipeline import Models
    from .loading.text import TextEncoder, load_tokenizer
    from .models.transformer import CogVideoXTransformer
    from .vae.model import CogVideoXVAE

    family = tiny_family(name, small_grid=small_grid)
    transformer = init_random(CogVideoXTransformer(family.transformer, dtype=dtype), seed).eval()
    vae = init_random(CogVideoXVAE(tiny_vae_config(family), dtype=dtype), seed + 1).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        t5 = T5EncoderModel(tiny_t5_config()).eval()
    return Models(transformer, family, vae, TextEncoder(t5, load_tokenizer()))


def demo_inputs(family: Family, frames: int, height: int, width: int):
    """Synthetic conditioning for families that need it: a colour gradient as the start image
    (I2V, InP) or a moving gradient as the control video."""
    from .generation.conditioning import ConditioningInputs

    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(0, 1, width)[None, :].expand(height, width)
    image = torch.stack([ys, xs, 1 - ys], dim=-1)[None]  # [1, H, W, 3]
    if family.conditioning in ("i2v", "inp"):
        return ConditioningInputs(image=image)
    if family.conditioning == "control":
        shift = torch.linspace(0, 1, frames)[:, None, None, None]
        return ConditioningInputs(control=(image + shift) % 1.0)
    return ConditioningInputs()


__all__ = ["tiny_transformer_config", "tiny_family", "tiny_vae_config", "tiny_t5_config",
           "init_random", "random_models", "demo_inputs", "TEXT_DIM"]
