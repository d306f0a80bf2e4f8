"""Run inside a real ComfyUI's Python (tests/test_gguf_comfy.py): GGUFLinear under ComfyUI's own
``ModelPatcher`` for each quantization type in the data file: full load, low-VRAM partial load
(the uint8 blocks stay the parameter and are what ComfyUI counts and casts per call), unload;
a LoRA through the pack's LoRA route (``host.add_layer_lora``: an object patch, added at
compute), full and partial; where the patcher has ``get_key_weight`` (2025), a ComfyUI weight
patch on a GGUF layer in low-VRAM mode (``convert_weight`` / ``set_weight`` per call) and the
refusal of a full-load merge into the blocks. Prints ``OK <checks>``.

argv: ComfyUI folder, the pack's root, the data file (tests/test_gguf_comfy.py writes it).
"""
import importlib.util
import inspect
import sys

comfy_dir, pack, data_path = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = ["main.py", "--cpu"]
sys.path[:0] = [comfy_dir, pack]
import torch  # noqa: E402
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher as model_patcher  # noqa: E402

spec = importlib.util.spec_from_file_location("cogvideox_pack", f"{pack}/__init__.py", submodule_search_locations=[pack])
module = importlib.util.module_from_spec(spec)
sys.modules["cogvideox_pack"] = module
spec.loader.exec_module(module)
from cogvideox_pack.cogvideox_core.loading.gguf_file import GGUFLinear  # noqa: E402
from cogvideox_pack.cogvideox_core.loading.lora import LoraWeight  # noqa: E402
from cogvideox_pack.nodes import host  # noqa: E402

CPU = torch.device("cpu")
DATA = torch.load(data_path)
X, B, UP, DOWN = DATA["x"], DATA["bias"], DATA["up"], DATA["down"]
OUT, IN = B.shape[0], X.shape[1]
STRENGTH = 0.8
HOOKS = hasattr(model_patcher, "get_key_weight")


def model(qtype: str) -> torch.nn.Sequential:
    m = torch.nn.Sequential(GGUFLinear(IN, OUT, True, device="meta", dtype=torch.float32, qtype=qtype))
    m[0].load_state_dict({"weight": DATA[qtype]["raw"], "bias": B}, assign=True)
    return m


def load(p, m, partial: bool) -> None:
    """As ``load_models_gpu`` does: ``patch_model`` (object patches, then the weights)."""
    if partial and "lowvram_model_memory" in inspect.signature(p.patch_model).parameters:  # from mid 2024
        p.patch_model(CPU, lowvram_model_memory=1)
    elif partial:
        p.patch_model_lowvram(CPU, lowvram_model_memory=1)
    else:
        p.patch_model(CPU)
    assert m[0].weight.dtype == torch.uint8 and bool(m[0].comfy_cast_weights) == partial


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def check_loads(qtype: str, ref: torch.Tensor, checks: list) -> None:
    for partial in (False, True):
        m = model(qtype)
        raw = m[0].weight.data.clone()
        p = model_patcher.ModelPatcher(m, load_device=CPU, offload_device=CPU)
        load(p, m, partial)
        close(m(X), ref)  # the blocks dequantized per call (cast per call when partial)
        assert mm.module_size(m[0]) == raw.nbytes + B.nbytes  # ComfyUI counts the quantized bytes
        p.unpatch_model(CPU)
        assert torch.equal(m[0].weight.data, raw) and m[0].weight.dtype == torch.uint8
        close(m(X), ref)
        checks.append(f"{qtype}:{'lowvram' if partial else 'full'}")


def check_lora(qtype: str, ref: torch.Tensor, merged: torch.Tensor, checks: list) -> None:
    for partial in (False, True):
        m = model(qtype)
        raw, plain = m[0].weight.data.clone(), m(X)
        p = model_patcher.ModelPatcher(m, load_device=CPU, offload_device=CPU).clone()
        host.add_layer_lora(p, "0", STRENGTH, LoraWeight(UP, DOWN))
        load(p, m, partial)
        close(m(X), merged)
        assert torch.equal(m[0].weight.data, raw)  # never written into the blocks
        p.unpatch_model(CPU)
        assert torch.equal(m(X), plain) and torch.equal(m[0].weight.data, raw)
        checks.append(f"{qtype}:lora-{'lowvram' if partial else 'full'}")


def check_hooks(qtype: str, merged: torch.Tensor, checks: list) -> None:
    from comfy.weight_adapter import LoRAAdapter

    m = model(qtype)
    raw, plain = m[0].weight.data.clone(), m(X)
    p = model_patcher.ModelPatcher(m, load_device=CPU, offload_device=CPU)
    p.add_patches({"0.weight": LoRAAdapter(set(), (UP, DOWN, None, None, None, None))}, STRENGTH)
    load(p, m, True)
    close(m(X), merged)  # ComfyUI's per-call patch on the dequantized weight
    p.unpatch_model(CPU)
    assert torch.equal(m(X), plain) and torch.equal(m[0].weight.data, raw)
    try:
        p.patch_model(CPU)
    except ValueError as e:
        assert "GGUF quantized blocks" in str(e), e
    else:
        raise AssertionError("a full-load merge into GGUF blocks was not refused")
    checks.append(f"{qtype}:hooks")


checks: list = []
for qtype in DATA["types"]:
    real = DATA[qtype]["real"]
    ref = torch.nn.functional.linear(X, real, B)
    merged = torch.nn.functional.linear(X, real + STRENGTH * (UP @ DOWN), B)
    check_loads(qtype, ref, checks)
    check_lora(qtype, ref, merged, checks)
    if HOOKS:
        check_hooks(qtype, merged, checks)
print("OK", " ".join(checks))
