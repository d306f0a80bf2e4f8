"""The host adapter: the only module of the pack that imports ComfyUI.

Everything ComfyUI-specific is here, behind small functions the node files call:

- :class:`ComfyRuntime` implements the core's ``Runtime`` protocol on ComfyUI: models are
  ``comfy.model_patcher.ModelPatcher``\\ s loaded with ``load_models_gpu`` before compute (so
  ComfyUI's memory manager decides what stays loaded), layers come from ``comfy.ops`` (so the
  low-VRAM mode can load them partially), attention is ComfyUI's ``optimized_attention``,
  progress goes to ``comfy.utils.ProgressBar`` with a latent preview, the interrupt flag is
  checked every step, results go to ComfyUI's intermediate device.
- :class:`LocalRuntime` is the same on plain torch, used when ``comfy`` cannot be imported (unit
  tests call node functions directly; the CLI never comes here).
- Model folders: :func:`register_folders` adds the pack's folders to ``folder_paths``;
  :func:`list_models` / :func:`model_path` list and resolve dropdown entries (diffusers folders
  by folder name, single files by relative path).

Optional ComfyUI APIs are guarded with ``hasattr``, never with version checks: the pack runs on
ComfyUI from March 2024 to today.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..cogvideox_core.errors import Interrupted
from ..cogvideox_core.ops import cast_ops, default_ops, sdpa_attention
from ..cogvideox_core.runtime import TorchRuntime

logger = logging.getLogger(__name__)

WEIGHT_EXTENSIONS = (".safetensors", ".sft")
# Folders searched per kind of weights, in order (DESIGN.md "Model folders"). Keys are
# folder_paths names; "unet" and "clip" are the pre-2025 names of diffusion_models and
# text_encoders. A diffusers tree found under any of them is listed by its folder name.
MODEL_FAMILY_FOLDERS = ("CogVideo", "CogVideoX_Fun", "Fun_Models")
KIND_FOLDERS: dict[str, tuple[str, ...]] = {
    "transformer": MODEL_FAMILY_FOLDERS + ("diffusion_models", "unet"),
    "vae": ("vae",) + MODEL_FAMILY_FOLDERS,
    "text_encoder": ("text_encoders", "clip") + MODEL_FAMILY_FOLDERS,
    "lora": ("loras", "cogvideox_loras"),
}
# folder_paths keys the pack registers -> their folder under ComfyUI's models/
# (cogvideox_loras: where the most used CogVideoX wrapper keeps LoRAs, under the same key)
REGISTERED = {**{k: k for k in MODEL_FAMILY_FOLDERS}, "diffusion_models": "diffusion_models",
              "text_encoders": "text_encoders", "loras": "loras", "vae": "vae",
              "cogvideox_loras": os.path.join("CogVideo", "loras")}
# Fallback models root when ComfyUI is absent (tests set this or COGVIDEOX_MODELS_DIR).
MODELS_DIR: str | None = None
OUTPUT_DIR: str | None = None


# ---- is ComfyUI there? --------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def comfy() -> SimpleNamespace | None:
    """ComfyUI's modules, or None when they cannot be imported (plain torch)."""
    try:
        import comfy.model_management as mm
        import comfy.model_patcher as model_patcher
        import comfy.ops as ops
        import comfy.utils as utils
    except Exception as e:  # not installed, or no GPU without --cpu: run on plain torch
        logger.debug("ComfyUI not importable (%s): plain-torch runtime", e)
        return None
    return SimpleNamespace(mm=mm, model_patcher=model_patcher, ops=ops, utils=utils)


@functools.lru_cache(maxsize=None)
def _folder_paths() -> Any:
    try:
        import folder_paths
    except Exception:
        return None
    return folder_paths


# ---- model folders ------------------------------------------------------------------------

def register_folders() -> None:
    """Add the pack's model folders to ``folder_paths`` (idempotent, cheap: no disk scan).

    Existing entries keep their paths (an ``extra_model_paths.yaml`` may have added some);
    an entry created without extensions gets the weight extensions, so only weights are listed.
    """
    fp = _folder_paths()
    if fp is None:
        return
    for key, rel in REGISTERED.items():
        _ensure_folder(fp, key, os.path.join(fp.models_dir, rel))


def _ensure_folder(fp: Any, key: str, path: str) -> None:
    table = fp.folder_names_and_paths
    if key not in table:
        fp.add_model_folder_path(key, path)
    elif path not in table[key][0]:
        fp.add_model_folder_path(key, path)
    exts = table[key][1]
    if isinstance(exts, set) and not exts:
        exts.update(WEIGHT_EXTENSIONS)


def _bases(key: str) -> list[str]:
    """The folders registered under ``key`` (ComfyUI), or ``MODELS_DIR/key`` without ComfyUI."""
    fp = _folder_paths()
    if fp is not None:
        return list(fp.get_folder_paths(key)) if key in fp.folder_names_and_paths else []
    root = MODELS_DIR or os.environ.get("COGVIDEOX_MODELS_DIR")
    return [os.path.join(root, REGISTERED.get(key, key))] if root else []


def _kind_bases(kind: str) -> list[tuple[str, str]]:
    """(folder key, base path) pairs searched for ``kind``, each real path once."""
    seen, out = set(), []
    for key in KIND_FOLDERS[kind]:
        for base in _bases(key):
            real = os.path.realpath(base)
            if real not in seen and os.path.isdir(base):
                seen.add(real)
                out.append((key, base))
    return out


def _has_weights(folder: str) -> bool:
    try:
        return any(n.endswith(WEIGHT_EXTENSIONS) or n.endswith(".safetensors.index.json")
                   for n in os.listdir(folder))
    except OSError:
        return False


def _dir_entry(path: str, kind: str, family_folder: bool) -> bool:
    """Whether the folder ``path`` is a loadable ``kind``: a diffusers root with that component,
    or (outside the model-family folders) a diffusers component folder (``config.json`` and
    weights); other folders are only where single files are kept."""
    component = {"transformer": "transformer", "vae": "vae", "text_encoder": "text_encoder"}.get(kind)
    if component and os.path.isdir(os.path.join(path, component)):
        return True
    return (not family_folder and kind != "lora" and os.path.isfile(os.path.join(path, "config.json"))
            and _has_weights(path))


def _scan(base: str, kind: str, family_folder: bool) -> list[str]:
    """Entries under ``base``: folders and weight files. Files inside a listed folder are part of
    it. In the model-family folders (diffusers trees, two levels deep) only top-level files are
    single models, and only transformers (VAE and T5 files live in vae/ and text_encoders/)."""
    out: list[str] = []
    for dirpath, dirs, files in os.walk(base, followlinks=True):
        rel = os.path.relpath(dirpath, base)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        if depth and _dir_entry(dirpath, kind, family_folder):
            out.append(rel.replace(os.sep, "/"))
            dirs[:] = []
            continue
        if not family_folder or (depth == 0 and kind == "transformer"):
            out += [os.path.join(rel, f).replace(os.sep, "/").removeprefix("./")
                    for f in files if f.endswith(WEIGHT_EXTENSIONS)]
        dirs[:] = [d for d in dirs if not d.startswith(".")] if depth < 2 or not family_folder else []
    return out


def list_models(kind: str) -> list[str]:
    """Dropdown entries for ``kind`` (transformer, vae, text_encoder, lora): diffusers folders by
    folder name and single files by relative path, from every folder of :data:`KIND_FOLDERS`."""
    names: set[str] = set()
    for key, base in _kind_bases(kind):
        names.update(_scan(base, kind, key in MODEL_FAMILY_FOLDERS))
    return sorted(names, key=str.lower)


def model_path(kind: str, name: str, input_name: str) -> Path:
    """The path of the dropdown entry ``name``; a ValueError naming the input otherwise."""
    rel = os.path.normpath("/" + name).lstrip("/")  # no escaping the folder with ../
    bases = _kind_bases(kind)
    for _key, base in bases:
        candidate = os.path.join(base, rel)
        if os.path.exists(candidate):
            return Path(candidate)
    where = ", ".join(b for _k, b in bases) or "no folder exists yet"
    raise ValueError(f"{input_name}={name!r} is not in the {kind} folders ({where}); "
                     f"choose one of: {', '.join(list_models(kind)[:12]) or 'none found'}")


def output_directory() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_output_directory())
    return Path(OUTPUT_DIR or os.environ.get("COGVIDEOX_OUTPUT_DIR") or "output")


def input_directory() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_input_directory())
    return Path(os.environ.get("COGVIDEOX_INPUT_DIR") or "input")


def input_files(extensions: tuple[str, ...]) -> list[str]:
    """Files in ComfyUI's input folder (and its subfolders) with one of ``extensions``."""
    base = input_directory()
    if not base.is_dir():
        return []
    found = [p.relative_to(base).as_posix() for p in base.rglob("*")
             if p.is_file() and p.suffix.lower() in extensions]
    return sorted(found, key=str.lower)


def input_path(name: str, input_name: str, extensions: tuple[str, ...]) -> Path:
    """The input-folder file ``name``; a ValueError naming the input otherwise."""
    rel = os.path.normpath("/" + name).lstrip("/")
    path = input_directory() / rel
    if not path.is_file():
        raise ValueError(f"{input_name}={name!r} is not a file in the input folder ({input_directory()}); "
                         f"choose one of: {', '.join(input_files(extensions)[:12]) or 'none found'}")
    return path


def save_path(prefix: str, width: int, height: int, extension: str) -> tuple[Path, str, str]:
    """A new file path for ``prefix`` in the output folder: (path, filename, subfolder)."""
    out_dir = output_directory()
    fp = _folder_paths()
    if fp is not None:
        folder, base, counter, subfolder, _ = fp.get_save_image_path(prefix, str(out_dir), width, height)
    else:
        folder = os.path.join(out_dir, os.path.dirname(os.path.normpath(prefix)))
        base, subfolder = os.path.basename(os.path.normpath(prefix)), os.path.dirname(os.path.normpath(prefix))
        os.makedirs(folder, exist_ok=True)
        counter = 1 + sum(1 for f in os.listdir(folder) if f.startswith(base + "_"))
    filename = f"{base}_{counter:05}_{extension}"
    return Path(folder) / filename, filename, subfolder


# ---- devices and dtypes ------------------------------------------------------------------

def devices(role: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) ComfyUI uses for a model of ``role``."""
    c = comfy()
    if c is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return dev, torch.device("cpu")
    mm = c.mm
    if role == "vae":
        return mm.vae_device(), mm.vae_offload_device()
    if role == "text":
        return mm.text_encoder_device(), mm.text_encoder_offload_device()
    return mm.get_torch_device(), mm.unet_offload_device()


def supports_bf16(device: torch.device) -> bool:
    c = comfy()
    if c is not None and hasattr(c.mm, "should_use_bf16"):
        return bool(c.mm.should_use_bf16(device))
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def intermediate_device() -> torch.device:
    c = comfy()
    if c is not None and hasattr(c.mm, "intermediate_device"):
        return c.mm.intermediate_device()
    return torch.device("cpu")


def layer_ops(cast: bool) -> Any:
    """Layer classes to build models with: ``comfy.ops`` under ComfyUI (partial low-VRAM
    loading works on them), the core's otherwise. ``cast``: weights stored in another dtype
    than the compute dtype (fp8) are cast at every call."""
    c = comfy()
    if c is None:
        return cast_ops if cast else default_ops
    return c.ops.manual_cast if cast else c.ops.disable_weight_init


def attention(choice: str) -> Any:
    """The attention function for ``choice`` (auto, comfy, sdpa)."""
    if choice == "sdpa":
        return sdpa_attention
    if comfy() is not None:
        try:
            from comfy.ldm.modules.attention import optimized_attention
            return optimized_attention
        except Exception as e:  # an old or stripped ComfyUI: torch's own is always there
            logger.warning("ComfyUI's optimized_attention is not available (%s): using torch SDPA", e)
    return sdpa_attention


# ---- model wrapping -----------------------------------------------------------------------

class LocalPatcher:
    """The part of ``ModelPatcher`` the pack uses, on plain torch: LoRA patches merged into
    the weights while loaded (originals kept on the side and put back when patches change)."""

    def __init__(self, model: nn.Module, load_device: torch.device, offload_device: torch.device) -> None:
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.patches: dict[str, list[tuple[float, Any]]] = {}

    def clone(self) -> "LocalPatcher":
        other = LocalPatcher(self.model, self.load_device, self.offload_device)
        other.patches = {k: list(v) for k, v in self.patches.items()}
        return other

    def add_patches(self, patches: Mapping[str, Any], strength: float = 1.0) -> list[str]:
        keys = set(self.model.state_dict().keys())
        added = [k for k in patches if k in keys]
        for k in added:
            self.patches.setdefault(k, []).append((strength, patches[k]))
        return added

    def apply(self) -> None:
        """Move to the load device with this patcher's patches merged (and nothing else)."""
        state = getattr(self.model, "_cogvideox_patch_state", None)
        if state is None:
            state = {"backup": {}, "owner": None}
            self.model._cogvideox_patch_state = state  # type: ignore[attr-defined]
        self.model.to(self.load_device)
        if state["owner"] is self:
            return
        params = dict(self.model.named_parameters())
        for key, original in state["backup"].items():
            params[key].data = original.to(self.load_device)
        state["backup"] = {}
        for key, plist in self.patches.items():
            p = params[key]
            state["backup"][key] = p.data
            merged = p.data.float()
            for strength, lora in plist:
                merged = merged + strength * lora.delta(merged.device)
            p.data = merged.to(p.dtype)
        state["owner"] = self


def wrap(model: nn.Module, role: str) -> Any:
    """``model`` in a ``ModelPatcher`` (ComfyUI) or a :class:`LocalPatcher`."""
    load_device, offload_device = devices(role)
    c = comfy()
    if c is None:
        return LocalPatcher(model, load_device, offload_device)
    return c.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def lora_patch(lora: Any) -> Any:
    """One core LoRA weight (``up``, ``down``, ``alpha``) as a patch ComfyUI's patcher applies:
    a ``LoRAAdapter`` where ComfyUI has weight adapters, the ``("lora", ...)`` tuple before
    (six fields; older versions read the first four)."""
    if comfy() is None:
        return lora
    try:
        from comfy.weight_adapter import LoRAAdapter  # ComfyUI from 2025
    except Exception:
        LoRAAdapter = None
    weights = (lora.up, lora.down, lora.alpha, None, None, None)
    if LoRAAdapter is not None:
        return LoRAAdapter(set(), weights)
    return ("lora", weights)


# ---- the runtime --------------------------------------------------------------------------

class LocalRuntime(TorchRuntime):
    """The core's plain-torch runtime plus the patchers of the models in use."""

    def __init__(self, patchers: Sequence[Any] = ()) -> None:
        device = patchers[0].load_device if patchers else None
        super().__init__(device=device, show_progress=False)
        self._patchers = list(patchers)
        self.steps: list[tuple[int, int]] = []  # progress calls, for tests

    def load(self, model: nn.Module, extra_memory: int = 0) -> None:
        patcher = _find(self._patchers, model)
        if patcher is not None:
            patcher.apply()
        else:
            model.to(self.device)

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        self.steps.append((step, total))


def _find(patchers: Iterable[Any], model: nn.Module) -> Any:
    return next((p for p in patchers if p.model is model), None)


class ComfyRuntime:
    """The core's ``Runtime`` on ComfyUI (see the module docstring)."""

    def __init__(self, patchers: Sequence[Any] = ()) -> None:
        c = comfy()
        self._c, self._patchers = c, list(patchers)
        self.device = patchers[0].load_device if patchers else c.mm.get_torch_device()
        self.offload_device = patchers[0].offload_device if patchers else c.mm.unet_offload_device()
        self.intermediate_device = intermediate_device()
        self.ops = c.ops.disable_weight_init
        self.attention = attention("auto")
        self._bar: Any = None
        self._preview = _preview_enabled()

    def load(self, model: nn.Module, extra_memory: int = 0) -> None:
        patcher = _find(self._patchers, model)
        if patcher is None:  # a model the node did not hand in: wrap it for this run
            patcher = wrap(model, "diffusion")
            self._patchers.append(patcher)
        self._c.mm.load_models_gpu([patcher], memory_required=int(extra_memory))

    def free_memory(self) -> int:
        return int(self._c.mm.get_free_memory(self.device))

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        if self._bar is None or self._bar.total != total:
            self._bar = self._c.utils.ProgressBar(total)
        image = latent_preview(preview) if (self._preview and preview is not None) else None
        self._bar.update_absolute(step, total, image)

    def check_interrupt(self) -> None:
        mm = self._c.mm
        try:
            mm.throw_exception_if_processing_interrupted()
        except mm.InterruptProcessingException:
            raise _host_interrupted()("interrupted by the user") from None


@functools.lru_cache(maxsize=None)
def _host_interrupted() -> type:
    """An exception that is both ComfyUI's interrupt (so the UI shows "interrupted") and the
    core's :class:`Interrupted` (so core code can clean up on it)."""
    return type("HostInterrupted", (Interrupted, comfy().mm.InterruptProcessingException), {})


def runtime(*patchers: Any) -> Any:
    """The runtime for one node execution using ``patchers``' models."""
    return ComfyRuntime(patchers) if comfy() is not None else LocalRuntime(patchers)


def load(runtime_: Any, patcher: Any, extra_memory: int = 0) -> nn.Module:
    """Load ``patcher``'s model for compute through ``runtime_`` and return it."""
    runtime_.load(patcher.model, extra_memory)
    return patcher.model


def to_intermediate(t: torch.Tensor) -> torch.Tensor:
    return t.to(intermediate_device())


def check_interrupt() -> None:
    """Honour ComfyUI's interrupt between steps of work that has no runtime (file writing)."""
    c = comfy()
    if c is not None:
        c.mm.throw_exception_if_processing_interrupted()


# ---- previews -----------------------------------------------------------------------------

def _preview_enabled() -> bool:
    try:
        from comfy.cli_args import LatentPreviewMethod, args
    except Exception:
        return False
    return args.preview_method != LatentPreviewMethod.NoPreviews


def latent_preview(x0: torch.Tensor, max_size: int = 512) -> Any:
    """A ("JPEG", PIL image, max size) preview of predicted clean latents [B, C, F, H, W] (what
    the core's sampler callback hands out): the middle frame's three strongest principal
    components as RGB. Data-free (no per-model colour factors): false colours, true structure."""
    from PIL import Image

    frame = x0[0, :, x0.shape[2] // 2].float().cpu()  # [C, H, W]
    c, h, w = frame.shape
    flat = frame.reshape(c, -1).T  # [H*W, C]
    flat = flat - flat.mean(0)
    _u, _s, v = torch.linalg.svd(flat, full_matrices=False)
    comps = v[:3]  # [<=3, C]
    comps = comps * comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()  # stable signs
    rgb = (flat @ comps.T).T.reshape(-1, h, w)  # [<=3, H, W]
    rgb = torch.cat([rgb, rgb.new_zeros(3 - rgb.shape[0], h, w)]) if rgb.shape[0] < 3 else rgb
    rgb = rgb / (rgb.abs().amax(dim=(1, 2), keepdim=True) + 1e-6)
    img = ((rgb + 1) * 127.5).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return ("JPEG", Image.fromarray(img), max_size)


__all__ = ["comfy", "register_folders", "list_models", "model_path", "output_directory",
           "save_path", "input_directory", "input_files", "input_path", "devices", "supports_bf16", "intermediate_device", "layer_ops", "attention",
           "LocalPatcher", "wrap", "lora_patch", "LocalRuntime", "ComfyRuntime", "runtime", "load",
           "to_intermediate", "check_interrupt", "latent_preview", "KIND_FOLDERS", "MODELS_DIR"]
