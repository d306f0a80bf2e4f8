"""One generation, every mode: validate, encode the prompt, condition, sample, decode.

Equal to diffusers' CogVideoX pipelines (``CogVideoXPipeline``, ``CogVideoXImageToVideoPipeline``,
``CogVideoXVideoToVideoPipeline``, ``CogVideoXFunControlPipeline``) for the same weights, seed and
scheduler. To stay equal: one CPU ``torch.Generator`` seeded with ``seed`` is drawn in the
pipelines' order (I2V/V2V posterior sample, initial noise, sampler noise); CFG batches
[uncond, cond]; 1.5's padding latents go in front and are dropped after sampling. Latents inside
the sampler are scaled; :func:`generate_latents` hands out unscaled [1, C, F_lat, H_lat, W_lat].
With context windows per-frame conditioning is built once and sliced per window: only the window
holding frame 0 gets the start image (see README "How it works").
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .conditioning import (ConditioningInputs, ConditioningLatents, ConditioningPlan, build_conditioning,
                           plan_conditioning)
from ..sampling.windows import ContextOptions, LatentContext, plan_windows, run_windows, slice_windows
from ..errors import NonFiniteError
from ..families import Family, VAEConfig
from ..loading.text import MAX_LENGTH
from ..memory import MemoryEstimate, beyond_trained_length, estimate_sampling, for_rows, require_fit
from ..models.step_cache import CacheOptions, StepCache, check_guided, make_step_cache
from ..models.transformer import fit_text, text_rows_read
from ..models.step_cache import report as report_cache
from ..runtime import Runtime, TorchRuntime, call_progress
from ..sampling import (DYNAMIC_MODES, ModelFn, RowGenerators, SchedulerConfig, add_noise, cfg_denoiser,
                       get_sampler, make_schedule)
from ..sampling.guidance import cfg_pair
from ..sampling.schedules import Schedule
from ..vae.tiling import TiledEncoder, decode_memory, no_progress, tiled_decode
from ..vae.model import CogVideoXVAE
from ..video_io import video_to_frames

logger = logging.getLogger(__name__)

CallFn = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor | None], torch.Tensor]  # + extra


@dataclass
class Models:
    """The loaded models of one family. ``scheduler`` defaults to the shipped config of the
    family (snr shift 3.0 for 2B, 1.0 otherwise); ``text_encoder`` is a
    :class:`~cogvideox_core.loading.text.TextEncoder` (None when prompt embeddings are given)."""

    transformer: torch.nn.Module
    family: Family
    vae: CogVideoXVAE | None = None
    text_encoder: Any = None
    scheduler: SchedulerConfig | None = None

    def scheduler_config(self) -> SchedulerConfig:
        return self.scheduler or SchedulerConfig(snr_shift_scale=self.family.snr_shift_scale)


@dataclass(frozen=True, eq=False)
class GenerateRequest:
    """One generation. Sizes in pixels; ``None`` takes the family's default (or, for frames,
    the source video's length). ``sampler`` None takes the family's recommended one.
    ``dynamic_cfg``: None, ``"diffusers"`` (the pipelines' formula, raw timestep) or ``"step"``.
    ``cfg_batched``: [uncond, cond] in one model call (faster) or two (half the activations).
    ``prompt_embeds`` / ``negative_embeds`` [1, L, D] replace the text encoder when given.
    ``cache``: a step cache (TeaCache, First Block Cache, Pyramid Attention Broadcast or
    FasterCache) that spends less transformer work on steps whose input barely changed; not
    with ``context`` windows; FasterCache needs ``cfg`` > 1."""

    prompt: str = ""
    negative_prompt: str = ""
    inputs: ConditioningInputs = field(default_factory=ConditioningInputs)
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int = 50
    cfg: float = 6.0
    dynamic_cfg: str | None = None
    cfg_batched: bool = True
    sampler: str | None = None
    seed: int = 0
    context: ContextOptions | None = None
    prompt_embeds: torch.Tensor | None = None
    negative_embeds: torch.Tensor | None = None
    cache: CacheOptions | None = None


# ---- the public calls -----------------------------------------------------------------------

@torch.no_grad()
def generate(models: Models, request: GenerateRequest, runtime: Runtime | None = None) -> torch.Tensor:
    """Frames [F, H, W, 3] float 0..1 for ``request`` (on the runtime's intermediate device)."""
    runtime = runtime or TorchRuntime(show_progress=False)
    plan = validate(models, request)
    latents = generate_latents(models, request, runtime, plan=plan)
    return latents_to_frames(models, latents, runtime, frames=plan.frames)


@torch.no_grad()
def generate_latents(models: Models, request: GenerateRequest, runtime: Runtime | None = None,
                     plan: ConditioningPlan | None = None) -> torch.Tensor:
    """Final latents [1, C, F_lat, H_lat, W_lat], unscaled VAE space, padding dropped."""
    runtime = runtime or TorchRuntime(show_progress=False)
    plan = plan or validate(models, request)
    return final_latents(sample_latents(models, request, runtime, plan), plan, models.family)


def final_latents(scaled: torch.Tensor, plan: ConditioningPlan, family: Family) -> torch.Tensor:
    """The sampler's scaled latents [B, F_total, C, h, w] -> VAE latents [B, C, F_lat, h, w],
    padding dropped; :class:`~cogvideox_core.errors.NonFiniteError` for NaN/inf."""
    check_finite(scaled, "the sampled latents", _NAN_HINT)
    return unscale(scaled[:, plan.padding:], family)


def validate(models: Models, request: GenerateRequest) -> ConditioningPlan:
    """The request's plan; ``ValueError`` before any heavy work for anything the models cannot do."""
    get_sampler(request.sampler or models.family.recommended_sampler)
    _check_numbers(request)
    context = None if request.context is None else request.context.to_latent(models.family)
    if request.cache is not None and context is not None:
        raise ValueError(f"cache={request.cache.method!r} with context windows: not supported (the cache "
                         "would add one window's residuals to another); use one of them")
    if request.cache is not None:
        check_guided(request.cache.method, request.cfg > 1.0)
    plan = plan_conditioning(models.family, request.inputs, request.frames, request.height,
                             request.width, windowed=context is not None)
    frames = plan.total_latent_frames  # what one model call sees: the video, or one window
    models.transformer.check_input(frames if context is None else min(context.length, frames),
                                   plan.height_lat, plan.width_lat)
    warning = beyond_trained_length(models.family, plan.frames, windowed=context is not None)
    if warning:
        logger.warning(warning)
    if plan.mode != "t2v" or models.family.conditioning == "inp":
        _require(models.vae, "vae", plan)
    if request.prompt_embeds is None:
        _require(models.text_encoder, "text_encoder", plan)
    elif request.cfg > 1.0 and request.negative_embeds is None:
        raise ValueError(f"negative_embeds=None with prompt_embeds and cfg={request.cfg} > 1: "
                         "guidance needs both (or cfg <= 1)")
    return plan


def _check_numbers(request: GenerateRequest) -> None:
    if request.steps < 1:
        raise ValueError(f"steps={request.steps}: must be at least 1")
    if not (math.isfinite(request.cfg) and request.cfg >= 0):
        raise ValueError(f"cfg={request.cfg}: must be a finite number >= 0 (1 or less turns guidance off)")
    if request.dynamic_cfg is not None and request.dynamic_cfg not in DYNAMIC_MODES:
        raise ValueError(f"dynamic_cfg={request.dynamic_cfg!r}: known: None, {', '.join(DYNAMIC_MODES)}")
    if not 0 <= request.seed < 2**64:
        raise ValueError(f"seed={request.seed}: must be in 0..2**64-1")


def _require(model: object, name: str, plan: ConditioningPlan) -> None:
    if model is None:
        raise ValueError(f"{name}=None: a {plan.mode} request needs it")


# ---- text -----------------------------------------------------------------------------------

def encode_text(models: Models, request: GenerateRequest, runtime: Runtime
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond, uncond or None) T5 states [1, 226, D] in the transformer's dtype and device, cut
    to the rows a model trained on fewer text tokens reads (:func:`~cogvideox_core.models.transformer.fit_text`).

    The negative prompt ("" by default) is encoded only when CFG is on (cfg > 1), each prompt
    in its own call, as the pipelines do."""
    guided = request.cfg > 1.0
    if request.prompt_embeds is not None:
        neg = request.negative_embeds if guided else None
        return _to(models, request.prompt_embeds, runtime), None if neg is None else _to(models, neg, runtime)
    runtime.load(models.text_encoder.model)
    _warn_unread_tokens(models, [request.prompt, *([request.negative_prompt] if guided else [])])
    cond = models.text_encoder.encode(request.prompt)
    uncond = models.text_encoder.encode(request.negative_prompt) if guided else None
    return _to(models, cond, runtime), None if uncond is None else _to(models, uncond, runtime)


def _warn_unread_tokens(models: Models, prompts: list[str]) -> None:
    """Logs a prompt (or the negative one) with more tokens than a model trained on short
    captions reads (:func:`~cogvideox_core.models.transformer.fit_text`): its tail is not seen."""
    rows = text_rows_read(models.family.transformer, MAX_LENGTH)
    if rows >= MAX_LENGTH:  # every real model: the encoder is not asked
        return
    for name, report in zip(("prompt", "negative prompt"), models.text_encoder.report(prompts)):
        if report.tokens - 1 > rows:  # tokens counts the closing </s>
            logger.warning("%s: %d tokens, but this model reads the first %d T5 states (it was trained on "
                           "short captions): the words after the first %d tokens are not seen", name,
                           report.tokens - 1, rows, rows)


def _to(models: Models, states: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """``states`` fitted to the transformer, in its dtype, on the runtime's device."""
    fitted = fit_text(models.family.transformer, states)
    return fitted.to(device=runtime.device, dtype=_dtype(models.transformer))


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


# ---- sampling -------------------------------------------------------------------------------

def sample_latents(models: Models, request: GenerateRequest, runtime: Runtime,
                   plan: ConditioningPlan) -> torch.Tensor:
    """Scaled final latents [1, F_total, C, h, w] (padding included), diffusers' draw order."""
    cond, uncond = encode_text(models, request, runtime)
    return sample_rows(models, request, runtime, plan, cond, uncond, [request.seed],
                       progress_callback(runtime, plan, models.family))


def sample_rows(models: Models, request: GenerateRequest, runtime: Runtime, plan: ConditioningPlan,
                cond: torch.Tensor, uncond: torch.Tensor | None, seeds: Sequence[int],
                callback: Callable[[dict[str, Any]], None] | None = None,
                hooks: SamplingHooks | None = None) -> torch.Tensor:
    """Scaled final latents [B, F_total, C, h, w] of B = len(``seeds``) videos sampled together,
    row i with T5 states ``cond[i]`` (``uncond[i]``) and its own CPU generator seeded with
    ``seeds[i]``, drawn in diffusers' order (I2V/V2V posterior sample, initial noise, sampler
    noise): each row is what a one-video run with that seed gives, up to float summation order.
    ``request.seed`` is not used (``seeds`` are). ``hooks``: what a run over several processes
    does differently (:class:`SamplingHooks`; default: one process)."""
    hooks = hooks or SamplingHooks(runtime)
    with hooks.guard():
        cond, uncond = hooks.share(cond), hooks.share(uncond)
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        parts = [make_conditioning(models, dataclasses.replace(request, seed=seed), runtime, plan, g)
                 for seed, g in zip(seeds, generators)]
        conditioning = hooks.share_conditioning(stack_conditioning(parts))
        schedule = make_schedule(request.steps, models.scheduler_config(), strength=plan.denoise)
        dtype, device = _dtype(models.transformer), runtime.device
        x = hooks.share(torch.cat([initial_latents(c, schedule, g, dtype, device)
                                   for c, g in zip(parts, generators)]))
        cache = None if request.cache is None else make_step_cache(request.cache, models.family.name, plan.mode)
        if cache is not None:
            cache.reset(len(schedule))
        denoise = hooks.denoiser(models, conditioning, cond, uncond, request, schedule, cache)
        estimate = for_rows(run_memory(models, request, plan, runtime.device.type), len(seeds))
        runtime.load(models.transformer, estimate.total())
        check_memory(models, request, plan, runtime, estimate)
        hooks.check_interrupt()
        sampler = get_sampler(request.sampler or models.family.recommended_sampler)
        noise = generators[0] if len(generators) == 1 else RowGenerators(generators)
        try:
            return sampler(denoise, x, schedule, generator=noise,
                           callback=hooks.callback(callback or _no_progress))
        finally:
            if cache is not None:
                report_cache(cache)


def _no_progress(info: dict[str, Any]) -> None:
    return None


class SamplingHooks:
    """The points where sampling over several processes differs from one
    (:class:`~cogvideox_core.parallel.hooks.MeshHooks`), as no-ops for one process: ``guard``
    around the run, ``share`` rank 0's tensors, ``share_conditioning``, ``denoiser`` (the guided
    model), ``check_interrupt`` before sampling and ``callback`` around the progress callback."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def share(self, x: torch.Tensor | None) -> torch.Tensor | None:
        return x

    def share_conditioning(self, conditioning: ConditioningLatents) -> ConditioningLatents:
        return conditioning

    def denoiser(self, models: Models, conditioning: ConditioningLatents, cond: torch.Tensor,
                 uncond: torch.Tensor | None, request: GenerateRequest, schedule: Schedule,
                 cache: StepCache | None = None):
        return make_denoiser(models, conditioning, cond, uncond, request, schedule, cache=cache)

    def check_interrupt(self) -> None:
        self.runtime.check_interrupt()

    def callback(self, progress: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        return progress


def stack_conditioning(parts: Sequence[ConditioningLatents]) -> ConditioningLatents:
    """One :class:`ConditioningLatents` of the videos ``parts`` (one plan), rows in order."""
    if len(parts) == 1:
        return parts[0]

    def cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if tensors[0] is None else torch.cat(tensors)  # type: ignore[arg-type]

    return dataclasses.replace(parts[0], extra=cat([p.extra for p in parts]),
                               init_latents=cat([p.init_latents for p in parts]))


def memory_args(family: Family, request: GenerateRequest, device_type: str, vae: VAEConfig | None,
                vae_dtype: torch.dtype | None = None, weights: int = 0) -> dict[str, Any]:
    """The run-describing arguments of :func:`~cogvideox_core.memory.estimate_sampling` for
    ``request`` (``weights``: bytes not loaded yet, counted on top)."""
    return {"cfg_batched": request.cfg_batched, "guided": request.cfg > 1.0,
            "context": None if request.context is None else request.context.to_latent(family),
            "device_type": device_type, "vae": vae, "vae_dtype": vae_dtype, "weights": weights,
            "cache": None if request.cache is None else request.cache.method}


def _memory_args(models: Models, request: GenerateRequest, device_type: str) -> dict[str, Any]:
    vae = models.vae
    return memory_args(models.family, request, device_type, None if vae is None else vae.config,
                       None if vae is None else _dtype(vae))


def run_memory(models: Models, request: GenerateRequest, plan: ConditioningPlan,
               device_type: str) -> MemoryEstimate:
    """What sampling and decoding ``request`` need on a ``device_type`` device besides the
    loaded weights (:func:`~cogvideox_core.memory.estimate_sampling`)."""
    return estimate_sampling(models.family, plan, _dtype(models.transformer),
                             **_memory_args(models, request, device_type))


def check_memory(models: Models, request: GenerateRequest, plan: ConditioningPlan, runtime: Runtime,
                 estimate: MemoryEstimate | None = None) -> None:
    """:class:`~cogvideox_core.memory.NotEnoughMemory` before sampling when the run cannot fit
    in what the runtime's device has free (after the loaded models), with what would fit."""
    require_fit(models.family, plan, _dtype(models.transformer), runtime.free_memory(),
                where=str(runtime.device), estimate=estimate,
                **_memory_args(models, request, runtime.device.type))


def make_conditioning(models: Models, request: GenerateRequest, runtime: Runtime,
                      plan: ConditioningPlan, generator: torch.Generator) -> ConditioningLatents:
    """Encode the conditioning inputs (I2V/V2V draw from ``generator`` here, before the noise;
    the VAE is loaded, with room for the pass, only when there is something to encode).
    The Fun InP known-pixel noise uses its own generator seeded with ``seed + 1``."""
    aug = torch.Generator(device="cpu").manual_seed((request.seed + 1) % 2**64)
    encoder = None if models.vae is None else TiledEncoder(models.vae, runtime)
    return build_conditioning(plan, request.inputs, models.family, encoder, generator,
                              aug_generator=aug, dtype=_dtype(models.transformer),
                              device=runtime.device)


def initial_latents(conditioning: ConditioningLatents, schedule: Schedule, generator: torch.Generator,
                    dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Noise [1, F_total, C, h, w] from ``generator`` on the CPU (diffusers' ``randn_tensor``);
    V2V: the start latents noised to the schedule's first timestep."""
    shape = conditioning.plan.noise_shape()
    noise = torch.randn(shape, generator=generator, device="cpu", dtype=dtype).to(device)
    if conditioning.init_latents is None:
        return noise
    return add_noise(conditioning.init_latents, noise, schedule.timesteps[0], schedule.alphas_cumprod)


def model_call(model: torch.nn.Module, ofs: float | None, blocks: StepCache | None = None) -> CallFn:
    """``fn(x, t, text, extra) -> v``: x [B, F, C, h, w] with ``extra`` [B, F, C_e, h, w]
    concatenated along channels, timestep ``t`` for every batch entry, T5 states ``text``;
    ``blocks`` runs the transformer's block stack (a step cache) when given."""
    kwargs = {} if blocks is None else {"blocks": blocks}

    def call(x: torch.Tensor, t: int, text: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        if extra is not None:
            x = torch.cat([x, extra.to(x.dtype)], dim=2)  # [B, F, C + C_e, h, w]
        timestep = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        return model(x, timestep, text, ofs=ofs, **kwargs)

    return call


def make_model_fn(models: Models, conditioning: ConditioningLatents, context: LatentContext | None,
                  schedule: Schedule, cache: StepCache | None = None) -> ModelFn:
    """``model_fn(x, t, text)`` for :func:`~cogvideox_core.sampling.cfg_denoiser`, windowed
    when ``context`` is given (conditioning sliced with the windows, see the module doc; a
    single window covering the video runs through the same path and gives the same numbers)."""
    call = model_call(models.transformer, conditioning.plan.ofs, cache)
    extra = conditioning.extra  # [1, F_total, C_e, h, w] or None

    def whole(x: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        return call(x, t, text, None if extra is None else rows_for(extra, x.shape[0]))

    if context is None:
        return whole

    def windowed(x: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        step = schedule.timesteps.index(t)
        windows, weights = plan_windows(context, x.shape[1], step, len(schedule))
        full = None if extra is None else rows_for(extra, x.shape[0])

        def per_window(xw: torch.Tensor, wins: list[list[int]]) -> torch.Tensor:
            ew = None if full is None else slice_windows(full, wins)  # [n*B, L, C_e, h, w]
            return call(xw, t, text.repeat(len(wins), 1, 1), ew)

        return run_windows(per_window, x, windows, weights, context.batch_windows)

    return windowed


def rows_for(extra: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-video conditioning ``extra`` [B, ...] for a model batch of ``rows``: B rows repeated
    ``rows // B`` times (batched CFG's [uncond, cond] halves repeat the videos in order)."""
    if extra.shape[0] == rows:
        return extra
    if extra.shape[0] == 1:
        return extra.expand(rows, *extra.shape[1:])
    return extra.repeat(rows // extra.shape[0], *([1] * (extra.ndim - 1)))


def make_denoiser(models: Models, conditioning: ConditioningLatents, cond: torch.Tensor,
                  uncond: torch.Tensor | None, request: GenerateRequest, schedule: Schedule,
                  cache: StepCache | None = None):
    """The guided ``denoise(x, t) -> v`` (float32) the samplers call; with a step ``cache``
    every model call runs in the cache state of its CFG branch."""
    context = None if request.context is None else request.context.to_latent(models.family)
    model_fn = make_model_fn(models, conditioning, context, schedule, cache)
    pair = None
    if cache is not None:
        model_fn = _per_branch(model_fn, cache, cond, uncond)
        if uncond is not None:
            pair = cache.guide(cfg_pair(model_fn, cond, uncond, request.cfg_batched),
                               lambda x, t: model_fn(x, t, cond))
    return cfg_denoiser(model_fn, cond, uncond, request.cfg, batched=request.cfg_batched,
                        dynamic=request.dynamic_cfg, timesteps=schedule.timesteps,  # type: ignore[arg-type]
                        pair=pair)


def _per_branch(model_fn: ModelFn, cache: StepCache, cond: torch.Tensor,
                uncond: torch.Tensor | None) -> ModelFn:
    """``model_fn`` in the cache state of the CFG branch its conditioning is: "uncond", "cond" or
    "batch" ([uncond, cond] in one call), so that sequential CFG keeps the two apart; the cache
    also sees the call's timestep."""

    def keyed(x: torch.Tensor, t: int, text: Any) -> torch.Tensor:
        name = "uncond" if text is uncond else "cond" if text is cond else "batch"
        with cache.call(name, t):
            return model_fn(x, t, text)

    return keyed


def progress_callback(runtime: Runtime, plan: ConditioningPlan, family: Family, batch: int = 0,
                      batches: int = 1) -> Callable[[dict[str, Any]], None]:
    """Sampler callback: ``runtime.progress(step, total, preview)`` then the interrupt check.
    ``step`` counts completed model calls (1..total) over a job of ``batches`` sampling runs of
    which this is run ``batch``; ``preview`` is the first video's predicted clean latents,
    unscaled [1, C, F_lat, h, w] without padding."""

    def callback(info: dict[str, Any]) -> None:
        step = f"step {info['step'] + 1}/{info['total']}"
        check_finite(info["denoised"], f"the model's prediction at sampling {step}", _NAN_HINT)
        preview = unscale(info["denoised"][:1, plan.padding:], family)
        total = info["total"]
        call_progress(runtime, batch * total + info["step"] + 1, batches * total, preview)

    return callback


_NAN_HINT = ("float16 overflows on the 5B and 1.5 models (use bfloat16 or float32); else check the "
             "weights, a LoRA's strength, or cfg")
_DECODE_HINT = "float16 overflows in the VAE (use bfloat16 or float32); else check the VAE weights"


def check_finite(x: torch.Tensor, what: str, hint: str) -> None:
    """:class:`~cogvideox_core.errors.NonFiniteError` naming ``what`` if ``x`` holds NaN or inf
    (one reduction; nothing is written after it)."""
    if not bool(torch.isfinite(x).all()):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise NonFiniteError(f"{what} holds {nan} NaN and {inf} inf values of {x.numel()}: nothing "
                             f"written; {hint}")


# ---- latents to frames ----------------------------------------------------------------------

def unscale(latents: torch.Tensor, family: Family) -> torch.Tensor:
    """Scaled sampler latents [B, F, C, h, w] -> VAE latents [B, C, F, h, w] (``1 / s * z``, as
    the pipelines' ``decode_latents``)."""
    return (1 / family.vae_scaling_factor) * latents.permute(0, 2, 1, 3, 4)


def decode_latents(vae: CogVideoXVAE, z: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """VAE latents [B, C, F_lat, h, w] -> video [B, 3, F, H, W] in -1..1 on the intermediate
    device: the exact tiled decode (equal to ``vae.decode`` up to float summation order), tiles
    sized from the device's free memory. It checks the interrupt after every frame chunk but
    reports no progress: the bar the user watches counts sampling steps (over all chunks of a
    chained video); the VAE nodes show their own decode progress."""
    runtime.load(vae, decode_memory(vae, z))
    logger.info("decoding %d latent frames of %dx%d", z.shape[2], z.shape[3], z.shape[4])
    return tiled_decode(vae, z, runtime=runtime, progress=no_progress)


@torch.no_grad()
def latents_to_frames(models: Models, latents: torch.Tensor, runtime: Runtime | None = None,
                      frames: int | None = None) -> torch.Tensor:
    """Unscaled latents [1, C, F_lat, h, w] -> frames [F, H, W, 3] 0..1, the first ``frames``
    of them (an even latent count decodes to 4 F_lat frames, one frame more per latent than
    asked, as diffusers' VAE does)."""
    runtime = runtime or TorchRuntime(show_progress=False)
    if models.vae is None:
        raise ValueError("vae=None: decoding latents to frames needs the VAE")
    video = decode_latents(models.vae, latents, runtime)  # [1, 3, F, H, W]
    check_finite(video, "the VAE decode's frames", _DECODE_HINT)
    out = video_to_frames(video)  # [F, H, W, 3]
    if frames is not None:
        out = out[:frames]
    return out.to(runtime.intermediate_device)


__all__ = ["Models", "GenerateRequest", "CacheOptions", "generate", "generate_latents", "validate", "encode_text",
           "sample_latents", "sample_rows", "SamplingHooks", "stack_conditioning", "rows_for", "make_conditioning", "initial_latents", "make_model_fn", "make_denoiser",
           "model_call", "progress_callback", "check_finite", "final_latents", "memory_args", "run_memory", "check_memory", "unscale", "decode_latents", "latents_to_frames"]
