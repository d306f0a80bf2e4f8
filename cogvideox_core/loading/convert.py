"""Converting CogVideoX weights between formats: any file or folder the pack loads -> a diffusers
folder (``transformer/`` and/or ``vae/``: ``config.json`` and sharded safetensors, loadable by
diffusers' ``from_pretrained``) or one safetensors file in ComfyUI's CogVideoX key layout.

The source is planned as the loaders plan it (:func:`~cogvideox_core.loading.weights.component_plan`:
SAT's fused q/k/v and adaLN cut, ComfyUI names mapped, scaled fp8 dequantised) and checked
against the model its shapes describe (built on the meta device) before anything is written;
then each tensor is read, converted and written on its own (:mod:`~cogvideox_core.loading.writer`),
so memory holds one tensor. With ``dtype="keep"`` every tensor is written as stored: the output
equals the source bit for bit. Quantized tensors (GGUF block types, ComfyUI scaled fp8 weights
with their ``scale_weight``) have no float dtype to keep: they are dequantized as the loaders
dequantize them (:func:`~cogvideox_core.loading.gguf_file.read_dequantized`, ``weight *
scale_weight`` in float32) and written as ``dtype``, bf16 under "keep" (a warning says so;
"fp32" writes the dequantized values exactly); the file's float tensors stay as stored. Each
is read, dequantized (GGUF: a few thousand blocks at a time) and written alone: the peak is
about one tensor. The T5 text encoder and tokenizer are not converted (they are not
CogVideoX-specific; copy them as they are).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

import torch

from ..errors import WeightsError
from ..families import VAEConfig, get_family
from ..gguf_quants import QUANT_TYPES, dequantize
from .files import SAFETENSORS_DTYPES, Component, TensorEntry, TensorIndex, locate, read_into
from .gguf_file import read_dequantized
from .keymaps import Source, apply_rules, comfy_rules
from .weights import (STAGE_BYTES, checked_plan, component_plan, detect_family, read_plan,
                      read_source, vae_config)
from .writer import DEFAULT_SHARD_BYTES, OutTensor, atomic_output, write_json, write_safetensors, write_sharded

logger = logging.getLogger(__name__)

TARGETS = ("diffusers", "comfyui")
DTYPES: dict[str, torch.dtype | None] = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16,
                                         "fp32": torch.float32}
QUANTIZED_DEFAULT = torch.bfloat16  # what "keep" writes dequantized tensors as
DEQUANT_BLOCKS = 2**13  # GGUF blocks read and dequantized at a time (256K values of Q4_0/Q8_0)
DIFFUSERS_VERSION = "0.32.0"  # the first diffusers with every CogVideoX family (1.5's ofs, patch_size_t)
_CLASSES = {"transformer": "CogVideoXTransformer3DModel", "vae": "AutoencoderKLCogVideoX"}
_SKIPPED = {"text_encoder": "the T5 encoder is not converted: copy text_encoder/ as it is",
            "tokenizer": "copy tokenizer/ as it is"}
_TO_COMFY = comfy_rules(to_comfy=True)  # diffusers -> ComfyUI comfy/ldm/cogvideo/model.py names


def comfyui_key(key: str) -> str:
    """A diffusers transformer key in ComfyUI's CogVideoX layout."""
    return apply_rules(_TO_COMFY, key)


@dataclass(frozen=True)
class Written:
    """One converted component: its files, tensor count and bytes."""

    name: str
    files: tuple[Path, ...]
    tensors: int
    nbytes: int


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` wrote, and what it left out (component -> why)."""

    src: Path
    dest: Path
    written: tuple[Written, ...]
    notes: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: ``converted SRC -> DEST: transformer (...), vae (...); text_encoder: ...``."""
        parts = [f"{w.name} ({w.tensors} tensors, {w.nbytes / 2**30:.2f} GiB, {len(w.files)} file(s))"
                 for w in self.written]
        notes = "".join(f"; {k}: {v}" for k, v in self.notes.items())
        return f"converted {self.src} -> {self.dest}: {', '.join(parts)}{notes}"


def convert(src: str | Path, dest: str | Path, to: str = "diffusers", dtype: str = "keep",
            overwrite: bool = False, family: str | None = None,
            max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> ConvertResult:
    """Convert the transformer and/or VAE at ``src`` (see the module doc) into ``dest``.

    ``to``: "diffusers" (``dest`` a folder) or "comfyui" (``dest`` one ``.safetensors`` file,
    the transformer only). ``dtype``: "keep" or bf16/fp16/fp32 for the floating tensors.
    ``dest`` is never an input nor holds one; an existing ``dest`` is replaced only with
    ``overwrite``. ``family`` as in :func:`~cogvideox_core.loading.weights.load_transformer`.
    """
    _check_options(to, dtype, max_shard_bytes)
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    comps = locate(src)
    parts = {n: comps[n] for n in ("transformer", "vae") if n in comps and comps[n].found is not None}
    if not parts:
        raise WeightsError(f"{src}: no CogVideoX transformer or VAE to convert "
                           f"(found: {', '.join(comps) or 'nothing loadable'})")
    _refuse_inputs(src, dest, comps)
    if dest.exists() and not overwrite:
        raise ValueError(f"{dest} already exists: choose another destination or pass --overwrite")
    notes = {n: _SKIPPED[n] for n in comps if n in _SKIPPED}
    fam = detect_family(parts["transformer"], family)[0] if "transformer" in parts else None
    if to == "comfyui":
        return _to_comfyui(src, dest, parts, DTYPES[dtype], overwrite, family, notes)
    written = _to_diffusers(dest, parts, comps, DTYPES[dtype], overwrite, family, fam, max_shard_bytes, notes)
    return ConvertResult(src, dest, written, notes)


def _check_options(to: str, dtype: str, max_shard_bytes: int) -> None:
    if to not in TARGETS:
        raise ValueError(f"to={to!r}: must be one of {', '.join(TARGETS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes={max_shard_bytes}: must be positive")


def _refuse_inputs(src: Path, dest: Path, comps: Mapping[str, Component]) -> None:
    """A ``dest`` that is an input, or a folder holding one, would destroy it: refused always."""
    target = dest.resolve()
    inputs = {src.resolve(), *(f.resolve() for c in comps.values() for f in c.files)}
    for path in sorted(inputs):
        if path == target or target in path.parents:
            raise ValueError(f"{dest}: is or holds the input {path}: choose another destination "
                             "(--overwrite never replaces an input)")


# ---- diffusers ------------------------------------------------------------------------------

def _to_diffusers(dest: Path, parts: Mapping[str, Component], comps: Mapping[str, Component],
                  dtype: torch.dtype | None, overwrite: bool, family: str | None, fam: str | None,
                  max_shard_bytes: int, notes: dict[str, str]) -> tuple[Written, ...]:
    prepared = {name: _prepare(comp, dtype, family, fam, notes) for name, comp in parts.items()}
    written = []
    with atomic_output(dest, overwrite) as tmp:
        for name, (tensors, config) in prepared.items():
            folder = tmp / name
            folder.mkdir(parents=True)
            files = write_sharded(folder, tensors, max_shard_bytes)
            write_json(folder / "config.json", config)
            written.append(Written(name, tuple(dest / name / f.name for f in files), len(tensors),
                                   sum(t.nbytes for t in tensors)))
        if "scheduler" in comps:
            (tmp / "scheduler").mkdir()
            shutil.copyfile(comps["scheduler"].files[0], tmp / "scheduler" / "scheduler_config.json")
            notes["scheduler"] = "scheduler_config.json copied"
    return tuple(written)


def _prepare(comp: Component, dtype: torch.dtype | None, family: str | None, fam: str | None,
             notes: dict[str, str]) -> tuple[list[OutTensor], dict[str, object]]:
    if comp.name == "transformer":
        cfg = detect_family(comp, family)[1]
        config = _config_json(comp, cfg.to_diffusers())
        expected = _meta_shapes("transformer", cfg)
    else:
        vcfg = _vae_config(comp, fam, notes)
        config = _config_json(comp, vcfg.to_diffusers())
        expected = _meta_shapes("vae", vcfg)
    return component_tensors(comp, expected, dtype), config


def _vae_config(comp: Component, fam: str | None, notes: dict[str, str]) -> VAEConfig:
    cfg = vae_config(comp)
    if comp.config is not None:
        return cfg
    if fam is None:
        notes["vae"] = (f"scaling_factor {cfg.scaling_factor} written (2B's; 5B and 1.5 use 0.7): "
                        "edit vae/config.json if this VAE is not 2B's")
        return cfg
    f = get_family(fam)
    return dataclasses.replace(cfg, scaling_factor=f.vae_scaling_factor, invert_scale_latents=f.invert_scale_latents)


def _config_json(comp: Component, generated: Mapping[str, object]) -> dict[str, object]:
    """The folder's own config.json when it is diffusers' for this class, else ``generated``."""
    cls = _CLASSES[comp.name]
    if comp.config is not None and comp.config.get("_class_name") == cls:
        return dict(comp.config)
    return {"_class_name": cls, "_diffusers_version": DIFFUSERS_VERSION,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in generated.items()}}


def _meta_shapes(kind: str, cfg: object) -> dict[str, tuple[int, ...]]:
    """Key -> shape of our model of ``cfg`` (built on meta: no memory): diffusers' keys."""
    if kind == "transformer":
        from ..models.transformer import CogVideoXTransformer as cls
    else:
        from ..vae.model import CogVideoXVAE as cls
    model = cls(cfg, device="meta")  # type: ignore[arg-type]
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---- tensors --------------------------------------------------------------------------------

def component_tensors(comp: Component, expected: Mapping[str, tuple[int, ...]], dtype: torch.dtype | None,
                      rename: Callable[[str], str] = lambda k: k) -> list[OutTensor]:
    """The planned tensors of ``comp`` as :class:`OutTensor` (read on demand), checked against
    ``expected`` shapes; keys the model recomputes (SAT's 2B sincos table) are left out."""
    plan, shapes = checked_plan(component_plan(comp), expected, comp.index, comp.location)
    if dtype is None:
        _note_dequantized(comp, plan)
    stage = torch.empty(STAGE_BYTES, dtype=torch.uint8)
    return [OutTensor(rename(k), _out_dtype(comp.index, src, dtype), shapes[k],
                      partial(_read_one, comp.index, src, _out_dtype(comp.index, src, dtype), stage))
            for k, src in sorted(plan.items())]


def _quantized_kind(index: TensorIndex, src: Source) -> str | None:
    """``"Q4_0"`` (a GGUF block type) or ``"scaled fp8"`` for a tensor stored quantized, else None."""
    stored = index[src.key].dtype
    return stored if stored in QUANT_TYPES else "scaled fp8" if src.scale_key else None


def _note_dequantized(comp: Component, plan: Mapping[str, Source]) -> None:
    """The warning for "keep" on quantized tensors: which, and what they are written as."""
    kinds = [k for k in (_quantized_kind(comp.index, s) for s in plan.values()) if k]
    if kinds:
        logger.warning("%s: %d quantized tensors (%s) have no float dtype to keep: written dequantized "
                       "as %s (--dtype fp32 writes the dequantized values exactly)", comp.location,
                       len(kinds), ", ".join(sorted(set(kinds))), str(QUANTIZED_DEFAULT).removeprefix("torch."))


def _out_dtype(index: TensorIndex, src: Source, wanted: torch.dtype | None) -> torch.dtype:
    if _quantized_kind(index, src):  # dequantized while read
        return wanted or QUANTIZED_DEFAULT
    stored = SAFETENSORS_DTYPES[index[src.key].dtype]
    if not stored.is_floating_point:
        return stored
    return wanted or stored


def _read_one(index: TensorIndex, src: Source, dtype: torch.dtype, stage: torch.Tensor) -> torch.Tensor:
    entry = index[src.key]
    scale = None
    if src.scale_key:
        scale = read_plan({"s": Source(src.scale_key)}, index, lambda k: torch.float32)["s"]
    with open(entry.file, "rb", buffering=0) as f:
        if entry.dtype in QUANT_TYPES and src.chunks == 1:
            return _read_gguf_blocks(f, entry, src, dtype)
        return read_source(f, entry, src, dtype, "cpu", stage, scale)


def _read_gguf_blocks(f: BinaryIO, entry: TensorEntry, src: Source, dtype: torch.dtype) -> torch.Tensor:
    """A GGUF block-quantized tensor dequantized :data:`DEQUANT_BLOCKS` blocks at a time into a
    tensor of ``dtype``: the values :func:`~cogvideox_core.loading.gguf_file.read_dequantized`
    gives (each block decodes alone, to float32, then cast), without its float32 copy of the
    whole tensor. Non-finite values: that function's error."""
    qt = QUANT_TYPES[entry.dtype]
    out = torch.empty(entry.shape, dtype=dtype)
    flat, raw = out.view(-1), torch.empty(DEQUANT_BLOCKS * qt.nbytes, dtype=torch.uint8)
    for start in range(0, entry.nbytes, len(raw)):
        n = min(len(raw), entry.nbytes - start)
        read_into(f, entry.offset + start, memoryview(raw.numpy())[:n], entry.file)
        values = dequantize(raw[:n], entry.dtype, (n // qt.nbytes * qt.block,))
        if not torch.isfinite(values).all():
            return read_dequantized(f, entry, src, dtype, "cpu")  # raises, naming file and key
        first = start // qt.nbytes * qt.block
        flat[first:first + values.numel()].copy_(values)
    return out


# ---- ComfyUI --------------------------------------------------------------------------------

def _to_comfyui(src: Path, dest: Path, parts: Mapping[str, Component], dtype: torch.dtype | None,
                overwrite: bool, family: str | None, notes: dict[str, str]) -> ConvertResult:
    if dest.suffix != ".safetensors":
        raise ValueError(f"{dest}: --to comfyui writes one .safetensors file: name DEST *.safetensors")
    if "transformer" not in parts:
        raise WeightsError(f"{src}: no CogVideoX transformer to write in ComfyUI's layout "
                           "(a VAE converts with --to diffusers)")
    if "vae" in parts:
        notes["vae"] = "not written: --to comfyui writes the transformer (use --to diffusers for the VAE)"
    comp = parts["transformer"]
    _name, cfg = detect_family(comp, family)
    tensors = component_tensors(comp, _meta_shapes("transformer", cfg), dtype, rename=comfyui_key)
    with atomic_output(dest, overwrite) as tmp:
        nbytes = write_safetensors(tmp, tensors)
    return ConvertResult(src, dest, (Written("transformer", (dest,), len(tensors), nbytes),), notes)


__all__ = ["TARGETS", "DTYPES", "Written", "ConvertResult", "convert", "component_tensors", "comfyui_key"]
