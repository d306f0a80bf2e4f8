"""Stand-ins for ComfyUI's model handling, for node functions called without ComfyUI.

The pack's own fallback (``nodes/host`` without ``comfy``) only moves models to a device; the
node tests also need LoRA patches applied and progress recorded. :class:`MergingPatcher` is the
part of ``ModelPatcher`` the LoRA node uses, :class:`RecordingRuntime` the core's plain-torch
runtime that applies a model's patcher when loading it; :func:`install` puts both behind
``host.wrap`` and ``host.runtime``, which the node files call.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator, Mapping, Sequence

import pytest
import torch
from torch import nn

from cogvideox_pack.cogvideox_core.runtime import TorchRuntime

# model -> {"backup": original weights of the merged keys, "owner": the patcher merged in}:
# the model is shared by a patcher and its clones, so what is merged lives with the model.
_MERGED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def node(name: str) -> Any:
    """The function of the pack's node class ``name`` on a fresh instance."""
    from cogvideox_pack import NODE_CLASS_MAPPINGS

    cls = NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)


def sample_tiny(model: Any, cond: Any) -> torch.Tensor:
    """The Sampler node on an empty latent of the tiny models' size: 2 steps, seed 1, CFG 6."""
    from tiny_models import FRAMES, HEIGHT, WIDTH

    latent = node("CogVideoXEmptyLatent")(WIDTH, HEIGHT, FRAMES, 1)[0]
    return node("CogVideoXSampler")(model, cond, latent, 1, 2, 6.0, "auto", 1.0, None)[0]["samples"]


def lora_delta(patch: Any, weight: torch.Tensor) -> torch.Tensor:
    """The float32 change of ``weight`` by one patch as ``host.lora_patch`` makes it without
    ComfyUI: ComfyUI's ``("lora", (up, down, alpha, ...))``, scaled by alpha / rank (1 without
    alpha), as ComfyUI's ``calculate_weight`` merges it."""
    kind, (up, down, alpha, *_rest) = patch
    assert kind == "lora", patch
    up, down = up.to(weight.device, torch.float32), down.to(weight.device, torch.float32)
    scale = 1.0 if alpha is None else alpha / down.shape[0]
    return (scale * (up.flatten(1) @ down.flatten(1))).reshape(weight.shape)


class MergingPatcher:
    """``ModelPatcher``'s ``model``, devices, ``clone``, ``add_patches`` and ``add_object_patch``;
    :meth:`apply` merges this patcher's patches into the weights and sets its object patches
    (the originals kept aside and put back first)."""

    def __init__(self, model: nn.Module, load_device: torch.device, offload_device: torch.device) -> None:
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.patches: dict[str, list[tuple[float, Any]]] = {}
        self.object_patches: dict[str, Any] = {}

    def clone(self) -> "MergingPatcher":
        other = MergingPatcher(self.model, self.load_device, self.offload_device)
        other.patches = {k: list(v) for k, v in self.patches.items()}
        other.object_patches = dict(self.object_patches)
        return other

    def add_object_patch(self, name: str, obj: Any) -> None:
        self.object_patches[name] = obj

    def add_patches(self, patches: Mapping[str, Any], strength: float = 1.0) -> list[str]:
        keys = set(self.model.state_dict().keys())
        added = [k for k in patches if k in keys]
        for k in added:
            self.patches.setdefault(k, []).append((strength, patches[k]))
        return added

    def apply(self) -> None:
        """Move to the load device with this patcher's patches merged (and nothing else)."""
        state = _MERGED.setdefault(self.model, {"backup": {}, "owner": None, "objects": {}})
        self.model.to(self.load_device)
        if state["owner"] is self:
            return
        params = dict(self.model.named_parameters())
        for key, original in state["backup"].items():
            params[key].data = original.to(self.load_device)
        state["backup"] = {}
        _set_objects(self.model, state, self.object_patches)
        for key, plist in self.patches.items():
            p = params[key]
            state["backup"][key] = p.data
            convert, store = _hooks(self.model, key)  # quantized layers, as ModelPatcher uses them
            merged = convert(p.data.float(), inplace=True) if convert else p.data.float()
            for strength, patch in plist:
                merged = merged + strength * lora_delta(patch, merged)
            p.data = store(merged, return_weight=True) if store else merged.to(p.dtype)
        state["owner"] = self


def _set_objects(model: nn.Module, state: dict, objects: Mapping[str, Any]) -> None:
    """Put back the attributes the previous owner replaced, then set ``objects`` (dotted names)."""
    for name, original in state["objects"].items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, original)
    state["objects"] = {}
    for name, obj in objects.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        state["objects"][name] = getattr(module, attr)
        setattr(module, attr, obj)


def _hooks(model: nn.Module, key: str) -> tuple[Any, Any]:
    """The ``convert_<param>`` / ``set_<param>`` methods of the module owning ``key`` (ComfyUI's
    ``get_key_weight``: layers that store weights quantized define them), or Nones."""
    module_name, _, param = key.rpartition(".")
    module = model.get_submodule(module_name)
    return getattr(module, f"convert_{param}", None), getattr(module, f"set_{param}", None)


class RecordingRuntime(TorchRuntime):
    """The core's plain-torch runtime over a node's patchers: loading a model applies its
    patcher; every progress call is kept in ``steps``; ``interrupt_event`` stops the run."""

    def __init__(self, patchers: Sequence[MergingPatcher] = ()) -> None:
        super().__init__(device=patchers[0].load_device if patchers else None, show_progress=False)
        self.patchers = list(patchers)
        self.steps: list[tuple[int, int]] = []

    def load(self, model: nn.Module, extra_memory: int = 0) -> None:
        patcher = next((p for p in self.patchers if p.model is model), None)
        if patcher is None:
            model.to(self.device)
        else:
            patcher.apply()

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        self.steps.append((step, total))


def install(monkeypatch: pytest.MonkeyPatch, host: Any) -> None:
    """Route ``host.wrap`` and ``host.runtime`` to the stand-ins; the devices stay the pack's."""
    plain_wrap = host.wrap

    def wrap(model: nn.Module, role: str) -> MergingPatcher:
        plain = plain_wrap(model, role)
        return MergingPatcher(model, plain.load_device, plain.offload_device)

    monkeypatch.setattr(host, "wrap", wrap)
    monkeypatch.setattr(host, "runtime", lambda *patchers: RecordingRuntime(patchers))


@contextlib.contextmanager
def stand_in(host: Any, models_dir: Any) -> Iterator[None]:
    """Within the block: the stand-in ComfyUI of :func:`install` and ``models_dir`` as the
    pack's models folder."""
    with pytest.MonkeyPatch.context() as mp:
        install(mp, host)
        mp.setattr(host.folders, "MODELS_DIR", str(models_dir))
        yield
