"""The CogVideoX Torch Compile node in a real ComfyUI's model management (not a pytest file).

``python host_compile.py COMFY_DIR MODELS_DIR`` imports ComfyUI (``--cpu``) and the pack as
``host_contract.py`` does, compiles the tiny 2B transformer through the node and drives it through
ComfyUI's memory manager: load (the object patches go on), a load of the uncompiled input model
(they come off: the input stays eager), a LoRA clone of the compiled model, and a partial
(low-VRAM) load, whose per-call weight casting recompiles once. Every output must equal the eager
one within 1e-4. Prints ``OK step`` per step and ``HOST COMPILE OK`` at the end; failures raise.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

COMFY_DIR, MODELS = Path(sys.argv[1]), Path(sys.argv[2])
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_boot import boot  # noqa: E402

pack = boot(COMFY_DIR, MODELS, ("CogVideo", "loras"))
import comfy.model_management as mm  # noqa: E402
from cogvideox_pack.cogvideox_core.models import compile as comp  # noqa: E402

NODES = pack.NODE_CLASS_MAPPINGS
TOL = 1e-4


def node(name: str, *args):
    cls = NODES[name]
    return getattr(cls(), cls.FUNCTION)(*args)


gen = torch.Generator().manual_seed(0)
X = torch.randn(1, 3, 16, 8, 12, generator=gen)  # [B, F_lat, C, H/8, W/8]: 9 frames of 64x96
TEXT = torch.randn(1, 226, 32, generator=gen)


def probe(patcher) -> torch.Tensor:
    """One forward after ComfyUI loads ``patcher`` (applying its patches and object patches)."""
    mm.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model(X, torch.tensor([500.0]), TEXT)


def same(step: str, got: torch.Tensor, want: torch.Tensor, compiled: bool, model) -> None:
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"{step}: differs by {diff}"
    assert comp.is_compiled(model) == compiled, f"{step}: blocks compiled={not compiled}"
    print(f"OK {step}", flush=True)


model, _fps = node("CogVideoXModelLoader", "CogVideoX-2b", "fp32")
compiled, = node("CogVideoXTorchCompile", model, "default")
assert compiled.patcher is not model.patcher and compiled.model is model.model
eager = probe(model.patcher)
assert not comp.is_compiled(model.model), "the node compiled its input model"
same("load compiled", probe(compiled.patcher), eager, True, model.model)
same("load the input model again", probe(model.patcher), eager, False, model.model)
lora, = node("CogVideoXLoraLoader", compiled, "tiny_peft.safetensors", 0.7)
lora_plain, = node("CogVideoXLoraLoader", model, "tiny_peft.safetensors", 0.7)
lora_eager = probe(lora_plain.patcher)
same("LoRA on the compiled model", probe(lora.patcher), lora_eager, True, model.model)
mm.unload_all_models()
same("unload all", probe(model.patcher), eager, False, model.model)
mm.unload_all_models()
loaded = mm.LoadedModel(compiled.patcher)
loaded.model_load(lowvram_model_memory=1)  # as on a small GPU: weights cast at call time
mm.current_loaded_models.insert(0, loaded)
cast = sum(1 for m in model.model.modules() if getattr(m, "comfy_cast_weights", False))
assert cast > 0, "partial load cast no layer"
with torch.no_grad():
    same(f"partial load ({cast} layers cast per call)", model.model(X, torch.tensor([500.0]), TEXT),
         eager, True, model.model)
mm.unload_all_models()
assert comp.compiled_signatures() == 1 and comp.unexpected_recompiles() <= 1, \
    (comp.compiled_signatures(), comp.unexpected_recompiles())  # the partial load's casting: one more
print("HOST COMPILE OK", flush=True)
