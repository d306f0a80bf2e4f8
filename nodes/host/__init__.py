"""The host adapter: the only code of the pack that imports ComfyUI, behind the small functions
the node files call (``host.x``). ``compute``: models, devices and the core's runtime on
ComfyUI; ``folders``: model, input and output folders; ``previews``: latent previews.

Optional ComfyUI APIs are feature-detected, never version-checked: the pack runs on ComfyUI from
March 2024 to today.
"""
from __future__ import annotations

from . import compute, folders, previews
from .compute import (attention, devices, intermediate_device, layer_ops, load, lora_patch, release_memory,
                      runtime, supports_bf16, to_intermediate, wrap)
from .compute import add_layer_lora, patches_quantized_weights
from .folders import input_directory, input_files, input_path, list_models, model_path, register_folders, save_path

__all__ = ["compute", "folders", "previews", "add_layer_lora", "attention", "devices", "intermediate_device", "layer_ops",
           "load", "lora_patch", "patches_quantized_weights", "release_memory", "runtime", "supports_bf16", "to_intermediate", "wrap",
           "input_directory", "input_files", "input_path", "list_models", "model_path", "register_folders",
           "save_path"]
