"""Tiled causal VAE decode and encode: memory bounded by a tile, exact, streaming.

:func:`tiled_decode` / :func:`tiled_encode` run the reference frame chunking with the causal
cache carried across chunks and split every chunk spatially; finished frames leave the compute
device chunk by chunk (:func:`iter_tiled_decode`). Output size is always the untiled one.
``exact=True`` (default) runs each chunk layer by layer in regions with a 1-pixel halo and
whole-chunk GroupNorm statistics (:mod:`~cogvideox_core.vae.tiling_exact`): equal to the untiled
decode up to float summation order. ``exact=False`` blends independently decoded overlapping
tiles, like other tilers, and so differs. ``tile`` is a memory budget (``None``: from free
memory, :func:`auto_tile_size`); a region that runs out of memory is redone in halves.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..families import VAEConfig, latent_frames
from .host_memory import trim_host_heap
from ..runtime import ProgressFn, Runtime, TorchRuntime
from .tiling_exact import OutOfMemoryError, Workspace, decode_chunk, encode_chunk
from .tiling_plan import (REF_FRAMES, blend_ramp, budget_elements, check_pair, overlapping_spans,
                          tile_for_budget)
from .model import CogVideoXVAE, DiagonalGaussian, _check_latents, _check_video, decode_chunks, encode_chunks
from .blocks import downsampled_frames, temporal_levels, upsampled_frames

logger = logging.getLogger(__name__)

ENCODE_REF_FRAMES = 15  # a 13-frame first encode chunk + 2 cached frames
TILE_TENSORS = 4  # region tensors alive at a region's peak, in budgets (about 2 on the CPU, plus
                  # a conv's column buffer, kept within one by blocks.conv3d_bounded)
FREE_FRACTION = 0.8  # of the free memory, what auto tiles may plan to use
STORE_FRACTION = 0.5  # the store stays on the compute device when it takes at most this much
FAST_TENSORS = 8  # exact=False: a tile's untiled decode holds about 6 such tensors (fp32, CPU)
PLAN_TILE = 256  # pixels: the tile side a pass asks the host to make room for (pass_memory)


def auto_tile_size(vae_config: VAEConfig, free_bytes: int, dtype: torch.dtype, *,
                   encode: bool = False) -> tuple[int, int]:
    """The largest square exact-mode tile (pixels, a multiple of 8) whose region tensors fit in
    ``FREE_FRACTION`` of ``free_bytes``: ``TILE_TENSORS`` tensors of the widest full-resolution
    layer's channels x ``REF_FRAMES`` frames (decode) or 15 (encode) x the tile with its halo.
    At least 8x8 (a smaller device relies on the out-of-memory retry)."""
    channels, frames = _ref_channels(vae_config, encode), ENCODE_REF_FRAMES if encode else REF_FRAMES
    elements = int(free_bytes * FREE_FRACTION) // (TILE_TENSORS * _element_size(dtype))
    return tile_for_budget(elements, channels, frames, vae_config.spatial_compression)


def pass_memory(vae_config: VAEConfig, batch: int, size: tuple[int, int], dtype: torch.dtype, *,
                encode: bool = False) -> int:
    """Bytes an exact tiled pass over ``batch`` videos of ``size`` pixels would like free on the
    compute device: its store (a chunk's two widest activations and the causal tails) plus the
    region tensors of a ``PLAN_TILE`` tile. What a host is asked to make room for (ComfyUI
    unloads other models for it, as for its own VAE); the pass still sizes its tiles from the
    memory that is really free (480x720 in bf16: 7.0 GiB, whatever the frame count)."""
    tile = (min(PLAN_TILE, size[0]), min(PLAN_TILE, size[1]))
    frames = ENCODE_REF_FRAMES if encode else REF_FRAMES
    regions = TILE_TENSORS * budget_elements(tile, _ref_channels(vae_config, encode), frames)
    return batch * (_store_bytes(vae_config, size, dtype, encode) + regions * _element_size(dtype))


def decode_memory(vae: CogVideoXVAE, z: Tensor) -> int:
    """:func:`pass_memory` of decoding latents ``z`` [B, C_lat, F_lat, h, w] with ``vae``."""
    return pass_memory(vae.config, z.shape[0], _pixel_size(vae.config, z), vae.dtype)


def encode_memory(vae: CogVideoXVAE, video: Tensor) -> int:
    """:func:`pass_memory` of encoding ``video`` [B, 3, F, H, W] with ``vae``."""
    return pass_memory(vae.config, video.shape[0], (video.shape[3], video.shape[4]), vae.dtype, encode=True)


def _pixel_size(config: VAEConfig, z: Tensor) -> tuple[int, int]:
    """The decoded (height, width) of latents [B, C, F, h, w]."""
    return z.shape[3] * config.spatial_compression, z.shape[4] * config.spatial_compression


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

    ``tile``: (height, width) or one int, output pixels per sample, multiples of 8; None picks
    the memory budget from the device's free memory. ``overlap`` (pixels, multiple of 8, below
    the tile) is for ``exact=False`` only; None there means a quarter tile. ``runtime`` gives
    the devices, free memory, progress (once per chunk; per tile and chunk when not exact) and
    the interrupt check; None runs on the VAE's device and returns on the CPU.
    ``progress(step, total, None)`` replaces ``runtime.progress``. ``store`` forces where exact
    mode keeps a chunk's full-frame activations and the causal cache.
    """
    _check_latents(z, vae.config, "z")
    rt = runtime or _default_runtime(vae)
    cfg, size = vae.config, _pixel_size(vae.config, z)
    counts = [upsampled_frames(end - start, temporal_levels(cfg)) for start, end in decode_chunks(z.shape[2])]
    out = torch.empty((z.shape[0], cfg.out_channels, sum(counts), *size), device=rt.intermediate_device,
                      dtype=vae.dtype)
    if exact:
        ws = _exact_workspace(vae, rt, tile, overlap, store, z.shape[0], size, encode=False)
        parts = iter(out.split(counts, dim=2))  # each chunk is written straight into the output
        for _ in _exact_decode(ws, vae, z, lambda frames: next(parts), _reporter(rt, progress)):
            pass
    else:
        _fast_decode(vae, z, *_fast_settings(cfg, tile, overlap, rt, vae.dtype, False), rt, out,
                     _reporter(rt, progress))
    return out


@torch.no_grad()
def tiled_encode(vae: CogVideoXVAE, video: Tensor, *, tile: int | Sequence[int] | None = None,
                 overlap: int | Sequence[int] | None = None, exact: bool = True,
                 runtime: Runtime | None = None, progress: ProgressFn | None = None,
                 store: torch.device | str | None = None) -> DiagonalGaussian:
    """Video [B, 3, 4k+1, H, W] in -1..1 -> posterior over [B, C_lat, k+1, H/8, W/8] (moments on
    the intermediate device, in the VAE's dtype), encoded in the reference chunks (8 frames, the
    first taking the extra ones). Settings as :func:`tiled_decode`; ``tile`` is in input pixels.
    Exact mode equals :meth:`~cogvideox_core.vae.model.CogVideoXVAE.encode` up to float summation order.
    """
    _check_video(video, vae.config)
    rt = runtime or _default_runtime(vae)
    cfg, s = vae.config, vae.config.spatial_compression
    shape = (video.shape[0], 2 * cfg.latent_channels, latent_frames(video.shape[2], cfg.temporal_compression),
             video.shape[3] // s, video.shape[4] // s)
    moments = torch.empty(shape, device=rt.intermediate_device, dtype=vae.dtype)
    if exact:
        ws = _exact_workspace(vae, rt, tile, overlap, store, video.shape[0], tuple(video.shape[3:]), encode=True)
        _exact_encode(ws, vae, video, moments, _reporter(rt, progress))
    else:
        _fast_encode(vae, video, *_fast_settings(cfg, tile, overlap, rt, vae.dtype, True), rt, moments,
                     _reporter(rt, progress))
    return DiagonalGaussian.from_moments(moments)


def iter_tiled_decode(vae: CogVideoXVAE, z: Tensor, *, tile: int | Sequence[int] | None = None,
                      runtime: Runtime | None = None, progress: ProgressFn | None = None,
                      store: torch.device | str | None = None) -> Iterator[Tensor]:
    """:func:`tiled_decode` (exact mode) as a stream: yields the frames of each reference chunk,
    [B, 3, T_i, 8h, 8w] on the intermediate device, as soon as they are final (a video writer
    can take them one by one, so no memory anywhere grows with the number of frames). The
    chunks' frames concatenated along time equal :func:`tiled_decode`'s output. Settings are
    checked here, before the first chunk."""
    _check_latents(z, vae.config, "z")
    rt = runtime or _default_runtime(vae)
    size = _pixel_size(vae.config, z)
    ws = _exact_workspace(vae, rt, tile, None, store, z.shape[0], size, encode=False)

    def new_chunk(frames: int) -> Tensor:
        return torch.empty((z.shape[0], vae.config.out_channels, frames, *size), device=rt.intermediate_device,
                           dtype=vae.dtype)

    return _exact_decode(ws, vae, z, new_chunk, _reporter(rt, progress))


@torch.no_grad()
def _exact_decode(ws: Workspace, vae: CogVideoXVAE, z: Tensor, new_chunk: Callable[[int], Tensor],
                  report: Callable[[int, int], None]) -> Iterator[Tensor]:
    """The reference chunks one after the other, the causal tails carried in ``tails``; each
    chunk is decoded into ``new_chunk(frames)`` and yielded."""
    chunks, levels, tails = decode_chunks(z.shape[2]), temporal_levels(vae.config), {}
    logger.debug("exact tiled decode of %s in chunks %s, budget %d elements, store on %s",
                 tuple(z.shape), chunks, ws.budget, ws.store)
    for i, (start, end) in enumerate(chunks):
        out = new_chunk(upsampled_frames(end - start, levels))
        zc = z[:, :, start:end].to(device=ws.device, dtype=ws.dtype)
        decode_chunk(ws, vae.decoder, zc, tails, out, vae.config.norm_num_groups)
        _after_chunk(ws)
        report(i + 1, len(chunks))
        yield out


def _exact_encode(ws: Workspace, vae: CogVideoXVAE, video: Tensor, moments: Tensor,
                  report: Callable[[int, int], None]) -> None:
    chunks, levels, tails, l0 = encode_chunks(video.shape[2]), temporal_levels(vae.config), {}, 0
    for i, (start, end) in enumerate(chunks):
        n = downsampled_frames(end - start, levels)
        encode_chunk(ws, vae.encoder, video[:, :, start:end], tails, moments[:, :, l0:l0 + n],
                     vae.config.norm_num_groups)
        _after_chunk(ws)
        l0 += n
        report(i + 1, len(chunks))


class TiledEncoder:
    """A VAE's :meth:`encode` as an exact tiled encode on a runtime, for the conditioning builders
    (image, video and control inputs): the posterior comes back on the compute device, and the
    chunks report no progress (the sampler's bar is the one the user watches) but still check the
    interrupt."""

    def __init__(self, vae: CogVideoXVAE, runtime: Runtime, tile: int | Sequence[int] | None = None) -> None:
        self.vae, self.runtime, self.tile = vae, runtime, tile

    def encode(self, video: Tensor) -> DiagonalGaussian:
        self.runtime.load(self.vae, encode_memory(self.vae, video))
        post = tiled_encode(self.vae, video, tile=self.tile, runtime=self.runtime, progress=no_progress)
        device = torch.device(self.runtime.device)
        return DiagonalGaussian(post.mean.to(device), post.logvar.to(device))


def no_progress(step: int, total: int, preview: Tensor | None) -> None:
    """A progress callback that shows nothing."""


def _after_chunk(ws: Workspace) -> None:
    """Between chunks, hand the region buffers' freed host pages back to the OS when the store
    lives in host memory (:mod:`~cogvideox_core.vae.host_memory`): peak RSS then does not creep up
    with the number of chunks."""
    if ws.store.type == "cpu":
        trim_host_heap()


# ---- settings ----------------------------------------------------------------------------------

def _default_runtime(vae: CogVideoXVAE) -> Runtime:
    return TorchRuntime(device=vae.decoder.conv_in.conv.weight.device, show_progress=False)


def _reporter(rt: Runtime, progress: ProgressFn | None) -> Callable[[int, int], None]:
    def report(step: int, total: int) -> None:
        (progress or rt.progress)(step, total, None)
        rt.check_interrupt()
    return report


def check_settings(vae_config: VAEConfig, tile: int | Sequence[int] | None,
                   overlap: int | Sequence[int] | None, exact: bool = True) -> None:
    """``ValueError`` naming the setting, its value and what is allowed for tile/overlap settings
    that cannot work: what the passes check first, for a caller that wants it before loading a
    model. (An overlap against an automatic tile can only be checked by the pass.)"""
    s = vae_config.spatial_compression
    tile_hw = check_pair("tile", tile, s, s)
    if exact:
        _check_no_overlap(overlap)
        return
    overlap_hw = check_pair("overlap", overlap, s, 0)
    if tile_hw is not None and overlap_hw is not None:
        _check_overlap_below_tile(overlap, tile_hw, overlap_hw)


def _check_no_overlap(overlap: int | Sequence[int] | None) -> None:
    if overlap not in (None, 0, (0, 0), [0, 0]):
        raise ValueError(f"overlap={overlap!r}: exact=True computes every region with its receptive "
                         f"field and takes no overlap; pass overlap=None, or exact=False to blend tiles")


def _check_overlap_below_tile(overlap: int | Sequence[int] | None, tile_hw: tuple[int, int],
                              overlap_hw: tuple[int, int]) -> None:
    for axis, t, o in zip(("height", "width"), tile_hw, overlap_hw):
        if o >= t:
            raise ValueError(f"overlap={overlap!r}: the {axis} overlap {o} must be below the tile's "
                             f"{axis} {t} (tile={tile_hw})")


def _exact_workspace(vae: CogVideoXVAE, rt: Runtime, tile: int | Sequence[int] | None,
                     overlap: int | Sequence[int] | None, store: torch.device | str | None,
                     batch: int, size: tuple[int, int], encode: bool) -> Workspace:
    """Checks the settings; picks the store device and the element budget of a region tensor
    (from ``tile`` per sample, or from the free memory left after the store)."""
    cfg, device, dtype = vae.config, torch.device(rt.device), vae.dtype
    _check_no_overlap(overlap)
    tile_hw = check_pair("tile", tile, cfg.spatial_compression, cfg.spatial_compression)
    free = 0 if tile_hw is not None and store is not None else int(rt.free_memory())
    need = batch * _store_bytes(cfg, size, dtype, encode)
    store = torch.device(store) if store is not None else _store_device(rt, need, free)
    if tile_hw is not None:
        frames = ENCODE_REF_FRAMES if encode else REF_FRAMES
        budget = batch * budget_elements(tile_hw, _ref_channels(cfg, encode), frames)
    else:
        left = free - (need if store == device else 0)
        budget = int(max(left, 0) * FREE_FRACTION) // (TILE_TENSORS * _element_size(dtype))
    return Workspace(device, store, dtype, budget, rt.check_interrupt)


def _element_size(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def _store_device(rt: Runtime, need: int, free: int) -> torch.device:
    """The compute device when the store (``need`` bytes) takes at most ``STORE_FRACTION`` of its
    free memory (or it is the offload device anyway), else the offload device."""
    device, offload = torch.device(rt.device), torch.device(rt.offload_device)
    return device if device == offload or need <= STORE_FRACTION * free else offload


def _store_bytes(cfg: VAEConfig, size: tuple[int, int], dtype: torch.dtype, encode: bool) -> int:
    """A chunk's store at its peak: two full-resolution activations of the widest channel count
    over a first chunk's frames (a resnet's input and conv1's output; conservative) plus the
    causal tails."""
    frames = 13 if encode else 9
    elements = 2 * _ref_channels(cfg, encode) * frames * size[0] * size[1] + tail_elements(cfg, size, encode)
    return elements * _element_size(dtype)


def tail_elements(cfg: VAEConfig, size: tuple[int, int], encode: bool = False) -> int:
    """Elements of the causal cache of one sample at ``size`` pixels: 2 frames of the input of
    every conv with a time kernel of 3, at its resolution (decoder: 381 MiB at 128x192 in fp32,
    2.6 GiB at 480x720 in bf16)."""
    ch, n, s = cfg.block_out_channels, cfg.layers_per_block, cfg.spatial_compression
    full = size[0] * size[1]
    if encode:  # conv_in (3 ch, full), down block i at 1/4**i, mid and conv_out at the bottom
        per_level = [ch[max(i - 1, 0)] + ch[i] + 2 * ch[i] * (n - 1) for i in range(len(ch))]
        total = cfg.in_channels * full + sum(c * full // 4**i for i, c in enumerate(per_level))
        return 2 * (total + 5 * ch[-1] * full // s**2)
    rev = ch[::-1]  # conv_in and the mid block at latent size, up block i at 4**i / s**2
    per_level = [rev[max(i - 1, 0)] + rev[i] + 2 * rev[i] * n for i in range(len(rev))]
    total = (cfg.latent_channels + 4 * rev[0]) * full // s**2 + rev[-1] * full
    return 2 * (total + sum(c * full * 4**i // s**2 for i, c in enumerate(per_level)))


def _fast_settings(cfg: VAEConfig, tile: int | Sequence[int] | None, overlap: int | Sequence[int] | None,
                   rt: Runtime, dtype: torch.dtype, encode: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    s = cfg.spatial_compression
    tile_hw = check_pair("tile", tile, s, s)
    if tile_hw is None:  # a tile runs the whole network at once: about an untiled decode's memory
        tile_hw = auto_tile_size(cfg, int(rt.free_memory()) * TILE_TENSORS // FAST_TENSORS, dtype, encode=encode)
    overlap_hw = check_pair("overlap", overlap, s, 0)
    if overlap_hw is None:
        overlap_hw = tuple(t // 4 // s * s for t in tile_hw)  # type: ignore[assignment]
    _check_overlap_below_tile(overlap, tile_hw, overlap_hw)  # type: ignore[arg-type]
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


__all__ = ["tiled_decode", "iter_tiled_decode", "tiled_encode", "TiledEncoder", "no_progress", "auto_tile_size",
           "check_settings", "pass_memory", "decode_memory", "encode_memory", "tail_elements", "OutOfMemoryError"]
