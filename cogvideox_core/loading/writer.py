"""Writing safetensors files tensor by tensor, sharded as diffusers shards, atomically.

The header of a safetensors file needs only each tensor's dtype and shape, so it is written
first and the tensors follow one at a time, each produced by its :attr:`OutTensor.read` just
before its bytes are written and dropped right after: memory holds one tensor, never a shard.
Shards are cut as diffusers' ``save_pretrained`` cuts them (in key order, a new shard when the
next tensor would pass ``max_shard_bytes``) and named as it names them, with the same
``*.safetensors.index.json``. Every output is written under a temporary name beside it and
renamed into place when complete (:func:`atomic_output`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch

from .files import SAFETENSORS_DTYPES

logger = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 10**9  # diffusers' max_shard_size="5GB"
WEIGHTS_NAME = "diffusion_pytorch_model"
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write: its key, dtype and shape, and how to produce it (CPU, contiguous)."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    read: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def write_safetensors(path: Path, tensors: Sequence[OutTensor]) -> int:
    """Write ``tensors`` to ``path`` as one safetensors file, one tensor in memory at a time;
    returns the bytes of tensor data written."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.key] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # tensor data 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for t in tensors:
            _write_tensor(f, t)
    return offset


def _write_tensor(f, t: OutTensor) -> None:
    data = t.read()
    if data.dtype != t.dtype or tuple(data.shape) != t.shape:
        raise RuntimeError(f"{t.key}: produced {data.dtype}{list(data.shape)}, planned {t.dtype}{list(t.shape)}")
    raw = data.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # 0-d -> 1 element
    f.write(memoryview(raw.numpy()))


def shard(tensors: Sequence[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Consecutive groups of at most ``max_bytes`` (a larger tensor alone), as diffusers cuts."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def write_sharded(folder: Path, tensors: Sequence[OutTensor], max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                  name: str = WEIGHTS_NAME) -> list[Path]:
    """``folder/<name>.safetensors``, or shards ``<name>-0000i-of-0000n.safetensors`` and
    ``<name>.safetensors.index.json`` as diffusers writes them; returns the files written."""
    groups = shard(sorted(tensors, key=lambda t: t.key), max_shard_bytes)
    if len(groups) == 1:
        paths = [folder / f"{name}.safetensors"]
    else:
        paths = [folder / f"{name}-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    total = sum(write_safetensors(p, g) for p, g in zip(paths, groups))
    if len(groups) > 1:
        weight_map = {t.key: p.name for p, g in zip(paths, groups) for t in g}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / f"{name}.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return paths


def write_json(path: Path, data: Mapping[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_output(dest: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary path beside ``dest`` to write into; renamed to ``dest`` when the block ends
    without error (an existing ``dest`` replaced only with ``overwrite``), removed otherwise."""
    if dest.exists() and not overwrite:
        raise ValueError(f"{dest} already exists: choose another destination or pass --overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        _replace(tmp, dest)
    finally:
        _remove(tmp)


def _replace(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    _remove(old)
    os.replace(dest, old)  # a folder cannot be replaced by a rename onto it: move it aside first
    os.replace(tmp, dest)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


__all__ = ["DEFAULT_SHARD_BYTES", "WEIGHTS_NAME", "OutTensor", "write_safetensors", "shard",
           "write_sharded", "write_json", "atomic_output"]
