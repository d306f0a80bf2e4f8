"""GGUF (ggml) quantized weight blocks, dequantized in torch on the tensor's own device.

A quantized tensor is stored as raw bytes: consecutive blocks, each holding ``block`` values
of the flattened (row-major) tensor. The layouts are llama.cpp's (``ggml-common.h``); the
functions below unpack them with tensor ops only, so they run wherever the bytes are (CPU or
GPU) and the result is exactly what ``gguf.quants.dequantize`` (the reference, in numpy)
computes: the same float32 products in the same order, then one cast to the wanted dtype.

- ``Q8_0``: 32 values, fp16 scale ``d`` + 32 int8: ``d * q``.
- ``Q4_0``: 32 values, fp16 ``d`` + 16 bytes of nibbles (low nibbles are values 0-15, high
  nibbles 16-31): ``d * (q - 8)``.
- ``Q4_K``: 256 values in 8 sub-blocks of 32; fp16 ``d``, ``dmin``, 12 bytes packing 8 6-bit
  scales and 8 6-bit mins, 128 bytes of nibbles (each 32-byte chunk: low nibbles are one
  sub-block, high nibbles the next): ``d * sc * q - dmin * m``.
- ``Q5_K``: as ``Q4_K`` plus 32 bytes of fifth bits (bit ``k`` of byte ``l`` is the high bit
  of value ``l`` of sub-block ``k``).
- ``Q6_K``: 256 values in 16 sub-blocks of 16; 128 bytes of low nibbles, 64 bytes of 2-bit
  highs, 16 int8 scales, fp16 ``d``: ``d * sc * (q - 32)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class QuantType:
    """A ggml block format: ``block`` values in ``nbytes`` bytes."""

    name: str
    block: int
    nbytes: int


QUANT_TYPES: dict[str, QuantType] = {t.name: t for t in (
    QuantType("Q8_0", 32, 34), QuantType("Q4_0", 32, 18),
    QuantType("Q6_K", 256, 210), QuantType("Q5_K", 256, 176), QuantType("Q4_K", 256, 144))}
# Unquantized ggml types, by the same names safetensors uses for them.
FLOAT_TYPES: dict[str, torch.dtype] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def quant_type(name: str) -> QuantType:
    """The :class:`QuantType` called ``name``, or a ``ValueError`` listing the supported ones."""
    try:
        return QUANT_TYPES[name]
    except KeyError:
        raise ValueError(f"quantization type {name!r} is not supported: one of "
                         f"{', '.join(QUANT_TYPES)} (or unquantized {', '.join(FLOAT_TYPES)})") from None


def quantized_nbytes(name: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor of ``shape`` stored as ``name`` (its element count must fill whole blocks)."""
    qt, n = quant_type(name), math.prod(shape)
    if n % qt.block:
        raise ValueError(f"shape {list(shape)} has {n} values, not a multiple of the {qt.block}-value "
                         f"blocks of {name}")
    return n // qt.block * qt.nbytes


def dequantize(raw: torch.Tensor, name: str, shape: Sequence[int],
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``shape`` tensor that the uint8 blocks ``raw`` (any shape, contiguous) of type
    ``name`` encode, as ``dtype`` on ``raw``'s device."""
    qt = quant_type(name)
    if raw.dtype != torch.uint8 or raw.numel() != quantized_nbytes(name, shape):
        raise ValueError(f"{name} blocks for shape {list(shape)}: expected {quantized_nbytes(name, shape)} "
                         f"uint8 bytes, got {raw.numel()} {raw.dtype}")
    blocks = raw.reshape(-1, qt.nbytes)  # [n_blocks, nbytes]
    return _DEQUANTIZE[name](blocks).reshape(tuple(shape)).to(dtype)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 at byte ``start`` of each block, as float32 [n, 1]."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _nibbles(q: torch.Tensor, chunk: int) -> torch.Tensor:
    """uint8 [n, bytes] -> per ``chunk``-byte group its low nibbles then its high nibbles:
    [n, bytes // chunk * 2, chunk] (a chunk's low nibbles are one run of values, its highs the next)."""
    q = q.reshape(q.shape[0], -1, 1, chunk)
    return torch.cat([q & 0x0F, q >> 4], dim=2).reshape(q.shape[0], -1, chunk)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:].contiguous().view(torch.int8).float() * _f16(blocks, 0)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 2:], 16).reshape(blocks.shape[0], 32)
    return _f16(blocks, 0) * (q.to(torch.int8) - 8).float()


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes [n, 12] -> 8 6-bit scales and 8 6-bit mins, each [n, 8]: bytes 0-3 hold scales
    0-3 (low 6 bits) and the top 2 bits of scales 4-7, bytes 4-7 the same for the mins, bytes
    8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble)."""
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)], dim=1)
    m = torch.cat([b & 0x3F, (c >> 4) | ((b >> 2) & 0x30)], dim=1)
    return sc, m


def _k_affine(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: ``d * sc * q - dmin * m`` per 32-value sub-block; q [n, 8, 32]."""
    n = blocks.shape[0]
    sc, m = _scale_min_k4(blocks[:, 4:16])
    d = (_f16(blocks, 0) * sc.float()).reshape(n, 8, 1)
    dm = (_f16(blocks, 2) * m.float()).reshape(n, 8, 1)
    return (d * q.float() - dm).reshape(n, 256)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    return _k_affine(blocks, _nibbles(blocks[:, 16:144], 32))  # [n, 8, 32]


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    low = _nibbles(blocks[:, 48:176], 32)  # [n, 8, 32]
    shifts = torch.arange(8, device=blocks.device, dtype=torch.uint8).reshape(1, 8, 1)
    high = (blocks[:, 16:48].unsqueeze(1) >> shifts) & 1  # bit k of byte l: sub-block k, value l
    return _k_affine(blocks, low | (high << 4))


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    low = _nibbles(blocks[:, 0:128], 64).reshape(n, 8, 32)  # per half: 64 lows, 64 highs
    shifts = torch.tensor([0, 2, 4, 6], device=blocks.device, dtype=torch.uint8).reshape(1, 1, 4, 1)
    high = ((blocks[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).float().reshape(n, 16, 16)
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(blocks, 208) * scales).reshape(n, 16, 1)
    return (d * q).reshape(n, 256)


_DEQUANTIZE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


__all__ = ["QuantType", "QUANT_TYPES", "FLOAT_TYPES", "quant_type", "quantized_nbytes", "dequantize"]
