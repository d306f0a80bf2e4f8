"""Run inside a real ComfyUI's Python (tests/test_int8_comfy.py): Int8Linear under ComfyUI's own
``ModelPatcher``, full and low-VRAM partial loading, with a LoRA where the patcher has the
``convert_weight`` / ``set_weight`` hooks (``get_key_weight``). Prints ``OK <checks>``.

argv: ComfyUI folder, the pack's root.
"""
import sys

import torch

import comfy_probe_checks as checks

checks.boot(*sys.argv[1:3])
from cogvideox_core.quant import Int8Linear, quantize_int8  # noqa: E402

g = torch.Generator().manual_seed(0)
W, B, X = torch.randn(64, 96, generator=g), torch.randn(64, generator=g), torch.randn(5, 96, generator=g)
UP, DOWN = torch.randn(64, 4, generator=g) * 0.05, torch.randn(4, 96, generator=g) * 0.05


def model() -> torch.nn.Sequential:
    m = torch.nn.Sequential(Int8Linear(96, 64, True, device="meta", dtype=torch.float32))
    codes, scale = quantize_int8(W)
    m[0].load_state_dict({"weight": codes, "weight_scale": scale, "bias": B}, assign=True)
    return m


def run(m: torch.nn.Module) -> torch.Tensor:
    return m(X)


def lora_expected(m: torch.nn.Module) -> torch.Tensor:
    """The LoRA added to the real weight, re-quantized with the layer's scale."""
    layer = m[0]
    real = layer.weight.float() * layer.weight_scale[:, None]
    codes = torch.round((real + UP @ DOWN) / layer.weight_scale[:, None]).clamp(-127, 127)
    return torch.nn.functional.linear(X, codes * layer.weight_scale[:, None], B)


done = checks.check_loads(model, run, Int8Linear, torch.int8)
assert checks.module_size(model()[0]) == 64 * 96 + 64 * 4 + 64 * 4  # int8 counted at 1 byte
if checks.has_hooks():
    done += checks.check_lora(model, run, Int8Linear, torch.int8, "0.weight", UP, DOWN, lora_expected)
print("OK", " ".join(done))
