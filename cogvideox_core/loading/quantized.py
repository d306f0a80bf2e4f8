"""Quantized storage at load: int8 weight-only quantization and ComfyUI ``scaled_fp8`` files.

Which weights:

- scaled fp8 keeps fp8 for the blocks' large matmul weights, the keys
  :data:`~cogvideox_core.loading.weights.FP8_TRANSFORMER_KEYS` matches (attention ``to_q``,
  ``to_k``, ``to_v``, ``to_out.0``, feed-forward ``ff.net.0.proj`` and ``ff.net.2``: 85% of a
  5B transformer's values), as fp8 storage does; the file's other scaled layers are dequantized.
- int8 (:data:`INT8_TRANSFORMER_KEYS`) quantizes those and also each block's two adaLN linears
  (``norm1.linear``, ``norm2.linear``: 512 -> 6 x 3072, 14% of the values), as torchao's int8
  weight-only does (every linear): without them a 5B transformer's int8 weights are 0.57x of
  bf16's, with them 0.50x. fp8 keeps adaLN in the compute dtype because per-tensor e4m3 (3
  mantissa bits, small values subnormal) breaks 1.5; int8 with a scale per output channel puts
  every row on its own 255-level grid (error <= absmax(row) / 254 per value).
  Norms, biases, embeddings, ``text_proj``, ``norm_out`` and ``proj_out`` stay in the compute dtype.

- ``int8`` (:func:`plan_storage` with ``weight_dtype=torch.int8``): each matched weight is read
  alone as stored (float32 where a scaled fp8 file dequantizes it while reading), quantized per
  output channel (:func:`~cogvideox_core.quant.quantize_int8`, a few rows at a time) and dropped
  before the next is read: the peak is the int8 model plus one tensor as stored, never a
  full-precision copy of the model.
- ``scaled_fp8`` files (ComfyUI's quantizer: ``<layer>.weight`` in fp8 beside a float32 scalar
  ``<layer>.scale_weight``, optionally ``<layer>.scale_input``, and a ``scaled_fp8`` marker key
  whose dtype is the fp8 dtype, ComfyUI ``comfy/model_detection.py``): with ``weight_dtype``
  equal to the file's fp8 dtype the stored fp8 bytes and their scale are kept as they are
  (:class:`~cogvideox_core.quant.ScaledFP8Linear`, exact: no re-rounding); otherwise they are
  dequantized while reading (``weight * scale_weight``, the default). ``scale_input`` is not
  used: the fp8 matmul scales its input per call (:func:`~cogvideox_core.ops.quantize_fp8`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import torch
from torch import nn

from ..quant import Int8Linear, ScaledFP8Linear, like, quantize_int8, swap_linears
from .files import SAFETENSORS_DTYPES, Component
from .keymaps import Source

MARKER = "scaled_fp8"
INT8_TRANSFORMER_KEYS = re.compile(
    r"^transformer_blocks\.\d+\.(attn1\.to_(q|k|v|out\.0)|ff\.net\.(0\.proj|2)|norm[12]\.linear)\.weight$")
_MARKER_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F32": torch.float8_e4m3fn}
DtypeFor = Callable[[str], torch.dtype]


def scaled_fp8_dtype(comp: Component) -> torch.dtype | None:
    """The fp8 dtype of a ComfyUI ``scaled_fp8`` component (its marker key's dtype; float32
    marks e4m3fn, as ComfyUI reads it), or None for any other file. Header only."""
    for key, entry in comp.index.items():
        if key.rsplit(".", 1)[-1] == MARKER:
            return _MARKER_DTYPES.get(entry.dtype, torch.float8_e4m3fn)
    return None


def stored_fp8_dtype(comp: Component, plan: Mapping[str, Source], weight_keys: re.Pattern[str]) -> torch.dtype | None:
    """The fp8 dtype the block matmul weights are stored in (plain or scaled fp8 files), else
    None: what ``auto`` storage keeps."""
    stored = {SAFETENSORS_DTYPES.get(comp.index[src.key].dtype)  # None: a GGUF block type ("Q4_K")
              for target, src in plan.items() if weight_keys.match(target)}
    fp8 = stored & {torch.float8_e4m3fn, torch.float8_e5m2}
    return fp8.pop() if len(stored) == 1 and fp8 else None


def describe(comp: Component) -> str | None:
    """``"scaled fp8 (float8_e4m3fn)"`` for a ComfyUI scaled fp8 component, else None (for ``info``)."""
    dtype = scaled_fp8_dtype(comp)
    return None if dtype is None else f"scaled fp8 ({str(dtype).removeprefix('torch.')})"


@dataclass
class Int8Finish:
    """The per-tensor step :func:`~cogvideox_core.loading.weights.read_plan` runs on each read
    tensor: matched weights -> int8 codes and ``<layer>.weight_scale``; the rest unchanged."""

    weight_keys: re.Pattern[str]
    derived: frozenset[str] = field(default_factory=frozenset)  # state keys no file holds

    def __call__(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.weight_keys.match(key):
            return {key: tensor}
        codes, scale = quantize_int8(tensor)
        return {key: codes, key[: -len("weight")] + "weight_scale": scale}


@dataclass(frozen=True)
class StoragePlan:
    """What :func:`plan_storage` decided: the (possibly changed) plan, per-key read dtypes and
    the per-tensor step (None: tensors are kept as read)."""

    plan: dict[str, Source]
    dtype_for: DtypeFor
    finish: Int8Finish | None = None
    note: str | None = None  # for the load log: "int8 block weights", "scaled fp8 kept"


def plan_storage(model: nn.Module, plan: Mapping[str, Source], comp: Component, dtype: torch.dtype,
                 weight_dtype: torch.dtype | None, weight_keys: re.Pattern[str],
                 fp8_compute: bool = True) -> StoragePlan | None:
    """For int8 storage (:data:`INT8_TRANSFORMER_KEYS`), or a scaled fp8 file kept in fp8
    (``weight_keys``): swap those linears of ``model`` (on meta) for quantized ones and say how
    to read them; None otherwise (the ordinary path:
    :func:`~cogvideox_core.loading.weights.storage_dtypes`)."""
    if weight_dtype == torch.int8:
        return _int8(model, plan, comp.index, dtype, INT8_TRANSFORMER_KEYS)
    scaled = scaled_fp8_dtype(comp)
    if scaled is not None and weight_dtype == scaled:
        return _keep_scaled(model, plan, dtype, scaled, weight_keys, fp8_compute)
    return None


def _int8(model: nn.Module, plan: Mapping[str, Source], index: Mapping[str, object], dtype: torch.dtype,
          weight_keys: re.Pattern[str]) -> StoragePlan:
    names = swap_linears(model, weight_keys, like(Int8Linear))
    finish = Int8Finish(weight_keys, frozenset(f"{n}.weight_scale" for n in names))
    read_as = {t: _read_dtype(src, index) for t, src in plan.items() if weight_keys.match(t)}
    return StoragePlan(dict(plan), lambda k: read_as.get(k, dtype), finish,
                       f"int8 block weights ({len(names)} layers), computed in {dtype}")


def _read_dtype(src: Source, index: Mapping[str, object]) -> torch.dtype:
    """What a weight to quantize is read as: its stored float dtype (read straight, no
    conversion: bf16 takes half of float32's memory for the one tensor held), float32 when it
    must be scaled while reading (scaled fp8) or is stored otherwise."""
    stored = SAFETENSORS_DTYPES.get(getattr(index.get(src.key), "dtype", ""))
    if src.scale_key or stored is None or not stored.is_floating_point:
        return torch.float32
    return stored


def _keep_scaled(model: nn.Module, plan: Mapping[str, Source], dtype: torch.dtype, fp8: torch.dtype,
                 weight_keys: re.Pattern[str], fp8_compute: bool) -> StoragePlan:
    """Matched weights with a ``scale_weight`` read as stored, their scale as its own target."""
    kept = {t for t, s in plan.items() if weight_keys.match(t) and s.scale_key}
    exactly = re.compile("^(" + "|".join(re.escape(t) for t in sorted(kept)) + ")$" if kept else r"(?!)")
    swap_linears(model, exactly, like(ScaledFP8Linear, weight_dtype=fp8, fp8_compute=fp8_compute))
    out: dict[str, Source] = {}
    for target, src in plan.items():
        if target in kept:
            out[target] = replace(src, scale_key=None)
            out[target[: -len("weight")] + "scale_weight"] = Source(src.scale_key)  # type: ignore[arg-type]
        else:
            out[target] = src
    scales = {t for t in out if t.endswith(".scale_weight")}
    return StoragePlan(out, lambda k: fp8 if k in kept else torch.float32 if k in scales else dtype, None,
                       f"scaled fp8 block weights kept ({len(kept)} layers), computed in {dtype}")


__all__ = ["MARKER", "INT8_TRANSFORMER_KEYS", "scaled_fp8_dtype", "stored_fp8_dtype", "describe", "Int8Finish", "StoragePlan",
           "plan_storage"]
