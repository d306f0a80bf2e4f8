"""Loading CogVideoX weights into the core's models, offline, shape-checked, each tensor once.

:func:`load_transformer` / :func:`load_vae`: :mod:`~cogvideox_core.loading.files` finds the files,
:mod:`~cogvideox_core.loading.keymaps` plans the keys, the family comes from keys and shapes
(never a file name), the model is built on the meta device and the plan checked against it
(a :class:`WeightsError` naming the file), then each tensor is allocated once in its final dtype
on its final device and filled by positioned reads through a small staging buffer (no memory
map: mapped pages count in RSS), checked for NaN and inf as it is read (a
:class:`~cogvideox_core.errors.NonFiniteWeightsError`) and assigned strictly. A meta tensor
left after loading is a bug.
``weight_dtype`` fp8 stores only the blocks' large matmul weights in fp8 (computed through
:class:`~cogvideox_core.ops.cast_ops`); adaLN linears, norms, biases, embeddings and the output
layers stay in ``dtype`` (fp8 adaLN breaks 1.5).
``weight_dtype`` torch.int8, and ComfyUI ``scaled_fp8`` files kept in fp8: see
:mod:`~cogvideox_core.loading.quantized` (quantized layers swapped in, quantized while reading).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import NonFiniteWeightsError, WeightsError
from ..families import (Family, NotCogVideoXError, TransformerConfig, VAEConfig,
                       detect_transformer_config, get_family)
from .keymaps import Plan, Source, split_scales, t5_plan, transformer_plan, vae_plan
from ..ops import AttentionFn, Ops, cast_ops, default_ops, fp8_matmul_blocker, fp8_matmul_ops, sdpa_attention
from .files import (COMPONENTS, SAFETENSORS_DTYPES, Component, TensorEntry, TensorIndex, describe_keys,
                    find_scheduler_file, index_files, index_shapes, is_model_root, locate, read_index, read_into, weight_files)
from ..sampling.schedules import SchedulerConfig
from .quantized import Int8Finish, plan_storage
from .quantized import describe as describe_quantization
from .gguf_file import has_quantized, keep_quantized, read_dequantized
from .gguf_index import describe_gguf
from ..gguf_quants import QUANT_TYPES

if TYPE_CHECKING:
    from ..models.transformer import CogVideoXTransformer
    from ..vae.model import CogVideoXVAE

logger = logging.getLogger(__name__)

STAGE_BYTES = 8 * 2**20  # the staging buffer converted tensors pass through
# The dtypes a model computes in and the fp8 storage dtypes, by the names users pick them by.
COMPUTE_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FP8_DTYPES: dict[str, torch.dtype] = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
INT8_DTYPES: dict[str, torch.dtype] = {"int8": torch.int8}  # weight-only, see loading.quantized
# Transformer weights that fp8 storage applies to (see the module docstring).
FP8_TRANSFORMER_KEYS = re.compile(
    r"^transformer_blocks\.\d+\.(attn1\.to_(q|k|v|out\.0)|ff\.net\.(0\.proj|2))\.weight$")
# Keys a file may carry that a model without them recomputes (non-learned sincos tables saved
# by older diffusers / VideoX-Fun code, or SAT's 2B table): dropped when the model has none.
_RECOMPUTED = frozenset({"patch_embed.pos_embedding"})
_PLANNERS = {"transformer": transformer_plan, "vae": vae_plan, "text_encoder": t5_plan}


# ---- what is at a path ----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    """What :func:`inspect_path` found: components, family, configs (from headers only)."""

    path: Path
    components: dict[str, Component]
    family: str | None = None
    transformer_config: TransformerConfig | None = None
    vae_config: VAEConfig | None = None

    @property
    def component_names(self) -> list[str]:
        return [c for c in COMPONENTS if c in self.components]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary: ``family``, ``components``, files, layouts, sizes, configs."""
        comps = {}
        for name in self.component_names:
            comp = self.components[name]
            comps[name] = {"files": [str(f) for f in comp.files], "tensors": len(comp.index),
                           "bytes": comp.nbytes, "dtypes": comp.dtypes(),
                           "layout": comp.found.layout if comp.found else None,
                           "prefix": comp.found.prefix if comp.found else None,
                           "format": file_format(comp), "quantization": describe_quantization(comp)}
        return {"path": str(self.path), "family": self.family, "components": self.component_names,
                "details": comps,
                "transformer_config": _as_json(self.transformer_config),
                "vae_config": _as_json(self.vae_config)}


def file_format(comp: Component) -> str:
    """The container of a component's files: "safetensors" or e.g. "SAT checkpoint (.pt)", or
    for GGUF its tensor types: "GGUF Q4_K (180 tensors), F32 (90)"."""
    from .sat_checkpoint import checkpoint_format

    gguf = describe_gguf(comp.index)
    if gguf is not None:
        return gguf
    return checkpoint_format(comp.files, comp.found.layout if comp.found else None) or "safetensors"


def _as_json(cfg: object | None) -> dict[str, object] | None:
    return None if cfg is None else dataclasses.asdict(cfg)  # type: ignore[call-overload]


def inspect_path(path: str | Path) -> ModelInfo:
    """Family and components at ``path`` (model root, component folder or single file), from
    safetensors headers and config files only: instant on any size."""
    path = Path(path).expanduser()
    comps = locate(path)
    if not comps:
        raise WeightsError(_not_found(path, "transformer, VAE or T5 encoder"))
    family = cfg = vae_cfg = None
    if "transformer" in comps:
        family, cfg = detect_family(comps["transformer"])
    if "vae" in comps:
        vae_cfg = vae_config(comps["vae"])
    return ModelInfo(path, comps, family, cfg, vae_cfg)


def _not_found(path: Path, what: str) -> str:
    if path.is_file():
        return f"{path}: not a CogVideoX {what}: {describe_keys(read_index(path))}"
    return f"{path}: no CogVideoX {what} weights in this folder"


# ---- plans and configs ----------------------------------------------------------------------

def component_plan(comp: Component) -> Plan:
    """diffusers key -> source for a located transformer, VAE or T5 component."""
    if comp.found is None or comp.name not in _PLANNERS:
        raise WeightsError(f"{comp.location}: no {comp.name} weights found")
    plan, dropped = _PLANNERS[comp.name](comp.index, comp.found)
    plan, bookkeeping = split_scales(plan)
    if dropped:
        logger.debug("%s: not loaded (recomputed or unused): %s", comp.location, dropped)
    if bookkeeping:
        logger.info("%s: scaled fp8 weights, dequantised while reading", comp.location)
    return plan


def plan_shapes(plan: Mapping[str, Source], shapes: Mapping[str, Sequence[int]],
                where: str = "weights") -> dict[str, tuple[int, ...]]:
    """The shape each planned target will have, from the stored ``shapes`` of the source keys."""
    out = {}
    for target, src in plan.items():
        stored = tuple(shapes[src.key])
        if src.chunks > 1 and (not stored or stored[0] % src.chunks):
            raise WeightsError(f"{where}: {src.key!r} {list(stored)} cannot be cut into "
                               f"{src.chunks} equal parts along dim 0")
        out[target] = src.shape(stored)
    return out


def detect_family(comp: Component, family: str | None = None,
                  plan: Mapping[str, Source] | None = None) -> tuple[str, TransformerConfig]:
    """Family name and config of a located transformer; ``family`` is taken where the files
    cannot tell and is a ``ValueError`` where they say another
    (:func:`~cogvideox_core.families.detect_transformer_config`). ``plan`` is its
    :func:`component_plan` if already made."""
    plan = component_plan(comp) if plan is None else plan
    config_file = comp.files[0].parent / "config.json"  # where locate() read comp.config
    try:
        return detect_transformer_config(plan_shapes(plan, index_shapes(comp.index), comp.location),
                                         comp.config, family, f"config.json at {config_file}")
    except NotCogVideoXError as e:
        raise WeightsError(f"{comp.location}: not a CogVideoX transformer: {e}") from None


def component_shapes(comp: Component) -> dict[str, tuple[int, ...]]:
    """The shape of every model weight of a located component, by model key, from its headers."""
    return plan_shapes(component_plan(comp), index_shapes(comp.index), comp.location)


def vae_config(comp: Component) -> VAEConfig:
    """The VAE config from the folder's ``config.json``, else from the weights' shapes."""
    if comp.config is not None:
        return VAEConfig.from_diffusers(comp.config)
    return vae_config_from_shapes(component_shapes(comp), comp.location)


def vae_config_from_shapes(shapes: Mapping[str, Sequence[int]], where: str = "VAE") -> VAEConfig:
    """Channels and depth from the encoder's shapes. Not visible in shapes and taken as the
    released VAE has them: 32 norm groups, 4x temporal compression; the scaling factor is the
    family's (:attr:`Family.vae_scaling_factor`), the model works on unscaled latents."""
    downs = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down_blocks.")})
    resnets = {int(k.split(".")[4]) for k in shapes if k.startswith("encoder.down_blocks.0.resnets.")}
    try:
        blocks = tuple(int(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight"][0]) for i in downs)
        cfg = VAEConfig(in_channels=int(shapes["encoder.conv_in.conv.weight"][1]),
                        out_channels=int(shapes["decoder.conv_out.conv.weight"][0]),
                        block_out_channels=blocks, layers_per_block=len(resnets),
                        latent_channels=int(shapes["encoder.conv_out.conv.weight"][0]) // 2)
    except KeyError as e:
        raise WeightsError(f"{where}: not a CogVideoX VAE: no {e.args[0]!r}") from None
    if any(c % cfg.norm_num_groups for c in blocks):
        raise WeightsError(f"{where}: channels {list(blocks)} are not multiples of 32, so the "
                           "GroupNorm groups cannot be inferred: pass config= (a VAEConfig) or "
                           "use a folder with its config.json")
    return cfg


def find_component(path: str | Path, name: str) -> Component:
    """The ``name`` component at ``path``, or a :class:`WeightsError` saying what is there."""
    path = Path(path).expanduser()
    comps = locate(path)
    comp = comps.get(name)
    if comp is not None and comp.found is not None:
        return comp
    what = {"text_encoder": "T5 encoder", "vae": "VAE"}.get(name, name)
    if path.is_dir() and is_model_root(path):
        raise WeightsError(f"{path}: a model root without a usable {name}/ folder "
                           f"(it has: {', '.join(comps) or 'nothing loadable'})")
    if comps:
        raise WeightsError(f"{path}: not a CogVideoX {what} (found: {', '.join(comps)})")
    raise WeightsError(_not_found(path, what))


# ---- reading --------------------------------------------------------------------------------

DtypeFor = Callable[[str], torch.dtype]


def read_plan(plan: Mapping[str, Source], index: TensorIndex, dtype_for: DtypeFor,
              device: torch.device | str = "cpu",
              finish: Callable[[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
              ) -> dict[str, torch.Tensor]:
    """Read every planned tensor once (tied targets share it), converted as it is read.
    ``finish(target, tensor)``, if given, turns each tensor into the state entries it becomes
    right after it is read (int8 quantization: :mod:`~cogvideox_core.loading.quantized`)."""
    targets: dict[Source, list[str]] = {}
    for target, src in plan.items():
        targets.setdefault(src, []).append(target)
    scales = {key: t.float() for key, t in
              _read_raw({s.scale_key for s in plan.values() if s.scale_key}, index).items()}
    stage = torch.empty(STAGE_BYTES, dtype=torch.uint8)
    out: dict[str, torch.Tensor] = {}
    order = sorted(targets, key=lambda s: (str(index[s.key].file), index[s.key].offset, s.pick))
    for file, group in groupby(order, key=lambda s: index[s.key].file):
        with open(file, "rb", buffering=0) as f:
            for src in group:
                names = targets[src]
                tensor = read_source(f, index[src.key], src, dtype_for(names[0]), device, stage,
                                     scales.get(src.scale_key))
                if finish is None:
                    out.update(dict.fromkeys(names, tensor))
                else:
                    for name in names:
                        out.update(finish(name, tensor))
                    del tensor  # dropped before the next is read: one tensor as read at a time
    return out


def _read_raw(keys: Collection[str], index: TensorIndex) -> dict[str, torch.Tensor]:
    """Tensors as stored (dtype, CPU)."""
    if not keys:
        return {}
    return read_plan({k: Source(k) for k in keys}, index, lambda k: SAFETENSORS_DTYPES[index[k].dtype])


def read_source(f: BinaryIO, entry: TensorEntry, src: Source, dtype: torch.dtype,
                device: torch.device | str, stage: torch.Tensor,
                scale: torch.Tensor | None = None) -> torch.Tensor:
    """One planned tensor, allocated once as ``dtype`` on ``device`` and filled from the file.

    Stored as it is wanted (dtype, CPU, no scale): its bytes are read straight into it.
    Otherwise they pass through ``stage`` (a uint8 buffer) piece by piece, converted (and
    scaled, and copied to the device) as they go: the only memory besides the result is the
    stage. SAT's fused tensors read just the byte ranges of the parts they ``pick``.
    Each piece is checked for NaN and inf right after it is read (still in cache), as stored,
    before any conversion (a cast to fp8 e4m3fn turns inf into 448): a
    :class:`NonFiniteWeightsError` naming the file and key, not a black video.
    """
    if entry.dtype in QUANT_TYPES:  # a GGUF block-quantized tensor not kept quantized (gguf_file)
        return read_dequantized(f, entry, src, dtype, device)
    out = torch.empty(src.shape(entry.shape), dtype=dtype, device=device)
    stored = SAFETENSORS_DTYPES[entry.dtype]
    part = entry.nbytes // src.chunks  # dim-0 parts of a row-major tensor are byte ranges
    ranges = [(entry.offset + i * part, part) for i in src.pick]
    flat = out.view(-1)
    direct = dtype == stored and out.device.type == "cpu" and scale is None
    into, step = (flat.view(torch.uint8), READ_BYTES) if direct else (stage, len(stage))
    pos = 0
    for piece in _pieces(f, entry, ranges, into, step, consecutive=direct):
        if not all_finite(piece):
            raise _non_finite(entry, src.key, _pieces(f, entry, ranges, stage, len(stage)))
        if not direct:
            piece = piece.to(torch.float32) * scale if scale is not None else piece
            flat[pos:pos + piece.numel()].copy_(piece)
            pos += piece.numel()
    return out


READ_BYTES = 2**20  # direct reads go in pieces of this size, each checked while in cache


def _pieces(f: BinaryIO, entry: TensorEntry, ranges: Iterable[tuple[int, int]], into: torch.Tensor,
            step: int, consecutive: bool = False) -> Iterator[torch.Tensor]:
    """The stored values at ``ranges`` (offset, bytes) of ``f``, read ``step`` bytes at a time
    into the uint8 buffer ``into`` and yielded viewed as the stored dtype: one after the other
    when ``into`` is the tensor's own memory (``consecutive``), else each at its start (a stage,
    each piece overwritten by the next)."""
    stored = SAFETENSORS_DTYPES[entry.dtype]
    step, pos = max(step // stored.itemsize, 1) * stored.itemsize, 0
    for offset, n in ranges:
        for start in range(0, n, step):
            size = min(step, n - start)
            at = pos if consecutive else 0
            read_into(f, offset + start, memoryview(into[at:at + size].numpy()), entry.file)
            yield into[at:at + size].view(stored)
            pos += size


CHECK_BYTES = 2**20  # all_finite reduces pieces of this size (they stay in L2)
# Per float dtype: its width's signed and unsigned integer types and its exponent bits, all set
# in NaN and inf and in no finite value (e4m3fn has no inf: its NaN is S.1111.111, its
# S.1111.110 and below are finite, up to 448).
_NON_FINITE_BITS: dict[torch.dtype, tuple[type, type, int]] = {
    torch.float64: (np.int64, np.uint64, 0x7FF0_0000_0000_0000),
    torch.float32: (np.int32, np.uint32, 0x7F80_0000),
    torch.bfloat16: (np.int16, np.uint16, 0x7F80), torch.float16: (np.int16, np.uint16, 0x7C00),
    torch.float8_e5m2: (np.int8, np.uint8, 0x7C), torch.float8_e4m3fn: (np.int8, np.uint8, 0x7F)}


def all_finite(t: torch.Tensor) -> bool:
    """Whether the contiguous CPU tensor ``t`` holds no NaN and no inf (integers always do).

    By the bits: read as signed integers, a positive NaN or inf is at least the exponent mask
    (above every finite value); read as unsigned, a negative one is at least sign | mask. So
    two integer maxima per piece of :data:`CHECK_BYTES`, the same for every float dtype (fp8
    has no ``isinf`` kernel), no temporary, in numpy: single-threaded and SIMD, where torch's
    thread pool costs more than the work on pieces this small. ``isfinite(t).all()`` is ~10x
    slower on the CPU (it builds a bool tensor).
    """
    if t.dtype not in _NON_FINITE_BITS or t.numel() == 0:
        return True
    signed, unsigned, mask = _NON_FINITE_BITS[t.dtype]
    negative = 1 << (8 * t.element_size() - 1) | mask
    raw = t.reshape(-1).view(torch.uint8).numpy()
    for start in range(0, raw.size, CHECK_BYTES):
        piece = raw[start:start + CHECK_BYTES]
        if piece.view(signed).max() >= mask or piece.view(unsigned).max() >= negative:
            return False
    return True


def _non_finite(entry: TensorEntry, key: str, pieces: Iterable[torch.Tensor]) -> NonFiniteWeightsError:
    """The error for a tensor that :func:`all_finite` refused, its NaN and inf counted over
    ``pieces`` (the stored values again, piece by piece: this path is rare, the count exact)."""
    nan = inf = total = 0
    for piece in pieces:
        nan += int(piece.isnan().sum())
        if piece.dtype != torch.float8_e4m3fn:  # which has no inf (nor an isinf kernel)
            inf += int(piece.isinf().sum())
        total += piece.numel()
    return NonFiniteWeightsError(
        f"{entry.file}: tensor {key!r} holds {nan} NaN and {inf} infinite values (of {total}): "
        "the file is damaged or was saved from a diverged training; re-download it or convert "
        "it again from a good checkpoint")


def storage_dtypes(dtype: torch.dtype, weight_dtype: torch.dtype | None,
                   fp8_keys: re.Pattern[str]) -> DtypeFor:
    """Per-key storage dtype: ``weight_dtype`` (fp8) for keys matching ``fp8_keys``, ``dtype``
    for the rest; ``dtype`` everywhere without ``weight_dtype``."""
    check_dtypes(dtype, weight_dtype)
    if weight_dtype is None or weight_dtype == dtype:
        return lambda key: dtype
    return lambda key: weight_dtype if fp8_keys.match(key) else dtype


def check_dtypes(dtype: torch.dtype, weight_dtype: torch.dtype | None) -> None:
    """``ValueError`` unless ``dtype`` is a compute dtype and ``weight_dtype`` None or fp8."""
    if dtype not in COMPUTE_DTYPES.values():
        raise ValueError(f"dtype={dtype} must be one of float32, bfloat16, float16 (the compute "
                         "dtype); fp8 storage is weight_dtype=torch.float8_e4m3fn")
    if weight_dtype is not None and weight_dtype not in (*FP8_DTYPES.values(), *INT8_DTYPES.values(), dtype):
        raise ValueError(f"weight_dtype={weight_dtype} must be None, {dtype}, an fp8 dtype "
                         "(torch.float8_e4m3fn, torch.float8_e5m2) or torch.int8")


def load_module(model: nn.Module, plan: Mapping[str, Source], index: TensorIndex,
                dtype_for: DtypeFor, device: torch.device | str, where: str,
                finish: Int8Finish | None = None) -> nn.Module:
    """Check ``plan`` against ``model`` (built on meta), read it and assign it: strict.
    ``finish``: see :func:`read_plan`; the state keys it makes (``finish.derived``) are not
    expected in the files."""
    derived = finish.derived if finish is not None else frozenset()
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items() if k not in derived}
    plan, _ = checked_plan(plan, expected, index, where)
    state = read_plan(plan, index, dtype_for, device, finish)
    model.load_state_dict(state, strict=True, assign=True)
    _check_materialised(model)
    return model.eval().requires_grad_(False)


def checked_plan(plan: Mapping[str, Source], expected: Mapping[str, tuple[int, ...]], index: TensorIndex,
                 where: str) -> tuple[dict[str, Source], dict[str, tuple[int, ...]]]:
    """``plan`` cut to the ``expected`` keys (dropping what the model recomputes) and the shapes
    it gives, a ``WeightsError`` naming ``where`` unless they are exactly ``expected``."""
    plan = _fit_plan(plan, expected.keys())
    shapes = plan_shapes(plan, index_shapes(index), where)
    _check_plan(expected, shapes, where)
    return plan, shapes


def _fit_plan(plan: Mapping[str, Source], wanted: Iterable[str]) -> dict[str, Source]:
    wanted = set(wanted)
    extra = [k for k in plan if k in _RECOMPUTED and k not in wanted]
    if extra:
        logger.info("not loading %s: this family recomputes it", extra)
    return {k: v for k, v in plan.items() if k not in extra}


def _check_plan(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]],
                where: str) -> None:
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    wrong = [f"{k} {list(got[k])} (expected {list(v)})" for k, v in expected.items()
             if k in got and tuple(got[k]) != v]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 4} more" if len(items) > 4 else ""
            problems.append(f"{label}: {', '.join(items[:4])}{more}")
    if problems:
        raise WeightsError(f"{where}: the weights do not fit the model their shapes describe; "
                           + "; ".join(problems))


def _check_materialised(model: nn.Module) -> None:
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{type(model).__name__} kept meta tensors after loading: {left[:4]}: "
                           "a non-persistent buffer must be computed lazily, not in __init__")


# ---- public loaders -------------------------------------------------------------------------

def load_transformer(path: str | Path, dtype: torch.dtype = torch.bfloat16,
                     device: torch.device | str = "cpu", family: str | None = None,
                     ops: Ops | None = None, attention: AttentionFn | None = None,
                     weight_dtype: torch.dtype | None = None,
                     fp8_compute: bool = True) -> tuple[CogVideoXTransformer, Family]:
    """The CogVideoX transformer at ``path`` (model root, ``transformer/`` folder or single
    file in any supported layout) and its :class:`Family`, with the detected config.

    ``family`` is used only where the files cannot tell (a 1.0 transformer of no released width
    without ``config.json``: the 2B/5B split, as in tiny test models) and is a ``ValueError``
    where they say another (:func:`~cogvideox_core.families.detect_transformer_config`).
    ``weight_dtype`` fp8 or torch.int8: see the module doc.
    ``ops`` defaults to :data:`default_ops`, or when storage and compute differ to
    :class:`~cogvideox_core.ops.fp8_matmul_ops` (``fp8_compute``, float8_e4m3fn weights and a
    ``device`` with fp8 tensor cores: scaled fp8 matmuls) or :class:`cast_ops` (weights cast to
    ``dtype`` at each matmul).
    """
    from ..models.transformer import CogVideoXTransformer  # deferred: `info` needs no model code

    comp = find_component(path, "transformer")
    plan = component_plan(comp)
    name, cfg = detect_family(comp, family, plan)
    dtype_for = storage_dtypes(dtype, None if weight_dtype == torch.int8 else weight_dtype, FP8_TRANSFORMER_KEYS)
    _warn_precision(get_family(name), dtype, comp)
    if ops is None:
        ops = transformer_ops(dtype, weight_dtype, device, fp8_compute)
    model = CogVideoXTransformer(cfg, ops=ops, dtype=dtype, device="meta",
                                 attention=attention or sdpa_attention)
    storage = plan_storage(model, plan, comp, dtype, weight_dtype, FP8_TRANSFORMER_KEYS, fp8_compute)
    if storage is not None:  # int8, or a scaled fp8 file kept in fp8: quantized layers swapped in
        plan, dtype_for = storage.plan, storage.dtype_for
    index = comp.index
    if has_quantized(index):  # GGUF: quantized block linears keep their blocks (loading.gguf_file)
        index, dtype_for = keep_quantized(model, plan, index, dtype_for)
    load_module(model, plan, index, dtype_for, device, comp.location,
                storage.finish if storage is not None else None)
    note = storage.note if storage is not None else _dtype_note(dtype, weight_dtype)
    logger.info("loaded %s transformer from %s (%s)", name, comp.location, note)
    return model, dataclasses.replace(get_family(name), transformer=cfg)


def load_vae(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
             config: VAEConfig | None = None, ops: Ops | None = None) -> CogVideoXVAE:
    """The CogVideoX VAE at ``path`` (model root, ``vae/`` folder or single file); the config
    comes from ``config``, the folder's ``config.json`` or the shapes."""
    from ..vae.model import CogVideoXVAE

    check_dtypes(dtype, None)
    comp = find_component(path, "vae")
    cfg = config or vae_config(comp)
    model = CogVideoXVAE(cfg, ops=ops or default_ops, dtype=dtype, device="meta")
    load_module(model, component_plan(comp), comp.index, lambda key: dtype, device, comp.location)
    logger.info("loaded VAE from %s (%s)", comp.location, dtype)
    return model


def load_scheduler_config(path: str | Path) -> SchedulerConfig | None:
    """The shipped scheduler config of the model at ``path`` (found by
    :func:`~cogvideox_core.loading.files.find_scheduler_file`: ``path`` or the folder holding it
    is the diffusers root), or None: then the family's values apply
    (:meth:`~cogvideox_core.generation.pipeline.Models.scheduler_config`)."""
    found = find_scheduler_file(path)
    return None if found is None else SchedulerConfig.from_json(found)


def read_state_dict(path: str | Path, dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file (or a folder's weight files) under its own key,
    converted to ``dtype`` if given. For small things: the whole dict is in memory."""
    path = Path(path).expanduser()
    files = weight_files(path) if path.is_dir() else [path]
    index = index_files(files)
    plan = {k: Source(k) for k in index}
    return read_plan(plan, index, lambda k: dtype or SAFETENSORS_DTYPES[index[k].dtype], device)


def _warn_precision(family: Family, dtype: torch.dtype, comp: Component) -> None:
    if dtype == torch.float16 and family.bf16_trained:
        logger.warning("%s: the %s weights are bf16-trained; float16 gives NaN or black video: "
                       "use bfloat16", comp.location, family.name)
    stored = set(comp.dtypes())
    if stored & {"F8_E4M3", "F8_E5M2"}:
        logger.info("%s: stored in fp8; weights are upcast to %s unless weight_dtype is fp8",
                    comp.location, dtype)


def transformer_ops(dtype: torch.dtype, weight_dtype: torch.dtype | None, device: torch.device | str,
                    fp8_compute: bool = True) -> Ops:
    """The layer classes for a transformer computed in ``dtype`` with block weights stored as
    ``weight_dtype`` on ``device`` (see :func:`load_transformer`), the choice logged."""
    if weight_dtype in (None, dtype, torch.int8):  # int8 layers are swapped in by loading.quantized
        return default_ops
    why_not = fp8_matmul_blocker(weight_dtype, dtype, device) if fp8_compute else "turned off"
    if why_not is None:
        logger.info("%s block weights: scaled fp8 matmuls on %s", weight_dtype, device)
        return fp8_matmul_ops
    logger.info("%s block weights: cast to %s at each matmul (fp8 matmuls: %s)", weight_dtype, dtype, why_not)
    return cast_ops


def _dtype_note(dtype: torch.dtype, weight_dtype: torch.dtype | None) -> str:
    if weight_dtype in (None, dtype):
        return str(dtype)
    return f"{weight_dtype} block weights, computed in {dtype}"


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (shared storage counted once)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


__all__ = ["ModelInfo", "inspect_path", "find_component", "component_plan", "plan_shapes", "component_shapes",
           "detect_family", "vae_config", "vae_config_from_shapes", "read_plan",
           "read_source", "all_finite", "storage_dtypes", "check_dtypes", "load_module",
           "load_transformer", "transformer_ops", "load_vae",
           "load_scheduler_config", "COMPUTE_DTYPES", "FP8_DTYPES",
           "read_state_dict", "model_bytes", "FP8_TRANSFORMER_KEYS", "INT8_DTYPES"]
