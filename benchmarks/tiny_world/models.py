"""The tiny world's models: configs, fresh builds, and their files in the layouts the pack loads.

Shipped under ``cogvideox_core/data/tiny_world/`` (:data:`DATA`)::

    model_index.json, scheduler/            the text-to-video model's diffusers root (2B family)
    transformer/                            text-to-video transformer (config.json + weights)
    vae/                                    the tiny VAE (shared by both transformers)
    text_encoder/                           the frozen tiny T5 (config.json + model.safetensors)
    inp/transformer/, inp/scheduler/        the Fun InP transformer (fun-2b-inp family)

Weights are stored in float16 (the 2B families are fp16-safe; the loader converts to the
compute dtype as it reads). :func:`load_models` loads them through the pack's own loaders.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from cogvideox_core.families import Family, TransformerConfig, VAEConfig, get_family
from cogvideox_core.tiny import tiny_t5_config

from .world import FRAMES, HEIGHT, WIDTH

logger = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parents[2] / "cogvideox_core" / "data" / "tiny_world"
T2V_FAMILY, INP_FAMILY = "2b", "fun-2b-inp"
KINDS = {"t2v": T2V_FAMILY, "inp": INP_FAMILY}
TEXT_DIM = 32  # d_model of the tiny T5 = text_dim of the transformers
T5_SEED = 2
STORE_DTYPE = torch.float16
VAE_BLOCKS = (8, 8, 16, 16)  # cogvideox_core.tiny.TINY_VAE's widths
SCHEDULER_BASE = {"_class_name": "CogVideoXDDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
                  "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                  "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "trailing"}


@dataclasses.dataclass(frozen=True)
class Size:
    """The transformer's width and depth, and the T5 states it reads (``max_text_seq_length``:
    the first ``text_len`` of the 226 the pack encodes; the world's captions take 12-14 tokens)."""

    heads: int = 4
    head_dim: int = 32
    layers: int = 4
    time_embed_dim: int = 64
    text_len: int = 226


def family(kind: str, size: Size = Size()) -> Family:
    """The ``kind`` ("t2v" or "inp") family with the tiny transformer trained here: ``size``,
    T5 dim :data:`TEXT_DIM`, trained grid = the world's clip (17 frames of 64x64)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; known: {', '.join(KINDS)}")
    base = get_family(KINDS[kind])
    cfg: TransformerConfig = dataclasses.replace(
        base.transformer, num_layers=size.layers, num_heads=size.heads, head_dim=size.head_dim,
        text_dim=TEXT_DIM, time_embed_dim=size.time_embed_dim, max_text_len=size.text_len, sample_frames=FRAMES,
        sample_height=HEIGHT // 8, sample_width=WIDTH // 8)
    return dataclasses.replace(base, transformer=cfg, default_frames=FRAMES, default_height=HEIGHT,
                               default_width=WIDTH)


def vae_config(kind: str = "t2v") -> VAEConfig:
    """The tiny VAE: the real block structure, widths :data:`VAE_BLOCKS`, 16 latent channels."""
    return VAEConfig(block_out_channels=VAE_BLOCKS, latent_channels=16, layers_per_block=1,
                     norm_num_groups=4, scaling_factor=family(kind).vae_scaling_factor)


def build_t5() -> nn.Module:
    """The frozen tiny T5 encoder: transformers' random initialisation, seeded."""
    from transformers import T5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(T5_SEED)
        return T5EncoderModel(tiny_t5_config(TEXT_DIM)).eval().requires_grad_(False)


def _fp16_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(STORE_DTYPE).contiguous() for k, v in model.state_dict().items()}


def save_transformer(model: nn.Module, fam: Family, root: Path) -> Path:
    """``root/transformer/`` (diffusers config.json + weights) and ``root/scheduler/``."""
    folder = root / "transformer"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": "CogVideoXTransformer3DModel", **fam.transformer.to_diffusers()}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(_fp16_state(model), str(folder / "diffusion_pytorch_model.safetensors"))
    sched = {**SCHEDULER_BASE, "snr_shift_scale": fam.snr_shift_scale}
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline"}))
    return folder


def save_vae(model: nn.Module, root: Path) -> Path:
    """``root/vae/``: diffusers config.json + weights."""
    folder = root / "vae"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": "AutoencoderKLCogVideoX", **model.config.to_diffusers()}  # type: ignore[union-attr]
    cfg["block_out_channels"] = list(cfg["block_out_channels"])  # type: ignore[arg-type]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(_fp16_state(model), str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def save_t5(model: nn.Module, root: Path) -> Path:
    """``root/text_encoder/``: transformers' config.json + model.safetensors in float16."""
    folder = root / "text_encoder"
    model.to(STORE_DTYPE).save_pretrained(folder, safe_serialization=True)
    model.to(torch.float32)
    return folder


def load_models(kind: str = "t2v", root: Path = DATA, dtype: torch.dtype = torch.float32,
                device: str = "cpu"):
    """:class:`~cogvideox_core.generation.pipeline.Models` of the trained ``kind`` ("t2v" or
    "inp") through the pack's loaders (``load_transformer``, ``load_vae``,
    ``load_text_encoder``, ``load_scheduler_config``)."""
    from cogvideox_core.generation.pipeline import Models
    from cogvideox_core.loading.text import load_text_encoder
    from cogvideox_core.loading.weights import load_scheduler_config, load_transformer, load_vae

    model_root = root if kind == "t2v" else root / kind
    transformer, fam = load_transformer(model_root, dtype, device)
    vae = load_vae(root / "vae", dtype, device)
    text = load_text_encoder(root / "text_encoder", dtype, device)
    return Models(transformer.eval(), fam, vae.eval(), text, load_scheduler_config(model_root))


def file_sizes(root: Path = DATA) -> dict[str, int]:
    """Bytes of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


__all__ = ["DATA", "KINDS", "Size", "family", "vae_config", "build_t5", "save_transformer",
           "save_vae", "save_t5", "load_models", "file_sizes"]
