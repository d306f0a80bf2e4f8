"""Model, input and output folders: ComfyUI's ``folder_paths`` when it is there, else the
``MODELS_DIR`` / ``OUTPUT_DIR`` set here (tests) or the ``COGVIDEOX_*_DIR`` variables.

Dropdowns list diffusers folders by folder name and single files by relative path, from every
folder a CogVideoX user may already have them in (DESIGN.md "Model folders"), then the demo
models shipped inside the pack (:data:`SHIPPED`), found where they are: nothing to copy.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEIGHT_EXTENSIONS = (".safetensors", ".sft")
# Torch checkpoints (SAT's mp_rank_00_model_states.pt, 3d-vae.pt): listed for transformers and VAEs.
CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".ckpt")
# GGUF files (ComfyUI-GGUF's quantized transformers, in diffusion_models/ or unet/): transformers only.
GGUF_EXTENSIONS = (".gguf",)
# Folders searched per kind of weights, in order. Keys are folder_paths names; "unet" and
# "clip" are the pre-2025 names of diffusion_models and text_encoders. A diffusers tree found
# under any of them is listed by its folder name.
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


@dataclass(frozen=True)
class Shipped:
    """A model shipped inside the pack: its dropdown ``name`` for ``kind``, the ``path`` the
    loader gets, and the ``weights`` folder that must hold weights for it to be listed."""

    kind: str
    name: str
    path: Path
    weights: Path


# The tiny demo models trained on benchmarks/tiny_world (one coloured shape moving on white,
# 17 frames at 96x64): a text-to-video root and a Fun InP root (each with its scheduler/), the
# VAE and T5 both use, and a LoRA that paints every shape blue. Listed after the user's models,
# when their weights are present.
TINY_WORLD = Path(__file__).resolve().parents[2] / "cogvideox_core" / "data" / "tiny_world"
TINY_WORLD_NAME = "cogvideox-tiny-world (shipped demo)"
TINY_WORLD_INP_NAME = "cogvideox-tiny-world-inp (shipped demo)"
TINY_WORLD_LORA_NAME = "cogvideox-tiny-world every shape blue (shipped demo)"
_TINY_LORA = TINY_WORLD / "lora" / "every_shape_blue.safetensors"  # for the text-to-video model
SHIPPED: tuple[Shipped, ...] = (
    Shipped("transformer", TINY_WORLD_NAME, TINY_WORLD, TINY_WORLD / "transformer"),
    Shipped("transformer", TINY_WORLD_INP_NAME, TINY_WORLD / "inp", TINY_WORLD / "inp" / "transformer"),
    Shipped("vae", TINY_WORLD_NAME, TINY_WORLD / "vae", TINY_WORLD / "vae"),
    Shipped("text_encoder", TINY_WORLD_NAME, TINY_WORLD / "text_encoder", TINY_WORLD / "text_encoder"),
    Shipped("lora", TINY_WORLD_LORA_NAME, _TINY_LORA, _TINY_LORA),
)

# Roots without ComfyUI (tests set these; else COGVIDEOX_MODELS_DIR / COGVIDEOX_OUTPUT_DIR).
MODELS_DIR: str | None = None
OUTPUT_DIR: str | None = None


@functools.lru_cache(maxsize=None)
def _folder_paths() -> Any:
    """ComfyUI's ``folder_paths`` module, or None without ComfyUI."""
    try:
        import folder_paths
    except Exception:
        return None
    return folder_paths


# ---- registering and listing model folders ------------------------------------------------

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
                    for f in files if f.endswith(_file_extensions(kind))]
        dirs[:] = [d for d in dirs if not d.startswith(".")] if depth < 2 or not family_folder else []
    return out


def _file_extensions(kind: str) -> tuple[str, ...]:
    gguf = GGUF_EXTENSIONS if kind == "transformer" else ()
    return WEIGHT_EXTENSIONS + CHECKPOINT_EXTENSIONS + gguf if kind in ("transformer", "vae") else WEIGHT_EXTENSIONS


def shipped_models(kind: str) -> dict[str, Path]:
    """The shipped models of ``kind`` whose weights are present: dropdown name -> path."""
    return {s.name: s.path for s in SHIPPED if s.kind == kind and _present(s.weights)}


def _present(weights: Path) -> bool:
    """A shipped weights file, or a folder with its config and weights."""
    if weights.suffix in WEIGHT_EXTENSIONS:
        return weights.is_file()
    return (weights / "config.json").is_file() and _has_weights(str(weights))


def list_models(kind: str) -> list[str]:
    """Dropdown entries for ``kind`` (transformer, vae, text_encoder, lora): diffusers folders by
    folder name and single files by relative path, from every folder of :data:`KIND_FOLDERS`,
    then the shipped demo models (:func:`shipped_models`)."""
    names: set[str] = set()
    for key, base in _kind_bases(kind):
        names.update(_scan(base, kind, key in MODEL_FAMILY_FOLDERS))
    return sorted(names, key=str.lower) + [n for n in shipped_models(kind) if n not in names]


def model_path(kind: str, name: str, input_name: str) -> Path:
    """The path of the dropdown entry ``name`` (a shipped model's name first); a ValueError
    naming the input otherwise."""
    shipped = shipped_models(kind)
    if name in shipped:
        return shipped[name]
    rel = os.path.normpath("/" + name).lstrip("/")  # no escaping the folder with ../
    bases = _kind_bases(kind)
    for _key, base in bases:
        candidate = os.path.join(base, rel)
        if os.path.exists(candidate):
            return Path(candidate)
    where = ", ".join(b for _k, b in bases) or "no folder exists yet"
    raise ValueError(f"{input_name}={name!r} is not in the {kind} folders ({where}); "
                     f"choose one of: {', '.join(list_models(kind)[:12]) or 'none found'}")


# ---- input and output folders -------------------------------------------------------------

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


def _counter(name: str, base: str) -> int:
    """The counter of a saved file ``{base}_{counter:05}_...``, else 0 (the next one is past the
    highest, so a gap never makes a new file land on an old one)."""
    head, _, rest = name.partition(base + "_")
    digits = rest[:5]
    return int(digits) if head == "" and digits.isdigit() else 0


def save_path(prefix: str, width: int, height: int, extension: str) -> tuple[Path, str, str]:
    """A new file path for ``prefix`` in the output folder: (path, filename, subfolder)."""
    out_dir = output_directory()
    fp = _folder_paths()
    if fp is not None:
        folder, base, counter, subfolder, _ = fp.get_save_image_path(prefix, str(out_dir), width, height)
    else:
        folder = os.path.join(out_dir, os.path.dirname(os.path.normpath(prefix)))
        base, subfolder = os.path.basename(os.path.normpath(prefix)), os.path.dirname(os.path.normpath(prefix))
        if not Path(folder).resolve().is_relative_to(Path(out_dir).resolve()):
            raise ValueError(f"filename_prefix={prefix!r} leads out of the output folder {out_dir}")
        os.makedirs(folder, exist_ok=True)
        counter = 1 + max((_counter(f, base) for f in os.listdir(folder)), default=0)
    filename = f"{base}_{counter:05}_{extension}"
    return Path(folder) / filename, filename, subfolder
