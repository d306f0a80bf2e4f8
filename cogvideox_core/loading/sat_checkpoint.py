"""Torch checkpoints (``.pt``, ``.pth``, ``.ckpt``): SwissArmyTransformer (SAT) releases and fine-tunes.

THUDM's SAT training code saves ``mp_rank_00_model_states.pt``: a ``torch.save`` zip archive
whose pickle holds a dict with the weights under ``module`` (the VAE's ``3d-vae.pt``: under
``state_dict``). The pickle is read once with ``torch.load(weights_only=True, mmap=True)``: only
tensors and plain containers are unpickled (a file that needs more is refused: arbitrary
unpickling can run code) and the mapping reads no tensor data. Each tensor's bytes sit
uncompressed in the archive, so the result is each tensor's dtype, shape and file offset, as a
safetensors header gives them: :func:`cogvideox_core.loading.files.read_index` makes them its
``TensorEntry`` index and the loaders read the tensors with the same positioned reads, key maps,
shape checks and dtype conversion as for ``.safetensors``. (This module imports nothing of
``files``: that one imports it.)

A folder holds one checkpoint directly (``vae/3d-vae.pt``) or in the SAT release layout
``transformer/latest`` + ``transformer/<tag>/mp_rank_00_model_states.pt`` (:func:`checkpoint_files`).
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping, NamedTuple

import torch

from ..errors import WeightsError

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
SAT_FILE = "mp_rank_00_model_states.pt"
# Where a checkpoint dict keeps its state dict, as diffusers' converter looks (get_state_dict).
STATE_KEYS = ("module", "state_dict", "model")
_DATA_RECORD = re.compile(r"(^|/)data/\d+$")
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field
_REFUSE = ("which this pack does not do: it does not unpickle Python objects besides tensors "
           "(unpickling can run code); save the state dict alone (torch.save(model.state_dict())) "
           "or as .safetensors")


class Located(NamedTuple):
    """Where one tensor's bytes are: row-major, little-endian, at ``offset`` of the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int


def is_torch_checkpoint(path: Path) -> bool:
    """Whether ``path`` is named as a torch checkpoint this module reads."""
    return path.suffix.lower() in TORCH_SUFFIXES


def read_torch_tensors(path: Path) -> dict[str, Located]:
    """The tensors of the checkpoint's state dict, located in the file (no tensor data read)."""
    records = _data_records(path)
    obj = _load(path)
    state = _state_dict(obj, path)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(set(state) - set(tensors))
    if skipped:
        logger.debug("%s: not tensors, ignored: %s", path, skipped[:8])
    base = _mapping_base(tensors.values(), records, path)
    return {key: _entry(path, key, t, base) for key, t in tensors.items()}


def checkpoint_files(folder: Path) -> list[Path]:
    """The torch checkpoint of a component folder: the only ``.pt``/``.pth``/``.ckpt`` in it, or
    the SAT release layout's ``<tag>/mp_rank_00_model_states.pt`` (``latest`` names the tag; else
    the highest numbered one); ``[]`` if there is none."""
    direct = sorted(p for p in folder.iterdir() if p.is_file() and is_torch_checkpoint(p))
    if len(direct) > 1:
        named = [p for p in direct if p.name == SAT_FILE]
        if len(named) == 1:
            return named
        raise WeightsError(f"{folder}: several torch checkpoints ({', '.join(p.name for p in direct)}) "
                           "and none is the default: pass one file")
    if direct:
        return direct
    found = _sat_release(folder)
    return [found] if found else []


def _sat_release(folder: Path) -> Path | None:
    latest = folder / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        path = folder / tag / SAT_FILE
        if not path.is_file():
            raise WeightsError(f"{latest}: names checkpoint {tag!r}, but {path} is missing")
        return path
    tagged = sorted(folder.glob(f"*/{SAT_FILE}"), key=_tag_order)
    if len(tagged) > 1:
        logger.info("%s: several SAT checkpoints and no 'latest' file, using %s", folder, tagged[-1])
    return tagged[-1] if tagged else None


def _tag_order(path: Path) -> tuple[bool, int, str]:
    """Numbered tags (training iterations) after named ones, in number order."""
    tag = path.parent.name
    return tag.isdigit(), int(tag) if tag.isdigit() else 0, tag


# ---- the archive ---------------------------------------------------------------------------

def _data_records(path: Path) -> dict[int, int]:
    """Offset in the file -> size, of every tensor-data record of the zip archive."""
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path}: not a zip-format torch checkpoint (torch.save since torch 1.6 "
                           f"writes one; an older or damaged file?), {_REFUSE}")
    records: dict[int, int] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if info.filename.endswith("/byteorder") and archive.read(info).strip() not in (b"", b"little"):
                raise WeightsError(f"{path}: tensors saved big-endian, which this pack does not read")
            if not _DATA_RECORD.search(info.filename):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise WeightsError(f"{path}: tensor record {info.filename} is compressed; "
                                   "torch.save stores them uncompressed: not a torch checkpoint")
            records[_data_offset(f, info)] = info.file_size
    return records


def _data_offset(f: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a stored record's bytes start: after its local header, name and extra field."""
    f.seek(info.header_offset + 26)
    raw = f.read(4)
    name_len, extra_len = int.from_bytes(raw[:2], "little"), int.from_bytes(raw[2:], "little")
    return info.header_offset + _LOCAL_HEADER + name_len + extra_len


def _load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        detail = _refusal_detail(str(e))
        raise WeightsError(f"{path}: holds Python objects besides tensors ({detail}): loading it "
                           f"needs arbitrary unpickling, {_REFUSE}") from None
    except (RuntimeError, ValueError, EOFError, OSError) as e:
        first = " ".join(str(e).split())[:160]
        raise WeightsError(f"{path}: not a readable torch checkpoint ({first}); {_REFUSE}") from None


def _refusal_detail(message: str) -> str:
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if m:
        return f"a {m.group(1)}"
    return " ".join(message.split())[:120]


def _state_dict(obj: object, path: Path) -> Mapping[str, object]:
    """The checkpoint's state dict: ``obj`` itself if it holds tensors, else the dict under
    ``module`` / ``state_dict`` / ``model`` (nested as diffusers' converter unwraps them)."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    top = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
    raise WeightsError(f"{path}: no state dict in this checkpoint (expected tensors, or a dict "
                       f"under one of {', '.join(STATE_KEYS)}; found {top})")


def _mapping_base(tensors: Iterable[torch.Tensor], records: Mapping[int, int], path: Path) -> int:
    """The address the file is mapped at: ``torch.load(mmap=True)`` maps the whole file and
    points each storage at its record's offset, so one base fits every storage."""
    ptrs = {t.untyped_storage().data_ptr() for t in tensors if t.numel()}
    if not ptrs:
        return 0
    first = min(ptrs)
    for offset in sorted(records):
        base = first - offset
        if all(p - base in records for p in ptrs):
            return base
    raise WeightsError(f"{path}: the tensors' storages do not match the archive's records: "
                       "an unexpected torch checkpoint layout")


def _entry(path: Path, key: str, t: torch.Tensor, base: int) -> Located:
    if not t.is_contiguous():
        raise WeightsError(f"{path}: tensor {key!r} is stored as a non-contiguous view "
                           f"(strides {list(t.stride())}), which this pack cannot read in place")
    offset = t.data_ptr() - base if t.numel() else 0
    return Located(t.dtype, tuple(t.shape), offset)


def checkpoint_format(files: tuple[Path, ...], layout: str | None) -> str | None:
    """For ``info``: "SAT checkpoint (.pt)" for a torch checkpoint in the SAT layout, "torch
    checkpoint (.pt)" for another layout; None for safetensors."""
    suffixes = sorted({p.suffix.lower() for p in files if is_torch_checkpoint(p)})
    if not suffixes:
        return None
    kind = "SAT checkpoint" if layout == "sat" else "torch checkpoint"
    return f"{kind} ({', '.join(suffixes)})"


__all__ = ["TORCH_SUFFIXES", "SAT_FILE", "Located", "is_torch_checkpoint", "read_torch_tensors", "checkpoint_files",
           "checkpoint_format"]
