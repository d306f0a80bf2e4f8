"""Shared by the probes that run a quantized model inside a real ComfyUI's Python
(tests/comfy_int8_probe.py, tests/comfy_scaled_fp8_probe.py): start ComfyUI's modules on the
CPU, load a model through ComfyUI's own ``ModelPatcher`` fully or in low-VRAM partial mode in
the ComfyUI of March 2024 and of December 2025, and the checks each probe runs on its layers.

Each check builds a fresh model with ``make()``, runs it with ``run(model)`` and compares with the
model's output before ComfyUI touched it; the quantized storage must be unchanged afterwards.
Call :func:`boot` before anything imports ``comfy``.
"""
import importlib.util
import sys
from types import ModuleType
from typing import Callable

import torch

CPU = torch.device("cpu")
TOL = dict(rtol=1e-5, atol=1e-5)  # the same stored numbers computed in float32 in another order
Make = Callable[[], torch.nn.Module]
Run = Callable[[torch.nn.Module], torch.Tensor]


def boot(comfy_dir: str, pack: str) -> None:
    """ComfyUI's modules importable, its arguments parsed as ``main.py --cpu``; the pack's root
    importable (``cogvideox_core``)."""
    sys.argv = ["main.py", "--cpu"]
    sys.path[:0] = [comfy_dir, pack]
    import comfy.options

    comfy.options.enable_args_parsing()


def import_pack(pack: str) -> ModuleType:
    """The pack imported as the package ``cogvideox_pack``, as ComfyUI imports a custom node pack
    (its node layer's relative imports work; its core is then ``cogvideox_pack.cogvideox_core``)."""
    spec = importlib.util.spec_from_file_location("cogvideox_pack", f"{pack}/__init__.py",
                                                  submodule_search_locations=[pack])
    module = importlib.util.module_from_spec(spec)
    sys.modules["cogvideox_pack"] = module
    spec.loader.exec_module(module)
    return module


def patcher():
    import comfy.model_patcher

    return comfy.model_patcher


def module_size(m: torch.nn.Module) -> int:
    """The bytes ComfyUI's memory manager counts for ``m``."""
    import comfy.model_management

    return comfy.model_management.module_size(m)


def has_hooks() -> bool:
    """ComfyUI patches weights through a layer's ``convert_weight`` / ``set_weight`` (late 2024 on)."""
    return hasattr(patcher(), "get_key_weight")


def quantized(m: torch.nn.Module, kind: type) -> list[torch.nn.Module]:
    return [x for x in m.modules() if isinstance(x, kind)]


def load(p, m: torch.nn.Module, partial: bool, kind: type, stored: torch.dtype) -> None:
    """Load as ``load_models_gpu`` does, fully or with 1 byte of VRAM (every layer that ComfyUI
    can cast stays behind and is cast per call); the layers keep their stored dtype."""
    if hasattr(p, "load"):  # ComfyUI from mid 2024
        p.load(CPU, lowvram_model_memory=1 if partial else 0, force_patch_weights=False, full_load=not partial)
    elif partial:
        p.patch_model_lowvram(CPU, lowvram_model_memory=1)
    else:
        p.patch_model(CPU)
    layers = quantized(m, kind)
    assert layers and all(bool(x.comfy_cast_weights) == partial and x.weight.dtype == stored for x in layers)


def storage(m: torch.nn.Module, kind: type) -> dict[str, torch.Tensor]:
    """The quantized layers' state as bytes (fp8 has no ``torch.equal`` on every torch)."""
    return {f"{i}.{k}": v.detach().reshape(-1).view(torch.uint8).clone()
            for i, x in enumerate(quantized(m, kind)) for k, v in x.state_dict().items()}


def same_storage(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_loads(make: Make, run: Run, kind: type, stored: torch.dtype) -> list[str]:
    """Full and low-VRAM loads: the output as before, ComfyUI counting the stored bytes, the
    storage unchanged after unpatching."""
    done = []
    for partial in (False, True):
        m = make()
        plain, before = run(m), storage(m, kind)
        p = patcher().ModelPatcher(m, load_device=CPU, offload_device=CPU)
        load(p, m, partial, kind, stored)
        assert torch.equal(run(m), plain)  # the stored values cast per call when partial
        for layer in quantized(m, kind):
            assert module_size(layer) == sum(t.nbytes for t in layer.state_dict().values())
        p.unpatch_model(CPU)
        assert same_storage(storage(m, kind), before)
        assert torch.equal(run(m), plain)
        done.append("lowvram" if partial else "full")
    return done


def check_lora(make: Make, run: Run, kind: type, stored: torch.dtype, key: str,
               up: torch.Tensor, down: torch.Tensor, expected: Callable[[torch.nn.Module], torch.Tensor]) -> list[str]:
    """A LoRA on weight ``key`` through ComfyUI's own patching (the layer's hooks), full and
    partial: the output ``expected(fresh model)`` (the update added to the real weight,
    re-quantized with the layer's scale), different from the plain output; the stored values
    restored after unpatching."""
    from comfy.weight_adapter import LoRAAdapter

    done = []
    for partial in (False, True):
        m = make()
        plain, before, want = run(m), storage(m, kind), expected(make())
        assert not torch.allclose(want, plain, **TOL)  # the update is visible in the output
        p = patcher().ModelPatcher(m, load_device=CPU, offload_device=CPU)
        p.add_patches({key: LoRAAdapter(set(), (up, down, None, None, None, None))}, 1.0)
        load(p, m, partial, kind, stored)
        torch.testing.assert_close(run(m), want, **TOL)
        p.unpatch_model(CPU)
        assert same_storage(storage(m, kind), before)
        assert torch.equal(run(m), plain)
        done.append("lora-lowvram" if partial else "lora-full")
    return done
