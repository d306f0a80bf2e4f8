"""Conditioning nodes: the empty latent and the image/video inputs of each family.

A conditioning node checks its inputs' units and attaches them (with the VAE that encodes
them) to the prompt conditioning; the sampler encodes them with its seed, in the diffusers
pipelines' order (``cogvideox_core.generation.conditioning``), and checks them against the model's
family before any heavy work. Each node also outputs the empty LATENT that sets the video's
frames and size for the sampler.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..cogvideox_core.families import SIZE_UNIT, TEMPORAL_COMPRESSION, latent_shape
from ..cogvideox_core.generation.conditioning import ConditioningInputs
from . import host
from .common import (CONDITIONING, MAX_FRAMES, MAX_RESOLUTION, VAE, PromptConditioning, VAEHandle,
                     check_finite, float_input, images_tensor, int_input, tip)


def size_inputs(width: int = 720, height: int = 480, frames: int = 49) -> dict[str, tuple]:
    return {
        "width": int_input("Video width in pixels (a multiple of 16; 5B-I2V takes only 720).",
                           width, SIZE_UNIT, MAX_RESOLUTION, SIZE_UNIT),
        "height": int_input("Video height in pixels (a multiple of 16; 5B-I2V takes only 480).",
                            height, SIZE_UNIT, MAX_RESOLUTION, SIZE_UNIT),
        "frames": int_input("Frames to generate, 4k+1 (49 for 1.0 models, 81 for 1.5, 49 at most for "
                            "Fun 2B).", frames, 1, MAX_FRAMES, TEMPORAL_COMPRESSION),
    }


def empty_latent(width: int, height: int, frames: int, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """A LATENT of zeros [B, 16, (F - 1) / 4 + 1, H / 8, W / 8] (the core checks the units)."""
    shape = latent_shape(frames, height, width, batch_size)
    return {"samples": torch.zeros(shape, device=host.intermediate_device())}


def attach(conditioning: PromptConditioning, vae: VAEHandle, **inputs: Any) -> PromptConditioning:
    """``conditioning`` with the given conditioning inputs and the VAE to encode them."""
    return dataclasses.replace(conditioning, inputs=ConditioningInputs(**inputs), vae=vae)


def mask_tensor(name: str, mask: Any) -> torch.Tensor:
    """A MASK as [F or 1, H, W] float (1 = generate)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name}: expected a MASK [F, H, W] or [H, W] (1 = generate); got {shape}")
    return (mask[None] if mask.ndim == 2 else mask).float()


_COND = ("conditioning", tip(CONDITIONING, "Prompt conditioning from a CogVideoX text encode node."))
_VAE = ("vae", tip(VAE, "The VAE that encodes the images during sampling."))


class CogVideoXEmptyLatent:
    DESCRIPTION = "An empty video latent that sets frames, size and batch for text-to-video sampling."
    CATEGORY = "CogVideoX/latent"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {**size_inputs(), "batch_size": int_input(
            "Videos per run; video i uses seed + i.", 1, 1, 64)}}

    def make(self, width: int, height: int, frames: int, batch_size: int = 1) -> tuple[dict]:
        return (empty_latent(width, height, frames, batch_size),)


class _ConditioningNode:
    """What the image/video conditioning nodes share: their outputs and their first inputs."""

    CATEGORY = "CogVideoX/conditioning"
    RETURN_TYPES = (CONDITIONING, "LATENT")
    RETURN_NAMES = ("conditioning", "latent")
    FUNCTION = "encode"

    @staticmethod
    def required(**inputs: tuple) -> dict[str, tuple]:
        """The conditioning and VAE inputs followed by ``inputs``."""
        return {**dict([_COND, _VAE]), **inputs}


class CogVideoXImageToVideo(_ConditioningNode):
    DESCRIPTION = ("Image-to-video for the I2V models (5B-I2V, 1.5-I2V): the start image is encoded "
                   "during sampling and anchors frame 0.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {**cls.required(),
                             "image": tip("IMAGE", "The start image (first frame used); centre-cropped "
                                          "and resized to width x height."),
                             **size_inputs()}}

    def encode(self, conditioning: PromptConditioning, vae: VAEHandle, image: torch.Tensor, width: int,
               height: int, frames: int) -> tuple[PromptConditioning, dict]:
        latent = empty_latent(width, height, frames)
        return attach(conditioning, vae, image=images_tensor("image", image)[:1]), latent


class CogVideoXFunInpaint(_ConditioningNode):
    DESCRIPTION = ("CogVideoX-Fun InP: start image(s) (frames 0..k-1), an end image (last frame), or a "
                   "video with a mask (1 = generate); with none of them the InP model does text-to-video.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": cls.required(**size_inputs(672, 384)),
                "optional": {
                    "start_images": tip("IMAGE", "Known first frames: k images fix frames 0..k-1."),
                    "end_image": tip("IMAGE", "The known last frame (one image)."),
                    "video": tip("IMAGE", "A video to inpaint; needs mask."),
                    "mask": tip("MASK", "Which pixels of video to generate (1) or keep (0); one mask "
                                "for all frames or one per frame."),
                    "noise_aug": float_input("Noise on the known pixels before encoding; -1 = the "
                                             "model's rule (0.0563 for Fun V1.5, else 0).", -1.0, -1.0, 1.0,
                                             0.001, advanced=True),
                }}

    def encode(self, conditioning: PromptConditioning, vae: VAEHandle, width: int, height: int, frames: int,
               start_images: torch.Tensor | None = None, end_image: torch.Tensor | None = None,
               video: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               noise_aug: float = -1.0) -> tuple[PromptConditioning, dict]:
        latent = empty_latent(width, height, frames)
        images = {name: images_tensor(name, x) for name, x in
                  (("image", start_images), ("end_image", end_image), ("video", video)) if x is not None}
        if mask is not None:
            images["mask"] = mask_tensor("mask", mask)
        check_finite(self, noise_aug=noise_aug)
        if noise_aug != -1.0 and noise_aug < 0:
            raise ValueError(f"noise_aug={noise_aug} must be -1 (the model's rule) or >= 0")
        aug = None if noise_aug == -1.0 else float(noise_aug)
        return attach(conditioning, vae, noise_aug=aug, **images), latent


class CogVideoXVideoToVideo(_ConditioningNode):
    DESCRIPTION = ("Video-to-video for the text-to-video models: the source video is encoded during "
                   "sampling and noised to the sampler's denoise strength (use denoise < 1).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {**cls.required(),
                             "video": tip("IMAGE", "The source video (its first `frames` frames are used)."),
                             **size_inputs()}}

    def encode(self, conditioning: PromptConditioning, vae: VAEHandle, video: torch.Tensor, width: int,
               height: int, frames: int) -> tuple[PromptConditioning, dict]:
        latent = empty_latent(width, height, frames)
        return attach(conditioning, vae, video=images_tensor("video", video)), latent


class CogVideoXFunControl(_ConditioningNode):
    DESCRIPTION = ("CogVideoX-Fun Control/Pose: a control video (pose, depth, canny...) guides every "
                   "frame.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {**cls.required(),
                             "control_video": tip("IMAGE", "The control video, at least `frames` long."),
                             **size_inputs(672, 384)}}

    def encode(self, conditioning: PromptConditioning, vae: VAEHandle, control_video: torch.Tensor,
               width: int, height: int, frames: int) -> tuple[PromptConditioning, dict]:
        latent = empty_latent(width, height, frames)
        return attach(conditioning, vae, control=images_tensor("control_video", control_video)), latent


NODES: dict[str, Any] = {
    "CogVideoXEmptyLatent": (CogVideoXEmptyLatent, "CogVideoX Empty Latent"),
    "CogVideoXImageToVideo": (CogVideoXImageToVideo, "CogVideoX Image to Video"),
    "CogVideoXFunInpaint": (CogVideoXFunInpaint, "CogVideoX Fun InP (start/end frames, inpaint)"),
    "CogVideoXVideoToVideo": (CogVideoXVideoToVideo, "CogVideoX Video to Video"),
    "CogVideoXFunControl": (CogVideoXFunControl, "CogVideoX Fun Control"),
}
