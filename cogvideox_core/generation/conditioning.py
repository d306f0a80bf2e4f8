"""What each family consumes besides the noise: validated plans, then tensors.

Two steps, so that a request that does not fit the model is refused before any heavy work:
:func:`plan_conditioning` (pure) picks the mode (``t2v``, ``i2v``, ``v2v``, ``inp``, ``control``),
resolves frames and size and checks them against the family's rules (in
:mod:`cogvideox_core.families`) and the modes' own, refusing with a ``ValueError`` that names the
input, its value and what the family allows; :func:`build_conditioning` then encodes images and
videos into :class:`ConditioningLatents` (extra channels, V2V start latents, ofs, padding). The
latents equal diffusers' ``CogVideoXImageToVideoPipeline`` / ``CogVideoXVideoToVideoPipeline``
and the CogVideoX-Fun reference, including the generator draws made before the noise. Inputs
are ComfyUI IMAGE [F, H, W, C] 0..1, centre-cropped and resized to the target size.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from ..families import LATENT_CHANNELS, SPATIAL_COMPRESSION, Family, latent_frames, pixel_frames
from ..video_io import frames_to_video

logger = logging.getLogger(__name__)

Mode = Literal["t2v", "i2v", "v2v", "inp", "control"]
Device = torch.device | str
Gen = torch.Generator | None
INP_NOISE_SIGMA = 0.0563  # CogVideoX-Fun inference noise on known pixels (add_noise_in_inpaint_model)


class Encoder(Protocol):
    """What the builders need from a VAE (:class:`~cogvideox_core.vae.model.CogVideoXVAE`)."""

    def encode(self, video: torch.Tensor): ...  # [B, 3, F, H, W] -1..1 -> posterior


@dataclass(frozen=True, eq=False)
class ConditioningInputs:
    """The user's conditioning inputs; every image/video is [F, H, W, C] float 0..1.

    ``image``: start image(s), k frames = frames 0..k-1 known (k > 1: Fun InP only).
    ``end_image``: the last frame (Fun InP). ``video``: V2V source, or the video to inpaint with
    ``mask`` ([F or 1, H, W], 1 = generate; Fun InP). ``control``: the control video (Fun
    Control). ``denoise``: V2V strength in (0, 1]. ``noise_aug``: sigma of the noise added to
    known pixels before encoding (Fun InP); None = the family's rule (0.0563 where the model's
    config sets ``add_noise_in_inpaint_model``, else 0).
    """

    image: torch.Tensor | None = None
    end_image: torch.Tensor | None = None
    video: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    control: torch.Tensor | None = None
    denoise: float = 1.0
    noise_aug: float | None = None


@dataclass(frozen=True)
class ConditioningPlan:
    """A validated request: mode and sizes (pixels and latents), no tensors."""

    mode: Mode
    frames: int  # pixel frames asked for (4k+1)
    height: int
    width: int
    latent_frames: int  # (frames - 1) // 4 + 1
    padding: int = 0  # latents prepended for the 1.5 temporal patch, dropped after sampling
    ofs: float | None = None
    denoise: float = 1.0
    channels: int = LATENT_CHANNELS

    @property
    def height_lat(self) -> int:
        return self.height // SPATIAL_COMPRESSION

    @property
    def width_lat(self) -> int:
        return self.width // SPATIAL_COMPRESSION

    @property
    def total_latent_frames(self) -> int:
        """Latent frames the sampler works on: ``latent_frames + padding``."""
        return self.latent_frames + self.padding

    def noise_shape(self, batch: int = 1) -> tuple[int, int, int, int, int]:
        """[B, F_lat (+ padding), C, H_lat, W_lat]: the diffusers pipelines' latent shape."""
        return (batch, self.total_latent_frames, self.channels, self.height_lat, self.width_lat)


@dataclass(frozen=True, eq=False)
class ConditioningLatents:
    """What the sampler needs besides noise and text, all in scaled latent space.

    ``extra``: [1, F_total, C_extra, H_lat, W_lat] concatenated after the noisy latents along
    channels at every step (both CFG halves get the same), or None. ``init_latents``:
    [1, F_total, 16, H_lat, W_lat] clean V2V latents to noise at the first timestep, or None.
    """

    plan: ConditioningPlan
    extra: torch.Tensor | None = None
    init_latents: torch.Tensor | None = None


# ---- planning: pure validation --------------------------------------------------------------

def plan_conditioning(family: Family, inputs: ConditioningInputs, frames: int | None = None,
                      height: int | None = None, width: int | None = None,
                      windowed: bool = False) -> ConditioningPlan:
    """Mode, frames and size for ``family``; ``ValueError`` for anything it cannot take.

    ``windowed``: the video is denoised in context windows, so the family's limit on the
    frames one model call takes (Fun-2B: 13 latents) bounds each window (checked by
    :meth:`~cogvideox_core.sampling.windows.ContextOptions.to_latent`), not the video.
    """
    mode = _mode(family, inputs)
    _check_images(inputs)
    frames = _resolve_frames(family, inputs, frames, windowed)
    height, width = _resolve_size(family, height, width)
    lat = family.check_frames(frames, windowed=windowed)
    _check_v2v_frames(family, mode, frames, lat)
    family.check_size(height, width)
    _check_inputs_fit(mode, inputs, frames)
    _check_upscale(inputs, height, width)
    for note in family.untrained(frames, height, width):
        logger.warning(note)
    padding = 0 if mode == "v2v" else family.temporal_padding(lat)
    denoise = _check_denoise(mode, inputs.denoise)
    return ConditioningPlan(mode, frames, height, width, lat, padding, family.ofs, denoise)


def _mode(family: Family, inputs: ConditioningInputs) -> Mode:
    kind = family.conditioning
    _refuse_foreign_inputs(family, inputs)
    if kind == "control":
        return "control"
    if kind == "inp":
        has_any = any(x is not None for x in (inputs.image, inputs.end_image, inputs.video))
        return "inp" if has_any else "t2v"
    if kind == "i2v":
        if inputs.image is None:
            raise ValueError(f"image=None: {family.name} is an image-to-video model and needs a "
                             "start image")
        return "i2v"
    return "v2v" if inputs.video is not None else "t2v"


def _families_of(kind: str) -> str:
    from ..families import FAMILIES
    return ", ".join(f.name for f in FAMILIES.values() if f.conditioning == kind)


def _refuse_foreign_inputs(family: Family, inputs: ConditioningInputs) -> None:
    """Inputs the family has no use for: named, with the families that take them."""
    what = f"{family.name} ({family.conditioning})"
    _refuse_control(family, inputs, what)
    if family.conditioning != "inp":
        _refuse_inp_only(inputs, what)
    if family.conditioning == "t2v" and inputs.image is not None:
        raise ValueError(f"image given to {what}: a text-to-video model takes no image; use an "
                         f"image-to-video family ({_families_of('i2v')}, {_families_of('inp')})")
    if family.conditioning == "i2v":
        _refuse_i2v(family, inputs, what)
    if family.conditioning == "inp":
        _refuse_inp_combinations(inputs, what)


def _refuse_control(family: Family, inputs: ConditioningInputs, what: str) -> None:
    if family.conditioning != "control":
        if inputs.control is not None:
            raise ValueError(f"control video given to {what}: only the Fun Control families "
                             f"({_families_of('control')}) take one")
        return
    if inputs.control is None:
        raise ValueError(f"control=None: {family.name} is a Fun Control model and needs a control video")
    for name in ("image", "end_image", "video", "mask"):
        if getattr(inputs, name) is not None:
            raise ValueError(f"{name} given to {what}: a Fun Control model takes a control video "
                             "and a prompt only")


def _refuse_inp_only(inputs: ConditioningInputs, what: str) -> None:
    for name in ("end_image", "mask"):
        if getattr(inputs, name) is not None:
            raise ValueError(f"{name} given to {what}: only the Fun InP families "
                             f"({_families_of('inp')}) take one")
    if inputs.noise_aug is not None:
        raise ValueError(f"noise_aug={inputs.noise_aug} given to {what}: only the Fun InP "
                         f"families ({_families_of('inp')}) add noise to known pixels")


def _refuse_i2v(family: Family, inputs: ConditioningInputs, what: str) -> None:
    if inputs.video is not None:
        raise ValueError(f"video given to {what}: video-to-video runs on the text-to-video "
                         f"families ({_families_of('t2v')})")
    if inputs.image is not None and inputs.image.ndim == 4 and inputs.image.shape[0] != 1:
        raise ValueError(f"image has {inputs.image.shape[0]} frames: {family.name} takes one start "
                         f"image (several known frames: {_families_of('inp')})")


def _refuse_inp_combinations(inputs: ConditioningInputs, what: str) -> None:
    if inputs.video is None:
        if inputs.mask is not None:
            raise ValueError("mask given without a video: the mask says which pixels of the "
                             "video to generate")
        return
    if inputs.mask is None:
        raise ValueError(f"mask=None with a video for {what}: inpainting needs a mask "
                         "(1 = generate, 0 = keep)")
    for name in ("image", "end_image"):
        if getattr(inputs, name) is not None:
            raise ValueError(f"{name} given with a video to inpaint: give the known frames "
                             "through the video and its mask instead")


def _check_images(inputs: ConditioningInputs) -> None:
    for field in ("image", "end_image", "video", "control"):
        x = getattr(inputs, field)
        if x is None:
            continue
        if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape) < 1:
            raise ValueError(f"{field} has shape {tuple(x.shape)}; expected [F, H, W, 3] "
                             "(ComfyUI IMAGE, float 0..1)")
    if inputs.end_image is not None and inputs.end_image.shape[0] != 1:
        raise ValueError(f"end_image has {inputs.end_image.shape[0]} frames; expected one")
    if inputs.mask is not None and (inputs.mask.ndim != 3 or min(inputs.mask.shape) < 1):
        raise ValueError(f"mask has shape {tuple(inputs.mask.shape)}; expected [F or 1, H, W] "
                         "(ComfyUI MASK, 1 = generate)")


def _source_video(inputs: ConditioningInputs) -> tuple[str, torch.Tensor] | None:
    for field in ("video", "control"):
        if getattr(inputs, field) is not None:
            return field, getattr(inputs, field)
    return None


def _resolve_frames(family: Family, inputs: ConditioningInputs, frames: int | None,
                    windowed: bool) -> int:
    """The request's frames; else the most 4k+1 frames of the source video the family takes
    (a 50-frame clip gives 49; at most its ``max_latent_frames`` in one model call); else the
    family's default."""
    if frames is not None:
        return int(frames)
    source = _source_video(inputs)
    if source is None:
        return family.default_frames
    lat = latent_frames(source[1].shape[0])
    most = None if windowed else family.max_latent_frames
    lat = lat if most is None else min(lat, most)
    logger.info("frames: %d of the %s's %d", pixel_frames(lat), source[0], source[1].shape[0])
    return pixel_frames(lat)


def _resolve_size(family: Family, height: int | None, width: int | None) -> tuple[int, int]:
    default = family.fixed_size or (family.default_height, family.default_width)
    return (int(height) if height is not None else default[0],
            int(width) if width is not None else default[1])


def _check_v2v_frames(family: Family, mode: Mode, frames: int, lat: int) -> None:
    """1.5 T2V/I2V pad an odd latent count with noise; video-to-video has no noise to pad the
    source latents with and takes an even count (as diffusers' pipeline)."""
    if mode == "v2v" and family.latent_frames_even and lat % 2:
        raise ValueError(f"frames={frames} ({lat} latent frames) for {family.name}: video-to-video "
                         "on 1.5 needs an even latent count (as diffusers' pipeline); nearest: "
                         f"{family.nearest_even(lat)}")


def _check_inputs_fit(mode: Mode, inputs: ConditioningInputs, frames: int) -> None:
    source = _source_video(inputs)
    if source is not None and source[1].shape[0] < frames:
        raise ValueError(f"{source[0]} has {source[1].shape[0]} frames; frames={frames} needs at "
                         f"least that many (the first {frames} are used)")
    mask, video = inputs.mask, inputs.video
    if mask is not None and video is not None and mask.shape[0] not in (1, video.shape[0]):
        raise ValueError(f"mask has {mask.shape[0]} frames; expected 1 (same mask for every "
                         f"frame) or the video's {video.shape[0]}")
    if mode == "inp":
        known = (0 if inputs.image is None else inputs.image.shape[0]) + (inputs.end_image is not None)
        if inputs.video is None and known > frames:
            raise ValueError(f"{known} known frames (image + end_image) do not fit frames={frames}")


MAX_UPSCALE = 8  # an input enlarged more than this has less than one pixel per latent cell
WARN_UPSCALE = 2


def _check_upscale(inputs: ConditioningInputs, height: int, width: int) -> None:
    """Refuse an image/video/mask far smaller than the video (a 1x1 start image would be
    stretched into a flat colour); warn when it is enlarged more than :data:`WARN_UPSCALE`."""
    for field in ("image", "end_image", "video", "control", "mask"):
        x = getattr(inputs, field)
        if x is None:
            continue
        h, w = (x.shape[1], x.shape[2])
        scale = max(height / h, width / w)  # centre-crop then resize: the larger ratio
        if scale > MAX_UPSCALE:
            raise ValueError(f"{field} is {w}x{h} pixels: too small for a {width}x{height} video (it "
                             f"would be enlarged {scale:.0f}x; at most {MAX_UPSCALE}x, i.e. at least "
                             f"{-(-width // MAX_UPSCALE)}x{-(-height // MAX_UPSCALE)} pixels)")
        if scale > WARN_UPSCALE:
            logger.warning("%s is %dx%d pixels, enlarged %.1fx to %dx%d: expect a blurry start",
                           field, w, h, scale, width, height)


def _check_denoise(mode: Mode, denoise: float) -> float:
    if not 0.0 < denoise <= 1.0:  # NaN fails this too
        raise ValueError(f"denoise={denoise}: must be in (0, 1] (1 = start from pure noise)")
    if denoise < 1.0 and mode != "v2v":
        raise ValueError(f"denoise={denoise} < 1 needs a source video to start from "
                         f"(video-to-video); this request is {mode}")
    return float(denoise)


# ---- pixels ---------------------------------------------------------------------------------

def to_pixels(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[F, H, W, C] 0..1 -> [1, 3, F, height, width] in -1..1 (2x - 1, as diffusers).

    Another size is centre-cropped to the target aspect ratio, then resized (bilinear,
    antialiased); the target size passes through untouched.
    """
    if tuple(frames.shape[1:3]) != (height, width):
        x = _crop_resize(frames[..., :3].float().permute(0, 3, 1, 2), height, width)  # [F, 3, h, w]
        frames = x.permute(0, 2, 3, 1)  # [F, height, width, 3]
    return frames_to_video(frames)  # [1, 3, F, H, W]


def _crop_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x [N, C, H, W] centre-cropped to height:width, then resized to height x width."""
    h, w = x.shape[-2:]
    if h * width > w * height:  # too tall: crop rows
        ch, cw = max(1, round(w * height / width)), w
    else:
        ch, cw = h, max(1, round(h * width / height))
    top, left = (h - ch) // 2, (w - cw) // 2
    x = x[..., top:top + ch, left:left + cw]
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


def to_mask(mask: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """[F or 1, H, W] -> [1, 1, frames, height, width], binarised (>= 0.5 -> 1 = generate)."""
    m = mask.float()[:, None]  # [F, 1, H, W]
    if tuple(m.shape[-2:]) != (height, width):
        m = _crop_resize(m, height, width)
    m = (m >= 0.5).float().expand(frames, -1, -1, -1) if m.shape[0] == 1 else (m[:frames] >= 0.5).float()
    return m.permute(1, 0, 2, 3)[None]  # [1, 1, F, H, W]


# ---- Fun InP --------------------------------------------------------------------------------

def known_frames_mask(frames: int, known: list[int], height: int = 1, width: int = 1) -> torch.Tensor:
    """Pixel mask [1, 1, frames, height, width]: 0 at the ``known`` frames, 1 (generate) elsewhere."""
    m = torch.ones(1, 1, frames, height, width)
    m[:, :, known] = 0.0
    return m


def inp_mask_channel(mask: torch.Tensor, latent_frames: int, height_lat: int, width_lat: int,
                     scale: float) -> torch.Tensor:
    """The Fun InP mask channel [1, F_lat, 1, h, w] from a pixel mask [1, 1, F, H, W] (1 = generate).

    ``1 - mask`` resized trilinearly (``align_corners=False``) to the latent grid, the first
    frame on its own (frame 0 -> latent 0, frames 1.. -> latents 1..), times ``scale``: the
    reference's ``resize_mask`` (not a VAE encoding). 49 frames, start frame known ->
    [1, 0, ..., 0] before scaling.
    """
    keep = 1.0 - mask.float()  # [1, 1, F, H, W]
    first = F.interpolate(keep[:, :, :1], size=(1, height_lat, width_lat), mode="trilinear",
                          align_corners=False)
    parts = [first]
    if latent_frames > 1:
        parts.append(F.interpolate(keep[:, :, 1:], size=(latent_frames - 1, height_lat, width_lat),
                                   mode="trilinear", align_corners=False))
    out = torch.cat(parts, dim=2) * scale  # [1, 1, F_lat, h, w]
    return out.permute(0, 2, 1, 3, 4)  # [1, F_lat, 1, h, w]


def masked_video(video: torch.Tensor, mask: torch.Tensor, noise_sigma: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """video [1, 3, F, H, W] -1..1 with generated pixels (mask 1) set to -1; known pixels get
    ``noise_sigma`` Gaussian noise (Fun's ``add_noise_to_reference_video``) when > 0."""
    gen_px = mask >= 0.5  # [1, 1, F, H, W]
    out = torch.where(gen_px, torch.full_like(video, -1.0), video)
    if noise_sigma > 0:
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype,
                            device=generator.device if generator is not None else out.device)
        out = out + torch.where(gen_px, 0.0, noise.to(out.device) * noise_sigma)
    return out


def _inp_pixels(inputs: ConditioningInputs, plan: ConditioningPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(video [1, 3, F, H, W] -1..1, mask [1, 1, F, H, W]) of an InP request."""
    f, h, w = plan.frames, plan.height, plan.width
    if inputs.video is not None:
        return to_pixels(inputs.video[:f], h, w), to_mask(inputs.mask, f, h, w)  # type: ignore[arg-type]
    video = torch.zeros(1, 3, f, h, w)  # unknown pixels: set to -1 by masked_video anyway
    known: list[int] = []
    if inputs.image is not None:
        k = inputs.image.shape[0]
        video[:, :, :k] = to_pixels(inputs.image, h, w)
        known += list(range(k))
    if inputs.end_image is not None:
        video[:, :, f - 1:] = to_pixels(inputs.end_image, h, w)
        known.append(f - 1)
    return video, known_frames_mask(f, known, h, w)


def _inp_noise_sigma(family: Family, inputs: ConditioningInputs) -> float:
    if inputs.noise_aug is not None:
        if inputs.noise_aug < 0:
            raise ValueError(f"noise_aug={inputs.noise_aug}: must be >= 0")
        return float(inputs.noise_aug)
    return INP_NOISE_SIGMA if family.add_noise_in_inpaint else 0.0


# ---- building -------------------------------------------------------------------------------

def _latents(vae: Encoder, pixels: torch.Tensor, generator: torch.Generator | None,
             sample: bool) -> torch.Tensor:
    """Posterior sample (with ``generator``) or mode of pixels [1, 3, F, H, W] -> [1, F_lat, C, h, w]."""
    post = vae.encode(pixels)
    z = post.sample(generator) if sample else post.mode()
    return z.permute(0, 2, 1, 3, 4)  # [1, F_lat, C, h, w]


def build_conditioning(plan: ConditioningPlan, inputs: ConditioningInputs, family: Family,
                       vae: Encoder | None, generator: torch.Generator, *,
                       aug_generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu") -> ConditioningLatents:
    """Encode what ``plan`` needs. I2V and V2V draw their posterior samples from ``generator``
    (call this before drawing the initial noise, as the pipelines do); the Fun InP known-pixel
    noise comes from ``aug_generator``, so the initial noise is the same as without it."""
    if plan.mode == "t2v" and family.conditioning != "inp":
        return ConditioningLatents(plan)
    if plan.mode == "t2v":
        shape = (1, plan.total_latent_frames, 1 + plan.channels, plan.height_lat, plan.width_lat)
        return ConditioningLatents(plan, extra=torch.zeros(shape, dtype=dtype, device=device))
    if vae is None:
        raise ValueError(f"vae=None: the {plan.mode} conditioning encodes pixels and needs the VAE")
    build = {"i2v": _build_i2v, "v2v": _build_v2v, "inp": _build_inp, "control": _build_control}[plan.mode]
    cond = build(plan, inputs, family, vae, generator, aug_generator, device)
    return dataclasses.replace(cond, extra=_cast(cond.extra, dtype, device),
                               init_latents=_cast(cond.init_latents, dtype, device))


def _cast(x: torch.Tensor | None, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor | None:
    return None if x is None else x.to(device=device, dtype=dtype)


def _build_i2v(plan: ConditioningPlan, inputs: ConditioningInputs, family: Family, vae: Encoder,
               generator: torch.Generator, aug: Gen, device: Device) -> ConditioningLatents:
    image = to_pixels(inputs.image[:1], plan.height, plan.width).to(device)  # type: ignore[index]
    z = _latents(vae, image, generator, sample=True)  # [1, 1, C, h, w]
    s = family.vae_scaling_factor
    z = (1 / s) * z if family.invert_scale_latents else s * z  # diffusers' exact expressions
    zeros = z.new_zeros(1, plan.total_latent_frames - 1, *z.shape[2:])
    return ConditioningLatents(plan, extra=torch.cat([z, zeros], dim=1))  # [1, F_total, C, h, w]


def _build_v2v(plan: ConditioningPlan, inputs: ConditioningInputs, family: Family, vae: Encoder,
               generator: torch.Generator, aug: Gen, device: Device) -> ConditioningLatents:
    video = to_pixels(inputs.video[:plan.frames], plan.height, plan.width).to(device)  # type: ignore[index]
    z = family.vae_scaling_factor * _latents(vae, video, generator, sample=True)
    return ConditioningLatents(plan, init_latents=z)


def _build_control(plan: ConditioningPlan, inputs: ConditioningInputs, family: Family, vae: Encoder,
                   generator: torch.Generator, aug: Gen, device: Device) -> ConditioningLatents:
    video = to_pixels(inputs.control[:plan.frames], plan.height, plan.width).to(device)  # type: ignore[index]
    z = family.vae_scaling_factor * _latents(vae, video, None, sample=False)
    return ConditioningLatents(plan, extra=z)


def _build_inp(plan: ConditioningPlan, inputs: ConditioningInputs, family: Family, vae: Encoder,
               generator: torch.Generator, aug: Gen, device: Device) -> ConditioningLatents:
    video, mask = _inp_pixels(inputs, plan)
    sigma = _inp_noise_sigma(family, inputs)
    pixels = masked_video(video, mask, sigma, aug).to(device)
    s = family.vae_scaling_factor
    z = s * _latents(vae, pixels, None, sample=False)  # [1, F_lat, 16, h, w]
    m = inp_mask_channel(mask, plan.latent_frames, plan.height_lat, plan.width_lat, s)
    return ConditioningLatents(plan, extra=torch.cat([m.to(z), z], dim=2))  # [1, F_lat, 17, h, w]


__all__ = ["Mode", "ConditioningInputs", "ConditioningPlan", "ConditioningLatents", "plan_conditioning",
           "build_conditioning", "to_pixels", "to_mask", "known_frames_mask", "inp_mask_channel",
           "masked_video", "INP_NOISE_SIGMA"]
