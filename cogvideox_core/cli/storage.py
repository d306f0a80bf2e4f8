"""``generate --weight-dtype`` and ``--dtype``: the storage of the transformer blocks' matmul
weights and the dtype the model computes in, judged from the flags and the file headers.

``--dtype`` is the compute dtype (default: bfloat16 on a GPU, float32 on the CPU; a float
``--weight-dtype`` is taken as the compute dtype when ``--dtype`` is not given). ``auto``
keeps what the file stores where that is a storage of its own (fp8, plain or ComfyUI scaled
fp8) and is the compute dtype otherwise.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WEIGHT_DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2", "int8")


def _weight_choice(args: argparse.Namespace) -> str:
    return getattr(args, "weight_dtype", None) or "auto"


def compute_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    """``--dtype``; else a float ``--weight-dtype``; else bfloat16 on a GPU, float32 on the CPU."""
    import torch

    from ..loading.weights import COMPUTE_DTYPES

    if args.dtype is not None:
        return getattr(torch, args.dtype)
    if _weight_choice(args) in COMPUTE_DTYPES:
        return COMPUTE_DTYPES[_weight_choice(args)]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def storage_dtype(args: argparse.Namespace, dtype: torch.dtype) -> torch.dtype | None:
    """The ``weight_dtype`` for :func:`~cogvideox_core.loading.weights.load_transformer`
    (None: the compute dtype), refused when a float storage differs from ``dtype``."""
    from ..loading.weights import COMPUTE_DTYPES, FP8_DTYPES, INT8_DTYPES

    choice = _weight_choice(args)
    if choice == "auto":
        return stored_dtype(args.model)
    if choice in COMPUTE_DTYPES:
        if COMPUTE_DTYPES[choice] != dtype:
            raise ValueError(f"--weight-dtype {choice} with --dtype {str(dtype).removeprefix('torch.')}: "
                             "float storage must be the compute dtype; drop one of them, or store in "
                             "fp8_e4m3fn, fp8_e5m2 or int8")
        return None
    if choice in FP8_DTYPES:
        return FP8_DTYPES[choice]
    if choice in INT8_DTYPES:
        return INT8_DTYPES[choice]
    raise ValueError(f"--weight-dtype {choice}: must be one of {', '.join(WEIGHT_DTYPE_CHOICES)}")


def stored_dtype(model: str) -> torch.dtype | None:
    """The fp8 dtype the transformer at ``model`` stores its block matmul weights in, else None
    (headers only)."""
    from ..loading.quantized import stored_fp8_dtype
    from ..loading.weights import FP8_TRANSFORMER_KEYS, component_plan, find_component

    comp = find_component(model, "transformer")
    return stored_fp8_dtype(comp, component_plan(comp), FP8_TRANSFORMER_KEYS)


__all__ = ["WEIGHT_DTYPE_CHOICES", "compute_dtype", "storage_dtype", "stored_dtype"]
