"""Layer classes and the attention function the core's models are built from.

Models take an ``ops`` namespace (``ops.Linear``, ``ops.Conv2d``, ``ops.Conv3d``,
``ops.LayerNorm``, ``ops.GroupNorm``, ``ops.Embedding``), the way ComfyUI's model code takes ``operations``, so a
host can hand in its own (ComfyUI's ``comfy.ops`` for partial low-VRAM loading). The default
skips weight initialisation: weights always come from a file, and random init of a 5B model
costs seconds for nothing (ComfyUI ``comfy.ops.disable_weight_init``).

:class:`cast_ops` additionally casts weights to the input's dtype at call time, which is how
fp8-stored weights (``float8_e4m3fn``) are computed in bf16/fp16; :class:`fp8_matmul_ops` computes
them in fp8 instead (scaled fp8 matmuls) on GPUs that have fp8 tensor cores.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


class Ops(Protocol):
    Linear: type[nn.Linear]
    Conv2d: type[nn.Conv2d]
    Conv3d: type[nn.Conv3d]
    LayerNorm: type[nn.LayerNorm]
    GroupNorm: type[nn.GroupNorm]


class disable_weight_init:  # noqa: N801 - namespace of layer classes, named like ComfyUI's
    """Plain torch layers whose ``reset_parameters`` does nothing."""

    class Linear(nn.Linear):
        def reset_parameters(self) -> None:
            return None

    class Conv2d(nn.Conv2d):
        def reset_parameters(self) -> None:
            return None

    class Conv3d(nn.Conv3d):
        def reset_parameters(self) -> None:
            return None

    class LayerNorm(nn.LayerNorm):
        def reset_parameters(self) -> None:
            return None

    class GroupNorm(nn.GroupNorm):
        def reset_parameters(self) -> None:
            return None

    class Embedding(nn.Embedding):
        def reset_parameters(self) -> None:
            return None


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if t is None or (t.dtype == like.dtype and t.device == like.device):
        return t
    return t.to(device=like.device, dtype=like.dtype)


class cast_ops:  # noqa: N801
    """Like :class:`disable_weight_init`, but weights are cast to the input dtype and device
    at every call: storage dtype (fp8, bf16) and compute dtype are independent."""

    class Linear(disable_weight_init.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))

    class Conv2d(disable_weight_init.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))

    class Conv3d(disable_weight_init.Conv3d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))

    class LayerNorm(disable_weight_init.LayerNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x), _cast(self.bias, x), self.eps)

    class GroupNorm(disable_weight_init.GroupNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)

    class Embedding(disable_weight_init.Embedding):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:  # rows in the weight's dtype
            weight = self.weight if self.weight.device == ids.device else self.weight.to(ids.device)
            return F.embedding(ids, weight, self.padding_idx, self.max_norm, self.norm_type,
                               self.scale_grad_by_freq, self.sparse)


# ---- fp8 compute ------------------------------------------------------------------------------

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper: the first GPUs with fp8 tensor cores
# The smallest input scale: 1/scale must be a finite fp16 (powers of two down to 2^-15 are).
_MIN_SCALE_EXP = -15


def supports_fp8_compute(device: torch.device | str) -> bool:
    """Whether ``device`` runs fp8 matmuls (``torch._scaled_mm``): an NVIDIA GPU of compute
    capability 8.9 or newer, with a torch that has ``_scaled_mm``."""
    device = torch.device(device)
    if device.type != "cuda" or torch.version.cuda is None or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (x / scale as float8_e4m3fn [M, K], scale: float32 scalar) with one
    per-tensor scale putting max |x| near the fp8 maximum (448).

    The scale is a power of two, so ``x / scale`` is exact in x's own dtype and the matmul
    multiplies back exactly the scale the values were divided by; the clamp keeps rounding
    from overflowing fp8 (e4m3fn has no inf: out-of-range values would become NaN). ComfyUI's
    ``fp8_linear`` uses scale 1 and the clamp; a per-tensor scale also keeps small activations
    (the GELU outputs) out of fp8's subnormal range, for one extra read of x.
    """
    amax = x.abs().amax().float().clamp(min=torch.finfo(torch.float32).tiny)
    exp = torch.ceil(torch.log2(amax / FP8_MAX)).clamp(min=_MIN_SCALE_EXP)
    scale = torch.exp2(exp)  # float32, 0-dim, on x's device: no host sync
    q = (x * torch.exp2(-exp).to(x.dtype)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               weight_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] (bf16/fp16) @ weight [N, K] (float8_e4m3fn, scale 1).T + bias -> [..., N] in
    x's dtype, through one scaled fp8 matmul (``torch._scaled_mm``, fp32 accumulation).
    ``weight_scale``: the weight's per-tensor scale (a float32 scalar, ComfyUI ``scale_weight``)."""
    lead, k = x.shape[:-1], x.shape[-1]
    q, scale = quantize_fp8(x.reshape(-1, k))  # [M, K] row-major, as _scaled_mm wants
    one = (torch.ones((), device=x.device, dtype=torch.float32) if weight_scale is None
           else weight_scale.to(device=x.device, dtype=torch.float32))
    out = torch._scaled_mm(q, weight.t(), scale_a=scale, scale_b=one,  # weight.t(): column-major
                           bias=_cast(bias, x), out_dtype=x.dtype)
    out = out[0] if isinstance(out, tuple) else out  # torch < 2.5 also returned amax
    return out.reshape(*lead, weight.shape[0])


FP8_COMPUTE_DTYPES = (torch.bfloat16, torch.float16)  # the inputs fp8 matmuls take


def fp8_matmul_blocker(weight_dtype: torch.dtype, dtype: torch.dtype, device: torch.device | str) -> str | None:
    """Why fp8 matmuls cannot run for ``weight_dtype`` weights computed in ``dtype`` on
    ``device``, or None when they can."""
    if weight_dtype != torch.float8_e4m3fn:
        return f"need float8_e4m3fn weights, not {weight_dtype}"
    if dtype not in FP8_COMPUTE_DTYPES:
        return f"need bfloat16 or float16 compute, not {dtype}"
    if not supports_fp8_compute(device):
        return f"{device} has none (an NVIDIA GPU of compute capability 8.9+ has)"
    return None


def fp8_matmul_fits(layer: nn.Linear, x: torch.Tensor) -> bool:
    """Whether this call can take the fp8 path: e4m3fn weight, half input, dims the kernel
    takes (multiples of 16), a device with fp8 tensor cores (:func:`fp8_matmul_blocker`'s
    rules, without building its reason on every call)."""
    return (layer.weight.dtype == torch.float8_e4m3fn and x.dtype in FP8_COMPUTE_DTYPES
            and layer.in_features % 16 == 0 and layer.out_features % 16 == 0
            and supports_fp8_compute(x.device))


class fp8_matmul_ops(cast_ops):  # noqa: N801
    """:class:`cast_ops` whose ``Linear`` runs :func:`fp8_linear` where it can
    (:func:`fp8_matmul_fits`: float8_e4m3fn weights on a GPU of capability 8.9+), and casts
    the weight to the input dtype as :class:`cast_ops` does everywhere else (CPU, older GPUs,
    e5m2 or bf16 weights). The input is quantised to fp8 too: close to, not equal to, the cast
    path (see :func:`quantize_fp8`)."""

    class Linear(cast_ops.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if fp8_matmul_fits(self, x):
                return fp8_linear(x, self.weight, self.bias)
            return super().forward(x)


default_ops = disable_weight_init


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention without mask. q, k, v: [B, S, heads*head_dim] -> [B, S, heads*head_dim].

    The same signature as ComfyUI's ``optimized_attention``, so the host can inject its own.
    """
    b, s, inner = q.shape
    d = inner // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, s, inner)
