"""VAE nodes: LATENT <-> IMAGE frames with the CogVideoX causal VAE, tiled.

``cogvideox_core.vae.tiling`` decodes and encodes in the reference frame chunks with the causal
cache carried between them, split spatially into tiles; finished frames leave the compute
device chunk by chunk. Exact mode (the default) equals the untiled VAE; ``exact`` off blends
overlapping tiles (faster on small GPUs, not equal). LATENT is unscaled VAE space
[B, 16, F_lat, H/8, W/8]; IMAGE is [B*F, H, W, 3] in 0..1.

ComfyUI's IMAGE has no place for video boundaries: Tiled Decode puts the frames of a latent's
videos one after another. Tiled Decode (video list) keeps them apart the way ComfyUI passes
several items: an output list (``OUTPUT_IS_LIST``), one IMAGE [F, H, W, 3] per video, decoded
one at a time; ComfyUI then runs every node after it once per video (Save Video: one file each).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from ..cogvideox_core.families import SPATIAL_COMPRESSION, check_frames, pixel_frames
from ..cogvideox_core.vae.tiling import check_settings, decode_memory, encode_memory, tiled_decode, tiled_encode
from ..cogvideox_core.video_io import frames_to_video, video_to_frames
from . import host
from .common import MAX_RESOLUTION, VAE, VAEHandle, images_tensor, int_input, latent_samples, out_of_memory, tip

logger = logging.getLogger(__name__)
LIST_NAME = "CogVideoX Tiled Decode (video list)"


def tile_inputs() -> dict[str, tuple]:
    return {
        "exact": tip("BOOLEAN", "On: results equal the untiled VAE (full-frame statistics, no seams). "
                     "Off: overlapping tiles blended (seams possible, nothing leaves the GPU between layers).",
                     default=True, advanced=True),
        "tile": int_input("Tile size in pixels (a multiple of 8); 0 = chosen from free memory.", 0, 0,
                          MAX_RESOLUTION, SPATIAL_COMPRESSION, advanced=True),
        "overlap": int_input("Tile overlap in pixels for exact off (0 = a quarter tile); exact mode "
                             "needs none.", 0, 0, MAX_RESOLUTION, SPATIAL_COMPRESSION, advanced=True),
    }


def _settings(tile: int, overlap: int) -> dict[str, Any]:
    return {"tile": tile or None, "overlap": overlap or None}


def vae_changes(tile: int) -> tuple[str, ...]:
    """What to change when a VAE pass runs out of memory (for the out-of-memory error)."""
    smaller = f"a tile below {tile}" if tile else "a tile of 256 or less (0 chose one from free memory)"
    return (smaller, "dtype bf16 in CogVideoX VAE Loader (half of fp32)",
            "fewer frames or a smaller size upstream (the frames are kept in memory)")


class CogVideoXTiledDecode:
    DESCRIPTION = ("Decodes video latents to frames with the CogVideoX VAE in tiles and frame chunks "
                   "(memory bounded by a tile); exact by default: equal to the untiled decode.")
    CATEGORY = "CogVideoX/vae"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vae": tip(VAE, "From CogVideoX VAE Loader."),
                             "latent": tip("LATENT", "Video latents from the CogVideoX Sampler.")},
                "optional": tile_inputs()}

    def decode(self, vae: VAEHandle, latent: dict, exact: bool = True, tile: int = 0,
               overlap: int = 0) -> tuple[torch.Tensor]:
        z = latent_samples("latent", latent)
        settings = _settings(tile, overlap)
        check_settings(vae.model.config, **settings, exact=exact)  # before loading
        runtime = host.runtime(vae.patcher)
        b = z.shape[0]
        if b > 1:
            logger.info("Tiled Decode: the latent holds %d videos; their frames follow one another in one "
                        "IMAGE (use %s for one IMAGE, and one saved file, per video)", b, LIST_NAME)
        with out_of_memory(_decoding(z), vae_changes(tile), vae.patcher):
            model = host.load(runtime, vae.patcher, decode_memory(vae.model, z))
            video = tiled_decode(model, z, exact=exact, runtime=runtime, **settings)  # [B, 3, F, H, W]
            return (host.to_intermediate(video_to_frames(video)),)  # [B*F, H, W, 3]


def _decoding(z: torch.Tensor) -> str:
    """What a decode of latents ``z`` [B, C, T, h, w] does (for the out-of-memory error)."""
    b, _c, t, h, w = z.shape
    return f"decoding {b} x {pixel_frames(t)} frames at {w * SPATIAL_COMPRESSION}x{h * SPATIAL_COMPRESSION}"


class CogVideoXTiledDecodeList:
    DESCRIPTION = ("Decodes video latents like CogVideoX Tiled Decode but keeps the videos apart: a list "
                   "with one IMAGE per video (several prompts or a batch), decoded one at a time. "
                   "ComfyUI runs each node after it once per video: Save Video writes one numbered "
                   "file per video.")
    CATEGORY = "CogVideoX/vae"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("videos",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vae": tip(VAE, "From CogVideoX VAE Loader."),
                             "latent": tip("LATENT", "Video latents from the CogVideoX Sampler: one video per "
                                           "prompt and batch entry.")},
                "optional": tile_inputs()}

    def decode(self, vae: VAEHandle, latent: dict, exact: bool = True, tile: int = 0,
               overlap: int = 0) -> tuple[list[torch.Tensor]]:
        z = latent_samples("latent", latent)
        settings = _settings(tile, overlap)
        check_settings(vae.model.config, **settings, exact=exact)  # before loading
        runtime = host.runtime(vae.patcher)
        videos = []
        with out_of_memory(_decoding(z), vae_changes(tile), vae.patcher):
            for i in range(z.shape[0]):  # one video at a time: memory does not grow with the batch
                one = z[i:i + 1]
                model = host.load(runtime, vae.patcher, decode_memory(vae.model, one))
                video = tiled_decode(model, one, exact=exact, runtime=runtime,
                                     progress=_video_progress(runtime, i, z.shape[0]), **settings)
                videos.append(host.to_intermediate(video_to_frames(video)))  # [F, H, W, 3]
        return (videos,)


def _video_progress(runtime: Any, video: int, videos: int) -> Any:
    """The tiled decode's progress of video ``video`` of ``videos`` as progress over all of them."""

    def progress(step: int, total: int, preview: torch.Tensor | None = None) -> None:
        runtime.progress(video * total + step, videos * total, preview)

    return progress


class CogVideoXTiledEncode:
    DESCRIPTION = ("Encodes frames (4k+1 of them) to video latents with the CogVideoX VAE in tiles "
                   "(posterior mode, unscaled); exact by default.")
    CATEGORY = "CogVideoX/vae"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vae": tip(VAE, "From CogVideoX VAE Loader."),
                             "images": tip("IMAGE", "Video frames, 4k+1 of them, sides multiples of 8.")},
                "optional": tile_inputs()}

    def encode(self, vae: VAEHandle, images: torch.Tensor, exact: bool = True, tile: int = 0,
               overlap: int = 0) -> tuple[dict]:
        frames = images_tensor("images", images)
        check_frames("images (frame count)", frames.shape[0])
        settings = _settings(tile, overlap)
        check_settings(vae.model.config, **settings, exact=exact)
        video = frames_to_video(frames)  # [1, 3, F, H, W] in -1..1, any device
        runtime = host.runtime(vae.patcher)
        f, h, w, _c = frames.shape
        with out_of_memory(f"encoding {f} frames at {w}x{h}", vae_changes(tile), vae.patcher):
            model = host.load(runtime, vae.patcher, encode_memory(vae.model, video))
            posterior = tiled_encode(model, video, exact=exact, runtime=runtime, **settings)
            return ({"samples": host.to_intermediate(posterior.mode().float())},)


NODES: dict[str, Any] = {
    "CogVideoXTiledDecode": (CogVideoXTiledDecode, "CogVideoX Tiled Decode"),
    "CogVideoXTiledDecodeList": (CogVideoXTiledDecodeList, LIST_NAME),
    "CogVideoXTiledEncode": (CogVideoXTiledEncode, "CogVideoX Tiled Encode"),
}
