"""Sampling nodes: context window and step cache options, the sampler, and chained extension.

The sampler is one ``cogvideox_core.generation.batch.sample_batches`` job over one video per
prompt of the conditioning (P) and batch entry of the latent (B, entry i with seed + i, the same
seeds for every prompt): the conditioning is validated against the model's family first, each
video's conditioning inputs encoded with its seed, the videos sampled in batches as large as
memory allows (one at a time with a single prompt: the numbers of a one-video run, as before)
with the family's scheduler, and the final latents come back unscaled in ComfyUI's video latent
layout [P * B, 16, F_lat, H/8, W/8], prompt by prompt. The extend node is one
``cogvideox_core.long_video.chain.extend_chain`` call: chunks conditioned on the video's last frames,
colour-matched to its first chunk and crossfaded on.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..cogvideox_core.families import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION, check_frames, pixel_frames
from ..cogvideox_core.generation.batch import Row, sample_batches
from ..cogvideox_core.generation.pipeline import GenerateRequest, Models, encode_text, validate
from ..cogvideox_core.long_video.chain import ChainOptions, check_chain, extend_chain
from ..cogvideox_core.models.step_cache import METHODS, THRESHOLDED, CacheOptions
from ..cogvideox_core.sampling import SAMPLER_NAMES
from ..cogvideox_core.sampling.windows import SCHEDULES, WEIGHTINGS, ContextOptions
from . import host
from .common import (CACHE, CONDITIONING, CONTEXT, MAX_FRAMES, MODEL, T5, VAE, ModelHandle,
                     PromptConditioning, T5Handle, VAEHandle, check_finite, choice, float_input,
                     images_tensor, int_input, latent_samples, one_prompt, out_of_memory, tip)
from .text import encode_lines

SAMPLERS = ("auto", *SAMPLER_NAMES)
FP8_CHANGE = "weight_dtype fp8 in CogVideoX Model Loader (half the weight memory)"
EXTEND_CHANGES = ("fewer frames per chunk (frames)", "smaller images (scale the video down before this node)",
                  FP8_CHANGE, "dtype bf16 in CogVideoX VAE Loader (half of fp32)")


def sampling_changes(context: ContextOptions | None) -> tuple[str, ...]:
    """What to change when sampling runs out of memory (for the out-of-memory error)."""
    windows = ("a shorter length_frames, or batch_windows 1, in CogVideoX Context Options" if context else
               "context windows: a CogVideoX Context Options node on context_options (the memory of one window)")
    return ("fewer frames or a smaller width/height (on the node that makes the latent)", windows, FP8_CHANGE)


def latent_size(samples: torch.Tensor) -> dict[str, int]:
    """The request's frames, height and width (pixels) of latents [B, C, F_lat, h, w]."""
    _b, _c, t, h, w = samples.shape
    return {"frames": pixel_frames(t), "height": h * SPATIAL_COMPRESSION, "width": w * SPATIAL_COMPRESSION}


def video_rows(models: Models, request: GenerateRequest, conditioning: PromptConditioning, batch: int,
               runtime: Any) -> list[Row]:
    """One row per prompt p of ``conditioning`` and batch entry i (seed + i), prompt by prompt:
    T5 states in the transformer's dtype on the compute device (the negative only with cfg > 1)."""
    rows = []
    for p in range(conditioning.prompts):
        one = dataclasses.replace(request, prompt_embeds=conditioning.positive[p:p + 1])
        cond, uncond = encode_text(models, one, runtime)  # [1, 226, D] each, or uncond None
        rows += [Row(cond, uncond, (request.seed + i) % 2**64) for i in range(batch)]
    return rows


def sampling_inputs() -> dict[str, tuple]:
    return {
        "seed": int_input("Seed of the noise (and of the image/video posterior sample).", 0, 0,
                          2**64 - 1, control_after_generate=True),
        "steps": int_input("Denoising steps (50 in the reference pipelines).", 50, 1, 1000),
        "cfg": float_input("Classifier-free guidance scale; 1 or less turns guidance off (one model "
                           "call per step).", 6.0, 0.0, 30.0, 0.1),
        "sampler": tip(list(SAMPLERS), "auto: the family's (DDIM for 2B, DPM for the others); ddim and "
                       "dpm are the CogVideoX schedulers."),
    }


class CogVideoXContextOptions:
    DESCRIPTION = ("Context windows for videos longer than the model was trained for: the sampler "
                   "denoises overlapping windows of frames and blends them at every step.")
    CATEGORY = "CogVideoX/sampling"
    RETURN_TYPES = (CONTEXT,)
    RETURN_NAMES = ("context_options",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "length_frames": int_input("Window length in frames, 4k+1 (49 = the 1.0 models' trained "
                                       "length).", 49, 1, MAX_FRAMES, TEMPORAL_COMPRESSION),
            "overlap_frames": int_input("Frames shared by neighbouring windows (blended).", 16, 0,
                                        MAX_FRAMES, TEMPORAL_COMPRESSION),
            "schedule": tip(list(SCHEDULES), "static: fixed windows; uniform: windows shift every step; "
                            "looped: the last window wraps to the start (loops)."),
            "weights": tip(list(WEIGHTINGS), "How overlapping windows are blended: pyramid ramps, flat "
                           "averages; causal takes each frame from the first window that covers it, so "
                           "later windows continue earlier ones (no cross-fades; with DDIM the first "
                           "window is the short video of the same seed).", default="pyramid"),
            "batch_windows": int_input("Windows denoised together in one model call: 1 needs the memory "
                                       "of one window; more is faster where memory allows.", 1, 1, 64),
        }}

    def make(self, length_frames: int, overlap_frames: int, schedule: str = "static",
             weights: str = "pyramid", batch_windows: int = 1) -> tuple[ContextOptions]:
        choice("schedule", schedule, tuple(SCHEDULES))
        choice("weights", weights, WEIGHTINGS)
        return (ContextOptions(length_frames, overlap_frames, schedule, weights, batch_windows),)


CACHE_TIP = ("A step cache that saves transformer work on steps that barely change (CogVideoX "
             "Cache): faster, slightly softer; not with context_options.")


class CogVideoXCache:
    DESCRIPTION = ("Step caching for the sampler and Extend Video: on steps whose input barely changed "
                   "the transformer's blocks are skipped and their last change is reused, or their "
                   "attention is reused. Faster, at some loss of detail; cannot be combined with "
                   "context windows.")
    CATEGORY = "CogVideoX/sampling"
    RETURN_TYPES = (CACHE,)
    RETURN_NAMES = ("cache",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "method": tip(list(METHODS), "teacache: skips the whole block stack while the accumulated "
                          "change of the timestep embedding stays under the threshold (TeaCache). fbc: "
                          "always runs the first block and skips the rest when its output barely "
                          "changed (First Block Cache, as in diffusers). pab: reuses each block's "
                          "attention on every second step between timesteps 100 and 800 (Pyramid "
                          "Attention Broadcast; about 1.3x on 5B per its authors). fastercache: also "
                          "rebuilds the unconditional guidance branch on 4 of every 5 steps (FasterCache; "
                          "about 1.5x on 5B, needs cfg above 1 and several GB more memory). pab and "
                          "fastercache use diffusers' default settings and no threshold."),
            "threshold": float_input("0 = the method's default: teacache 0.2 for text-to-video and 0.1 "
                                     "with an image or video (0.1 is near-lossless, about 1.5x faster on "
                                     "5B per TeaCache's authors; 0.2 about 2x with visible softening); "
                                     "fbc 0.05 (diffusers' default). Higher skips more steps and loses "
                                     "more detail. Leave at 0 for pab and fastercache.", 0.0, 0.0, 2.0),
        }}

    def make(self, method: str, threshold: float = 0.0) -> tuple[CacheOptions]:
        choice("method", method, METHODS)
        check_finite(self, threshold=threshold)
        if threshold != 0 and method not in THRESHOLDED:
            raise ValueError(f"threshold={threshold} with method {method}: only {' and '.join(THRESHOLDED)} "
                             "take a threshold; set it to 0")
        return (CacheOptions(method, None if threshold == 0 else float(threshold)),)  # < 0 refused there


def check_cache(cache: CacheOptions | None, context_options: ContextOptions | None) -> None:
    """A ValueError naming both inputs when a step cache meets context windows."""
    if cache is not None and context_options is not None:
        raise ValueError(f"cache ({cache.method}) with context_options: a step cache cannot be combined "
                         "with context windows (it would reuse one window's tensors in another); "
                         "disconnect one of them")


class CogVideoXSampler:
    DESCRIPTION = ("Generates the video latents: text-to-video, image-to-video, Fun InP/Control or "
                   "video-to-video, by what the conditioning carries; the latent sets frames and size.")
    CATEGORY = "CogVideoX/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": tip(MODEL, "From CogVideoX Model Loader (optionally through LoRAs)."),
            "conditioning": tip(CONDITIONING, "From a CogVideoX text encode or conditioning node; with "
                                "several prompts one video per prompt and batch entry, prompt by prompt."),
            "latent": tip("LATENT", "An empty latent (or one from a conditioning node): frames, size, batch "
                          "(video i of each prompt uses seed + i)."),
            **sampling_inputs(),
            "denoise": float_input("1 = from pure noise; below 1 only for video-to-video (how much of "
                                   "the source video changes).", 1.0, 0.01, 1.0),
        }, "optional": {
            "context_options": tip(CONTEXT, "Context windows for long videos (CogVideoX Context Options)."),
            "cache": tip(CACHE, CACHE_TIP),
        }}

    def sample(self, model: ModelHandle, conditioning: PromptConditioning, latent: dict, seed: int, steps: int,
               cfg: float, sampler: str = "auto", denoise: float = 1.0,
               context_options: ContextOptions | None = None,
               cache: CacheOptions | None = None) -> tuple[dict]:
        samples = latent_samples("latent", latent)
        choice("sampler", sampler, SAMPLERS)
        check_finite(self, cfg=cfg, denoise=denoise)
        check_cache(cache, context_options)
        vae = conditioning.vae
        models = Models(model.model, model.family, None if vae is None else vae.model,
                        scheduler=model.scheduler)
        request = GenerateRequest(
            inputs=dataclasses.replace(conditioning.inputs, denoise=float(denoise)), **latent_size(samples),
            steps=steps, cfg=cfg, sampler=None if sampler == "auto" else sampler, seed=seed,
            context=context_options, cache=cache, prompt_embeds=conditioning.positive[:1],
            negative_embeds=conditioning.negative)  # each prompt's states come with the rows
        plan = validate(models, request)  # before anything is loaded
        patchers = (model.patcher, *([] if vae is None else [vae.patcher]))
        runtime = host.runtime(*patchers)
        rows = video_rows(models, request, conditioning, samples.shape[0], runtime)
        most = 1 if conditioning.prompts == 1 else None  # one prompt: one video at a time, as before
        videos = "" if len(rows) == 1 else f"{len(rows)} videos of "
        with out_of_memory(f"sampling {videos}{plan.frames} frames at {plan.width}x{plan.height}",
                           sampling_changes(context_options), *patchers):
            outs = [host.to_intermediate(latents) for _rows, latents, _s
                    in sample_batches(models, request, plan, rows, runtime, max_batch=most)]
        return ({"samples": torch.cat(outs)},)  # [P * B, C, F_lat, h, w], prompt by prompt


class CogVideoXExtendVideo:
    DESCRIPTION = ("Long video by chained extension: generates chunks that each start with the last "
                   "overlap_frames of the video so far (Fun InP; I2V models: overlap 1), matches their "
                   "colours to the video's first chunk and crossfades them on. Chain several nodes or "
                   "set chunks to grow the video.")
    CATEGORY = "CogVideoX/sampling"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "extend"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": tip(MODEL, "A Fun InP model (or an image-to-video model with overlap 1)."),
            "conditioning": tip(CONDITIONING, "The prompt for the new chunks (from a CogVideoX text encode node)."),
            "vae": tip(VAE, "Encodes the known frames and decodes the chunks."),
            "images": tip("IMAGE", "The video so far; the chunks have its size."),
            "frames": int_input("Frames of each new chunk, 4k+1, including the overlap.", 49, 5, MAX_FRAMES,
                                TEMPORAL_COMPRESSION),
            "overlap_frames": int_input("Last frames of the video each chunk starts from (known frames), "
                                        "crossfaded over.", 4, 1, MAX_FRAMES),
            **sampling_inputs(),
            "chunks": int_input("Chunks to add (chunk k uses seed + k).", 1, 1, 256),
            "colour_match": float_input("Match each chunk's colours (mean and spread in Oklab) to the "
                                        "video's first chunk: 1 removes chain drift, 0 is off (the "
                                        "reference).", 1.0, 0.0, 1.0),
        }, "optional": {
            "end_image": tip("IMAGE", "The frame the last chunk ends on (Fun InP)."),
            "t5": tip(T5, "Encodes the prompts below (CogVideoX T5 Text Encoder Loader)."),
            "prompts": tip("STRING", "One prompt per chunk, one per line (needs t5); empty: the "
                           "conditioning's prompt for every chunk.", multiline=True, default=""),
            "cache": tip(CACHE, "A step cache for every chunk (CogVideoX Cache): faster, slightly softer."),
        }}

    def extend(self, model: ModelHandle, conditioning: PromptConditioning, vae: VAEHandle, images: torch.Tensor,
               frames: int, overlap_frames: int, seed: int, steps: int, cfg: float, sampler: str = "auto",
               chunks: int = 1, colour_match: float = 1.0, end_image: torch.Tensor | None = None,
               t5: T5Handle | None = None, prompts: str = "",
               cache: CacheOptions | None = None) -> tuple[torch.Tensor]:
        positive = one_prompt("conditioning", conditioning, "Extend Video")
        video = images_tensor("images", images)
        check_frames("frames", frames)
        choice("sampler", sampler, SAMPLERS)
        check_finite(self, cfg=cfg, colour_match=colour_match)
        f, h, w, _c = video.shape
        if overlap_frames > f:
            raise ValueError(f"overlap_frames={overlap_frames} exceeds the {f} frames of images")
        end = None if end_image is None else images_tensor("end_image", end_image)[-1:]
        options = ChainOptions(chunks, overlap_frames, colour_match, end)
        models = Models(model.model, model.family, vae.model, scheduler=model.scheduler)
        request = GenerateRequest(frames=frames, steps=steps, cfg=cfg, seed=seed,
                                  sampler=None if sampler == "auto" else sampler, cache=cache,
                                  prompt_embeds=positive, negative_embeds=conditioning.negative)
        check_chain(models, request, options, h, w)  # before anything is loaded (the T5 included)
        embeds = encode_lines(t5, prompts, chunks)  # one [1, 226, D] per line, or None
        options = dataclasses.replace(options, prompt_embeds=embeds)
        with out_of_memory(f"extending by chunks of {frames} frames at {w}x{h}", EXTEND_CHANGES,
                           model.patcher, vae.patcher):
            out = extend_chain(models, request, video, options, host.runtime(model.patcher, vae.patcher))
        return (host.to_intermediate(out),)


NODES: dict[str, Any] = {
    "CogVideoXContextOptions": (CogVideoXContextOptions, "CogVideoX Context Options"),
    "CogVideoXCache": (CogVideoXCache, "CogVideoX Cache"),
    "CogVideoXSampler": (CogVideoXSampler, "CogVideoX Sampler"),
    "CogVideoXExtendVideo": (CogVideoXExtendVideo, "CogVideoX Extend Video (chained)"),
}
