"""Pyramid Attention Broadcast and FasterCache against diffusers' own hooks.

Same tiny random model in our core and in diffusers' pipeline with
``PyramidAttentionBroadcastConfig`` / ``FasterCacheConfig()`` enabled on its transformer (the
defaults our methods take): the same latents within 1e-4 (fp32) and the same calls computing
attention and the unconditional branch, in text-, image-, video-to-video and Fun Control; Fun InP
(no diffusers pipeline) runs every method; sequential CFG equals batched; the memory each holds;
the refusals.
"""
from __future__ import annotations

import logging

import pytest
import torch
from diffusers import (CogVideoXFunControlPipeline, CogVideoXImageToVideoPipeline, CogVideoXPipeline,
                       CogVideoXVideoToVideoPipeline)
from diffusers.hooks import FasterCacheConfig, PyramidAttentionBroadcastConfig
from pipeline_models import build, ref_pipeline

from cogvideox_core.families import latent_frames
from cogvideox_core.generation import pipeline
from cogvideox_core.generation.conditioning import ConditioningInputs
from cogvideox_core.generation.pipeline import GenerateRequest, generate_latents
from cogvideox_core.models.attention_caches import join_frequencies, split_frequencies
from cogvideox_core.models.step_cache import CacheOptions, make_step_cache

TOL = 1e-4
PROMPT, NEGATIVE, SEED = "a panda playing a guitar", "blurry, low quality", 1234
STEPS = 12  # DDIM/DPM timesteps 999..83: some in every method's ranges, some outside
CASES = {  # name: (family, diffusers pipeline, sampler, mode, height, width)
    "t2v-5b-ddim": ("5b", CogVideoXPipeline, "ddim", "t2v", 32, 48),
    "t2v-1.5-dpm": ("1.5-5b", CogVideoXPipeline, "dpm", "t2v", 32, 48),
    "i2v-5b-i2v-dpm": ("5b-i2v", CogVideoXImageToVideoPipeline, "dpm", "i2v", 64, 96),
    "control-fun-2b-ddim": ("fun-2b-control", CogVideoXFunControlPipeline, "ddim", "control", 32, 48),
    "v2v-2b-dpm-0.75": ("2b", CogVideoXVideoToVideoPipeline, "dpm", "v2v", 32, 48),
}
DENOISE = 0.75  # video-to-video strength: 9 of the 12 steps run


def _inputs(mode: str, h: int, w: int) -> tuple[ConditioningInputs, dict[str, object]]:
    """Our conditioning inputs and the same pixels as the diffusers pipeline takes them."""
    pixels = torch.rand(9, h, w, 3, generator=torch.Generator().manual_seed(5))
    if mode == "i2v":
        return ConditioningInputs(image=pixels[:1]), {"image": pixels[:1].permute(0, 3, 1, 2), "num_frames": 9}
    if mode == "v2v":
        return (ConditioningInputs(video=pixels, denoise=DENOISE),
                {"video": pixels.permute(0, 3, 1, 2), "strength": DENOISE})
    if mode == "control":
        return ConditioningInputs(control=pixels), {"control_video": pixels.permute(0, 3, 1, 2)[None]}
    return ConditioningInputs(), {"num_frames": 9}


def _diffusers_config(method: str, pipe) -> object:
    now = lambda: pipe.current_timestep  # noqa: E731  the hooks' timestep source
    if method == "pab":  # diffusers' default for CogVideoX: every block's attention, range 2
        return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                               spatial_attention_timestep_skip_range=(100, 800),
                                               current_timestep_callback=now)
    return FasterCacheConfig(current_timestep_callback=now)


def _diffusers(case: str, method: str) -> tuple[torch.Tensor, list[tuple[int, bool]]]:
    """diffusers' unscaled latents [1, C, F, h, w] and per call (batch size, attention ran)."""
    family_name, cls, sampler, mode, h, w = CASES[case]
    ref, models = build(family_name, layers=2)
    pipe = ref_pipeline(cls, ref, sampler, models.family)
    pipe.transformer.enable_cache(_diffusers_config(method, pipe))
    calls: list[tuple[int, bool]] = []
    pipe.transformer.patch_embed.register_forward_pre_hook(
        lambda _m, args: calls.append((args[0].shape[0], False)))
    last = pipe.transformer.transformer_blocks[-1].attn1.to_q  # runs only when attention computes
    last.register_forward_pre_hook(lambda *_: calls.__setitem__(-1, (calls[-1][0], True)))
    _, ref_inputs = _inputs(mode, h, w)
    latents = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0,
                   generator=torch.Generator().manual_seed(SEED), output_type="latent", height=h, width=w,
                   **ref_inputs).frames
    pad = latents.shape[1] - latent_frames(9)  # 1.5's padding latent in front
    return (1 / models.family.vae_scaling_factor) * latents[:, pad:].permute(0, 2, 1, 3, 4), calls


def _ours(case: str, method: str, batched: bool, monkeypatch) -> tuple[torch.Tensor, object]:
    family_name, _cls, sampler, mode, h, w = CASES[case]
    _, models = build(family_name, layers=2)
    inputs, _ = _inputs(mode, h, w)
    made = []
    monkeypatch.setattr(pipeline, "make_step_cache", lambda *a: made.append(make_step_cache(*a)) or made[-1])
    request = GenerateRequest(prompt=PROMPT, negative_prompt=NEGATIVE, inputs=inputs, frames=9, height=h,
                              width=w, steps=STEPS, cfg=6.0, sampler=sampler, seed=SEED, cfg_batched=batched,
                              cache=CacheOptions(method))
    return generate_latents(models, request), made[0]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["pab", "fastercache"])
def test_equals_diffusers_hook(case: str, method: str, monkeypatch) -> None:
    ref_latents, ref_calls = _diffusers(case, method)
    ours, cache = _ours(case, method, True, monkeypatch)
    assert ours.shape == ref_latents.shape
    diff = (ours - ref_latents).abs().max().item()
    assert diff <= TOL, f"{case} {method}: latents differ by {diff}"
    attention_ran = [ran for _, ran in ref_calls]
    assert [computed for _, computed in cache.history] == attention_ran
    assert 0 < attention_ran.count(False) < len(attention_ran) - 1, attention_ran  # reuses some, not all
    if method == "fastercache":
        cond_only = [b == 1 for b, _ in ref_calls]
        assert [branch == "cond" for branch, _ in cache.history] == cond_only
        assert 0 < sum(cond_only) and cache.uncond_skipped == sum(cond_only)


@pytest.mark.parametrize("method", ["pab", "fastercache"])
def test_sequential_cfg_equals_batched(method: str, monkeypatch) -> None:
    batched, b_cache = _ours("t2v-5b-ddim", method, True, monkeypatch)
    sequential, s_cache = _ours("t2v-5b-ddim", method, False, monkeypatch)
    assert (batched - sequential).abs().max().item() <= TOL
    cond = [c for b, c in s_cache.history if b == "cond"]
    if method == "pab":  # each branch its own broadcast, on the same calls
        assert cond == [c for _, c in b_cache.history] == [c for b, c in s_cache.history if b == "uncond"]
    else:  # the uncond calls of full steps compute plainly; cond calls follow the batched pattern
        assert cond == [c for _, c in b_cache.history]


def test_frequency_split_is_lossless() -> None:
    x = torch.randn(2, 3, 4, 6, 10, generator=torch.Generator().manual_seed(0))
    low, high = split_frequencies(x)
    assert torch.allclose(join_frequencies(low, high), x, atol=1e-5)
    assert low.abs().sum() > 0 and high.abs().sum() > 0


def test_log_line_states_work_and_memory(monkeypatch, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="cogvideox_core.models.step_cache"):
        _, cache = _ours("t2v-5b-ddim", "pab", True, monkeypatch)
    ran = sum(2 for _, c in cache.history if c)
    assert f"step cache pab: {ran} of {2 * STEPS} attention evaluations ran; held" in caplog.text
    assert cache.held_bytes() > 0


def test_refusals() -> None:
    with pytest.raises(ValueError, match="only teacache and fbc take a threshold"):
        CacheOptions("pab", 0.1)
    _, models = build("5b", layers=2)
    unguided = GenerateRequest(prompt=PROMPT, steps=2, cfg=1.0, frames=9, height=32, width=48,
                               cache=CacheOptions("fastercache"))
    with pytest.raises(ValueError, match="cfg <= 1"):
        pipeline.validate(models, unguided)


@pytest.mark.parametrize("method", ["teacache", "fbc", "pab", "fastercache"])
@pytest.mark.parametrize("batched", [True, False])
def test_memory_estimate_is_what_the_cache_holds(method: str, batched: bool, monkeypatch) -> None:
    """The memory check's figure for each cache equals the bytes it holds after a run (and is in
    the estimate the run is judged by)."""
    from cogvideox_core.memory import estimate_sampling
    from cogvideox_core.models.step_cache import held_bytes

    family_name, _cls, sampler, mode, h, w = CASES["t2v-5b-ddim"]
    _, models = build(family_name, layers=2)
    made = []
    monkeypatch.setattr(pipeline, "make_step_cache", lambda *a: made.append(make_step_cache(*a)) or made[-1])
    request = GenerateRequest(prompt=PROMPT, negative_prompt=NEGATIVE, frames=9, height=h, width=w, steps=STEPS,
                              cfg=6.0, sampler=sampler, seed=SEED, cfg_batched=batched,
                              cache=CacheOptions(method, 1e9 if method in ("teacache", "fbc") else None))
    generate_latents(models, request)
    cfg, plan = models.family.transformer, pipeline.validate(models, request)
    n = plan.total_latent_frames * (plan.height_lat // 2) * (plan.width_lat // 2)
    expected = held_bytes(method, layers=2, seq=n + cfg.max_text_len, video_tokens=n, dim=cfg.inner_dim, elem=4,
                          guided=True, batched=batched,
                          output_numel=plan.total_latent_frames * 16 * plan.height_lat * plan.width_lat)
    extra = cfg.time_embed_dim * 4 * 2 if method == "teacache" else 0  # the kept timestep embeddings
    assert made[0].held_bytes() == expected + extra
    args = pipeline.memory_args(models.family, request, "cpu", None)

    def sampling(**change) -> int:
        estimate = estimate_sampling(models.family, plan, torch.float32, **{**args, **change})
        return estimate.total() if estimate.phase == "sampling" else estimate.other_phases["sampling"]

    assert sampling() - sampling(cache=None) == expected


@pytest.mark.parametrize("method", ["teacache", "fbc", "pab", "fastercache"])
def test_fun_inp_runs_every_method(method: str, monkeypatch) -> None:
    """Fun InP (start image, masked video channels): no diffusers pipeline to compare with; every
    method runs, reuses something and gives finite latents close to the plain run's."""
    _, models = build("fun-5b-inp", layers=2)
    image = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(5))
    made = []
    monkeypatch.setattr(pipeline, "make_step_cache", lambda *a: made.append(make_step_cache(*a)) or made[-1])

    def run(cache):
        return generate_latents(models, GenerateRequest(
            prompt=PROMPT, negative_prompt=NEGATIVE, inputs=ConditioningInputs(image=image), frames=9, height=32,
            width=48, steps=STEPS, cfg=6.0, sampler="dpm", seed=SEED, cache=cache))

    plain = run(None)
    cached = run(CacheOptions(method, 1e9 if method in ("teacache", "fbc") else None))
    assert torch.isfinite(cached).all() and not torch.equal(cached, plain)
    assert made[0].computed < made[0].total
