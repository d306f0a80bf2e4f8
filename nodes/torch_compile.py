"""The torch.compile node: the model with its transformer blocks compiled on first use.

One core call (``cogvideox_core.models.compile.block_calls``) per block; under ComfyUI the
compiled calls are object patches of a cloned ``ModelPatcher`` (applied when ComfyUI loads the
model for sampling, removed when it unloads it), so the input model stays uncompiled and the
weights keep moving under ComfyUI's model management: the blocks' parameters are inputs of the
compiled graphs, not constants in them.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..cogvideox_core.models.compile import (
    COMPILE_MODES,
    block_calls,
    check_compile_support,
    compile_blocks,
)
from .common import MODEL, ModelHandle, choice, tip

logger = logging.getLogger(__name__)


class CogVideoXTorchCompile:
    DESCRIPTION = ("Compiles the transformer's blocks with torch.compile (inductor) when the sampler first "
                   "runs them: the first run at each size is slower (compiling, tens of seconds to "
                   "minutes), later steps are faster, the video the same within rounding. Needs triton "
                   "on an NVIDIA GPU (a C++ compiler on the CPU).")
    CATEGORY = "CogVideoX/loaders"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with compiled blocks, for the sampler (the input model is unchanged).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": tip(MODEL, "From CogVideoX Model Loader (LoRAs before or after this node). With "
                         "ComfyUI's low-VRAM partial loading the blocks still compile, but weight "
                         "transfers dominate and the speed-up is smaller."),
            "mode": tip(list(COMPILE_MODES), "default: inductor's usual kernels; max-autotune-no-cudagraphs: "
                        "benchmarks more kernel choices (much longer first run, sometimes faster)."),
        }}

    def apply(self, model: ModelHandle, mode: str = "default") -> tuple[ModelHandle]:
        choice("mode", mode, COMPILE_MODES)
        check_compile_support(model.patcher.load_device)  # a missing triton or compiler: now, not in sampling
        return (dataclasses.replace(model, patcher=compiled_patcher(model.patcher, mode)),)


def compiled_patcher(patcher: Any, mode: str) -> Any:
    """A clone of ``patcher`` whose blocks call the compiled ``forward`` and ``reusing``
    (ComfyUI's object patches); a patcher without object patches (no ComfyUI) compiles its
    model in place."""
    model = patcher.model
    if not hasattr(patcher, "add_object_patch"):
        compile_blocks(model, mode, device=patcher.load_device)
        return patcher
    patcher = patcher.clone()
    for i, block in enumerate(model.transformer_blocks):
        for name, call in block_calls(block, mode).items():
            patcher.add_object_patch(f"transformer_blocks.{i}.{name}", call)
    logger.info("CogVideoX Torch Compile: %d blocks compile when the sampler first runs them (mode %s)",
                len(model.transformer_blocks), mode)
    return patcher


NODES: dict[str, Any] = {
    "CogVideoXTorchCompile": (CogVideoXTorchCompile, "CogVideoX Torch Compile"),
}
