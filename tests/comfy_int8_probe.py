"""Run inside a real ComfyUI's Python (tests/test_int8_comfy.py): Int8Linear under ComfyUI's own
``ModelPatcher``, full and low-VRAM partial loading, with a LoRA where the patcher has the
``convert_weight`` / ``set_weight`` hooks (``get_key_weight``). Prints ``OK <checks>``.

argv: ComfyUI folder, the pack's root.
"""
import sys

comfy_dir, pack = sys.argv[1], sys.argv[2]
sys.argv = ["main.py", "--cpu"]
sys.path[:0] = [comfy_dir, pack]
import torch  # noqa: E402
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher as model_patcher  # noqa: E402
from cogvideox_core.quant import Int8Linear, quantize_int8  # noqa: E402

CPU = torch.device("cpu")
g = torch.Generator().manual_seed(0)
W, B, X = torch.randn(64, 96, generator=g), torch.randn(64, generator=g), torch.randn(5, 96, generator=g)
UP, DOWN = torch.randn(64, 4, generator=g) * 0.05, torch.randn(4, 96, generator=g) * 0.05


def model() -> torch.nn.Sequential:
    m = torch.nn.Sequential(Int8Linear(96, 64, True, device="meta", dtype=torch.float32))
    codes, scale = quantize_int8(W)
    m[0].load_state_dict({"weight": codes, "weight_scale": scale, "bias": B}, assign=True)
    return m


def lowvram(p, m) -> None:
    if hasattr(p, "load"):  # ComfyUI from mid 2024
        p.load(CPU, lowvram_model_memory=1, force_patch_weights=False, full_load=False)
    else:
        p.patch_model_lowvram(CPU, lowvram_model_memory=1)
    assert m[0].comfy_cast_weights and m[0].weight.dtype == torch.int8


def lora_expected(m) -> torch.Tensor:
    """The LoRA added to the real weight, re-quantized with the layer's scale."""
    layer = m[0]
    real = layer.weight.float() * layer.weight_scale[:, None]
    codes = torch.round((real + UP @ DOWN) / layer.weight_scale[:, None]).clamp(-127, 127)
    return torch.nn.functional.linear(X, codes * layer.weight_scale[:, None], B)


checks = []
m = model()
plain = m(X)
p = model_patcher.ModelPatcher(m, load_device=CPU, offload_device=CPU)
lowvram(p, m)
assert torch.equal(m(X), plain)  # the int8 codes cast per call on the compute device
p.unpatch_model(CPU)
assert torch.equal(m(X), plain)
assert mm.module_size(m[0]) == 64 * 96 + 64 * 4 + 64 * 4  # int8 counted at 1 byte
checks.append("lowvram")
if hasattr(model_patcher, "get_key_weight"):
    from comfy.weight_adapter import LoRAAdapter

    for partial in (False, True):
        m = model()
        codes = m[0].weight.data.clone()
        p = model_patcher.ModelPatcher(m, load_device=CPU, offload_device=CPU)
        p.add_patches({"0.weight": LoRAAdapter(set(), (UP, DOWN, None, None, None, None))}, 1.0)
        if partial:
            lowvram(p, m)
        else:
            p.load(CPU, full_load=True)
        torch.testing.assert_close(m(X), lora_expected(model()), rtol=1e-5, atol=1e-5)  # unpatched codes
        p.unpatch_model(CPU)
        assert torch.equal(m[0].weight.data, codes)
        checks.append("lora-lowvram" if partial else "lora-full")
print("OK", " ".join(checks))
