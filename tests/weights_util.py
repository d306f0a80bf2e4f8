"""Test helpers for the weight loaders: tiny random diffusers models, the other key layouts
written out independently of ``cogvideox_core.loading.keymaps``, and header-only safetensors files.

The layout writers are the inverse of the layouts' own definitions: ComfyUI's module names
(``comfy/ldm/cogvideo/model.py``) and diffusers' ``scripts/convert_cogvideox_to_diffusers.py``
rules for the SAT layout, so a round trip through them checks the loader's mapping.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import re
from pathlib import Path
from typing import Mapping

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from safetensors.torch import save_file

from cogvideox_core.families import FAMILIES, VAEConfig
from scaffold import TEXT_DIM, randomize_norms, tiny_config  # noqa: F401 (TEXT_DIM, tiny_config: re-exported)
from scaffold import random_transformer as random_diffusers_transformer

ROPE_1_0 = ("5b", "5b-i2v", "fun-5b-inp", "fun-5b-control")  # 5B-class: a tiny width cannot show it

# (layout, prefix) pairs of single transformer files in circulation.
LAYOUTS = [("diffusers", ""), ("diffusers", "transformer."), ("diffusers", "model.diffusion_model."),
           ("comfyui", "model.diffusion_model."), ("comfyui", "diffusion_model."), ("comfyui", ""),
           ("sat", "model.diffusion_model.")]


@functools.lru_cache(maxsize=None)
def _random_transformer(name: str, small_sample: bool, seed: int) -> CogVideoXTransformer3DModel:
    return random_diffusers_transformer(tiny_config(name, small_sample), seed)


def random_transformer(name: str, small_sample: bool = True, seed: int = 0) -> CogVideoXTransformer3DModel:
    """A seeded random tiny diffusers transformer of the family (weights ~N(0, 0.2)): a fresh
    copy of a cached model each call, so a test that changes it cannot change another's."""
    return copy.deepcopy(_random_transformer(name, small_sample, seed))


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The persistent state dict, contiguous copies (ready for ``save_file``)."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# ---- layouts --------------------------------------------------------------------------------

_COMFY_BLOCK = {"norm1.linear": "norm1.linear", "norm1.norm": "norm1.norm", "attn1.to_q": "q",
                "attn1.to_k": "k", "attn1.to_v": "v", "attn1.norm_q": "norm_q", "attn1.norm_k": "norm_k",
                "attn1.to_out.0": "attn_out", "norm2.linear": "norm2.linear", "norm2.norm": "norm2.norm",
                "ff.net.0.proj": "ff_proj", "ff.net.2": "ff_out"}
_COMFY_TOP = {"time_embedding.linear_1": "time_embedding_linear_1",
              "time_embedding.linear_2": "time_embedding_linear_2",
              "ofs_embedding.linear_1": "ofs_embedding_linear_1",
              "ofs_embedding.linear_2": "ofs_embedding_linear_2"}


def comfyui_key(key: str) -> str:
    """diffusers key -> ComfyUI ``comfy/ldm/cogvideo/model.py`` module path."""
    m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias|scale_weight)", key)
    if m:
        return f"blocks.{m[1]}.{_COMFY_BLOCK[m[2]]}.{m[3]}"
    module, _, param = key.rpartition(".")
    return f"{_COMFY_TOP.get(module, module)}.{param}"


_SAT_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "ofs_embedding.linear_1": "ofs_embed.0", "ofs_embedding.linear_2": "ofs_embed.2",
            "patch_embed.proj": "mixins.patch_embed.proj", "patch_embed.text_proj": "mixins.patch_embed.text_proj",
            "norm_final": "transformer.final_layernorm", "norm_out.norm": "mixins.final_layer.norm_final",
            "proj_out": "mixins.final_layer.linear", "norm_out.linear": "mixins.final_layer.adaLN_modulation.1"}
_SAT_BLOCK = {"attn1.to_out.0": "attention.dense", "ff.net.0.proj": "mlp.dense_h_to_4h",
              "ff.net.2": "mlp.dense_4h_to_h", "norm1.norm": "input_layernorm",
              "norm2.norm": "post_attention_layernorm"}


def sat_state(sd: Mapping[str, torch.Tensor], rope: bool) -> dict[str, torch.Tensor]:
    """diffusers state -> the SAT layout diffusers' converter reads (without its prefix):
    fused q/k/v, per-block adaLN of 12 chunks, plus the RoPE tables it drops."""
    out: dict[str, torch.Tensor] = {}
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")})
    for i in blocks:
        b, layer = f"transformer_blocks.{i}.", f"transformer.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd[f"{b}attn1.to_{n}.{kind}"] for n in "qkv"]
            out[f"{layer}attention.query_key_value.{kind}"] = torch.cat(qkv)
            for ours, theirs in _SAT_BLOCK.items():
                out[f"{layer}{theirs}.{kind}"] = sd[f"{b}{ours}.{kind}"]
            n1, n2 = sd[f"{b}norm1.linear.{kind}"].chunk(6), sd[f"{b}norm2.linear.{kind}"].chunk(6)
            out[f"mixins.adaln_layer.adaLN_modulations.{i}.1.{kind}"] = torch.cat(n1[:3] + n2[:3] + n1[3:] + n2[3:])
            out[f"mixins.adaln_layer.query_layernorm_list.{i}.{kind}"] = sd[f"{b}attn1.norm_q.{kind}"]
            out[f"mixins.adaln_layer.key_layernorm_list.{i}.{kind}"] = sd[f"{b}attn1.norm_k.{kind}"]
    for key, value in sd.items():
        if key.startswith("transformer_blocks."):
            continue
        module, _, param = key.rpartition(".")
        out["mixins.pos_embed.pos_embedding" if key == "patch_embed.pos_embedding"
            else f"{_SAT_TOP[module]}.{param}"] = value
    if rope:
        out["mixins.pos_embed.freqs_sin"], out["mixins.pos_embed.freqs_cos"] = torch.zeros(4, 8), torch.ones(4, 8)
    return out


def layout_state(sd: Mapping[str, torch.Tensor], layout: str, prefix: str, rope: bool) -> dict[str, torch.Tensor]:
    """``sd`` (diffusers keys) written in ``layout`` under ``prefix``."""
    if layout == "diffusers":
        out = dict(sd)
    elif layout == "comfyui":
        out = {comfyui_key(k): v for k, v in sd.items()}
    else:
        out = sat_state(sd, rope)
    return {prefix + k: v.contiguous() for k, v in out.items()}


def sat_vae_state(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers VAE state -> the SAT VAE layout of diffusers' converter (plus a ``loss`` key)."""
    ups = {int(k.split(".")[2]) for k in sd if k.startswith("decoder.up_blocks.")}
    top = max(ups)
    out = {}
    for key, value in sd.items():
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{top - int(m[1])}.", key)
        k = k.replace("encoder.down_blocks.", "encoder.down.").replace(".resnets.", ".block.")
        k = k.replace(".mid_block.block.0.", ".mid.block_1.").replace(".mid_block.block.1.", ".mid.block_2.")
        k = k.replace(".downsamplers.0.", ".downsample.").replace(".upsamplers.0.", ".upsample.")
        out[k.replace(".conv_shortcut.", ".nin_shortcut.")] = value
    out["loss.logvar"] = torch.zeros(())
    return out


# ---- VAE ------------------------------------------------------------------------------------

VAE_TINY = VAEConfig(block_out_channels=(32, 32, 64, 64), latent_channels=4, layers_per_block=1,
                     scaling_factor=0.7)  # channels multiples of 32: inferable from shapes


@functools.lru_cache(maxsize=None)
def _random_vae(config: VAEConfig, seed: int) -> AutoencoderKLCogVideoX:
    torch.manual_seed(seed)
    return randomize_norms(AutoencoderKLCogVideoX(**config.to_diffusers()).eval())


def random_vae(config: VAEConfig = VAE_TINY, seed: int = 0) -> AutoencoderKLCogVideoX:
    """A seeded tiny diffusers VAE, norms randomised: a fresh copy of a cached model each call."""
    return copy.deepcopy(_random_vae(config, seed))


# ---- files ----------------------------------------------------------------------------------

def save(sd: Mapping[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(sd), str(path))
    return path


_ITEM = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}


def write_header_only(path: Path, shapes: Mapping[str, tuple[int, ...]], dtype: str = "BF16") -> Path:
    """A valid safetensors file whose tensor bytes are a sparse hole: real-size headers at no
    disk cost (reading a tensor gives zeros; detection and ``info`` read only the header)."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = math.prod(shape) * _ITEM[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)
    if getattr(path.stat(), "st_blocks", 0) * 512 > len(blob) + 2**20:  # the hole took real disk
        path.unlink()
        pytest.skip(f"{path.parent} does not keep sparse files; real-size headers need them")
    return path


def real_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Every diffusers key and shape of the family's released transformer (built on meta): a
    fresh dict each call (of immutable tuples), the meta model built once."""
    return dict(_real_shapes(name))


@functools.lru_cache(maxsize=None)
def _real_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**FAMILIES[name].transformer.to_diffusers())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def layout_shapes(name: str, layout: str, prefix: str) -> dict[str, tuple[int, ...]]:
    """``real_shapes`` written in a layout (via meta tensors, so no memory)."""
    meta = {k: torch.empty(s, device="meta") for k, s in real_shapes(name).items()}
    rope = FAMILIES[name].transformer.uses_rope
    return {k: tuple(v.shape) for k, v in layout_state(meta, layout, prefix, rope).items()}
