"""memory.py: the estimate against peaks measured on tiny generations, the refusal, what would
fit, the trained-length warning, and the full-size figures.

Peaks are measured from the profiler's allocation events (every c10 CPU allocation and free,
the attention kernel's scratch included), summed in time order to a running peak above what
was allocated before the run: exact for tensor memory, blind to Python objects and allocator
slack, which are not what grows with a video's size. Tolerance: ``measured <= estimate <= 3 x
measured``. The lower bound is the contract (a run judged to fit must fit); the estimate counts
a phase's parts as if alive at one instant and rounds constants up, so it sits 1.4-2.1x above
the peaks measured here (1.15x for one block at the real 5B widths, where the tiny models'
fixed costs vanish); 3x keeps it from refusing runs that would fit (a run refused at 24 GiB
needs at least 8).
"""
from __future__ import annotations

import logging
import re

import pytest
import torch
from scaffold import RecordingRuntime
from torch.profiler import ProfilerActivity, profile

from cogvideox_core.errors import CogVideoXError
from cogvideox_core.families import get_family
from cogvideox_core.generation.conditioning import ConditioningInputs, plan_conditioning
from cogvideox_core.generation.pipeline import GenerateRequest, generate, generate_latents, validate
from cogvideox_core.memory import (MemoryEstimate, NotEnoughMemory, beyond_trained_length, check_fits,
                                   estimate_sampling, format_bytes, module_bytes, replan_frames, replan_size,
                                   suggestions)
from cogvideox_core.runtime import TorchRuntime
from cogvideox_core.sampling.windows import ContextOptions
from cogvideox_core.tiny import TEXT_DIM, random_models, tiny_vae_config
from cogvideox_core.vae.model import CogVideoXVAE
from cogvideox_core.vae.tiling import PLAN_TILE, pass_memory, tiled_decode

logger = logging.getLogger(__name__)
GiB = 2**30
TOLERANCE = 3.0


def measured_peak(fn) -> int:
    """The peak of live CPU allocator bytes while ``fn()`` runs, above those alive before."""
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, allocations = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while events:
        e = events.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            allocations.append((e.start_time_ns, e.extra_fields.alloc_size))
        events.extend(e.children)
    live = peak = 0
    for _, size in sorted(allocations):
        live += size
        peak = max(peak, live)
    return peak


def phase(estimate: MemoryEstimate, name: str) -> int:
    return estimate.total() if estimate.phase == name else estimate.other_phases[name]


def tiny_run(name: str, frames: int, height: int, width: int, dtype: torch.dtype,
             context: ContextOptions | None = None, embeds: bool = False):
    """(models, request, plan, estimate) of a guided, CFG-batched tiny run on the CPU."""
    models = random_models(name, seed=0, small_grid=False, dtype=dtype)
    text: dict[str, torch.Tensor] = {}
    if embeds:  # sampling only: no T5 call
        g = torch.Generator().manual_seed(0)
        text = {"prompt_embeds": torch.randn(1, 226, TEXT_DIM, generator=g, dtype=dtype),
                "negative_embeds": torch.randn(1, 226, TEXT_DIM, generator=g, dtype=dtype)}
    request = GenerateRequest(prompt="a cat", frames=frames, height=height, width=width, steps=2,
                              cfg=6.0, context=context, **text)
    plan = validate(models, request)
    latent_context = None if context is None else context.to_latent(models.family)
    estimate = estimate_sampling(models.family, plan, dtype, cfg_batched=True, guided=True,
                                 context=latent_context, device_type="cpu",
                                 vae=tiny_vae_config(models.family))
    return models, request, plan, estimate


def check_bound(what: str, measured: int, estimated: int) -> None:
    logger.info("%s: measured %s, estimated %s (x%.2f)", what, format_bytes(measured),
                format_bytes(estimated), estimated / measured)
    assert measured <= estimated <= TOLERANCE * measured, (what, measured, estimated)


# ---- calibration --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,frames,height,width,context", [
    ("5b", 17, 128, 192, None),  # 1.0 (RoPE, no temporal patch): 5 x 64 x 96 latents, 7680 tokens
    ("5b", 33, 192, 256, None),  # 9 x 24 x 32 ... 27648 tokens at batch 2
    ("5b", 41, 128, 128, ContextOptions(17, 8)),  # windows of 5 latents over 11
    ("1.5-5b", 17, 128, 192, None),  # patch_t 2: 5 latents + 1 padding -> 3 x 8 x 12 tokens
    ("1.5-5b", 33, 256, 384, None),
])
def test_sampling_estimate_bounds_the_measured_peak(name, frames, height, width, context):
    """The sampling phase alone (prompt embeddings given, T5 not run): one transformer call's
    activations, the attention kernel, the tables and the sampler's latents, in float32."""
    models, request, plan, estimate = tiny_run(name, frames, height, width, torch.float32, context,
                                               embeds=True)
    runtime = TorchRuntime(device="cpu", show_progress=False)
    with torch.no_grad():
        peak = measured_peak(lambda: generate_latents(models, request, runtime, plan=plan))
    check_bound(f"sampling {name} {frames}x{height}x{width}", peak, phase(estimate, "sampling"))


@pytest.mark.parametrize("name,frames,height,width,dtype", [
    ("5b", 17, 128, 192, torch.bfloat16),
    ("5b", 17, 128, 192, torch.float32),
    ("1.5-5b", 25, 192, 256, torch.bfloat16),
])
def test_generation_estimate_bounds_the_measured_peak(name, frames, height, width, dtype):
    """A whole generation (T5, sampling, tiled decode, frames) against ``total()``. In bfloat16
    the tiny VAE's convolutions take oneDNN; in float32 its 8-16 channels send every 3x3x3 conv to
    ATen's column buffer (27x the input; the real VAE's 512-channel layers too at small heights),
    which the VAE avoids (``conv3d_bounded``: oneDNN called directly, or width strips of at most
    one input for a host's conv classes)."""
    models, request, _, estimate = tiny_run(name, frames, height, width, dtype)
    runtime = TorchRuntime(device="cpu", show_progress=False)
    with torch.no_grad():
        peak = measured_peak(lambda: generate(models, request, runtime))
    check_bound(f"generation {name} {frames}x{height}x{width} {dtype}", peak, estimate.total())


@pytest.mark.parametrize("free", [None, 128 << 20])
def test_thin_wide_float32_decode_stays_within_its_bound(free):
    """A 32x2048 first chunk (3 latents, 9 frames) of the tiny 5B VAE in float32 on the CPU,
    where ATen would send every 3x3x3 conv to its column buffer (27x its input; the VAE calls
    oneDNN directly instead, or convolves in width strips): the exact tiled decode stays within
    what it plans. ``free=None``: at the ``PLAN_TILE`` tile, within the estimate's
    decode part (``pass_memory``) plus the decoded frames; else tiles sized from ``free`` bytes
    of free memory stay within them. (Before the conv strips: 136 MiB over 83, 341 over 128.)"""
    config = tiny_vae_config(get_family("5b"))
    torch.manual_seed(0)
    vae = CogVideoXVAE(config, ops=torch.nn).eval()  # initialised weights: finite activations
    z = torch.randn(1, config.latent_channels, 3, 4, 256, generator=torch.Generator().manual_seed(0))
    size = (32, 2048)
    output = 3 * 9 * size[0] * size[1] * 4
    if free is None:
        tile = (min(PLAN_TILE, size[0]), min(PLAN_TILE, size[1]))
        peak = measured_peak(lambda: tiled_decode(vae, z, tile=tile, store="cpu"))
        check_bound("thin-wide decode at the plan tile", peak, pass_memory(config, 1, size, torch.float32) + output)
    else:
        peak = measured_peak(lambda: tiled_decode(vae, z, runtime=RecordingRuntime(free=free)))
        logger.info("thin-wide decode with %s free: measured %s", format_bytes(free), format_bytes(peak))
        assert peak <= free


# ---- refusal and what would fit -----------------------------------------------------------------

def full_size(name: str = "5b", frames: int = 49, height: int = 480, width: int = 720):
    family = get_family(name)
    return family, plan_conditioning(family, ConditioningInputs(), frames, height, width)


def estimate_of(family, plan, dtype=torch.bfloat16, cfg_batched=True, device_type="cuda", context=None):
    return estimate_sampling(family, plan, dtype, cfg_batched=cfg_batched, guided=True, context=context,
                             device_type=device_type)


def test_full_size_figures():
    """What the estimates say at full size (logged for the report)."""
    family, plan = full_size()
    cuda = estimate_of(family, plan)
    logger.info("5B 49x480x720 bf16 cuda: %s", cuda.describe())
    assert cuda.phase == "sampling"
    assert 2 * GiB < cuda.parts["transformer activations"] < 5 * GiB  # 17550 video tokens, batch 2
    wide = plan_conditioning(family, ConditioningInputs(), 49, 32, 100000)
    for dtype in (torch.bfloat16, torch.float32):
        cpu = estimate_of(family, wide, dtype, device_type="cpu")
        logger.info("5B 49x32x100000 %s cpu: %s", dtype, cpu.describe())
        assert cpu.total() > 2 * 24 * GiB


def test_check_fits_refuses_in_one_line_with_the_numbers_and_what_fits():
    family, plan = full_size()
    estimate, available = estimate_of(family, plan), 2 * GiB
    fixes = suggestions(family, plan, torch.bfloat16, available, cfg_batched=True, guided=True,
                        context=None, device_type="cuda")
    with pytest.raises(NotEnoughMemory) as info:
        check_fits(estimate, available, where="cuda:0", suggestions=fixes)
    text = str(info.value)
    logger.info("refusal: %s", text)
    assert "\n" not in text
    assert text.startswith(f"this run needs about {format_bytes(estimate.total())} while sampling (")
    assert "transformer activations 2." in text and "on cuda:0 but 2.0 GiB is available" in text
    assert all(fix in text for fix in fixes) and len(fixes) >= 3
    assert isinstance(info.value, CogVideoXError) and not isinstance(info.value, MemoryError)
    check_fits(estimate, estimate.total(), where="cuda:0", suggestions=fixes)  # fits: no error


def test_check_fits_with_nothing_that_fits_says_so():
    family, plan = full_size()
    with pytest.raises(NotEnoughMemory, match="nothing smaller of this family fits"):
        check_fits(estimate_of(family, plan), 1, where="cpu", suggestions=[])


def first_match(pattern: str, fixes: list[str]) -> re.Match:
    return next(m for m in (re.match(pattern, f) for f in fixes) if m is not None)


def _fits(family, plan, available, **kw) -> bool:
    return estimate_of(family, plan, **kw).total() <= available


@pytest.mark.parametrize("name", ["5b", "1.5-5b", "fun-1.5-5b-inp"])
def test_suggested_frames_and_size_fit_and_are_the_largest(name):
    family, plan = full_size(name, get_family(name).default_frames)
    available = int(0.6 * estimate_of(family, plan).total())
    fixes = suggestions(family, plan, torch.bfloat16, available, cfg_batched=True, guided=True,
                        context=None, device_type="cuda")
    frames = int(first_match(r"(\d+) frames instead of", fixes).group(1))
    smaller = replan_frames(family, plan, family.check_frames(frames), windowed=False)
    assert smaller is not None and _fits(family, smaller, available)
    more = [replan_frames(family, plan, n, False)
            for n in range(smaller.latent_frames + 1, plan.latent_frames)]
    assert not any(_fits(family, p, available) for p in more if p is not None)
    h, w = (int(v) for v in first_match(r"(\d+)x(\d+) instead of", fixes).groups())
    assert h % family.size_unit == 0 and w % family.size_unit == 0
    assert abs(w / h - plan.width / plan.height) < 0.05
    assert _fits(family, replan_size(family, plan, h, w), available)
    bigger = replan_size(family, plan, h + family.size_unit, w + family.size_unit)
    assert not _fits(family, bigger, available)


def test_suggested_windows_cfg_and_dtype_fit():
    family, plan = full_size("5b", 97)  # beyond the trained 49
    available = int(0.7 * estimate_of(family, plan, torch.float32).total())
    fixes = suggestions(family, plan, torch.float32, available, cfg_batched=True, guided=True,
                        context=None, device_type="cuda")
    window = next(f for f in fixes if f.startswith("context windows of"))
    frames = int(re.match(r"context windows of (\d+) frames \(--context-frames \1 ", window).group(1))
    assert frames <= family.default_frames
    context = ContextOptions(frames, min(16, frames - 1)).to_latent(family)
    windowed = replan_frames(family, plan, plan.latent_frames, windowed=True)
    assert _fits(family, windowed, available, dtype=torch.float32, context=context)
    assert any(f.startswith("bfloat16 instead of float32") for f in fixes)
    assert _fits(family, plan, available, dtype=torch.bfloat16)
    assert any(f.startswith("sequential CFG") for f in fixes)
    assert _fits(family, plan, available, dtype=torch.float32, cfg_batched=False)


def test_suggestions_for_a_32x100000_run_on_the_cpu():
    family, plan = full_size("5b", 49, 32, 100000)
    estimate, available = estimate_of(family, plan, device_type="cpu"), 24 * GiB
    fixes = suggestions(family, plan, torch.bfloat16, available, cfg_batched=True, guided=True,
                        context=None, device_type="cpu")
    with pytest.raises(NotEnoughMemory) as info:
        check_fits(estimate, available, where="cpu", suggestions=fixes)
    logger.info("32x100000: %s", info.value)
    h, w = (int(v) for v in re.search(r"would fit: (\d+)x(\d+) instead of", str(info.value)).groups())
    assert _fits(family, replan_size(family, plan, h, w), available, device_type="cpu")


def test_weights_are_held_through_the_peak():
    family, plan = full_size()
    weights = module_bytes(torch.nn.Linear(4, 4), None)
    assert weights == (16 + 4) * 4
    with_weights = estimate_sampling(family, plan, torch.bfloat16, cfg_batched=True, guided=True,
                                     context=None, device_type="cuda", weights=weights)
    assert with_weights.parts["weights"] == weights
    assert with_weights.total() == estimate_of(family, plan).total() + weights


def test_math_path_attention_is_quadratic_unless_fused():
    family, plan = full_size()
    math = estimate_of(family, plan, device_type="mps")
    fused = estimate_sampling(family, plan, torch.bfloat16, cfg_batched=True, guided=True, context=None,
                              device_type="mps", fused_attention=True)
    assert math.parts["attention"] > 100 * GiB > fused.total()


# ---- trained length -----------------------------------------------------------------------------

def test_beyond_trained_length():
    five, one_five, fun = get_family("5b"), get_family("1.5-5b"), get_family("fun-1.5-5b-inp")
    text = beyond_trained_length(five, 97, windowed=False)
    assert text is not None and "49 frames" in text and "--context-frames" in text
    assert "Context Options" in text
    assert beyond_trained_length(five, 49, windowed=False) is None
    assert beyond_trained_length(five, 97, windowed=True) is None
    assert beyond_trained_length(one_five, 81, windowed=False) is None
    assert "81 frames" in beyond_trained_length(one_five, 85, windowed=False)
    assert beyond_trained_length(fun, 85, windowed=False) is None


def test_full_size_step_cache_memory_and_the_no_cache_suggestion():
    """At 5B 49x480x720 bf16, PAB and FasterCache hold one or two attention outputs per block
    (about 9 GiB): counted in sampling, and "without the cache" offered when they do not fit."""
    family, plan = full_size()
    plain = estimate_of(family, plan)
    held = {}
    for method in ("teacache", "fbc", "pab", "fastercache"):
        cached = estimate_sampling(family, plan, torch.bfloat16, cfg_batched=True, guided=True, context=None,
                                   device_type="cuda", cache=method)
        held[method] = cached.parts[f"{method} cache"]
        assert cached.total() - plain.total() == held[method]
    logger.info("5B 49x480x720 bf16 step cache memory: %s",
                ", ".join(f"{k} {format_bytes(v)}" for k, v in held.items()))
    assert held["teacache"] < held["fbc"] < 0.5 * GiB
    assert 8 * GiB < held["pab"] < held["fastercache"] < 10 * GiB
    available = plain.total() + GiB
    fixes = suggestions(family, plan, torch.bfloat16, available, cfg_batched=True, guided=True,
                        context=None, device_type="cuda", cache="fastercache")
    assert any(f.startswith("without the fastercache step cache (") for f in fixes), fixes
    assert not any("context windows" in f for f in fixes)
