"""The CogVideoX causal 3D VAE: encode, decode, and the chunk steps they are made of.

Equal to diffusers ``AutoencoderKLCogVideoX`` (untiled) including its frame chunking (decode: 2
latents per chunk, the first taking the odd one; encode: 8 frames per chunk, the first taking
the rest): GroupNorm statistics are taken per chunk, so the chunking is part of the output
(frame arithmetic in README "How it works"). The causal cache (:class:`EncoderCache` /
:class:`DecoderCache`) is a value: a chunk step takes the previous chunk's (``None`` first) and
returns a new one holding each time-kernel-3 conv's last 2 input frames; nothing else crosses
chunks.
"""
from __future__ import annotations

import dataclasses
import logging
import types
from dataclasses import dataclass
from typing import Mapping, TypeVar

import torch
from torch import Tensor, nn

from ..families import VAEConfig
from ..ops import Ops, default_ops
from .blocks import Decoder3D, Encoder3D, Layers, upsampled_frames

logger = logging.getLogger(__name__)

DECODE_CHUNK_LATENTS = 2  # diffusers num_latent_frames_batch_size
ENCODE_CHUNK_FRAMES = 8  # diffusers num_sample_frames_batch_size
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers DiagonalGaussianDistribution clamps log-variance

_C = TypeVar("_C", bound="CausalCache")


@dataclass(frozen=True, eq=False)
class CausalCache:
    """Tails of the causal convs after a chunk: module path -> last 2 input frames [B, C, 2, H, W].

    Read-only. Spatial sizes are those of each conv's input inside the network, so a cache only
    fits chunks of the same batch size and spatial size (one tile) as the chunk that made it.
    """

    tails: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tails", types.MappingProxyType(dict(self.tails)))

    def to(self: _C, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> _C:
        """The same cache with every tail moved (e.g. parked on the CPU between tiles)."""
        return dataclasses.replace(self, tails={k: v.to(device=device, dtype=dtype) for k, v in self.tails.items()})

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.tails.values())


class EncoderCache(CausalCache):
    """Causal cache between encoder chunks (keys are paths under ``encoder``)."""


class DecoderCache(CausalCache):
    """Causal cache between decoder chunks (keys are paths under ``decoder``)."""


@dataclass(frozen=True, eq=False)
class DiagonalGaussian:
    """The encoder's posterior: mean and log-variance, each [B, latent, F_lat, H/8, W/8]."""

    mean: Tensor
    logvar: Tensor

    @classmethod
    def from_moments(cls, moments: Tensor) -> "DiagonalGaussian":
        """Split [B, 2*latent, ...] moments into mean and (clamped, as diffusers) log-variance."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(*LOGVAR_RANGE))

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """mean + std * noise; noise drawn on the generator's device (as diffusers' randn_tensor)."""
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)


def reference_chunks(num_frames: int, per_chunk: int) -> list[tuple[int, int]]:
    """diffusers' frame batching: ``num_frames // per_chunk`` chunks of ``per_chunk`` frames, the
    first also taking the ``num_frames % per_chunk`` extra ones; one chunk when shorter."""
    if num_frames < 1 or per_chunk < 1:
        raise ValueError(f"num_frames={num_frames}, per_chunk={per_chunk}: both must be >= 1")
    extra = num_frames % per_chunk
    ends = [min(per_chunk * (i + 1) + extra, num_frames) for i in range(max(num_frames // per_chunk, 1))]
    return list(zip([0] + ends[:-1], ends))


def decode_chunks(num_latent_frames: int) -> list[tuple[int, int]]:
    """Reference decode chunks: 13 -> [(0,3), (3,5), (5,7), (7,9), (9,11), (11,13)]."""
    return reference_chunks(num_latent_frames, DECODE_CHUNK_LATENTS)


def encode_chunks(num_frames: int) -> list[tuple[int, int]]:
    """Reference encode chunks: 49 -> [(0,9), (9,17), ..., (41,49)]; 21 -> [(0,13), (13,21)]."""
    return reference_chunks(num_frames, ENCODE_CHUNK_FRAMES)


def decoded_num_frames(num_latent_frames: int, temporal_compression: int = 4) -> int:
    """Pixel frames ``decode`` returns: 4(F-1)+1 for odd F, 4F for even F (4x compression)."""
    levels = temporal_compression.bit_length() - 1
    return sum(upsampled_frames(end - start, levels) for start, end in decode_chunks(num_latent_frames))


class CogVideoXVAE(nn.Module):
    """CogVideoX's causal 3D VAE; parameter names are diffusers' (load its state dict strict).

    Computes in the parameters' dtype (inputs are cast to it); bf16 works for the bf16-trained
    5B/1.5 VAEs. Latents in and out are unscaled (no ``scaling_factor``).
    """

    def __init__(self, config: VAEConfig, ops: Ops = default_ops, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        _check_config(config)
        self.config = config
        layers = Layers(ops, dtype, device)
        self.encoder = Encoder3D(layers, config)
        self.decoder = Decoder3D(layers, config)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: that of the weights."""
        return self.decoder.conv_in.conv.weight.dtype

    def encode(self, video: Tensor) -> DiagonalGaussian:
        """video [B, 3, 4k+1, H, W] in -1..1 (H, W multiples of 8) -> posterior over
        [B, latent, k+1, H/8, W/8], encoded in the reference chunks."""
        _check_video(video, self.config)
        chunks = encode_chunks(video.shape[2])
        logger.debug("encoding %d frames in chunks %s", video.shape[2], chunks)
        moments, cache = [], None
        for start, end in chunks:
            m, cache = self.encode_chunk(video[:, :, start:end], cache)
            moments.append(m)
        return DiagonalGaussian.from_moments(torch.cat(moments, dim=2))

    def encode_chunk(self, x: Tensor, cache: EncoderCache | None) -> tuple[Tensor, EncoderCache]:
        """Moments [B, 2*latent, T', H/8, W/8] of one frame chunk [B, 3, T, H, W].

        A first chunk (``cache=None``) has 4k+1 frames, a continuing one 4k (k >= 1).
        """
        _check_encode_chunk(x, cache, self.config)
        tails = {} if cache is None else cache.tails
        _check_cache_fits(x, tails, "x")
        moments, new = self.encoder(x.to(self.dtype), tails)
        return moments, EncoderCache(new)

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents [B, latent, F, h, w] -> frames [B, 3, decoded_num_frames(F), 8h, 8w],
        decoded in the reference chunks."""
        _check_latents(z, self.config, "z")
        chunks = decode_chunks(z.shape[2])
        logger.debug("decoding %d latent frames in chunks %s", z.shape[2], chunks)
        frames, cache = [], None
        for start, end in chunks:
            out, cache = self.decode_chunk(z[:, :, start:end], cache)
            frames.append(out)
        return torch.cat(frames, dim=2)

    def decode_chunk(self, z: Tensor, cache: DecoderCache | None) -> tuple[Tensor, DecoderCache]:
        """Frames of one latent chunk [B, latent, n, h, w] -> [B, 3, T, 8h, 8w].

        T is 4n - 3 for odd n and 4n for even n. A continuing chunk (``cache`` given) must have an
        even n: with an odd n the first-frame rule would fire in the middle of the video.
        """
        _check_decode_chunk(z, cache, self.config)
        tails = {} if cache is None else cache.tails
        _check_cache_fits(z, tails, "z")
        frames, new = self.decoder(z.to(self.dtype), tails)
        return frames, DecoderCache(new)


def _check_config(config: VAEConfig) -> None:
    tc = config.temporal_compression
    if tc < 1 or tc & (tc - 1) or (tc.bit_length() - 1) > len(config.block_out_channels) - 1:
        raise ValueError(f"temporal_compression={tc} must be a power of two no larger than the "
                         f"spatial compression {config.spatial_compression}")


def _check_5d(x: Tensor, name: str, channels: int) -> None:
    if x.ndim != 5:
        raise ValueError(f"{name} must be 5-D [B, C, F, H, W]; got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}); "
                         f"this VAE takes {channels}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"{name} has an empty frame or spatial axis: shape {tuple(x.shape)}")


def _check_spatial(x: Tensor, name: str, config: VAEConfig) -> None:
    s = config.spatial_compression
    for axis, size in (("height", x.shape[3]), ("width", x.shape[4])):
        if size % s:
            raise ValueError(f"{name} {axis}={size} is not a multiple of {s} (the VAE's spatial compression)")


def _check_video(video: Tensor, config: VAEConfig) -> None:
    _check_5d(video, "video", config.in_channels)
    frames, tc = video.shape[2], config.temporal_compression
    if (frames - 1) % tc:
        raise ValueError(f"video has {frames} frames; encode takes {tc}k+1 frames "
                         f"(1, {tc + 1}, {2 * tc + 1}, ...)")
    _check_spatial(video, "video", config)


def _check_latents(z: Tensor, config: VAEConfig, name: str) -> None:
    _check_5d(z, name, config.latent_channels)


def _check_encode_chunk(x: Tensor, cache: EncoderCache | None, config: VAEConfig) -> None:
    _check_5d(x, "x", config.in_channels)
    _check_spatial(x, "x", config)
    if cache is not None and not isinstance(cache, EncoderCache):
        raise ValueError(f"cache is of type {type(cache).__name__}; encode_chunk takes an EncoderCache or None")
    frames, tc = x.shape[2], config.temporal_compression
    if cache is None and (frames - 1) % tc:
        raise ValueError(f"x has {frames} frames; a first encode chunk (cache=None) has {tc}k+1 frames")
    if cache is not None and frames % tc:
        raise ValueError(f"x has {frames} frames; a continuing encode chunk has a multiple of {tc} frames")


def _check_decode_chunk(z: Tensor, cache: DecoderCache | None, config: VAEConfig) -> None:
    _check_latents(z, config, "z")
    if cache is not None and not isinstance(cache, DecoderCache):
        raise ValueError(f"cache is of type {type(cache).__name__}; decode_chunk takes a DecoderCache or None")
    if cache is not None and z.shape[2] % 2:
        raise ValueError(f"z has {z.shape[2]} latent frames; a continuing decode chunk (cache given) "
                         f"needs an even count (only a first chunk may be odd)")


def _check_cache_fits(x: Tensor, tails: Mapping[str, Tensor], name: str) -> None:
    """The cache's conv_in tail [B, C, 2, H, W] must match the chunk's batch and spatial size."""
    tail = tails.get("conv_in")
    if tail is None:
        return
    if (tail.shape[0], *tail.shape[3:]) != (x.shape[0], *x.shape[3:]):
        raise ValueError(f"{name} has batch/height/width {(x.shape[0], *x.shape[3:])} but the cache was "
                         f"made for {(tail.shape[0], *tail.shape[3:])}: a cache only continues the same "
                         f"batch and tile")


__all__ = ["CogVideoXVAE", "DiagonalGaussian", "CausalCache", "EncoderCache", "DecoderCache",
           "decode_chunks", "encode_chunks", "reference_chunks", "decoded_num_frames",
           "DECODE_CHUNK_LATENTS", "ENCODE_CHUNK_FRAMES"]
