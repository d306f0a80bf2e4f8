"""Run inside a real ComfyUI's Python (tests/test_scaled_fp8_comfy.py): a tiny ComfyUI scaled-fp8
transformer file loaded by the pack with its fp8 bytes and scales kept (ScaledFP8Linear), under
ComfyUI's own ``ModelPatcher``: full and low-VRAM partial loading; a LoRA through the layers'
``convert_weight`` / ``set_weight`` hooks, full and partial, where the patcher has them
(``get_key_weight``), and where it has not (2024, which would add the update to the fp8 bytes
without their scale) the pack's LoRA node refusing it. Prints ``OK <checks>``.

argv: ComfyUI folder, the pack's root, the scaled fp8 file.
"""
import sys
from types import SimpleNamespace

import torch

import comfy_probe_checks as checks

COMFY, PACK, PATH = sys.argv[1:4]
checks.boot(COMFY, PACK)
checks.import_pack(PACK)
from cogvideox_pack.cogvideox_core.loading.weights import load_transformer  # noqa: E402
from cogvideox_pack.cogvideox_core.quant import ScaledFP8Linear  # noqa: E402
from cogvideox_pack.nodes.loaders import _check_quantized_patching  # noqa: E402

FP8 = torch.float8_e4m3fn
KEY = "transformer_blocks.0.attn1.to_q.weight"
FP8_MAX = 448.0  # float8_e4m3fn's largest value


def model() -> torch.nn.Module:
    return load_transformer(PATH, dtype=torch.float32, family="5b", weight_dtype=FP8)[0].eval()


m0 = model()
CFG, LAYER = m0.config, m0.get_submodule(KEY[: -len(".weight")])
g = torch.Generator().manual_seed(0)
X = torch.randn(1, 3, CFG.in_channels, 8, 12, generator=g)
CTX, T = torch.randn(1, 226, CFG.text_dim, generator=g), torch.tensor([437.5])
# ~0.08 per weight: several fp8 steps of the layer's N(0, 0.2) weights, so the LoRA shows
UP = torch.randn(LAYER.out_features, 4, generator=g) * 0.2
DOWN = torch.randn(4, LAYER.in_features, generator=g) * 0.2


def run(m: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return m(X, T, CTX)


def lora_expected(m: torch.nn.Module) -> torch.Tensor:
    """The LoRA added to the real weight (fp8 x scale), back to fp8 with the layer's scale
    (saturating at fp8's max, as ComfyUI's scaled fp8 does)."""
    layer = m.get_submodule(KEY[: -len(".weight")])
    real = layer.weight.float() * layer.scale_weight
    layer.weight = torch.nn.Parameter(((real + UP @ DOWN) / layer.scale_weight).clamp(-FP8_MAX, FP8_MAX).to(FP8),
                                      requires_grad=False)
    return run(m)


def lora_refused() -> str:
    """The pack's LoRA node (its check) refuses a LoRA on these layers where ComfyUI has no hooks."""
    try:
        _check_quantized_patching(SimpleNamespace(model=model()), "lora.safetensors", [KEY])
    except ValueError as e:
        assert "quantized" in str(e), e
        return "lora-refused"
    raise AssertionError("a LoRA on scaled fp8 layers was not refused by a ComfyUI without patch hooks")


assert len(checks.quantized(m0, ScaledFP8Linear)) == 2 * 6  # each block's q, k, v, out, ff in and out
done = checks.check_loads(model, run, ScaledFP8Linear, FP8)
if checks.has_hooks():
    done += checks.check_lora(model, run, ScaledFP8Linear, FP8, KEY, UP, DOWN, lora_expected)
else:
    done.append(lora_refused())
print("OK", " ".join(done))
