"""Loader nodes: the transformer, the VAE, the T5 text encoder and LoRAs.

Weights are read by the core (``cogvideox_core.loading.weights`` / ``.text`` / ``.lora``) onto the
offload device with the host's layer classes, then wrapped for the host's memory manager; the
family is detected from the weights, never from a file name.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..cogvideox_core.families import FAMILY_NAMES
from ..cogvideox_core.loading.gguf_file import gguf_layers
from ..cogvideox_core.loading.lora import load_lora
from ..cogvideox_core.loading.lora_apply import STRENGTH_RANGE, weight_shapes
from ..cogvideox_core.loading.text import load_text_encoder
from ..cogvideox_core.quant import QuantizedLinear
from ..cogvideox_core.loading.weights import (COMPUTE_DTYPES, FP8_DTYPES, INT8_DTYPES, load_scheduler_config,
                                              load_transformer, load_vae)
from . import host
from .common import MODEL, T5, VAE, ModelHandle, T5Handle, VAEHandle, check_finite, choice, float_input, tip

# Storage dtype choices; "auto" is bf16 where the device supports it, else fp32. fp8 stores
# the block matmul weights in fp8, int8 in int8 with per-channel scales (cogvideox_core.loading.quantized),
# both computed in the auto dtype (see cogvideox_core.loading.weights).
MODEL_DTYPES = ("auto", *COMPUTE_DTYPES, *FP8_DTYPES, *INT8_DTYPES)
VAE_DTYPES = ("auto", *COMPUTE_DTYPES)
T5_DTYPES = ("auto", *COMPUTE_DTYPES, "fp8_e4m3fn")
ATTENTION = ("auto", "comfy", "sdpa")
SHIPPED_TIP = (" Last in the list: the tiny demo models shipped with the pack (named '... (shipped demo)', "
               "trained on a world of one coloured shape moving on white; nothing to download).")


def resolve_dtype(name: str, value: str, allowed: tuple[str, ...], role: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(compute dtype, fp8 storage dtype or None) for a dtype input."""
    choice(name, value, allowed)
    if value in COMPUTE_DTYPES:
        return COMPUTE_DTYPES[value], None
    device = host.devices(role)[0]
    auto = torch.bfloat16 if host.supports_bf16(device) else torch.float32
    return auto, FP8_DTYPES.get(value) or INT8_DTYPES.get(value)


class CogVideoXModelLoader:
    DESCRIPTION = ("Loads a CogVideoX transformer (2B, 5B, 5B-I2V, 1.5, Fun InP/Control) from a "
                   "diffusers folder or a single .safetensors file; the family is detected from the "
                   "weights.")
    CATEGORY = "CogVideoX/loaders"
    RETURN_TYPES = (MODEL, "FLOAT")
    RETURN_NAMES = ("model", "frame_rate")
    OUTPUT_TOOLTIPS = ("The transformer, for the sampler (optionally through LoRAs).",
                       "The family's frame rate (8, or 16 for the 1.5 family): for ComfyUI's Create Video.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": tip(host.list_models("transformer"), "A diffusers folder (from models/CogVideo, "
                         "CogVideoX_Fun, Fun_Models) or a single transformer file (models/diffusion_models)."
                         + SHIPPED_TIP),
            "weight_dtype": tip(list(MODEL_DTYPES), "Weight storage: auto = bf16 where supported, else "
                                "fp32; fp8 stores the block weights in fp8 (half the memory), computed in auto; "
                                "int8 stores them as 8-bit integers with one scale per output channel (about "
                                "half of bf16's memory), dequantized at each layer. "
                                "5B/1.5 weights are bf16-trained: fp16 gives black video."),
            "attention": tip(list(ATTENTION), "auto/comfy: ComfyUI's attention function; sdpa: torch's "
                             "scaled_dot_product_attention."),
        }, "optional": {
            "family": tip(["auto", *FAMILY_NAMES], "auto detects the family from the weights; set it only "
                          "for weights whose shapes cannot tell (checked against the shapes).",
                          advanced=True),
        }}

    def load(self, model: str, weight_dtype: str = "auto", attention: str = "auto",
             family: str = "auto") -> tuple[ModelHandle, float]:
        path = host.model_path("transformer", model, "model")
        dtype, storage = resolve_dtype("weight_dtype", weight_dtype, MODEL_DTYPES, "diffusion")
        choice("attention", attention, ATTENTION)
        choice("family", family, ("auto", *FAMILY_NAMES))
        module, fam = load_transformer(
            path, dtype=dtype, device=host.devices("diffusion")[1],
            family=None if family == "auto" else family,
            ops=host.layer_ops(storage not in (None, torch.int8), storage, dtype),  # int8: own layers
            attention=host.attention(attention), weight_dtype=storage)
        patcher = host.wrap(module, "diffusion")
        return ModelHandle(patcher, fam, dtype, model, scheduler=load_scheduler_config(path)), float(fam.fps)


class CogVideoXVAELoader:
    DESCRIPTION = ("Loads the CogVideoX causal 3D VAE from models/vae (single file or diffusers vae/ "
                   "folder) or from a diffusers model folder.")
    CATEGORY = "CogVideoX/loaders"
    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "vae": tip(host.list_models("vae"), "A CogVideoX VAE file or folder, or a diffusers model "
                       "folder (its vae/ is used)." + SHIPPED_TIP),
            "dtype": tip(list(VAE_DTYPES), "auto = bf16 where supported, else fp32."),
        }}

    def load(self, vae: str, dtype: str = "auto") -> tuple[VAEHandle]:
        path = host.model_path("vae", vae, "vae")
        compute, _ = resolve_dtype("dtype", dtype, VAE_DTYPES, "vae")
        module = load_vae(path, dtype=compute, device=host.devices("vae")[1], ops=host.layer_ops(False))
        return (VAEHandle(host.wrap(module, "vae"), compute, vae),)


class CogVideoXT5Loader:
    DESCRIPTION = ("Loads a T5-XXL text encoder (models/text_encoders single file such as t5xxl_fp16, "
                   "a text_encoder/ folder, or a diffusers model folder) with its tokenizer (the "
                   "shipped T5 tokenizer when none is beside the weights).")
    CATEGORY = "CogVideoX/loaders"
    RETURN_TYPES = (T5,)
    RETURN_NAMES = ("t5",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "t5": tip(host.list_models("text_encoder"), "T5-XXL encoder weights (file or folder), or a "
                      "diffusers model folder (its text_encoder/ and tokenizer/ are used)." + SHIPPED_TIP),
            "dtype": tip(list(T5_DTYPES), "auto = bf16 where supported, else fp32; fp8_e4m3fn stores the "
                         "projection weights in fp8."),
        }}

    def load(self, t5: str, dtype: str = "auto") -> tuple[T5Handle]:
        path = host.model_path("text_encoder", t5, "t5")
        compute, storage = resolve_dtype("dtype", dtype, T5_DTYPES, "text")
        enc = load_text_encoder(path, dtype=compute, device=host.devices("text")[1], weight_dtype=storage,
                                ops=host.layer_ops(storage is not None))
        return (T5Handle(host.wrap(enc.model, "text"), enc.tokenizer, t5),)


class CogVideoXLoraLoader:
    DESCRIPTION = ("Adds a LoRA to a CogVideoX model (diffusers/PEFT keys, or the kohya-style keys of the "
                   "CogVideoX-Fun reward LoRAs). Chain several; the model input is left unchanged.")
    CATEGORY = "CogVideoX/loaders"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": tip(MODEL, "The model to add the LoRA to."),
            "lora": tip(host.list_models("lora"), "A LoRA .safetensors file from models/loras. Last in the "
                        "list: the tiny demo LoRA shipped with the pack ('... (shipped demo)'), for the "
                        "tiny text-to-video model: every shape comes out blue, whatever colour the "
                        "prompt asks for."),
            "strength": float_input("How strongly the LoRA changes the weights (0 = off, negative "
                                    "inverts it).", 1.0, *STRENGTH_RANGE),
        }}

    def load(self, model: ModelHandle, lora: str, strength: float = 1.0) -> tuple[ModelHandle]:
        check_finite(self, strength=strength)
        if strength == 0.0:
            return (model,)
        path = host.model_path("lora", lora, "lora")
        weights = load_lora(path, weight_shapes(model.model))
        at_compute = {f"{n}.weight" for n in gguf_layers(model.model)} & set(weights)
        merged = {k: w for k, w in weights.items() if k not in at_compute}
        _check_quantized_patching(model, lora, merged)
        patcher = model.patcher.clone()
        patcher.add_patches({k: host.lora_patch(w) for k, w in merged.items()}, strength)
        for key in sorted(at_compute):  # GGUF blocks stay as they are: the update is added at compute
            host.add_layer_lora(patcher, key[: -len(".weight")], strength, weights[key])
        return (dataclasses.replace(model, patcher=patcher, loras=(*model.loras, f"{lora}:{strength:g}")),)


def _check_quantized_patching(model: ModelHandle, lora: str, keys: Any) -> None:
    """A LoRA on int8 (or other quantized) layers needs a host that patches through their hooks."""
    quantized = [k for k in keys if isinstance(model.model.get_submodule(k.rpartition(".")[0]), QuantizedLinear)]
    if quantized and not host.patches_quantized_weights():
        raise ValueError(f"lora={lora!r}: it changes {len(quantized)} quantized (int8) layers, e.g. "
                         f"{quantized[0]!r}, and this ComfyUI would add it to the stored integer codes; "
                         "update ComfyUI (late 2024 or newer) or load the model with weight_dtype auto, "
                         "bf16 or fp8")


NODES: dict[str, Any] = {
    "CogVideoXModelLoader": (CogVideoXModelLoader, "CogVideoX Model Loader"),
    "CogVideoXVAELoader": (CogVideoXVAELoader, "CogVideoX VAE Loader"),
    "CogVideoXT5Loader": (CogVideoXT5Loader, "CogVideoX T5 Text Encoder Loader"),
    "CogVideoXLoraLoader": (CogVideoXLoraLoader, "CogVideoX LoRA"),
}
