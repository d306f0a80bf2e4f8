"""The core's ``Runtime`` on ComfyUI: models in ``ModelPatcher``\\ s loaded with
``load_models_gpu`` (ComfyUI's memory manager decides what stays), progress on ``ProgressBar``,
the interrupt flag, and ComfyUI's choice of devices, dtypes, layer classes and attention.
Without ``comfy`` (node unit tests) the same calls fall back to plain torch.
"""
from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ...cogvideox_core.errors import Interrupted
from ...cogvideox_core.ops import FP8_COMPUTE_DTYPES, cast_ops, default_ops, fp8_matmul_ops, sdpa_attention
from ...cogvideox_core.runtime import TorchRuntime
from . import previews

logger = logging.getLogger(__name__)

# ---- is ComfyUI there? --------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def comfy() -> SimpleNamespace | None:
    """ComfyUI's modules, or None when they cannot be imported (plain torch)."""
    try:
        import comfy.model_management as mm
        import comfy.model_patcher as model_patcher
        import comfy.ops as ops
        import comfy.utils as utils
    except Exception as e:  # not installed, or no GPU without --cpu: run on plain torch
        logger.debug("ComfyUI not importable (%s): plain-torch runtime", e)
        return None
    return SimpleNamespace(mm=mm, model_patcher=model_patcher, ops=ops, utils=utils)


# ---- devices and dtypes ------------------------------------------------------------------

def devices(role: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) ComfyUI uses for a model of ``role``."""
    c = comfy()
    if c is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return dev, torch.device("cpu")
    mm = c.mm
    if role == "vae":
        return mm.vae_device(), mm.vae_offload_device()
    if role == "text":
        return mm.text_encoder_device(), mm.text_encoder_offload_device()
    return mm.get_torch_device(), mm.unet_offload_device()


def supports_bf16(device: torch.device) -> bool:
    c = comfy()
    if c is not None and hasattr(c.mm, "should_use_bf16"):
        return bool(c.mm.should_use_bf16(device))
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def intermediate_device() -> torch.device:
    c = comfy()
    if c is not None and hasattr(c.mm, "intermediate_device"):
        return c.mm.intermediate_device()
    return torch.device("cpu")


def layer_ops(cast: bool, weight_dtype: torch.dtype | None = None,
              compute_dtype: torch.dtype | None = None) -> Any:
    """Layer classes to build models with: ``comfy.ops`` under ComfyUI (partial low-VRAM
    loading works on them), the core's otherwise. ``cast``: weights stored in another dtype
    than the compute dtype (fp8) are cast at every call. ``weight_dtype`` float8_e4m3fn with
    ``compute_dtype`` bf16/fp16 (the transformer): fp8 matmuls where the diffusion device runs them, as
    ComfyUI does for its own fp8 models (its ``fp8_ops``; the core's ``fp8_matmul_ops`` without
    ComfyUI); both cast, as before, where it cannot."""
    c = comfy()
    fp8 = cast and weight_dtype == torch.float8_e4m3fn and compute_dtype in FP8_COMPUTE_DTYPES
    if c is None:
        return fp8_matmul_ops if fp8 else cast_ops if cast else default_ops
    fast = _comfy_fp8_ops(c, compute_dtype) if fp8 else None
    if fast is not None:
        return fast
    return c.ops.manual_cast if cast else c.ops.disable_weight_init


def _comfy_fp8_ops(c: SimpleNamespace, compute_dtype: torch.dtype) -> Any:
    """ComfyUI's fp8 matmul layers (``comfy.ops.fp8_ops``) when its ``pick_operations`` picks
    them for float8_e4m3fn weights on the diffusion load device (``supports_fp8_compute``:
    capability 8.9+, or ComfyUI's ``--supports-fp8-compute``), else None. ComfyUI before late
    2024 has no ``fp8_optimizations`` switch: None there. Only ``fp8_ops`` is taken: its Linear
    runs ``fp8_linear`` on fp8 weights and casts everything else, like ``manual_cast``."""
    pick, fp8_ops = getattr(c.ops, "pick_operations", None), getattr(c.ops, "fp8_ops", None)
    if pick is None or fp8_ops is None or "fp8_optimizations" not in inspect.signature(pick).parameters:
        return None
    ops = pick(torch.float8_e4m3fn, compute_dtype, load_device=devices("diffusion")[0],
               fp8_optimizations=True)
    if ops is fp8_ops:
        logger.info("CogVideoX fp8 weights: ComfyUI's fp8 matmul ops")
        return ops
    return None


def attention(choice: str) -> Any:
    """The attention function for ``choice`` (auto, comfy, sdpa)."""
    if choice == "sdpa":
        return sdpa_attention
    if comfy() is not None:
        try:
            from comfy.ldm.modules.attention import optimized_attention
            return optimized_attention
        except Exception as e:  # an old or stripped ComfyUI: torch's own is always there
            logger.warning("ComfyUI's optimized_attention is not available (%s): using torch SDPA", e)
    return sdpa_attention


# ---- model wrapping -----------------------------------------------------------------------

@dataclass(frozen=True)
class PlainPatcher:
    """A model and its devices, without ComfyUI: what the nodes read of a ``ModelPatcher``
    (``model``, ``load_device``, ``offload_device``). No LoRA patching: that is ComfyUI's."""

    model: nn.Module
    load_device: torch.device
    offload_device: torch.device


def wrap(model: nn.Module, role: str) -> Any:
    """``model`` in a ``ModelPatcher`` (ComfyUI) or a :class:`PlainPatcher`."""
    load_device, offload_device = devices(role)
    c = comfy()
    if c is None:
        return PlainPatcher(model, load_device, offload_device)
    return c.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def patches_quantized_weights() -> bool:
    """Whether the host's patcher applies LoRAs to quantized layers through their
    ``convert_weight`` / ``set_weight`` hooks (ComfyUI's ``get_key_weight``, from late 2024;
    without ComfyUI the pack's patching is the host's). Earlier ComfyUIs add the update to the
    stored int8 codes: wrong weights."""
    c = comfy()
    return c is None or hasattr(c.model_patcher, "get_key_weight")


def add_layer_lora(patcher: Any, module: str, strength: float, lora: Any) -> None:
    """A LoRA that layer ``module`` adds at compute (its ``lora_terms``: GGUF layers, whose
    blocks take no merged update), as an object patch: ComfyUI's patcher (March 2024 on) sets
    it on the layer when loading the model and puts the layer's own value back on unpatch; a
    clone copies it. Chained LoRAs append to the patcher's own terms."""
    name = f"{module}.lora_terms"
    terms = patcher.object_patches.get(name, ())
    patcher.add_object_patch(name, (*terms, (strength, lora)))


def lora_patch(lora: Any) -> Any:
    """One core LoRA weight (``up``, ``down``, ``alpha``) as a patch ComfyUI's patcher applies:
    a ``LoRAAdapter`` where ComfyUI has weight adapters, the ``("lora", ...)`` tuple before
    (six fields; older versions read the first four)."""
    weights = (lora.up, lora.down, lora.alpha, None, None, None)
    adapter = _lora_adapter()
    return adapter(set(), weights) if adapter is not None else ("lora", weights)


@functools.lru_cache(maxsize=None)
def _lora_adapter() -> type | None:
    try:
        from comfy.weight_adapter import LoRAAdapter  # ComfyUI from 2025
    except Exception:
        return None
    return LoRAAdapter


# ---- the runtime --------------------------------------------------------------------------

def _find(patchers: Iterable[Any], model: nn.Module) -> Any:
    return next((p for p in patchers if p.model is model), None)


class ComfyRuntime:
    """The core's ``Runtime`` on ComfyUI (see the module docstring)."""

    def __init__(self, patchers: Sequence[Any] = ()) -> None:
        c = comfy()
        self._c, self._patchers = c, list(patchers)
        self.device = patchers[0].load_device if patchers else c.mm.get_torch_device()
        self.offload_device = patchers[0].offload_device if patchers else c.mm.unet_offload_device()
        self.intermediate_device = intermediate_device()
        self._bar: Any = None
        self._preview = previews.enabled()

    def load(self, model: nn.Module, extra_memory: int = 0) -> None:
        patcher = _find(self._patchers, model)
        if patcher is None:  # a model the node did not hand in: wrap it for this run
            patcher = wrap(model, "diffusion")
            self._patchers.append(patcher)
        self._c.mm.load_models_gpu([patcher], memory_required=int(extra_memory))

    def free_memory(self) -> int:
        return int(self._c.mm.get_free_memory(self.device))

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        if self._bar is None or self._bar.total != total:
            self._bar = self._c.utils.ProgressBar(total)
        image = previews.latent_preview(preview) if (self._preview and preview is not None) else None
        self._bar.update_absolute(step, total, image)

    def check_interrupt(self) -> None:
        mm = self._c.mm
        try:
            mm.throw_exception_if_processing_interrupted()
        except mm.InterruptProcessingException:
            raise _host_interrupted()("interrupted by the user") from None


@functools.lru_cache(maxsize=None)
def _host_interrupted() -> type:
    """An exception that is both ComfyUI's interrupt (so the UI shows "interrupted") and the
    core's :class:`Interrupted` (so core code can clean up on it)."""
    return type("HostInterrupted", (Interrupted, comfy().mm.InterruptProcessingException), {})


def runtime(*patchers: Any) -> Any:
    """The runtime for one node execution using ``patchers``' models; without ComfyUI the
    core's plain-torch one on their device (loading moves a model there, no progress shown)."""
    if comfy() is not None:
        return ComfyRuntime(patchers)
    return TorchRuntime(device=patchers[0].load_device if patchers else None, show_progress=False)


def load(runtime_: Any, patcher: Any, extra_memory: int = 0) -> nn.Module:
    """Load ``patcher``'s model for compute through ``runtime_`` and return it."""
    runtime_.load(patcher.model, extra_memory)
    return patcher.model


def release_memory(*patchers: Any) -> None:
    """After an out-of-memory error: models off the compute device and the allocator's cache
    emptied. ComfyUI unloads every model (as it does after an OOM in its own nodes: a load
    cut short leaves no half-patched model); without it ``patchers``' models go to their
    offload device."""
    c = comfy()
    if c is not None:
        c.mm.unload_all_models()
        c.mm.soft_empty_cache(True)
        return
    for patcher in patchers:
        patcher.model.to(patcher.offload_device)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def to_intermediate(t: torch.Tensor) -> torch.Tensor:
    return t.to(intermediate_device())
