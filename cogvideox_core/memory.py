"""Memory judged before sampling: an upper bound of a run's peak, a refusal that says what
would fit, and the trained-length warning.

A run's peak is its largest phase (they never overlap): the prompt's T5 encode, the
conditioning encode (I2V, V2V, InP, Control), sampling (one transformer call's activations,
attention's scratch, the positional tables, the sampler's latents) or the VAE decode; weights
the caller asks to count are held through all of them. The constants are measured (peaks of
the CPU allocator from torch.profiler's allocation events; tests/test_memory.py): a block's
peak is 13.0 [B, S, D] tensors at the real 5B widths (13.5 with 2B's additive table), in fp32
and bf16; CPU ``scaled_dot_product_attention`` runs its flash kernel, O(S) in fp32, bf16 and
fp16 (bf16 adds one float32 [B, S, D] buffer), as CUDA's flash and memory-efficient kernels do; the
math path of other devices holds the scores, O(S^2). The decode is the tiler's own sizing
(:func:`~cogvideox_core.vae.tiling.pass_memory`): what it needs, not what it takes, since it
grows its tiles into free memory.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from .errors import CogVideoXError
from .families import LATENT_CHANNELS, Family, VAEConfig, pixel_frames
from .models.step_cache import held_bytes as cache_held_bytes
from .sampling.windows import LatentContext, check_window_length, get_schedule
from .vae.tiling import PLAN_TILE, TILE_TENSORS, pass_memory
from .vae.tiling_plan import REF_FRAMES, budget_elements

logger = logging.getLogger(__name__)

BLOCK_TENSORS = 14  # [B, S, D] tensors at a block's peak: 13.0 measured (the 4D FF hidden twice, residuals)
SAMPLER_F32_COPIES = 10  # latent-sized float32 tensors of the sampler and CFG (v_u, v_c, x0, last x0, ...)
MODEL_IO_COPIES = 4  # per call: [x, x] and the channel concat in, the output and its float32 cast
ENCODE_INPUT_COPIES = 3  # the resized IMAGE frames, the [1, 3, F, H, W] video, its VAE-dtype cast
FRAME_COPIES_F32 = 2  # video_to_frames: x / 2 + 0.5 then clamp, in float32, besides the decoded video
T5_HEAD_DIM = 64  # T5 v1.1 XXL (d_model 4096, 64 heads, d_ff 10240): the CogVideoX text encoder
T5_WIDTHS = 14  # float32 [L, d] tensors at a T5 layer's peak: 3 gated feed-forward ones of 2.5 d, 6 of d
T5_BUCKET_TEMPS = 6  # int64 [L, L] tensors of T5's relative-position bucketing (measured: 2.4 MiB at L=226)
CPU_FLASH_Q_SPLIT, CPU_FLASH_KV_SPLIT = 256, 512  # ATen FlashAttentionKernel.cpp block sizes
MIN_WINDOW_LATENTS = 4  # shorter context windows are not suggested (13 pixel frames)
CONTEXT_HINT = "--context-frames / the Context Options node"

Parts = dict[str, int]


class Plan(Protocol):
    """What the estimate reads of a request's plan: a frozen dataclass such as
    :class:`~cogvideox_core.generation.conditioning.ConditioningPlan` (this module sits below the
    generation layer, so that the pipeline can use it)."""

    @property
    def mode(self) -> str: ...
    @property
    def frames(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def latent_frames(self) -> int: ...
    @property
    def height_lat(self) -> int: ...
    @property
    def width_lat(self) -> int: ...
    @property
    def total_latent_frames(self) -> int: ...


P = TypeVar("P", bound=Plan)


class NotEnoughMemory(CogVideoXError):
    """The run would not fit in the memory available; refused before sampling. Not a
    ``MemoryError``: nothing failed to allocate, and hosts react to ``MemoryError`` (and torch's
    out-of-memory errors) by unloading every model and retrying, which cannot help here."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a run's peak, by what holds them (``parts`` sum to :meth:`total`).

    ``phase`` is the step where the peak falls ("text encode", "vae encode", "sampling", "vae decode");
    ``other_phases`` the peaks of the run's other steps, which come before or after it."""

    parts: Parts
    phase: str = "sampling"
    other_phases: Parts = field(default_factory=dict)

    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """"2.9 GiB while sampling (transformer activations 2.8 GiB, latents 67.0 MiB; other steps:
        vae decode 1.4 GiB)": the peak, its parts largest first, the other steps' peaks."""
        ranked = sorted(self.parts.items(), key=lambda kv: -kv[1])
        inner = ", ".join(f"{name} {format_bytes(n)}" for name, n in ranked)
        others = ", ".join(f"{name} {format_bytes(n)}" for name, n in self.other_phases.items())
        tail = f"; other steps: {others}" if others else ""
        return f"{format_bytes(self.total())} while {self.phase} ({inner}{tail})"


def format_bytes(n: int) -> str:
    """1.5 GiB, 12.0 MiB, 300 KiB, 5 B."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


def module_bytes(*modules: nn.Module | None) -> int:
    """Bytes of the parameters and buffers of ``modules`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for m in modules:
        if m is None:
            continue
        for t in (*m.parameters(), *m.buffers()):
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


# ---- the estimate -------------------------------------------------------------------------------

def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _call_shape(plan: Plan, *, cfg_batched: bool, guided: bool,
                context: LatentContext | None) -> tuple[int, int]:
    """(batch, latent frames) of one transformer call: [uncond, cond] when CFG is batched and
    guided; a window of ``context.length`` frames, ``batch_windows`` windows at a time."""
    batch, frames = (2 if guided and cfg_batched else 1), plan.total_latent_frames
    if context is None or context.length >= frames:
        return batch, frames
    windows = get_schedule(context.schedule)(frames, context.length, context.overlap, 0, 1)
    return batch * min(context.batch_windows, len(windows)), context.length


def _tokens(family: Family, plan: Plan, frames: int) -> tuple[int, int]:
    """(video tokens N, sequence S = text + N) of a call over ``frames`` latent frames."""
    cfg = family.transformer
    p, pt = cfg.patch_size, cfg.patch_size_t or 1
    n = frames // pt * (plan.height_lat // p) * (plan.width_lat // p)
    return n, n + cfg.max_text_len


def _attention_bytes(family: Family, batch: int, seq: int, dtype: torch.dtype, device_type: str,
                     fused: bool) -> int:
    """What attention allocates besides its output: the log-sum-exp [B, H, S] of the fused
    kernels; on the CPU the per-thread blocks and, below float32, a float32 [B, S, D] buffer; without
    a fused kernel the math path's scores and softmax [B, H, S, S]."""
    cfg, elem = family.transformer, _elem(dtype)
    lse = batch * cfg.num_heads * seq * 4
    if not fused:
        return 2 * batch * cfg.num_heads * seq * seq * elem
    if device_type == "cpu":
        q_split, kv_split = min(CPU_FLASH_Q_SPLIT, seq), min(CPU_FLASH_KV_SPLIT, seq)
        per_thread = (q_split * kv_split + 2 * q_split + q_split * cfg.head_dim) * 4
        per_thread += q_split * kv_split * elem if elem < 4 else 0
        upcast = batch * seq * cfg.inner_dim * 4 if elem < 4 else 0
        return lse + torch.get_num_threads() * per_thread + upcast
    return lse


def _position_bytes(family: Family, n: int, seq: int, dtype: torch.dtype) -> int:
    """The cached tables: the additive sincos/learned table [1, S, D], or RoPE cos/sin [N, d] float32."""
    cfg = family.transformer
    if not cfg.uses_rope or cfg.learned_positions:
        return seq * cfg.inner_dim * _elem(dtype)
    return 2 * n * cfg.head_dim * 4


def _latent_bytes(family: Family, plan: Plan, dtype: torch.dtype, batch: int, frames: int,
                  guided: bool, windowed: bool) -> int:
    """The sampler's latents and the conditioning it holds: float32 copies of the whole video's
    latents, a call's inputs and outputs, the extra channels, the window accumulator (float64)
    and the T5 states."""
    cfg, elem = family.transformer, _elem(dtype)
    per_frame = LATENT_CHANNELS * plan.height_lat * plan.width_lat
    whole = plan.total_latent_frames * per_frame
    extra = whole * (cfg.in_channels - LATENT_CHANNELS) // LATENT_CHANNELS * elem
    call = MODEL_IO_COPIES * batch * frames * per_frame * cfg.in_channels // LATENT_CHANNELS * elem
    text = (4 if guided else 2) * cfg.max_text_len * cfg.text_dim * elem
    return SAMPLER_F32_COPIES * whole * 4 + extra + call + (whole * 8 if windowed else 0) + text


def _cache_part(family: Family, plan: Plan, dtype: torch.dtype, cache: str | None, *,
                cfg_batched: bool, guided: bool) -> Parts:
    """What a step cache holds through sampling (never with context windows: refused there)."""
    if cache is None:
        return {}
    cfg = family.transformer
    n, seq = _tokens(family, plan, plan.total_latent_frames)
    output = plan.total_latent_frames * cfg.out_channels * plan.height_lat * plan.width_lat
    return {f"{cache} cache": cache_held_bytes(cache, layers=cfg.num_layers, seq=seq, video_tokens=n,
                                                dim=cfg.inner_dim, elem=_elem(dtype), guided=guided,
                                                batched=cfg_batched, output_numel=output)}


def _sampling_parts(family: Family, plan: Plan, dtype: torch.dtype, *, cfg_batched: bool,
                    guided: bool, context: LatentContext | None, device_type: str, fused: bool,
                    cache: str | None = None) -> Parts:
    batch, frames = _call_shape(plan, cfg_batched=cfg_batched, guided=guided, context=context)
    n, seq = _tokens(family, plan, frames)
    return {
        **_cache_part(family, plan, dtype, cache, cfg_batched=cfg_batched, guided=guided),
        "transformer activations": BLOCK_TENSORS * batch * seq * family.transformer.inner_dim
                                   * _elem(dtype),
        "attention": _attention_bytes(family, batch, seq, dtype, device_type, fused),
        "positions": _position_bytes(family, n, seq, dtype),
        "latents": _latent_bytes(family, plan, dtype, batch, frames, guided, context is not None),
    }


def _text_parts(family: Family) -> Parts:
    """The T5 encode of a prompt (float32 bound): the relative-position buckets [L, L] int64,
    bias, scores and softmax [H, L, L], the gated feed-forward [L, 2.5 d] and the hidden states
    (62 MiB measured at the XXL widths in float32, 2.5 MiB for the tiny T5)."""
    length, d = family.transformer.max_text_len, family.transformer.text_dim
    heads = max(1, d // T5_HEAD_DIM)
    squares = length * length * (T5_BUCKET_TEMPS * 8 + 3 * heads * 4)
    return {"text encoder": squares + T5_WIDTHS * length * d * 4}


def _decode_parts(plan: Plan, vae: VAEConfig, vae_dtype: torch.dtype,
                  device_type: str) -> Parts:
    """The exact tiled decode. On the CPU its store (a chunk's full-frame activations and causal
    tails) and a ``PLAN_TILE`` tile's regions (:func:`~cogvideox_core.vae.tiling.pass_memory`),
    then the decoded video [1, 3, 4 F_lat, H, W] and the frames made from it, all in the same
    memory. On an accelerator only the regions: the tiler keeps the store in host memory when
    the device lacks room for it, and the video comes back to the host."""
    size = (plan.height, plan.width)
    if device_type != "cpu":
        tile = (min(PLAN_TILE, size[0]), min(PLAN_TILE, size[1]))
        channels = max(vae.block_out_channels[:2])  # the decoder's widest full-resolution layer, as the tiler
        regions = TILE_TENSORS * budget_elements(tile, channels, REF_FRAMES)
        return {"vae decode tiles": regions * _elem(vae_dtype)}
    pixels = 3 * 4 * plan.latent_frames * plan.height * plan.width
    return {"vae decode": pass_memory(vae, 1, size, vae_dtype),
            "decoded frames": pixels * (_elem(vae_dtype) + FRAME_COPIES_F32 * 4)}


def _encode_parts(plan: Plan, vae: VAEConfig, vae_dtype: torch.dtype) -> Parts:
    """The tiled encode of the conditioning pixels (one image for I2V, the video otherwise)."""
    if plan.mode == "t2v":
        return {}
    frames = 1 if plan.mode == "i2v" else plan.frames
    pixels = 3 * frames * plan.height * plan.width
    return {"vae encode": pass_memory(vae, 1, (plan.height, plan.width), vae_dtype, encode=True),
            "input frames": ENCODE_INPUT_COPIES * pixels * 4}


def estimate_sampling(family: Family, plan: Plan, dtype: torch.dtype, *, cfg_batched: bool,
                      guided: bool, context: LatentContext | None, device_type: str,
                      vae: VAEConfig | None = None, vae_dtype: torch.dtype | None = None,
                      weights: int = 0, fused_attention: bool | None = None,
                      cache: str | None = None) -> MemoryEstimate:
    """Upper bound of the peak memory of the prompt encode, conditioning encode, sampling and
    decode on ``device_type`` ("cpu", "cuda", "mps", ...), besides resident weights: the largest
    phase, plus ``weights`` bytes the caller wants counted (weights not yet loaded). ``vae`` is
    the VAE's config (default: the CogVideoX VAE), ``vae_dtype`` its dtype (default: ``dtype``).
    ``fused_attention``: whether attention runs a fused O(S) kernel; None: on "cpu" and "cuda"
    (torch's flash kernels), not elsewhere (the math path's O(S^2) scores); a host that injects
    a chunked attention passes True. ``cache``: the step cache method, whose held tensors count
    in sampling."""
    vae, vae_dtype = vae or VAEConfig(), vae_dtype or dtype
    fused = device_type in ("cpu", "cuda") if fused_attention is None else fused_attention
    phases = {
        "text encode": _text_parts(family),
        "sampling": _sampling_parts(family, plan, dtype, cfg_batched=cfg_batched, guided=guided,
                                    context=context, device_type=device_type, fused=fused, cache=cache),
        "vae decode": _decode_parts(plan, vae, vae_dtype, device_type),
        "vae encode": _encode_parts(plan, vae, vae_dtype),
    }
    totals = {name: sum(parts.values()) for name, parts in phases.items() if parts}
    peak = max(totals, key=totals.__getitem__)
    held = {"weights": weights} if weights else {}
    others = {name: total for name, total in totals.items() if name != peak}
    return MemoryEstimate({**held, **phases[peak]}, peak, others)


def for_rows(estimate: MemoryEstimate, rows: int) -> MemoryEstimate:
    """``estimate`` (of one video) for ``rows`` videos sampled together and decoded one by one:
    the sampling phase's parts count ``rows`` times (held weights once), the other phases once."""
    if rows == 1:
        return estimate
    if estimate.phase == "sampling":
        parts = {name: n if name == "weights" else n * rows for name, n in estimate.parts.items()}
        return MemoryEstimate(parts, "sampling", estimate.other_phases)
    sampling = estimate.other_phases.get("sampling", 0) * rows
    if sampling <= estimate.total():
        return estimate
    others = {**{k: v for k, v in estimate.other_phases.items() if k != "sampling"},
              estimate.phase: estimate.total()}
    return MemoryEstimate({f"sampling ({rows} videos)": sampling}, "sampling", others)


def rows_that_fit(estimate: MemoryEstimate, available: int, limit: int) -> int:
    """How many videos (1..``limit``) of one-video ``estimate`` can be sampled together in
    ``available`` bytes (1 when not even one fits: the one-video check then says why)."""
    rows = limit
    while rows > 1 and for_rows(estimate, rows).total() > available:
        rows -= 1
    return rows


# ---- refusing, and what would fit ---------------------------------------------------------------

def check_fits(estimate: MemoryEstimate, available: int, *, where: str, suggestions: list[str]) -> None:
    """``NotEnoughMemory`` with one line (the estimate, its parts, the limit, what would fit)
    unless ``estimate`` fits in ``available`` bytes on ``where`` ("cpu", "cuda:0")."""
    if estimate.total() <= available:
        logger.info("memory: this run needs about %s on %s; %s available", estimate.describe(), where,
                    format_bytes(available))
        return
    fix = "; ".join(suggestions) or "nothing smaller of this family fits: free memory or use a larger device"
    raise NotEnoughMemory(f"this run needs about {estimate.describe()} on {where} but "
                          f"{format_bytes(available)} is available; would fit: {fix}")


def require_fit(family: Family, plan: Plan, dtype: torch.dtype, available: int, *, where: str,
                estimate: MemoryEstimate | None = None, **run: Any) -> None:
    """``NotEnoughMemory`` (with what would fit) unless the run of :func:`estimate_sampling`'s
    arguments ``run`` fits in ``available`` bytes on ``where``; ``estimate``: already made."""
    estimate = estimate or estimate_sampling(family, plan, dtype, **run)
    fits = [] if estimate.total() <= available else suggestions(family, plan, dtype, available, **run)
    check_fits(estimate, available, where=where, suggestions=fits)


@dataclass(frozen=True)
class _Run:
    """The inputs of :func:`estimate_sampling`, so that a suggestion changes one and re-estimates."""

    family: Family
    plan: Plan
    dtype: torch.dtype
    cfg_batched: bool
    guided: bool
    context: LatentContext | None
    device_type: str
    vae: VAEConfig | None
    vae_dtype: torch.dtype | None
    weights: int
    fused_attention: bool | None
    cache: str | None = None

    def fits(self, available: int, **changes: object) -> MemoryEstimate | None:
        """The estimate of this run with ``changes`` when it fits in ``available``, else None."""
        run = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        estimate = estimate_sampling(run.family, run.plan, run.dtype, cfg_batched=run.cfg_batched,
                                     guided=run.guided, context=run.context, device_type=run.device_type,
                                     vae=run.vae, vae_dtype=run.vae_dtype, weights=run.weights,
                                     fused_attention=run.fused_attention, cache=run.cache)
        return estimate if estimate.total() <= available else None


def suggestions(family: Family, plan: Plan, dtype: torch.dtype, available: int, *,
                cfg_batched: bool, guided: bool, context: LatentContext | None, device_type: str,
                vae: VAEConfig | None = None, vae_dtype: torch.dtype | None = None,
                weights: int = 0, fused_attention: bool | None = None, cache: str | None = None) -> list[str]:
    """Changes that each, alone, make the run (:func:`estimate_sampling`'s arguments) fit in
    ``available`` bytes, with their estimates: the most frames (4k+1, the family's rules) and
    the largest size of the same aspect that fit, the longest context window that fits,
    batch_windows=1, half precision from float32, sequential CFG, no step cache. Empty when none
    does."""
    run = _Run(family, plan, dtype, cfg_batched, guided, context, device_type, vae, vae_dtype, weights,
               fused_attention, cache)
    found = [_fewer_frames(run, available), _smaller_size(run, available), _one_window_batch(run, available),
             _windows(run, available), _half_precision(run, available), _sequential_cfg(run, available),
             _no_cache(run, available)]
    return [s for s in found if s is not None]


def _about(estimate: MemoryEstimate) -> str:
    return f"about {format_bytes(estimate.total())}"


def replan_frames(family: Family, plan: P, latents: int, windowed: bool) -> P | None:
    """``plan`` at ``latents`` latent frames, or None where the family does not take them."""
    frames = pixel_frames(latents, family.transformer.temporal_compression)
    try:
        family.check_frames(frames, windowed=windowed)
    except ValueError:
        return None
    padding = 0 if plan.mode == "v2v" else family.temporal_padding(latents)
    return dataclasses.replace(plan, frames=frames, latent_frames=latents,  # type: ignore[type-var]
                               padding=padding)


def replan_size(family: Family, plan: P, height: int, width: int) -> P | None:
    """``plan`` at ``height`` x ``width`` pixels, or None where the family does not take them."""
    try:
        family.check_size(height, width)
    except ValueError:
        return None
    return dataclasses.replace(plan, height=height, width=width)  # type: ignore[type-var]


def _fewer_frames(run: _Run, available: int) -> str | None:
    """The most frames, below the run's, that fit (memory grows with them)."""
    plan = run.plan
    for latents in range(plan.latent_frames - 1, 0, -1):
        smaller = replan_frames(run.family, plan, latents, run.context is not None)
        estimate = None if smaller is None else run.fits(available, plan=smaller)
        if smaller is not None and estimate is not None:
            return f"{smaller.frames} frames instead of {plan.frames} ({_about(estimate)})"
    return None


def _aspect_size(plan: Plan, unit: int, steps: int) -> tuple[int, int]:
    """The size whose longer side is ``steps`` units and whose shorter side keeps the aspect as
    near as multiples of ``unit`` allow (at least one unit)."""
    long, short = max(plan.height, plan.width), min(plan.height, plan.width)
    a, b = steps * unit, max(unit, round(steps * unit * short / long / unit) * unit)
    return (a, b) if plan.height >= plan.width else (b, a)


def _smaller_size(run: _Run, available: int) -> str | None:
    """Binary search over the longer side (memory grows with the size) for the largest that fits."""
    plan, unit = run.plan, run.family.size_unit
    lo, hi, best = 1, max(plan.height, plan.width) // unit - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        smaller = replan_size(run.family, plan, *_aspect_size(plan, unit, mid))
        estimate = None if smaller is None else run.fits(available, plan=smaller)
        if smaller is None or estimate is None:
            hi = mid - 1
        else:
            best, lo = (smaller, estimate), mid + 1
    if best is None:
        return None
    return f"{best[0].height}x{best[0].width} instead of {plan.height}x{plan.width} ({_about(best[1])})"


def _one_window_batch(run: _Run, available: int) -> str | None:
    context = run.context
    if context is None or context.batch_windows == 1:
        return None
    estimate = run.fits(available, context=dataclasses.replace(context, batch_windows=1))
    if estimate is None:
        return None
    return f"batch_windows=1 instead of {context.batch_windows} ({_about(estimate)})"


def _windows(run: _Run, available: int) -> str | None:
    """The longest context window that fits: shorter than the video (and than the run's own
    window), at most the trained length, at least ``MIN_WINDOW_LATENTS``; none with a step cache
    (the two do not combine)."""
    family, plan, context = run.family, run.plan, run.context
    if run.cache is not None:
        return None
    trained = family.check_frames(family.default_frames, windowed=True)
    longest = min(trained, plan.total_latent_frames - 1, context.length - 1 if context else trained)
    for length in range(longest, MIN_WINDOW_LATENTS - 1, -1):
        estimate = _window_fits(run, available, length)
        if estimate is not None:
            frames = pixel_frames(length, family.transformer.temporal_compression)
            return (f"context windows of {frames} frames (--context-frames {frames} / the Context "
                    f"Options node; {_about(estimate)})")
    return None


def _window_fits(run: _Run, available: int, length: int) -> MemoryEstimate | None:
    try:
        check_window_length(length, run.family)
    except ValueError:
        return None
    old = run.context
    overlap = min(old.overlap if old else length // 3, length - 1)
    context = (LatentContext(length, overlap) if old is None
               else dataclasses.replace(old, length=length, overlap=overlap))
    return run.fits(available, context=context)


def _half_precision(run: _Run, available: int) -> str | None:
    """bfloat16 for the families trained in it, float16 for the others (2B), from float32."""
    if run.dtype != torch.float32:
        return None
    half = torch.bfloat16 if run.family.bf16_trained else torch.float16
    vae_dtype = half if run.vae_dtype in (None, torch.float32) else run.vae_dtype
    estimate = run.fits(available, dtype=half, vae_dtype=vae_dtype)
    name = str(half).removeprefix("torch.")
    return None if estimate is None else f"{name} instead of float32 (--dtype {name}; {_about(estimate)})"


def _sequential_cfg(run: _Run, available: int) -> str | None:
    if not (run.cfg_batched and run.guided):
        return None
    estimate = run.fits(available, cfg_batched=False)
    return None if estimate is None else f"sequential CFG (--cfg-sequential; {_about(estimate)})"


def _no_cache(run: _Run, available: int) -> str | None:
    if run.cache is None:
        return None
    estimate = run.fits(available, cache=None)
    return None if estimate is None else f"without the {run.cache} step cache ({_about(estimate)})"


def beyond_trained_length(family: Family, frames: int, windowed: bool) -> str | None:
    """A warning when ``frames`` exceed what the family was trained on (49 for 1.0, 81 for 1.5,
    85 for Fun 1.5) in one model call, suggesting context windows; None otherwise."""
    trained = family.default_frames
    if windowed or frames <= trained:
        return None
    return (f"frames={frames} is beyond the {trained} frames {family.name} was trained on: one model "
            f"call over all of them tends to lose motion and coherence; use context windows of "
            f"{trained} frames or fewer ({CONTEXT_HINT})")


__all__ = ["MemoryEstimate", "NotEnoughMemory", "beyond_trained_length", "check_fits", "estimate_sampling",
           "for_rows", "format_bytes", "module_bytes", "replan_frames", "replan_size", "require_fit", "rows_that_fit", "suggestions"]
