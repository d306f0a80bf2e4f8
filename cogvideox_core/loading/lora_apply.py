"""LoRAs applied to a loaded transformer without a host: the standalone CLI's ``--lora``.

ComfyUI applies the pieces :func:`~.lora.lora_weights` returns through its ``ModelPatcher``
(``nodes/loaders.py``); here they change the model itself: a plain float weight gets ``W +=
strength * scale * up @ down`` (merged once: sampling runs at the base model's speed), a GGUF
layer, whose weight stays quantized, adds the update at compute (its ``lora_terms``). A weight
kept in int8 or scaled fp8 is refused: adding to the stored codes would not be the LoRA.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
import torch
from torch import nn

from ..errors import WeightsError
from ..quant import QuantizedLinear
from .gguf_file import gguf_layers
from .lora import LoraWeight, load_lora

logger = logging.getLogger(__name__)

MERGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STRENGTH_RANGE = (-10.0, 10.0)  # a LoRA's strength, here and in the LoRA node (ComfyUI's own node allows more)


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The model's state-dict shapes, a GGUF layer's weight as its real [out, in] (stored: bytes)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in gguf_layers(model):
        layer = model.get_submodule(name)
        shapes[f"{name}.weight"] = (layer.out_features, layer.in_features)
    return shapes


def parse_lora_spec(text: str, flag: str = "--lora") -> tuple[Path, float]:
    """``PATH`` or ``PATH:STRENGTH`` (strength 1 by default; a Windows drive colon is part of the
    path) -> (path, strength); a ``ValueError`` naming ``flag`` for a missing file or a bad
    strength."""
    path_text, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and not tail.startswith(("\\", "/")):
        try:
            strength = float(tail)
        except ValueError:
            if Path(head).suffix.lower() == ".safetensors":
                raise ValueError(f"{flag} {text}: strength {tail!r} is not a number; give PATH or "
                                 "PATH:STRENGTH, e.g. my_lora.safetensors:0.8") from None
        else:
            path_text = head
    if not math.isfinite(strength):
        raise ValueError(f"{flag} {text}: strength {strength} is not finite; give a number, e.g. 0.8")
    low, high = STRENGTH_RANGE
    if not low <= strength <= high:
        raise ValueError(f"{flag} {text}: strength {strength:g} is outside {low:g}..{high:g}; "
                         "1 is the LoRA as trained, 0 leaves the model as it is")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"{flag} {text}: {'is a folder' if path.is_dir() else 'no such file'}; "
                         "give a LoRA .safetensors file")
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise ValueError(f"{flag} {text}: {path.suffix or 'no suffix'}; LoRAs are read from .safetensors files")
    return path, strength


def apply_lora(model: nn.Module, path: str | Path, strength: float = 1.0) -> dict[str, LoraWeight]:
    """Apply the LoRA file at ``path`` to ``model`` in place (the module docstring); returns the
    weights it changed, by state-dict key. ``WeightsError`` before anything changes if a weight
    the LoRA touches is stored quantized (int8, scaled fp8)."""
    weights = load_lora(path, weight_shapes(model))
    at_compute = {f"{n}.weight" for n in gguf_layers(model)}
    params = dict(model.named_parameters())
    for key in weights:
        if key in at_compute:
            continue
        layer = model.get_submodule(key.rpartition(".")[0])
        param = params.get(key)
        if isinstance(layer, QuantizedLinear) or param is None or param.dtype not in MERGE_DTYPES:
            stored = "quantized" if param is None else str(param.dtype).removeprefix("torch.")
            raise WeightsError(f"{path}: the LoRA changes {key!r}, stored {stored}: a LoRA cannot be "
                               "added to quantized weights here; load the model with --weight-dtype "
                               "bf16, fp16 or fp32")
    with torch.no_grad():
        for key, lora in weights.items():
            if key in at_compute:
                layer = model.get_submodule(key.rpartition(".")[0])
                layer.lora_terms = (*layer.lora_terms, (strength, lora))
            else:
                param = params[key]
                param.add_((strength * lora.delta(param.device)).to(param.dtype))
    logger.info("%s: LoRA applied at strength %g to %d weights", path, strength, len(weights))
    return weights


__all__ = ["weight_shapes", "parse_lora_spec", "apply_lora", "MERGE_DTYPES", "STRENGTH_RANGE"]
