"""Linear layers whose weight stays quantized in memory and is dequantized per call.

:class:`QuantizedLinear` is the shared shape: its storage is ordinary parameters registered on
the module (so ``module.to(device)``, ``state_dict`` and a host's memory manager move and count
the quantized bytes, never a dequantized copy), and one call splits into

- :meth:`~QuantizedLinear.stored_weight` ``(dtype, device)``: the stored values on ``device``
  cast to ``dtype``, in *stored units* (int8 codes, fp8 values before their scale);
- :meth:`~QuantizedLinear.scale_stored` ``(w)``: stored units -> the real weight;
- :meth:`~QuantizedLinear.dequantize` ``(dtype, device)``: the two together.

Subclasses: :class:`Int8Linear` (symmetric int8 with one scale per output channel, made at
load by :func:`quantize_int8`) and :class:`ScaledFP8Linear` (ComfyUI's ``scaled_fp8`` files:
fp8 values and one per-tensor ``scale_weight``). A format without a separate scale (GGUF) puts
all of its decoding in ``stored_weight`` and keeps ``scale_stored`` the identity.

ComfyUI cooperation, by duck typing (the core never imports ComfyUI): the class attributes
``comfy_cast_weights``, ``weight_function`` and ``bias_function`` make ComfyUI's
``ModelPatcher`` treat these layers like its own ``comfy.ops`` layers. Fully loaded, the
quantized parameters are moved to the GPU whole. In low-VRAM partial loading, a layer that does
not fit stays on the offload device with ``comfy_cast_weights`` set: each call copies its
*quantized* bytes to the input's device, dequantizes there and drops the copy (so int8 moves a
quarter of fp32's bytes per call). LoRA patches (``weight_function``, or the patcher's
``patch_weight_to_device``) go through :meth:`~QuantizedLinear.convert_weight` /
:meth:`~QuantizedLinear.set_weight`, the hooks ComfyUI's own ``scaled_fp8_ops`` define: the
update is added to the real weight and re-quantized *with the layer's existing scale*, so an
update that pushes a row past its old absmax saturates (as ComfyUI's scaled fp8 does); the
patcher's backup restores the codes afterwards. ComfyUI before late 2024 has no such hooks and
would add a LoRA to the stored codes: the pack's LoRA node refuses that case. Checked against the
real ComfyUIs of March 2024 and December 2025 by tests/test_int8_comfy.py and
tests/test_scaled_fp8_comfy.py.

Int8 matmul paths, chosen per call by :func:`int8_path` (logged at DEBUG once per case), all on
the same storage:

- ``torchao`` (bf16/fp32 on CPU or CUDA, torchao installed, not while ``torch.compile`` traces):
  torchao's ``Int8Tensor`` wraps the stored codes and scales for the call (no copy) and
  ``F.linear`` runs torchao's int8 weight-only linear. In torchao 0.18 that is
  ``mm(x, codes.T in x's dtype) * scale + bias``, the pack's own arithmetic: the outputs were
  equal bit for bit on CPU (tests/test_int8_torchao.py) and it was no faster there (a 1-layer
  5B-width bf16 step, the two paths alternating in one process: within 3%; the ``int8_ao`` row
  of benchmarks/weights_memory.py). While ``torch.compile`` traces, the pack's own path runs
  (no tensor subclass built inside a compiled block);
- ``scaled-output``: the pack's own ``(x @ codes.T) * scale`` (no torchao, other devices, or
  ``COGVIDEOX_INT8_KERNEL=pack``);
- ``dequantize``: the real weight first, then the matmul (fp16, LoRA-patched layers).
"""
from __future__ import annotations

import functools
import logging
import os
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .ops import fp8_linear, fp8_matmul_fits

logger = logging.getLogger(__name__)

INT8_MAX = 127  # symmetric: codes in -127..127 (-128 unused, so negation is exact)
CHUNK_VALUES = 2**20  # quantize_int8 converts this many values at a time to float32
INT8_KERNEL_ENV = "COGVIDEOX_INT8_KERNEL"  # "auto" (default): torchao when installed; "pack": never
INT8_KERNEL_CHOICES = ("auto", "pack")
# torchao's Int8Tensor weight-only linear computes mm(x, codes.T in x's dtype) * scale: exact
# codes in bf16/fp32; fp16 could overflow before the scale, so fp16 dequantizes first
TORCHAO_DTYPES = (torch.bfloat16, torch.float32)
TORCHAO_DEVICES = ("cpu", "cuda")  # where its path has been run (tests/test_int8_torchao.py, benchmarks)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] (any float) -> (codes int8 [out, in], scale float32 [out]).

    Symmetric per output channel: ``scale = absmax(row) / 127`` and ``codes = round(w / scale)``,
    so ``codes * scale`` is within ``scale / 2`` of ``w`` everywhere (round to nearest) and a
    row's largest value is exact up to float rounding. An all-zero row gets scale 1 (codes 0).
    Rows are converted :data:`CHUNK_VALUES` values at a time: besides ``weight`` and the
    result, a few MB of temporaries whatever the tensor's size.
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize_int8: weight of shape {list(weight.shape)}: must be 2-D [out, in]")
    codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    rows = max(1, CHUNK_VALUES // max(1, weight.shape[1]))
    for start in range(0, weight.shape[0], rows):
        w = weight[start:start + rows].float()
        amax = w.abs().amax(dim=1)
        s = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
        codes[start:start + rows] = torch.round(w / s[:, None]).clamp_(-INT8_MAX, INT8_MAX)
        scale[start:start + rows] = s
    return codes, scale


def _to(t: torch.Tensor | None, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    if t is None or (t.device == device and (dtype is None or t.dtype == dtype)):
        return t
    return t.to(device=device, dtype=dtype)


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def _functions(fs: object) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """A layer's ``weight_function`` / ``bias_function`` as a list: ComfyUI sets a list (2024
    on), or one callable and None (early 2024)."""
    if fs is None:
        return []
    return list(fs) if isinstance(fs, (list, tuple)) else [fs]  # type: ignore[list-item]


@functools.cache
def torchao_int8_tensor() -> type | None:
    """torchao's ``Int8Tensor`` class, or None when torchao is not installed or does not import
    with this torch (imported on first use: it adds seconds to start-up)."""
    try:
        from torchao.quantization import Int8Tensor
    except (ImportError, AttributeError, RuntimeError, OSError) as e:  # a torchao built for another torch
        logger.debug("int8: torchao not usable (%s: %s): the pack's own int8 matmul", type(e).__name__, e)
        return None
    return Int8Tensor


def int8_path(device: torch.device, dtype: torch.dtype, patched: bool) -> str:
    """Which :class:`Int8Linear` matmul runs for an input on ``device`` in ``dtype``:
    ``"torchao"``, ``"scaled-output"`` or ``"dequantize"`` (see the module docstring).
    ``patched``: the layer carries ComfyUI LoRA patch functions (they need the weight itself)."""
    choice = os.environ.get(INT8_KERNEL_ENV, "auto")
    if choice not in INT8_KERNEL_CHOICES:
        raise ValueError(f"{INT8_KERNEL_ENV}={choice!r}: must be one of {', '.join(INT8_KERNEL_CHOICES)}")
    return _int8_path(device.type, dtype, patched, choice == "auto" and not _compiling())


def _compiling() -> bool:
    """Whether dynamo is tracing (``torch.compiler.is_compiling``: torch 2.3 on; never before)."""
    compiler = getattr(torch, "compiler", None)
    return bool(getattr(compiler, "is_compiling", lambda: False)())


@functools.cache
def _int8_path(device_type: str, dtype: torch.dtype, patched: bool, torchao_allowed: bool) -> str:
    if patched or dtype not in TORCHAO_DTYPES:
        path = "dequantize"
    elif torchao_allowed and device_type in TORCHAO_DEVICES and torchao_int8_tensor() is not None:
        path = "torchao"
    else:
        path = "scaled-output"
    logger.debug("int8 matmul on %s in %s%s: %s", device_type, dtype, " (LoRA-patched)" if patched else "", path)
    return path


class QuantizedLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` kept quantized (see the module docstring).

    Subclasses register their storage as parameters and implement :meth:`stored_weight` and,
    where there is a scale, :meth:`scale_stored` and :meth:`requantize`.
    """

    comfy_cast_weights = False  # ComfyUI's ModelPatcher sets these per instance (low VRAM, LoRA)
    weight_function: list[Callable[[torch.Tensor], torch.Tensor]] = []
    bias_function: list[Callable[[torch.Tensor], torch.Tensor]] = []

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = _frozen(torch.empty(out_features, device=device, dtype=dtype)) if bias else None

    # ---- the storage / dequantize split ----
    def stored_weight(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The stored values on ``device`` as ``dtype``, in stored units: [out, in]."""
        raise NotImplementedError

    def scale_stored(self, w: torch.Tensor) -> torch.Tensor:
        """Stored units -> the real weight (same dtype and device as ``w``)."""
        return w

    def requantize(self, w: torch.Tensor) -> torch.Tensor:
        """The real weight ``w`` -> stored values (the storage dtype), with the current scale."""
        raise NotImplementedError(f"{type(self).__name__}: re-quantizing a patched weight is not supported")

    def dequantize(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """The real weight [out, in] as ``dtype`` on ``device``."""
        return self.scale_stored(self.stored_weight(dtype, torch.device(device)))

    # ---- compute ----
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.stored_weight(x.dtype, x.device)
        for f in _functions(self.weight_function):  # ComfyUI's low-VRAM LoRA patches, stored units
            w = f(w)
        bias = _to(self.bias, x.device, x.dtype)
        for f in _functions(self.bias_function):
            bias = f(bias)
        return F.linear(x, self.scale_stored(w), bias)

    # ---- ComfyUI's patch hooks (named as in comfy.ops.scaled_fp8_ops) ----
    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs: object) -> torch.Tensor:
        """Stored units (already cast to a float dtype by the caller) -> the real weight."""
        return self.scale_stored(weight.float())

    def set_weight(self, weight: torch.Tensor, inplace_update: bool = False, seed: int | None = None,
                   return_weight: bool = False, **kwargs: object) -> torch.Tensor | None:
        """A patched real weight -> stored values (kept scale), returned or stored in place."""
        q = self.requantize(weight)
        if return_weight:
            return q
        if inplace_update:
            self.weight.data.copy_(q)
        else:
            self.weight = _frozen(q)
        return None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantizedLinear):
    """``weight``: int8 codes [out, in]; ``weight_scale``: float32 [out] (see
    :func:`quantize_int8`); ``bias`` in the compute dtype. 1 byte a weight + 4 bytes a row."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.weight = _frozen(torch.empty(out_features, in_features, device=device, dtype=torch.int8))
        self.weight_scale = _frozen(torch.empty(out_features, device=device, dtype=torch.float32))

    def stored_weight(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.weight.to(device=device).to(dtype)

    def scale_stored(self, w: torch.Tensor) -> torch.Tensor:
        # [out, in] * [out, 1]; the scale rounded to w's dtype (bf16: within 2^-9 relative)
        return w * _to(self.weight_scale, w.device, w.dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x @ codes.T) * scale + b``: the per-row scale moves to the output, one pass less
        over the weight than dequantizing it (codes up to 127 are exact in bf16 and fp32), by
        torchao's int8 weight-only linear when installed, else by the pack's own. In fp16
        (whose output could overflow before scaling) and with LoRA patches the weight is
        dequantized first (:meth:`QuantizedLinear.forward`). :func:`int8_path` chooses."""
        patched = bool(_functions(self.weight_function) or _functions(self.bias_function))
        path = int8_path(x.device, x.dtype, patched)
        if path == "dequantize":
            return super().forward(x)
        if path == "torchao":
            return self._torchao_linear(x)
        y = F.linear(x, self.stored_weight(x.dtype, x.device))  # [..., out] in stored units
        y.mul_(_to(self.weight_scale, x.device, x.dtype))
        return y if self.bias is None else y.add_(_to(self.bias, x.device, x.dtype))

    def _torchao_linear(self, x: torch.Tensor) -> torch.Tensor:
        """torchao's ``Int8Tensor`` over the stored codes [out, in] and scales [out, 1] on x's
        device (a view where they already are: nothing copied), for this call only."""
        codes, scale = _to(self.weight.detach(), x.device), _to(self.weight_scale.detach(), x.device)
        w = torchao_int8_tensor()(codes, scale[:, None], [1, self.in_features], x.dtype)
        return F.linear(x, w, _to(self.bias, x.device, x.dtype))

    def requantize(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.weight_scale.to(w.device)[:, None]
        return torch.round(w.float() / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)


class ScaledFP8Linear(QuantizedLinear):
    """ComfyUI ``scaled_fp8``: ``weight`` fp8 [out, in] and ``scale_weight`` float32 (one
    scalar), real weight = ``weight * scale_weight`` (ComfyUI ``comfy.ops.scaled_fp8_ops``).
    On a GPU with fp8 tensor cores, float8_e4m3fn weights and bf16/fp16 input run one scaled
    fp8 matmul with ``scale_weight`` as the weight's scale (:func:`~cogvideox_core.ops.fp8_linear`);
    elsewhere (and with LoRA patches) the weight is dequantized at each call."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 weight_dtype: torch.dtype = torch.float8_e4m3fn, fp8_compute: bool = True) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.weight = _frozen(torch.empty(out_features, in_features, device=device, dtype=weight_dtype))
        self.scale_weight = _frozen(torch.empty((), device=device, dtype=torch.float32))
        self.fp8_compute = fp8_compute

    def stored_weight(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.weight.to(device=device).to(dtype)

    def scale_stored(self, w: torch.Tensor) -> torch.Tensor:
        return w * _to(self.scale_weight, w.device, w.dtype)

    def requantize(self, w: torch.Tensor) -> torch.Tensor:
        top = torch.finfo(self.weight.dtype).max  # e4m3fn has no inf: out-of-range values would be NaN
        return (w.float() / self.scale_weight.to(w.device)).clamp_(-top, top).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fp8_matmul(x):
            return fp8_linear(x, self.weight, self.bias, weight_scale=self.scale_weight)
        return super().forward(x)

    def _fp8_matmul(self, x: torch.Tensor) -> bool:
        return (self.fp8_compute and not _functions(self.weight_function) and not _functions(self.bias_function)
                and self.weight.device == x.device and fp8_matmul_fits(self, x))


def swap_linears(model: nn.Module, weight_keys: re.Pattern[str],
                 make: Callable[[nn.Linear], QuantizedLinear]) -> list[str]:
    """Replace every ``nn.Linear`` whose ``<name>.weight`` matches ``weight_keys`` by
    ``make(linear)`` (the model is on the meta device: nothing is copied). Returns the names."""
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and weight_keys.match(f"{n}.weight")]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, make(parent.get_submodule(child)))
    return names


def like(cls: type[QuantizedLinear], **kwargs: object) -> Callable[[nn.Linear], QuantizedLinear]:
    """A :func:`swap_linears` factory: ``cls`` with the linear's sizes, bias, device and bias dtype."""
    def make(linear: nn.Linear) -> QuantizedLinear:
        bias = linear.bias
        return cls(linear.in_features, linear.out_features, bias is not None, device=linear.weight.device,
                   dtype=bias.dtype if bias is not None else linear.weight.dtype, **kwargs)
    return make


def quantized_nbytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the quantized layers' storage by class name (for logs and benchmarks)."""
    out: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            n = sum(t.nbytes for name, t in m.named_parameters() if name != "bias")
            out[type(m).__name__] = out.get(type(m).__name__, 0) + n
    return out


__all__ = ["INT8_MAX", "INT8_KERNEL_ENV", "quantize_int8", "int8_path", "torchao_int8_tensor", "QuantizedLinear",
           "Int8Linear", "ScaledFP8Linear", "swap_linears", "like", "quantized_nbytes"]
