"""Layer classes and the attention function the core's models are built from.

Models take an ``ops`` namespace (``ops.Linear``, ``ops.Conv2d``, ``ops.Conv3d``,
``ops.LayerNorm``, ``ops.GroupNorm``, ``ops.Embedding``), the way ComfyUI's model code takes ``operations``, so a
host can hand in its own (ComfyUI's ``comfy.ops`` for partial low-VRAM loading). The default
skips weight initialisation: weights always come from a file, and random init of a 5B model
costs seconds for nothing (ComfyUI ``comfy.ops.disable_weight_init``).

:class:`cast_ops` additionally casts weights to the input's dtype at call time, which is how
fp8-stored weights (``float8_e4m3fn``) are computed in bf16/fp16.
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
