"""Tiled causal VAE decode and encode: memory bounded by a tile, exact, streaming.

:func:`tiled_decode` / :func:`tiled_encode` run the reference frame chunking
(:func:`~cogvideox_core.vae.decode_chunks`, 2 latents per chunk) with the causal cache carried
from chunk to chunk, and split every chunk spatially. Finished frames go to the runtime's
intermediate device as soon as each chunk's last layer has written them, so compute-device
memory does not grow with the number of frames. The output is always exactly what
:meth:`~cogvideox_core.vae.CogVideoXVAE.decode` returns in size: ``decoded_num_frames(F_lat)``
frames of 8x the latent size, whatever the tile (diffusers' tiler can return 128x199 for a
128x192 video).

Two modes:

- ``exact=True`` (default): layer by layer over each chunk (:mod:`~cogvideox_core.tiling_exact`),
  full-frame GroupNorm statistics, a 1-pixel halo per conv instead of overlap and blending. The
  result equals the untiled decode up to float summation order: max abs difference 1.9e-6 in
  fp32 on the full-size architecture with random weights at 128x192 (`benchmarks/vae_decode.py`,
  outputs of magnitude ~20). ``tile`` is a memory budget: the heaviest full-resolution layer runs
  in regions of at most ``tile`` pixels plus halo; other layers take regions of the same memory
  (so low-resolution layers usually run whole). Full-frame activations of one chunk (two or
  three of the widest layer) and the causal tails live on the *store*: the compute device when
  they take at most a quarter of its free memory, else the runtime's offload device.
- ``exact=False``: overlapping tiles decoded independently (each with its own causal cache) and
  blended with linear ramps, as other tilers do, but with the exact output size. Per-tile
  GroupNorm statistics make it differ from the untiled decode: max abs difference 0.35 (mean
  0.011) on outputs in about -20..20, full-size random-weight VAE at 128x192, 64x96 tiles with
  16-pixel overlap (measured with ``benchmarks/vae_decode.py --fast-error``). Its only advantage is
  that nothing leaves the compute device between layers.

When ``tile`` is None it is chosen from the compute device's free memory
(:func:`auto_tile_size`); a region that still runs out of memory is redone in halves and the
budget halved for the rest of the run, keeping every finished region.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import Tensor

from .families import VAEConfig
from .runtime import ProgressFn, Runtime, TorchRuntime
from .tiling_exact import Context, OutOfMemoryError, decode_chunk, encode_chunk
from .tiling_plan import (REF_FRAMES, blend_ramp, budget_elements, check_pair, overlapping_spans,
                          tile_for_budget)
from .vae import (CogVideoXVAE, DiagonalGaussian, _check_latents, _check_video, decode_chunks,
                  decoded_num_frames, encode_chunks)
from .vae_blocks import downsampled_frames, temporal_levels, upsampled_frames

logger = logging.getLogger(__name__)

ENCODE_REF_FRAMES = 15  # a 13-frame first encode chunk + 2 cached frames
TILE_TENSORS = 4  # region tensors alive at once at a region's peak, in budgets (measured: < 3.5)
FREE_FRACTION = 0.8  # of the free memory, what auto tiles may plan to use
STORE_FRACTION = 0.25  # the store stays on the compute device when it takes at most this much


def auto_tile_size(vae_config: VAEConfig, free_bytes: int, dtype: torch.dtype, *,
                   encode: bool = False) -> tuple[int, int]:
    """The largest square exact-mode tile (pixels, a multiple of 8) whose region tensors fit in
    ``FREE_FRACTION`` of ``free_bytes``: ``TILE_TENSORS`` tensors of the widest full-resolution
    layer's channels x ``REF_FRAMES`` frames (decode) or 15 (encode) x the tile with its halo.
    At least 8x8 (a smaller device relies on the out-of-memory retry)."""
    channels, frames = _ref_channels(vae_config, encode), ENCODE_REF_FRAMES if encode else REF_FRAMES
    size = torch.tensor([], dtype=dtype).element_size()
    elements = int(free_bytes * FREE_FRACTION) // (TILE_TENSORS * size)
    return tile_for_budget(elements, channels, frames, vae_config.spatial_compression)


def _ref_channels(config: VAEConfig, encode: bool) -> int:
    """Channels of the widest tensor at full resolution: the decoder's last upsampler (its
    second block's width) and last block; the encoder's first block."""
    ch = config.block_out_channels
    return ch[0] if encode or len(ch) < 2 else max(ch[0], ch[1])


@torch.no_grad()
def tiled_decode(vae: CogVideoXVAE, z: Tensor, *, tile: int | Sequence[int] | None = None,
                 overlap: int | Sequence[int] | None = None, exact: bool = True,
                 runtime: Runtime | None = None, progress: ProgressFn | None = None,
                 store: torch.device | str | None = None) -> Tensor:
    """Unscaled latents [B, C_lat, F_lat, h, w] -> frames [B, 3, decoded_num_frames(F_lat), 8h, 8w]
    on the runtime's intermediate device, in the VAE's dtype.

    ``tile``: (height, width) or one int, pixels, multiples of 8; None picks it from the free
    memory. ``overlap`` (pixels, multiple of 8, below the tile) is for ``exact=False`` only; None
    there means a quarter tile. ``runtime`` gives the devices, free memory, progress (once per
    chunk; per tile and chunk when not exact) and the interrupt check; None runs on the VAE's
    device. ``progress(step, total, None)`` replaces ``runtime.progress``. ``store`` forces where
    exact mode keeps a chunk's full-frame activations.
    """
    _check_latents(z, vae.config, "z")
    rt = runtime or TorchRuntime(device=vae.decoder.conv_in.conv.weight.device, show_progress=False)
    report = _reporter(rt, progress)
    s = vae.config.spatial_compression
    height, width = z.shape[3] * s, z.shape[4] * s
    out = torch.empty((z.shape[0], vae.config.out_channels, decoded_num_frames(z.shape[2], vae.config.temporal_compression),
                       height, width), device=rt.intermediate_device, dtype=vae.dtype)
    if not exact:
        tile_hw, overlap_hw = _fast_settings(vae.config, tile, overlap, rt, encode=False)
        _fast_decode(vae, z, tile_hw, overlap_hw, rt, out, report)
        return out
    ctx = _exact_context(vae, rt, tile, overlap, store, (height, width), encode=False)
    chunks, levels, tails, f0 = decode_chunks(z.shape[2]), temporal_levels(vae.config), {}, 0
    logger.debug("exact tiled decode of %s in chunks %s, budget %d elements, store %s",
                 tuple(z.shape), chunks, ctx.budget, ctx.store)
    for i, (start, end) in enumerate(chunks):
        frames = upsampled_frames(end - start, levels)
        zc = z[:, :, start:end].to(device=ctx.device, dtype=ctx.dtype)
        decode_chunk(ctx, vae.decoder, zc, tails, out[:, :, f0:f0 + frames], vae.config.norm_num_groups)
        f0 += frames
        report(i + 1, len(chunks))
    return out


@torch.no_grad()
def tiled_encode(vae: CogVideoXVAE, video: Tensor, *, tile: int | Sequence[int] | None = None,
                 overlap: int | Sequence[int] | None = None, exact: bool = True,
                 runtime: Runtime | None = None, progress: ProgressFn | None = None,
                 store: torch.device | str | None = None) -> DiagonalGaussian:
    """Video [B, 3, 4k+1, H, W] in -1..1 -> posterior over [B, C_lat, k+1, H/8, W/8] (moments on
    the intermediate device), encoded in the reference chunks (8 frames, the first taking the
    extra ones). Settings as :func:`tiled_decode`; ``tile`` is in input pixels. Exact mode equals
    :meth:`~cogvideox_core.vae.CogVideoXVAE.encode` up to float summation order."""
    _check_video(video, vae.config)
    rt = runtime or TorchRuntime(device=vae.decoder.conv_in.conv.weight.device, show_progress=False)
    report = _reporter(rt, progress)
    cfg, s = vae.config, vae.config.spatial_compression
    shape = (video.shape[0], 2 * cfg.latent_channels, (video.shape[2] - 1) // cfg.temporal_compression + 1,
             video.shape[3] // s, video.shape[4] // s)
    moments = torch.empty(shape, device=rt.intermediate_device, dtype=vae.dtype)
    if not exact:
        tile_hw, overlap_hw = _fast_settings(cfg, tile, overlap, rt, encode=True)
        _fast_encode(vae, video, tile_hw, overlap_hw, rt, moments, report)
        return DiagonalGaussian.from_moments(moments)
    ctx = _exact_context(vae, rt, tile, overlap, store, tuple(video.shape[3:]), encode=True)
    chunks, levels, tails, l0 = encode_chunks(video.shape[2]), temporal_levels(cfg), {}, 0
    for i, (start, end) in enumerate(chunks):
        n = downsampled_frames(end - start, levels)
        encode_chunk(ctx, vae.encoder, video[:, :, start:end], tails, moments[:, :, l0:l0 + n],
                     cfg.norm_num_groups)
        l0 += n
        report(i + 1, len(chunks))
    return DiagonalGaussian.from_moments(moments)


# ---- settings ----------------------------------------------------------------------------------

def _reporter(rt: Runtime, progress: ProgressFn | None) -> Callable[[int, int], None]:
    def report(step: int, total: int) -> None:
        (progress or rt.progress)(step, total, None)
        rt.check_interrupt()
    return report


def _exact_context(vae: CogVideoXVAE, rt: Runtime, tile: int | Sequence[int] | None,
                   overlap: int | Sequence[int] | None, store: torch.device | str | None,
                   size: tuple[int, int], encode: bool) -> Context:
    cfg = vae.config
    if overlap not in (None, 0, (0, 0), [0, 0]):
        raise ValueError(f"overlap={overlap!r}: exact=True computes every region with its receptive "
                         f"field and takes no overlap; pass overlap=None, or exact=False to blend tiles")
    tile_hw = check_pair("tile", tile, cfg.spatial_compression, cfg.spatial_compression)
    device, dtype = torch.device(rt.device), vae.dtype
    free = None if tile_hw is not None and store is not None else int(rt.free_memory())
    if store is None:
        store = _store_device(cfg, rt, size, dtype, free or 0, encode)
    store = torch.device(store)
    if tile_hw is None:
        left = (free or 0) - (_store_bytes(cfg, size, dtype, encode) if store == device else 0)
        tile_hw = auto_tile_size(cfg, max(left, 0), dtype, encode=encode)
    frames = ENCODE_REF_FRAMES if encode else REF_FRAMES
    budget = budget_elements(tile_hw, _ref_channels(cfg, encode), frames)
    return Context(device, store, dtype, budget, rt.check_interrupt)


def _store_device(cfg: VAEConfig, rt: Runtime, size: tuple[int, int], dtype: torch.dtype, free: int,
                  encode: bool) -> torch.device:
    device, offload = torch.device(rt.device), torch.device(rt.offload_device)
    if device == offload or _store_bytes(cfg, size, dtype, encode) <= STORE_FRACTION * free:
        return device
    return offload


def _store_bytes(cfg: VAEConfig, size: tuple[int, int], dtype: torch.dtype, encode: bool) -> int:
    """A chunk's store at its peak, estimated: three full-resolution activations of the widest
    channel count over the chunk's frames, plus the causal tails (2 frames of every conv input:
    about 12 full-resolution inputs' worth of channels at all resolutions together)."""
    pixels = size[0] * size[1]
    frames = 13 if encode else 9
    width = _ref_channels(cfg, encode)
    tails = 2 * 12 * width * pixels
    return (3 * width * frames * pixels + tails) * torch.tensor([], dtype=dtype).element_size()


def _fast_settings(cfg: VAEConfig, tile: int | Sequence[int] | None, overlap: int | Sequence[int] | None,
                   rt: Runtime, encode: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    s = cfg.spatial_compression
    tile_hw = check_pair("tile", tile, s, s)
    if tile_hw is None:
        # a whole tile runs at once, about a chunk's activations of the untiled network
        tile_hw = auto_tile_size(cfg, int(rt.free_memory()) // 3, torch.float32, encode=encode)
    overlap_hw = check_pair("overlap", overlap, s, 0)
    if overlap_hw is None:
        overlap_hw = tuple(t // 4 // s * s for t in tile_hw)  # type: ignore[assignment]
    for axis, t, o in zip(("height", "width"), tile_hw, overlap_hw):
        if o >= t:
            raise ValueError(f"overlap={overlap!r}: the {axis} overlap {o} must be below the tile's "
                             f"{axis} {t} (tile={tile_hw})")
    return tile_hw, overlap_hw  # type: ignore[return-value]


# ---- fast (blended) mode ----------------------------------------------------------------------

def _tiles(h: int, w: int, tile: tuple[int, int], overlap: tuple[int, int], compression: int,
           scale: int) -> list[tuple[tuple[int, int], tuple[int, int], Tensor]]:
    """Overlapping tiles of an ``h x w`` latent grid (row and column spans in latent units, from
    pixel ``tile`` and ``overlap``) with their blend weights [scale*rows, scale*cols], float64;
    ``scale`` is 8 to blend decoded pixels, 1 to blend latents."""
    rows = overlapping_spans(h, tile[0] // compression, overlap[0] // compression)
    cols = overlapping_spans(w, tile[1] // compression, overlap[1] // compression)
    return [(r, c, blend_ramp(r, rows, scale)[:, None] * blend_ramp(c, cols, scale)[None, :])
            for r in rows for c in cols]


def _fast_decode(vae: CogVideoXVAE, z: Tensor, tile: tuple[int, int], overlap: tuple[int, int],
                 rt: Runtime, out: Tensor, report: Callable[[int, int], None]) -> None:
    s, chunks = vae.config.spatial_compression, decode_chunks(z.shape[2])
    tiles = _tiles(z.shape[3], z.shape[4], tile, overlap, s, s)
    out.zero_()
    for i, ((r0, r1), (c0, c1), weight) in enumerate(tiles):
        weight, cache, f0 = weight.to(rt.device, vae.dtype), None, 0
        for j, (start, end) in enumerate(chunks):
            frames, cache = vae.decode_chunk(z[:, :, start:end, r0:r1, c0:c1].to(rt.device), cache)
            n = frames.shape[2]
            out[:, :, f0:f0 + n, r0 * s:r1 * s, c0 * s:c1 * s] += (frames * weight).to(out.device)
            f0 += n
            report(i * len(chunks) + j + 1, len(tiles) * len(chunks))


def _fast_encode(vae: CogVideoXVAE, video: Tensor, tile: tuple[int, int], overlap: tuple[int, int],
                 rt: Runtime, moments: Tensor, report: Callable[[int, int], None]) -> None:
    s, chunks = vae.config.spatial_compression, encode_chunks(video.shape[2])
    tiles = _tiles(video.shape[3] // s, video.shape[4] // s, tile, overlap, s, 1)
    moments.zero_()
    for i, ((r0, r1), (c0, c1), weight) in enumerate(tiles):
        weight, cache, l0 = weight.to(rt.device, vae.dtype), None, 0
        for j, (start, end) in enumerate(chunks):
            x = video[:, :, start:end, r0 * s:r1 * s, c0 * s:c1 * s].to(rt.device)
            m, cache = vae.encode_chunk(x, cache)
            n = m.shape[2]
            moments[:, :, l0:l0 + n, r0:r1, c0:c1] += (m * weight).to(moments.device)
            l0 += n
            report(i * len(chunks) + j + 1, len(tiles) * len(chunks))


__all__ = ["tiled_decode", "tiled_encode", "auto_tile_size", "OutOfMemoryError"]
