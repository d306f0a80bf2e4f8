"""What ``generate`` judges before any model loads: numbers, the device, the output path,
the component at every weights flag (headers only) and the media files.

Every refusal is a ``ValueError`` naming the flag, the value and what is allowed. The output
may not be, or lie inside, any input: a run never overwrites the user's weights or clips.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and the pipeline load inside the checks: `info` stays instant
    import torch

    from ..families import Family, VAEConfig
    from ..generation.conditioning import ConditioningPlan
    from ..generation.pipeline import GenerateRequest

logger = logging.getLogger(__name__)

OUT_SUFFIXES = (".mp4", ".safetensors")
MAX_STEPS = 1000  # the sampler node's bound
INPUT_FLAGS = ("model", "vae", "text_encoder", "image", "end_image", "video", "mask", "control",
               "prompts_file", "prompt_list")
MEDIA_FLAGS = ("image", "end_image", "video", "mask", "control")


def flag(name: str) -> str:
    """``text_encoder`` -> ``--text-encoder``."""
    return "--" + name.replace("_", "-")


# ---- numbers --------------------------------------------------------------------------------

def check_numbers(args: argparse.Namespace) -> None:
    """Every number of ``generate``: finite and in its range."""
    _finite_in("cfg", args.cfg, 0.0, math.inf, "a finite number >= 0 (1 or less: no guidance)")
    _finite_in("denoise", args.denoise, 0.0, 1.0, "in (0, 1] (1: start from pure noise)", low_open=True)
    _finite_in("colour_match", args.colour_match, 0.0, 1.0, "in 0..1 (0: off)")
    _int_in("steps", args.steps, 1, MAX_STEPS)
    if int(args.steps * args.denoise) < 1:
        raise ValueError(f"--steps {args.steps} x --denoise {args.denoise} = "
                         f"{args.steps * args.denoise:g} steps run: at least 1 must (raise --steps "
                         f"to {math.ceil(1 / args.denoise)} or more)")
    _int_in("seed", args.seed, 0, 2**64 - 1)
    for name in ("frames", "height", "width", "context_frames"):
        if getattr(args, name) is not None:
            _int_in(name, getattr(args, name), 1, None)
    _int_in("context_overlap", args.context_overlap, 0, None)
    _int_in("context_batch", args.context_batch, 1, None)
    _int_in("extend_chunks", args.extend_chunks, 1, None)
    _int_in("extend_overlap", args.extend_overlap, 0, None)
    threshold = getattr(args, "cache_threshold", None)
    if threshold is not None:
        _finite_in("cache_threshold", threshold, 0.0, math.inf, "a finite number > 0", low_open=True)
        method = getattr(args, "cache", "none")
        if method == "none":
            raise ValueError(f"--cache-threshold {threshold} without --cache: give --cache teacache or fbc")
        if method not in ("teacache", "fbc"):
            raise ValueError(f"--cache-threshold {threshold} with --cache {method}: only teacache and fbc "
                             f"take a threshold ({method} runs with diffusers' default settings)")
    if getattr(args, "cache", "none") == "fastercache" and args.cfg <= 1:
        raise ValueError(f"--cache fastercache with --cfg {args.cfg}: FasterCache approximates the "
                         "unconditional branch of guidance; give --cfg above 1 or another --cache")


def _finite_in(name: str, value: float, low: float, high: float, allowed: str,
               low_open: bool = False) -> None:
    below = value <= low if low_open else value < low
    if not math.isfinite(value) or below or value > high:
        raise ValueError(f"{flag(name)} {value}: must be {allowed}")


def _int_in(name: str, value: int, low: int, high: int | None) -> None:
    if value < low or (high is not None and value > high):
        allowed = f"at least {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{flag(name)} {value}: must be {allowed}")


# ---- device ---------------------------------------------------------------------------------

def check_device(spec: str | None) -> torch.device:
    """The device ``--device`` names, present and usable in this torch; default cuda if
    available, else cpu."""
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec}: not a device name; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        return _check_cuda(spec, device)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {spec}: MPS is not available on this machine; use cpu")
        return device
    raise ValueError(f"--device {spec}: {device.type} is not supported here; use cpu, cuda, cuda:N or mps")


def _check_cuda(spec: str, device: torch.device) -> torch.device:
    import torch

    if torch.version.cuda is None and torch.version.hip is None:
        raise ValueError(f"--device {spec}: this torch ({torch.__version__}) is a CPU-only build; "
                         "install a CUDA build of torch, or use --device cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES); "
                         "use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"--device {spec}: there are {count} CUDA device(s): cuda:0..cuda:{count - 1}")
    return device


# ---- the output -----------------------------------------------------------------------------

def check_suffix(path: str) -> Path:
    """``--out`` as a path, if it ends in one of :data:`OUT_SUFFIXES`."""
    out = Path(path).expanduser()
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(f"--out {path}: the file must end in {' or '.join(OUT_SUFFIXES)}")
    return out


def check_out(args: argparse.Namespace) -> Path:
    """``--out``: the right extension, not a folder, its folder writable, and not (inside) any
    input of the run."""
    out = check_suffix(args.out)
    if out.is_dir():
        raise ValueError(f"--out {args.out}: is a folder; give a file name ending in "
                         f"{' or '.join(OUT_SUFFIXES)}")
    check_not_input(args, out)
    _check_writable(out, args.out)
    return out


def check_not_input(args: argparse.Namespace, out: Path) -> None:
    """A ``ValueError`` when the output ``out`` is, or lies inside, an input of the run."""
    for name, path in _input_paths(args):
        if _same_or_inside(out, path):
            raise ValueError(f"--out {args.out}: {out} is {'' if out.resolve() == path.resolve() else 'inside '}"
                             f"the {flag(name)} input {path}; writing there would destroy it: choose "
                             "another file")


def _input_paths(args: argparse.Namespace) -> list[tuple[str, Path]]:
    found = []
    for name in INPUT_FLAGS:
        value = getattr(args, name, None)
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                found.append((name, Path(item).expanduser()))
    return found


def _same_or_inside(out: Path, path: Path) -> bool:
    out_r, path_r = out.resolve(), path.resolve()
    if out_r == path_r or path_r in out_r.parents:
        return True
    return out.exists() and path.exists() and os.path.samefile(out, path)  # hard links


def _check_writable(out: Path, given: str) -> None:
    folder = out.parent
    while not folder.exists():  # created on write: judge the nearest existing folder
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"--out {given}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {given}: the folder {folder} is not writable")


# ---- weights --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ComponentSizes:
    """Values (parameters) of each component and the VAE's config, from the headers (for the
    memory estimate)."""

    transformer: int
    vae: int
    text_encoder: int
    vae_config: VAEConfig
    block_weights: int = 0  # of ``transformer``: the block matmul weights fp8 storage keeps
    int8_weights: int = 0  # the weights int8 storage keeps (those and the blocks' adaLN linears)
    int8_rows: int = 0  # their output channels: int8 keeps a float32 scale per row

    def nbytes(self, dtype: torch.dtype, weight_dtype: torch.dtype | None = None) -> int:
        """Bytes of all three in ``dtype``, the weights ``weight_dtype`` storage applies to in
        it (fp8, int8: 1 byte a value; int8 plus 4 bytes a row) if given."""
        total = (self.transformer + self.vae + self.text_encoder) * dtype.itemsize
        if weight_dtype is None or weight_dtype == dtype:
            return total
        if not weight_dtype.is_floating_point:  # int8
            return total - self.int8_weights * (dtype.itemsize - weight_dtype.itemsize) + 4 * self.int8_rows
        return total - self.block_weights * (dtype.itemsize - weight_dtype.itemsize)


def check_loras(args: argparse.Namespace, fit: bool = False) -> list[tuple[Path, float]]:
    """``--lora PATH[:STRENGTH]`` flags: files that exist, finite strengths, and weights they can
    be merged into (not int8 or fp8 storage); with ``fit``, also that each file is a LoRA of
    ``--model``'s transformer (both read from headers: before any weights load)."""
    from ..loading.lora_apply import parse_lora_spec

    specs = [parse_lora_spec(text) for text in getattr(args, "lora", None) or ()]
    storage = getattr(args, "weight_dtype", "auto")
    if specs and storage.startswith(("int8", "fp8")):
        raise ValueError(f"--lora with --weight-dtype {storage}: a LoRA is merged into the weights and "
                         "cannot be added to quantized ones; give --weight-dtype auto, bf16, fp16 or fp32")
    if specs and fit:
        _check_lora_fit(args, [path for path, _ in specs])
    return specs


def _check_lora_fit(args: argparse.Namespace, paths: list[Path]) -> None:
    from ..errors import WeightsError
    from ..loading.lora import check_lora_file
    from ..loading.weights import component_shapes, find_component

    comp = find_component(args.model, "transformer")
    shapes = component_shapes(comp)
    for path in paths:
        try:
            count = check_lora_file(path, shapes)
        except WeightsError as e:
            raise WeightsError(f"--lora {e}") from None
        logger.info("--lora %s: changes %d weights of %s", path, count, comp.location)


def check_components(args: argparse.Namespace) -> ComponentSizes:
    """Each weights flag holds the component it is given for (headers only)."""
    from ..errors import WeightsError
    from ..loading.weights import find_component, vae_config

    sizes: dict[str, object] = {}
    for name, given in (("transformer", "model"), ("vae", "vae"), ("text_encoder", "text_encoder")):
        source = given if getattr(args, given) is not None else "model"
        try:
            comp = find_component(getattr(args, source), name)
            sizes[name] = sum(math.prod(e.shape) for e in comp.index.values())
            if name == "transformer":
                sizes.update(_block_weights(comp))
            if name == "vae":
                sizes["vae_config"] = vae_config(comp)
        except WeightsError as e:
            hint = f": give {flag(given)} PATH" if source == "model" and given != "model" else ""
            raise WeightsError(f"{flag(source)} {e}{hint}") from None
    return ComponentSizes(**sizes)  # type: ignore[arg-type]


def _block_weights(comp) -> dict[str, int]:
    """Values of the transformer weights fp8 and int8 storage apply to, and int8's rows."""
    from ..loading.quantized import INT8_TRANSFORMER_KEYS
    from ..loading.weights import FP8_TRANSFORMER_KEYS, component_shapes

    shapes = component_shapes(comp)
    int8 = [shape for key, shape in shapes.items() if INT8_TRANSFORMER_KEYS.match(key)]
    return {"block_weights": sum(math.prod(s) for k, s in shapes.items() if FP8_TRANSFORMER_KEYS.match(k)),
            "int8_weights": sum(math.prod(s) for s in int8), "int8_rows": sum(s[0] for s in int8)}


def check_memory(family: Family, request: GenerateRequest, plan: ConditioningPlan, dtype: torch.dtype,
                 device: torch.device, available: int, sizes: ComponentSizes,
                 weight_dtype: torch.dtype | None = None) -> None:
    """``NotEnoughMemory`` before loading when the weights (all on ``device``, as the CLI keeps
    them; the block matmul weights in ``weight_dtype``) and the run's peak cannot fit in
    ``available`` bytes, with what would fit."""
    from ..generation.pipeline import memory_args
    from ..memory import require_fit

    require_fit(family, plan, dtype, available, where=str(device),
                **memory_args(family, request, device.type, sizes.vae_config,
                              weights=sizes.nbytes(dtype, weight_dtype)))


# ---- media ----------------------------------------------------------------------------------

def check_prompts_file(args: argparse.Namespace) -> list[str] | None:
    """The prompts file's non-empty lines (UTF-8), or None without one."""
    if args.prompts_file is None:
        return None
    return read_prompt_lines("prompts_file", args.prompts_file)


def read_prompt_lines(name: str, given: str) -> list[str]:
    """The non-empty lines, stripped, of the UTF-8 text file ``given`` of flag ``name``."""
    path = Path(given).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag(name)} {given}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ValueError(f"{flag(name)} {given}: cannot read it ({e.strerror})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{flag(name)} {given}: no prompt in it (one per line)")
    return lines


def read_media(name: str, path: str, reader):
    """``reader(path, label=the flag)``: a failure names the flag and the file."""
    return reader(path, label=flag(name))


__all__ = ["OUT_SUFFIXES", "MAX_STEPS", "flag", "check_numbers", "check_device", "check_suffix", "check_out", "check_not_input",
           "ComponentSizes", "check_components", "check_memory", "check_prompts_file", "read_prompt_lines",
           "read_media"]
