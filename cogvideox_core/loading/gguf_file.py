"""GGUF transformer weights kept quantized in memory, dequantized per layer at compute.

At load (:func:`keep_quantized`): every ``nn.Linear`` of the transformer blocks whose weight the
file stores block-quantized (:mod:`~cogvideox_core.loading.gguf_index`) becomes a
:class:`GGUFLinear`, a :class:`~cogvideox_core.quant.QuantizedLinear` whose ``weight`` parameter
*is* the raw block bytes (uint8 ``[out, bytes per row]``): ``module.to(device)``, ``state_dict``
and ComfyUI's memory manager move and count the quantized bytes (its low-VRAM mode copies them
to the GPU per call), each call dequantizes them on the input's device into the input's dtype
(:func:`~cogvideox_core.gguf_quants.dequantize`) and drops the copy. Quantized tensors elsewhere
(a learned position table, the embeddings and output layers) are dequantized once while reading
(:func:`read_dequantized`); unquantized tensors load as ordinary weights. The blocks' fp16
scales are not checked for NaN/inf at load (the dequantized-at-load tensors are).

LoRA (ComfyUI-GGUF's rule: an update is applied at compute, never written into the blocks): a
layer's ``lora_terms`` ((strength, :class:`~cogvideox_core.loading.lora.LoraWeight`) pairs) add
``strength * scale * (x @ down.T) @ up.T`` to its output, so a LoRA costs its rank-r factors
and two small matmuls per call, whether the layer is fully loaded or cast per call in low-VRAM
mode. The pack's LoRA node sets ``lora_terms`` as a ComfyUI *object patch*, which ComfyUI sets
when loading the model and puts back on unpatch (the blocks are never touched). Merging through
ComfyUI's ``convert_weight`` / ``set_weight`` hooks is refused for GGUF layers: ComfyUI's full
load would hand ``set_weight`` the whole merged weight, which could only be kept dequantized (a
dense copy of every patched layer: more memory than the file saved); the hooks do serve
ComfyUI's per-call low-VRAM patches (``weight_function``), where the merged weight is transient.
"""
from __future__ import annotations

import logging
import re
from typing import BinaryIO, Callable, Mapping

import torch
from torch import nn

from ..errors import NonFiniteWeightsError
from ..gguf_quants import dequantize, quantized_nbytes
from ..quant import QuantizedLinear, like, swap_linears
from .files import TensorEntry, TensorIndex, read_into
from .gguf_index import GGUFEntry
from .keymaps import Source
from .lora import LoraWeight

logger = logging.getLogger(__name__)

# Weights kept quantized: the linears of the transformer blocks (attention, feed-forward, adaLN).
BLOCK_WEIGHTS = re.compile(r"^transformer_blocks\.\d+\..+\.weight$")


# ---- the layer and the load --------------------------------------------------------------------

class GGUFLinear(QuantizedLinear):
    """A linear whose ``weight`` is the GGUF block bytes (uint8 [out, bytes per row]) of type
    ``qtype``; dequantized at each call on the input's device, to the input's dtype."""

    lora_terms: tuple[tuple[float, LoraWeight], ...] = ()  # set per instance (the module docstring)

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 qtype: str = "Q8_0") -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.qtype = qtype
        row = quantized_nbytes(qtype, (in_features,))
        self.weight = nn.Parameter(torch.empty(out_features, row, device=device, dtype=torch.uint8),
                                   requires_grad=False)

    def stored_weight(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        raw = self.weight.to(device=device, non_blocking=True)
        return dequantize(raw, self.qtype, (self.out_features, self.in_features), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # [..., out]: the dequantized weight (and ComfyUI's per-call patches)
        for strength, lora in self.lora_terms:
            y = y + lora.output(x, strength)
        return y

    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs: object) -> torch.Tensor:
        """ComfyUI's patch hook -> the real weight [out, in], float32. Given the stored bytes
        (cast to a float dtype by the caller: [out, bytes per row], never [out, in] for these
        types) they are dequantized; given [out, in] (ComfyUI's low-VRAM per-call patch, handed
        :meth:`stored_weight`, already dequantized) it is the weight."""
        if tuple(weight.shape) == (self.out_features, self.in_features):
            return weight.float()
        raw = weight.to(torch.uint8)  # byte values 0..255 survive the float cast exactly
        return dequantize(raw.contiguous(), self.qtype, (self.out_features, self.in_features))

    def set_weight(self, weight: torch.Tensor, inplace_update: bool = False, seed: int | None = None,
                   return_weight: bool = False, **kwargs: object) -> torch.Tensor | None:
        """ComfyUI's patch hook: a per-call patched weight is returned as it is (GGUF's stored
        units are the real weight); merging it into the blocks is refused (the module docstring)."""
        if return_weight:
            return weight
        raise ValueError(f"GGUFLinear ({self.qtype}): a patch merged into GGUF quantized blocks is not "
                         "supported: add LoRAs with the CogVideoX LoRA node, which applies them at compute")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, qtype={self.qtype}"


DtypeFor = Callable[[str], torch.dtype]


def has_quantized(index: Mapping[str, object]) -> bool:
    """Whether a component's index holds block-quantized GGUF tensors."""
    return any(isinstance(e, GGUFEntry) and e.quantized for e in index.values())


def keep_quantized(model: nn.Module, plan: Mapping[str, Source], index: TensorIndex,
                   dtype_for: DtypeFor) -> tuple[TensorIndex, DtypeFor]:
    """Swap the block linears of ``model`` (on meta) whose weights ``index`` stores quantized
    for :class:`GGUFLinear` and return the index and per-key dtypes to load it with: those
    weights read as their raw bytes (uint8), everything else as before. A layer whose stored
    shape does not fit is left alone (the shape check names it)."""
    keep = _kept_sources(model, plan, index)
    groups: dict[str, list[str]] = {}
    for target, src in plan.items():
        if src.key in keep:
            groups.setdefault(index[src.key].dtype, []).append(target[: -len(".weight")])
    for qtype, names in groups.items():
        exact = re.compile("^(" + "|".join(re.escape(n) for n in names) + r")\.weight$")
        swap_linears(model, exact, like(GGUFLinear, qtype=qtype))
    raw_index = {k: (TensorEntry(e.file, "U8", e.raw_shape, e.offset) if k in keep else e)  # type: ignore[attr-defined]
                 for k, e in index.items()}
    kept_targets = {t for t, s in plan.items() if s.key in keep}
    if kept_targets:
        logger.info("GGUF: %d block linears kept quantized (%s)", len(kept_targets), ", ".join(groups))
    return raw_index, lambda k: torch.uint8 if k in kept_targets else dtype_for(k)


def _kept_sources(model: nn.Module, plan: Mapping[str, Source], index: TensorIndex) -> set[str]:
    """Source keys of quantized tensors every target of which is a block linear's weight of the
    right shape, stored row by row ([out, bytes per row])."""
    modules = dict(model.named_modules())
    ok: dict[str, bool] = {}
    for target, src in plan.items():
        entry = index.get(src.key)
        if not isinstance(entry, GGUFEntry) or not entry.quantized:
            continue
        layer = modules.get(target[: -len(".weight")]) if BLOCK_WEIGHTS.match(target) else None
        fits = (isinstance(layer, nn.Linear) and not isinstance(layer, QuantizedLinear)
                and len(entry.shape) == 2
                and src.shape(entry.shape) == (layer.out_features, layer.in_features)
                and entry.raw_shape == (entry.shape[0], quantized_nbytes(entry.dtype, entry.shape[1:])))
        ok[src.key] = ok.get(src.key, True) and fits
    return {k for k, v in ok.items() if v}


def gguf_layers(model: nn.Module) -> list[str]:
    """Names of the :class:`GGUFLinear` layers of ``model`` (empty: no GGUF weights kept)."""
    return [name for name, m in model.named_modules() if isinstance(m, GGUFLinear)]


def read_dequantized(f: BinaryIO, entry: TensorEntry, src: Source, dtype: torch.dtype,
                     device: torch.device | str) -> torch.Tensor:
    """A quantized GGUF tensor not kept quantized, dequantized once: read whole (these are the
    small ones), parts picked along dim 0, checked for NaN and inf, as ``dtype`` on ``device``."""
    raw = torch.empty(entry.nbytes, dtype=torch.uint8)
    read_into(f, entry.offset, memoryview(raw.numpy()), entry.file)
    full = dequantize(raw, entry.dtype, entry.shape)  # float32
    if src.chunks > 1:
        full = torch.cat([full.chunk(src.chunks)[i] for i in src.pick])
    bad = ~torch.isfinite(full)
    if bad.any():
        raise NonFiniteWeightsError(f"{entry.file}: tensor {src.key!r} ({entry.dtype}) dequantizes to "
                                    f"{int(bad.sum())} NaN or infinite values (of {full.numel()}): the "
                                    "file is damaged; re-download it")
    return full.to(device=device, dtype=dtype)


__all__ = ["BLOCK_WEIGHTS", "GGUFLinear", "has_quantized", "keep_quantized", "gguf_layers", "read_dequantized"]
