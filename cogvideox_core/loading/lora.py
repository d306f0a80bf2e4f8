"""LoRA files for the CogVideoX transformer: key layouts mapped onto the model's weights.

Reads diffusers/PEFT (``lora_A``/``lora_B``, no alpha: scale 1, as diffusers loads them), kohya
style as the CogVideoX-Fun reward LoRAs ship (``lora_unet_...lora_down``/``lora_up``/``alpha``:
scale ``alpha / r``) and diffusers' older ``lora.down``/``lora.up``, all onto diffusers module
names. A LoRA changes ``W`` to ``W + strength * scale * up @ down``. Nothing here touches a
model: :func:`lora_weights` returns the pieces and the host applies them (ComfyUI's
``ModelPatcher`` at load time).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import WeightsError

logger = logging.getLogger(__name__)

_PARTS = [  # (pattern on a key, which part it is)
    (re.compile(r"^(?P<m>.+)\.lora_A(\.[A-Za-z0-9_]+)?\.weight$"), "down"),
    (re.compile(r"^(?P<m>.+)\.lora_B(\.[A-Za-z0-9_]+)?\.weight$"), "up"),
    (re.compile(r"^(?P<m>.+)\.lora_down\.weight$"), "down"),
    (re.compile(r"^(?P<m>.+)\.lora_up\.weight$"), "up"),
    (re.compile(r"^(?P<m>.+)\.lora\.down\.weight$"), "down"),
    (re.compile(r"^(?P<m>.+)\.lora\.up\.weight$"), "up"),
    (re.compile(r"^(?P<m>.+)\.alpha$"), "alpha"),
]
_PREFIXES = ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.", "model.")
_KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_")


@dataclass(frozen=True, eq=False)
class LoraWeight:
    """One low-rank update of a weight: ``scale * up @ down`` with ``scale = alpha / rank``
    (1 without alpha). ``up`` [out, r], ``down`` [r, in] (conv weights flattened after dim 1)."""

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The full update ``scale * up @ down`` in float32 (shape [out, in])."""
        up = self.up.to(device, torch.float32).flatten(1)
        down = self.down.to(device, torch.float32).flatten(1)
        return (up @ down) * self.scale

    def output(self, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """The update's share of a linear's output, ``strength * scale * x @ (up @ down).T``
        ([..., in] -> [..., out]) in ``x``'s dtype, without forming the [out, in] update: two
        rank-r matmuls (a layer whose weight stays quantized adds this at compute)."""
        down = self.down.to(x.device, x.dtype).flatten(1)  # [r, in]
        up = self.up.to(x.device, x.dtype).flatten(1)  # [out, r]
        return F.linear(F.linear(x, down), up) * (strength * self.scale)


def _split(key: str) -> tuple[str, str] | None:
    for pattern, part in _PARTS:
        m = pattern.match(key)
        if m:
            return m["m"], part
    return None


def _module_name(name: str, modules: set[str], kohya: Mapping[str, str]) -> str | None:
    """The model module a LoRA module name refers to, or None."""
    if name in kohya:
        return kohya[name]
    changed = True
    while changed and name not in modules:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
                break
    return name if name in modules else None


def lora_weights(state: Mapping[str, torch.Tensor], shapes: Mapping[str, Sequence[int]],
                 where: str = "LoRA") -> dict[str, LoraWeight]:
    """Model weight key (``transformer_blocks.0.attn1.to_q.weight``) -> its :class:`LoraWeight`.

    ``shapes`` are the model's state-dict shapes. A ``WeightsError`` when nothing in ``state``
    is a LoRA of this model, or when an update's shape does not fit its weight; LoRA modules
    the model does not have are skipped with a warning (as ComfyUI does).
    """
    out, skipped = _mapped(state, shapes, where)
    if skipped:
        logger.warning("%s: %d LoRA modules not in this model, skipped: %s", where, len(skipped),
                       ", ".join(skipped[:4]))
    logger.info("%s: %d weights patched", where, len(out))
    return out


def _mapped(state: Mapping[str, torch.Tensor], shapes: Mapping[str, Sequence[int]],
            where: str) -> tuple[dict[str, LoraWeight], list[str]]:
    """:func:`lora_weights`' mapping without its logs: (weights, LoRA modules skipped)."""
    modules = {k[: -len(".weight")] for k in shapes if k.endswith(".weight")}
    kohya = {p + m.replace(".", "_"): m for m in modules for p in _KOHYA_PREFIXES}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown_keys = []
    for key, tensor in state.items():
        split = _split(key)
        if split is None:
            unknown_keys.append(key)
            continue
        groups.setdefault(split[0], {})[split[1]] = tensor
    out: dict[str, LoraWeight] = {}
    skipped = []
    for name, parts in groups.items():
        target = _module_name(name, modules, kohya)
        if target is None or "up" not in parts or "down" not in parts:
            skipped.append(name)
            continue
        out[target + ".weight"] = _checked(target, parts, shapes[target + ".weight"], where)
    if not out:
        sample = ", ".join((list(groups) or unknown_keys)[:3])
        raise WeightsError(f"{where}: no LoRA weight matches a module of this CogVideoX model "
                           f"(LoRA modules: {sample or 'none'}): a LoRA for another model or family")
    return out, skipped


def _checked(target: str, parts: Mapping[str, torch.Tensor], shape: Sequence[int], where: str) -> LoraWeight:
    up, down = parts["up"], parts["down"]
    alpha = float(parts["alpha"]) if "alpha" in parts else None
    out_dim, in_dim = int(shape[0]), int(torch.Size(shape)[1:].numel())
    if up.shape[0] != out_dim or down.flatten(1).shape[1] != in_dim or up.flatten(1).shape[1] != down.shape[0]:
        raise WeightsError(f"{where}: {target}: LoRA up {list(up.shape)} x down {list(down.shape)} "
                           f"does not fit the weight {list(shape)}: a LoRA for another model size")
    return LoraWeight(up, down, alpha)


def load_lora(path: str | Path, shapes: Mapping[str, Sequence[int]]) -> dict[str, LoraWeight]:
    """Read a LoRA ``.safetensors`` file and map it onto a model with state-dict ``shapes``."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise WeightsError(f"{path}: cannot read as safetensors: {e}") from None
    return lora_weights(state, shapes, str(path))


def check_lora_file(path: str | Path, shapes: Mapping[str, Sequence[int]]) -> int:
    """How many of a model's weights (state-dict ``shapes``, e.g. from file headers) the LoRA file
    at ``path`` changes, read from its header and alpha values alone (no up/down weights):
    the same ``WeightsError`` as :func:`load_lora` for a LoRA of another model, before anything
    large is loaded."""
    from safetensors import safe_open

    path = Path(path)
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key.endswith(".alpha"):
                    state[key] = f.get_tensor(key)
                else:
                    state[key] = torch.empty(f.get_slice(key).get_shape(), device="meta")
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise WeightsError(f"{path}: cannot read as safetensors: {e}") from None
    return len(_mapped(state, shapes, str(path))[0])


__all__ = ["LoraWeight", "lora_weights", "load_lora", "check_lora_file"]
