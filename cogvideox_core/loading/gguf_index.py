"""The tensor table of a GGUF file (``.gguf``), read with the ``gguf`` package.

The files are what city96's ComfyUI-GGUF tools (``tools/convert.py`` + llama.cpp's quantizer)
write: the original state-dict keys (diffusers or ComfyUI names, a ``model.diffusion_model.``
prefix stripped or not: :mod:`~cogvideox_core.loading.keymaps` finds the layout as for any
file), block-quantized weights (``Q8_0``, ``Q6_K``, ``Q5_K``, ``Q4_K``, ``Q4_0``) and
``F32``/``F16``/``BF16`` for small tensors (norms, biases, embeddings). The ``general.architecture``
string is not trusted: keys and shapes decide, as for every file. :class:`gguf.GGUFReader`
maps the file and parses header and tensor table; no tensor data is read here. GGUF lists
dimensions innermost first: shapes are reversed into torch order, so family detection and the
shape checks see the usual ``[out, in]``; ``comfy.gguf.orig_shape.<key>`` metadata (tensors
ComfyUI-GGUF reshaped for blocking) overrides them. Loading: :mod:`~cogvideox_core.loading.gguf_file`.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import WeightsError
from ..gguf_quants import FLOAT_TYPES, QUANT_TYPES, quantized_nbytes

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."  # ComfyUI-GGUF: the shape before a reshape for blocks
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class GGUFEntry:
    """A tensor of a GGUF file, with the fields of :class:`~cogvideox_core.loading.files.TensorEntry`
    (it stands wherever one does): ``dtype`` is its ggml type name (``"Q4_K"``, ``"F16"``; the
    float names are safetensors' too, so those read like safetensors tensors), ``shape`` in
    torch order, ``offset`` absolute; ``raw_shape`` is how the bytes are laid out ([rows, bytes
    per row] for a quantized 2-D tensor)."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0
    stored_nbytes: int = 0
    raw_shape: tuple[int, ...] = ()

    @property
    def nbytes(self) -> int:
        return self.stored_nbytes

    @property
    def quantized(self) -> bool:
        return self.dtype in QUANT_TYPES


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == GGUF_SUFFIX


# ---- reading the tensor table ---------------------------------------------------------------

def read_gguf_index(path: Path) -> dict[str, GGUFEntry]:
    """The tensors a ``.gguf`` file declares (name -> :class:`GGUFEntry`), checked against its size."""
    reader = _open(path)
    size = path.stat().st_size
    arch = _string_field(reader, "general.architecture")
    logger.debug("%s: GGUF, architecture %r, %d tensors", path, arch, len(reader.tensors))
    return {str(t.name): _entry(path, reader, t, size) for t in reader.tensors}


def _open(path: Path) -> Any:
    try:
        import gguf
    except ImportError:
        raise WeightsError(f"{path}: reading GGUF files needs the 'gguf' package "
                           "(pip install gguf)") from None
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}): "
                           "corrupt or truncated (an interrupted download?)") from None


def _string_field(reader: Any, name: str) -> str | None:
    field = reader.get_field(name)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[-1]]).decode("utf-8", errors="replace")


def _entry(path: Path, reader: Any, t: Any, size: int) -> GGUFEntry:
    qtype = t.tensor_type.name
    if qtype not in QUANT_TYPES and qtype not in FLOAT_TYPES:
        raise WeightsError(f"{path}: tensor {t.name!r} is stored as {qtype}, which this pack cannot "
                           f"read (it reads {', '.join([*QUANT_TYPES, *FLOAT_TYPES])})")
    stored = tuple(int(n) for n in reversed(list(t.shape)))  # GGUF: innermost dimension first
    shape = _orig_shape(reader, str(t.name)) or stored
    expected = (quantized_nbytes(qtype, stored) if qtype in QUANT_TYPES
                else math.prod(stored) * _ITEMSIZE[qtype])
    if int(t.n_bytes) != expected or math.prod(shape) != math.prod(stored):
        raise WeightsError(f"{path}: tensor {t.name!r} {qtype}{list(shape)} should take {expected} "
                           f"bytes, the file says {int(t.n_bytes)}: corrupt file")
    if int(t.data_offset) + expected > size:
        raise WeightsError(f"{path}: truncated: tensor {t.name!r} ends at byte "
                           f"{int(t.data_offset) + expected}, the file has {size} (an interrupted download?)")
    raw = tuple(int(n) for n in t.data.shape)  # a view of the map: nothing is read
    return GGUFEntry(path, qtype, shape, int(t.data_offset), expected, raw)


def _orig_shape(reader: Any, name: str) -> tuple[int, ...] | None:
    field = reader.get_field(ORIG_SHAPE_KEY + name)
    if field is None:
        return None
    return tuple(int(field.parts[i][0]) for i in field.data)


# ---- what info says --------------------------------------------------------------------------

def gguf_types(index: Mapping[str, object]) -> dict[str, int]:
    """Tensors per ggml type of a component's index (name -> entry), quantized types first:
    ``{"Q4_K": 180, "F32": 90}``; empty for anything but GGUF."""
    counts = Counter(e.dtype for e in index.values() if isinstance(e, GGUFEntry))
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] not in QUANT_TYPES, -kv[1], kv[0])))


def describe_gguf(index: Mapping[str, object]) -> str | None:
    """``"GGUF Q4_K (180 tensors), F32 (90)"`` for a GGUF component's index, else None."""
    types = list(gguf_types(index).items())
    if not types:
        return None
    (first, n), rest = types[0], types[1:]
    return "GGUF " + ", ".join([f"{first} ({n} tensors)", *(f"{t} ({k})" for t, k in rest)])


__all__ = ["GGUF_SUFFIX", "ORIG_SHAPE_KEY", "GGUFEntry", "is_gguf", "read_gguf_index", "gguf_types",
           "describe_gguf"]
