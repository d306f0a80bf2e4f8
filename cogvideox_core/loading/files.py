"""Where the weights are: safetensors headers and model folders, read without reading tensors.

:func:`read_header` reads only a safetensors file's header (8-byte length + JSON) and checks it
against the file size, so a truncated download is caught before any tensor is touched;
:func:`read_into` reads tensor bytes straight into memory the caller owns. :func:`locate` turns
a path (a diffusers model root, one component folder, sharded or not, or a single
``.safetensors`` holding components under key prefixes) into components. Torch checkpoints
(``.pt``, ``.pth``, ``.ckpt``: SAT releases and fine-tunes) are indexed by
:mod:`~cogvideox_core.loading.sat_checkpoint` (weights-only unpickling, tensors located in the
file); other pickles (``.bin``, ``.pkl``) are refused because unpickling runs code; GGUF files
(``.gguf``) are indexed by :mod:`~cogvideox_core.loading.gguf_index`.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping, Sequence

import torch

from ..errors import WeightsError
from .keymaps import Found, find_t5, find_transformer, find_vae

logger = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {  # the header's dtype names
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
             "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_MAX_HEADER = 256 * 2**20  # a header is JSON for a few thousand tensors: tens of kB to a few MB
_PICKLES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # either makes a T5 tokenizer folder
SCHEDULER_FILE = Path("scheduler") / "scheduler_config.json"  # in a diffusers model root
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.safetensors$")
_PREFERRED = ("diffusion_pytorch_model", "model")
_VARIANTS = ("", ".bf16", ".fp16", ".fp32")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as its file's header describes it."""

    file: Path
    dtype: str  # safetensors name: "BF16", "F8_E4M3", ...
    shape: tuple[int, ...]
    offset: int = 0  # where its bytes start in the file

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]


TensorIndex = dict[str, TensorEntry]


def index_shapes(index: Mapping[str, TensorEntry]) -> dict[str, tuple[int, ...]]:
    """Stored key -> shape."""
    return {k: e.shape for k, e in index.items()}


@dataclass(frozen=True)
class Component:
    """One part of a model: its files, the header entries of its keys, where it sits in them."""

    name: str  # one of COMPONENTS
    files: tuple[Path, ...]
    index: TensorIndex = field(default_factory=dict, repr=False)
    found: Found | None = None  # layout + key prefix; None for tokenizer and scheduler
    config: Mapping[str, object] | None = field(default=None, repr=False)  # config.json

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.index.values())

    @property
    def location(self) -> str:
        """For messages: the file, or the folder and its file count."""
        if len(self.files) == 1:
            return str(self.files[0])
        return f"{self.files[0].parent} ({len(self.files)} files)"

    def dtypes(self) -> dict[str, int]:
        """Bytes per stored dtype, e.g. ``{"BF16": 11_143_000_000}``."""
        out: dict[str, int] = {}
        for entry in self.index.values():
            out[entry.dtype] = out.get(entry.dtype, 0) + entry.nbytes
        return out


# ---- one file -------------------------------------------------------------------------------

def read_header(path: Path) -> TensorIndex:
    """The tensors a ``.safetensors`` file declares, checked against its size (8 + N bytes read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise WeightsError(f"{path}: {size} bytes, too short for a safetensors file "
                               "(expected an 8-byte header length first)")
        n = int.from_bytes(raw, "little")
        if n > min(_MAX_HEADER, size - 8):
            raise WeightsError(f"{path}: header length {n} does not fit a {size}-byte file: "
                               "not a safetensors file, or truncated")
        text = f.read(n)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: the safetensors header is not valid JSON ({e}): corrupt file") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: the safetensors header is not a JSON object: corrupt file")
    header.pop("__metadata__", None)
    return _entries(path, header, 8 + n, size - 8 - n)


def _entries(path: Path, header: Mapping[str, object], data_start: int, data_bytes: int) -> TensorIndex:
    index: TensorIndex = {}
    end = 0
    for key, info in header.items():
        try:
            dtype, shape = info["dtype"], tuple(int(s) for s in info["shape"])  # type: ignore[index]
            begin, stop = (int(o) for o in info["data_offsets"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            raise WeightsError(f"{path}: header entry {key!r} is malformed ({info!r}): "
                               "corrupt file") from None
        if dtype not in _ITEMSIZE:
            raise WeightsError(f"{path}: tensor {key!r} has dtype {dtype!r}, which this pack cannot read")
        entry = TensorEntry(path, dtype, shape, data_start + begin)
        if stop - begin != entry.nbytes:
            raise WeightsError(f"{path}: tensor {key!r} {dtype}{list(shape)} should take "
                               f"{entry.nbytes} bytes, its offsets span {stop - begin}: corrupt file")
        index[key] = entry
        end = max(end, stop)
    if end > data_bytes:
        raise WeightsError(f"{path}: truncated: the header describes {end} bytes of tensor data, "
                           f"the file holds {data_bytes} (an interrupted download?)")
    return index


def read_into(f: BinaryIO, offset: int, out: memoryview, where: Path) -> None:
    """Fill ``out`` with the bytes at ``offset`` of the open file ``f`` (unbuffered, no map)."""
    f.seek(offset)
    done = 0
    while done < len(out):
        n = f.readinto(out[done:])
        if not n:
            raise WeightsError(f"{where}: the file ends inside a tensor's data: truncated")
        done += n


def read_index(path: Path) -> TensorIndex:
    """The tensors of one weight file: a safetensors header, or a torch checkpoint's state dict
    located in the file (:func:`~cogvideox_core.loading.sat_checkpoint.read_torch_tensors`)."""
    from .sat_checkpoint import is_torch_checkpoint
    from .gguf_index import is_gguf, read_gguf_index  # GGUF (ComfyUI-GGUF files): its tensor table

    if is_gguf(path):
        return read_gguf_index(path)
    return _torch_index(path) if is_torch_checkpoint(path) else read_header(path)


def _torch_index(path: Path) -> TensorIndex:
    """A torch checkpoint's tensors (:mod:`.sat_checkpoint` locates them) as header entries."""
    from .sat_checkpoint import read_torch_tensors

    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    index: TensorIndex = {}
    for key, (dtype, shape, offset) in read_torch_tensors(path).items():
        if dtype not in names:
            raise WeightsError(f"{path}: tensor {key!r} has dtype {dtype}, which this pack cannot read")
        index[key] = TensorEntry(path, names[dtype], shape, offset)
    return index


def index_files(files: Sequence[Path]) -> TensorIndex:
    """The union of several files' headers (the shards of one component)."""
    index: TensorIndex = {}
    for path in files:
        for key, entry in read_index(path).items():
            if key in index:
                raise WeightsError(f"{path}: tensor {key!r} is also in {index[key].file}")
            index[key] = entry
    return index


# ---- folders --------------------------------------------------------------------------------

def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of one component folder, every shard present."""
    indexes = sorted(folder.glob("*.safetensors.index.json"), key=_preference)
    if indexes:
        return _shards_of_index(indexes[0])
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        from .sat_checkpoint import checkpoint_files  # .pt/.pth/.ckpt, the SAT release layout

        if checkpoint := checkpoint_files(folder):
            return checkpoint
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLES)
        hint = (f"; found only pickled checkpoints ({', '.join(pickles)}), which are not loaded: "
                "save them as .safetensors" if pickles else "")
        raise WeightsError(f"{folder}: no .safetensors weight file{hint}")
    sharded = [p for p in files if _SHARD.search(p.name)]
    if sharded and len(sharded) == len(files):
        return _shards_by_name(folder, sharded)
    if len(files) == 1:
        return files
    best = sorted(files, key=_preference)
    if _preference(best[0]) < _preference(best[1]):
        logger.info("%s: several weight files, using %s", folder, best[0].name)
        return best[:1]
    raise WeightsError(f"{folder}: several weight files and none is the default "
                       f"({', '.join(p.name for p in files)}): pass one file")


def _preference(path: Path) -> tuple[int, int]:
    """Sort key: diffusers/transformers default names first, then variants bf16, fp16, fp32."""
    stem = path.name.split(".safetensors")[0]
    for i, base in enumerate(_PREFERRED):
        for j, variant in enumerate(_VARIANTS):
            if stem == base + variant:
                return i, j
    return len(_PREFERRED), 0


def _shards_of_index(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{index_path}: not a readable safetensors index ({e})") from None
    missing = [n for n in names if not (index_path.parent / n).is_file()]
    if missing:
        raise WeightsError(f"{index_path}: names shard {missing[0]!r}, which is missing "
                           f"({len(missing)} of {len(names)} shards missing)")
    return [index_path.parent / n for n in names]


def _shards_by_name(folder: Path, files: list[Path]) -> list[Path]:
    totals = {int(m.group(2)) for p in files if (m := _SHARD.search(p.name))}
    total = max(totals)
    if len(files) != total or len(totals) != 1:
        raise WeightsError(f"{folder}: {len(files)} shard files named '-of-{total:05d}' and no "
                           f"index.json: {total - len(files)} shard(s) missing")
    return files


def _read_config(folder: Path) -> dict[str, object] | None:
    path = folder / "config.json"
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path) -> dict[str, object]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: not a JSON object")
    return config


# ---- paths -> components -------------------------------------------------------------------

def locate(path: str | Path) -> dict[str, Component]:
    """The components found at ``path`` (a model root, a component folder or one file), by
    name; headers are read, tensors are not."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder")
    if path.is_file():
        return _components_in_file(path)
    if is_model_root(path):
        return _components_in_root(path)
    return _components_in_folder(path)


def is_model_root(folder: Path) -> bool:
    """A diffusers model root: ``model_index.json`` or any of the component subfolders."""
    return (folder / "model_index.json").is_file() or any((folder / c).is_dir() for c in COMPONENTS)


def _components_in_root(root: Path) -> dict[str, Component]:
    found: dict[str, Component] = {}
    for name in ("transformer", "vae", "text_encoder"):
        if (root / name).is_dir():
            found[name] = _folder_component(root / name, name)
    tok = root / "tokenizer"
    if tok.is_dir() and any((tok / f).is_file() for f in TOKENIZER_FILES):
        found["tokenizer"] = Component("tokenizer", tuple(sorted(p for p in tok.iterdir() if p.is_file())))
    sched = root / SCHEDULER_FILE
    if sched.is_file():
        found["scheduler"] = Component("scheduler", (sched,), config=_read_json(sched))
    return found


def find_scheduler_file(path: str | Path) -> Path | None:
    """The ``scheduler/scheduler_config.json`` of the diffusers model ``path`` belongs to, or None.

    One rule: ``path`` is the model root (``path/scheduler/``), or a component folder or file
    inside it (``path/../scheduler/``: ``transformer/``, or a single ``.safetensors`` file beside
    ``scheduler/``). Nothing further up is searched.
    """
    path = Path(path).expanduser()
    for root in (path, path.parent):
        if (root / SCHEDULER_FILE).is_file():
            return root / SCHEDULER_FILE
    return None


def _components_in_folder(folder: Path) -> dict[str, Component]:
    files = weight_files(folder)
    index = index_files(files)
    config = _read_config(folder)
    comps = _components_in_index(index, tuple(files), config)
    if len(comps) > 1:  # one folder is one component: keep the one its config names
        wanted = _component_from_config(config)
        comps = {k: v for k, v in comps.items() if k == wanted} or comps
    return comps


def _folder_component(folder: Path, name: str) -> Component:
    files = tuple(weight_files(folder))
    index = index_files(files)
    found = {"transformer": find_transformer, "vae": find_vae, "text_encoder": find_t5}[name](index)
    return Component(name, files, index, found, _read_config(folder))


def _component_from_config(config: Mapping[str, object] | None) -> str | None:
    if not config:
        return None
    cls = str(config.get("_class_name", "")) + " ".join(map(str, config.get("architectures", []) or []))
    for marker, name in (("Transformer", "transformer"), ("Autoencoder", "vae"), ("T5", "text_encoder")):
        if marker in cls:
            return name
    return None


def _components_in_file(path: Path) -> dict[str, Component]:
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".ckpt"):  # torch checkpoints: sat_checkpoint.TORCH_SUFFIXES
        return _components_in_index(read_index(path), (path,), None)
    if suffix in _PICKLES:
        raise WeightsError(f"{path}: a pickled checkpoint ({suffix}), which this pack does not "
                           "unpickle (it can run code): use the .safetensors release, or convert "
                           "(original SAT checkpoints: diffusers' scripts/convert_cogvideox_to_diffusers.py)")
    if suffix == ".gguf":  # GGUF: indexed by gguf_index, quantized tensors kept quantized (gguf_file)
        return _components_in_index(read_index(path), (path,), None)
    index = read_header(path)
    return _components_in_index(index, (path,), None)


def _components_in_index(index: TensorIndex, files: tuple[Path, ...],
                         config: Mapping[str, object] | None) -> dict[str, Component]:
    found = {"transformer": find_transformer(index), "vae": find_vae(index), "text_encoder": find_t5(index)}
    prefixes = {name: f.prefix for name, f in found.items() if f is not None}
    comps: dict[str, Component] = {}
    for name, where in found.items():
        if where is None:
            continue
        others = [p for n, p in prefixes.items() if n != name and len(p) > len(where.prefix)]
        keys = {k: e for k, e in index.items()
                if k.startswith(where.prefix) and not any(k.startswith(p) for p in others)}
        comps[name] = Component(name, files, keys, where, config)
    return comps


# ---- messages -------------------------------------------------------------------------------

_LOOKS_LIKE: tuple[tuple[str, str], ...] = (
    ("input_blocks.", "a Stable Diffusion UNet"),
    ("down_blocks.0.resnets.0.conv1.weight", "a UNet or image VAE"),
    ("text_model.encoder.layers.", "a CLIP text encoder"),
    ("encoder.block.0.layer.0.SelfAttention", "a T5 text encoder"),
    ("double_blocks.", "a Flux/HunyuanVideo transformer"),
    ("joint_blocks.", "an SD3 transformer"),
    ("encoder.conv_in.conv.weight", "a video VAE"),
    ("patch_embedding.weight", "a Wan transformer"),
)


def describe_keys(keys: Iterable[str]) -> str:
    """A short account of a key set for error messages: a guess at the model, two example keys."""
    keys = sorted(keys)
    if not keys:
        return "it holds no tensors"
    guess = next((what for marker, what in _LOOKS_LIKE if any(marker in k for k in keys)), None)
    looks = f", they look like {guess}" if guess else ""
    examples = ", ".join(repr(k) for k in keys[:2])
    return f"it holds {len(keys)} tensors{looks} (e.g. {examples})"


__all__ = ["COMPONENTS", "SAFETENSORS_DTYPES", "TOKENIZER_FILES", "SCHEDULER_FILE", "find_scheduler_file",
           "TensorEntry", "TensorIndex", "Component",
           "read_header", "read_index", "read_into", "index_files", "index_shapes", "weight_files", "locate",
           "is_model_root", "describe_keys"]
