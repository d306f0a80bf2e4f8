"""The ModelPatcher contract, run inside a real ComfyUI's Python (not a pytest file).

``python host_contract.py COMFY_DIR MODELS_DIR`` imports ComfyUI (``--cpu``) and the pack as
ComfyUI imports a custom node folder, loads the tiny 2B transformer, VAE and T5 through the
pack's loader nodes and a LoRA-patched clone of the transformer, and drives every model through
what ComfyUI's memory manager does to it: load, partial (low-VRAM) load, unload, detach, reload
after another model used the device, LoRA patch and unpatch, ``clone()``. After every step each
model's output must equal its output before ComfyUI touched it (LoRA: the merged reference).
ComfyUI APIs are feature-detected, as the pack does. Prints one ``OK step`` line per step and
``CONTRACT OK`` at the end; any failure raises.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

COMFY_DIR, MODELS = Path(sys.argv[1]), Path(sys.argv[2])
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_boot import boot  # noqa: E402

pack = boot(COMFY_DIR, MODELS, ("CogVideo", "vae", "text_encoders", "loras"))
import comfy.model_management as mm  # noqa: E402
from cogvideox_pack.cogvideox_core.loading.lora import load_lora  # noqa: E402
from cogvideox_pack.cogvideox_core.loading.text import encode_prompts  # noqa: E402

NODES = pack.NODE_CLASS_MAPPINGS


def node(name: str, *args):
    cls = NODES[name]
    return getattr(cls(), cls.FUNCTION)(*args)


model, _fps = node("CogVideoXModelLoader", "CogVideoX-2b", "fp32")
lora_model, = node("CogVideoXLoraLoader", model, "tiny_peft.safetensors", 0.7)
vae, = node("CogVideoXVAELoader", "CogVideoX-2b", "fp32")
t5, = node("CogVideoXT5Loader", "CogVideoX-2b", "fp32")
PATCHERS = {"t5": t5.patcher, "vae": vae.patcher, "transformer": model.patcher, "lora": lora_model.patcher}
assert lora_model.patcher is not model.patcher and lora_model.patcher.model is model.patcher.model

gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    CONTEXT = encode_prompts(t5.patcher.model, t5.tokenizer, ["a panda"])  # [1, 226, 32]
X = torch.randn(1, 3, 16, 8, 12, generator=gen)  # [B, F_lat, C, H/8, W/8]: 9 frames of 64x96
Z = torch.randn(1, 16, 2, 8, 12, generator=gen)  # [B, C, F_lat, H/8, W/8]


def probe(kind: str) -> torch.Tensor:
    """One forward of the model behind ``kind`` on the device its weights are used on."""
    m = PATCHERS[kind].model
    with torch.no_grad():
        if kind == "t5":
            return encode_prompts(m, t5.tokenizer, ["a panda"], device=PATCHERS[kind].load_device)
        if kind == "vae":
            return m.decode(Z)
        return m(X, torch.tensor([500.0]), CONTEXT)


def lora_reference() -> torch.Tensor:
    """The transformer with the LoRA merged by hand (W + strength * scale * up @ down)."""
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    weights = load_lora(next((MODELS / "loras").glob("tiny_peft.safetensors")), shapes)
    params = dict(model.model.named_parameters())
    saved = {k: params[k].data.clone() for k in weights}
    for key, w in weights.items():
        params[key].data += 0.7 * w.delta(params[key].device).to(params[key].dtype)
    try:
        return probe("transformer")
    finally:
        for key, data in saved.items():
            params[key].data = data


BASE = {kind: probe(kind) for kind in ("t5", "vae", "transformer")}
BASE["lora"] = lora_reference()
assert (BASE["lora"] - BASE["transformer"]).abs().max() > 1e-3, "the LoRA changes nothing"


def check(step: str, kinds=tuple(PATCHERS)) -> None:
    for kind in kinds:
        if kind in ("transformer", "lora"):
            mm.load_models_gpu([PATCHERS[kind]])  # the patcher whose patches apply now
        diff = (probe(kind) - BASE[kind]).abs().max().item()
        assert diff <= 1e-5, f"{step}: {kind} output differs by {diff}"
    print(f"OK {step}", flush=True)


def partial_load(patcher) -> int:
    """Load ``patcher`` with almost no room, as ComfyUI's memory manager does on a small GPU
    (registered with it, so its unload undoes this); returns how many layers ComfyUI set to
    cast their weights at call time."""
    loaded = mm.LoadedModel(patcher)
    loaded.model_load(lowvram_model_memory=1)
    mm.current_loaded_models.insert(0, loaded)
    lowvram = getattr(patcher.model, "model_lowvram", getattr(patcher, "model_lowvram", False))
    assert lowvram, "partial load did not go low-VRAM"
    return sum(1 for m in patcher.model.modules() if getattr(m, "comfy_cast_weights", False))


def not_streamable(patcher) -> list[str]:
    """Modules owning weights that neither ComfyUI can stream nor cast themselves at call time."""
    from cogvideox_pack.cogvideox_core.ops import cast_ops
    from cogvideox_pack.cogvideox_core.loading.text import _cast_t5_norm

    own = (_cast_t5_norm(), cast_ops.Embedding)  # the core's layers that cast themselves
    return sorted({type(m).__name__ for m in patcher.model.modules()
                   if any(True for _ in m.parameters(recurse=False))
                   and not hasattr(m, "comfy_cast_weights") and not isinstance(m, own)})


# load (through the nodes' own path first: the runtime asks load_models_gpu)
node("CogVideoXTextEncode", t5, "a panda", "")
for kind in PATCHERS:
    mm.load_models_gpu([PATCHERS[kind]])
check("load")
# reload after other models used the device
for order in (("vae", "t5", "transformer"), ("lora", "vae", "t5")):
    for kind in order:
        mm.load_models_gpu([PATCHERS[kind]])
check("reload after another model")
# unload and detach through the memory manager
mm.unload_all_models()
assert not mm.current_loaded_models
check("unload_all_models then reload")
mm.free_memory(1e30, mm.get_torch_device())
for patcher in PATCHERS.values():
    patcher.detach() if hasattr(patcher, "detach") else patcher.unpatch_model(patcher.offload_device)
check("detach then reload")
# partial (low-VRAM) loading
mm.unload_all_models()
for kind in ("t5", "vae", "transformer", "lora"):
    mm.unload_all_models()
    if kind == "lora" and not hasattr(PATCHERS[kind], "partially_load"):
        # ComfyUI 2024's low-VRAM LoRA patch adds to ``weight.to(input.device)``, which is the
        # stored weight itself when it already sits on the compute device (only on a CPU-only
        # host, where ComfyUI never loads partially): it would corrupt the shared weights here.
        print("SKIP partial load lora: ComfyUI 2024 patches in place on a CPU-only host", flush=True)
        continue
    missing = not_streamable(PATCHERS[kind])
    assert not missing, f"{kind}: layers ComfyUI cannot stream: {missing}"
    cast = partial_load(PATCHERS[kind])
    assert cast > 0, f"{kind}: no layer streams under partial loading"
    diff = (probe(kind) - BASE[kind]).abs().max().item()
    assert diff <= 1e-5, f"partial load: {kind} differs by {diff}"
    print(f"OK partial load {kind} ({cast} layers cast at call time)", flush=True)
mm.unload_all_models()
check("full load after partial")
# clone: LoRA patches stay with the clone
clone = model.patcher.clone()
assert clone.model is model.patcher.model and not clone.patches
mm.load_models_gpu([lora_model.patcher])
mm.load_models_gpu([clone])
diff = (probe("transformer") - BASE["transformer"]).abs().max().item()
assert diff <= 1e-5, f"a clone without patches runs the LoRA weights: {diff}"
check("LoRA patch and unpatch across clones", ("lora", "transformer", "lora"))
print("CONTRACT OK", flush=True)
