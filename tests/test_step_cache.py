"""Step caches (TeaCache, First Block Cache) around the transformer's block loop.

First Block Cache against diffusers' own (``FirstBlockCacheConfig`` on the tiny pipeline: same
latents, same calls skipped); TeaCache against its rule re-derived here from the timestep
embeddings the model saw; per-branch state (batched and sequential CFG skip the same steps);
a failing run leaves nothing behind; the CLI flags.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import torch
from diffusers import CogVideoXPipeline
from diffusers.hooks import FirstBlockCacheConfig
from pipeline_models import build, ref_pipeline

from cogvideox_core.cli import preflight
from cogvideox_core.cli.generate import _cache
from cogvideox_core.generation import pipeline
from cogvideox_core.generation.conditioning import ConditioningInputs
from cogvideox_core.generation.pipeline import GenerateRequest, generate_latents
from cogvideox_core.models.step_cache import (CacheOptions, FirstBlockCache, TeaCache, make_step_cache,
                                              teacache_coefficients)
from cogvideox_core.sampling.windows import ContextOptions

PROMPT, NEGATIVE, SEED = "a panda playing a guitar", "blurry, low quality", 1234
SIZE = dict(frames=9, height=32, width=48)


def _request(steps: int, cache: CacheOptions | None, batched: bool = True,
             inputs: ConditioningInputs | None = None) -> GenerateRequest:
    return GenerateRequest(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, cfg=6.0, sampler="ddim",
                           seed=SEED, cfg_batched=batched, cache=cache, inputs=inputs or ConditioningInputs(),
                           **SIZE)


def _run(models, request: GenerateRequest, monkeypatch) -> tuple[torch.Tensor, object]:
    """(latents, the step cache the run used)."""
    made = []

    def capture(*args):
        made.append(make_step_cache(*args))
        return made[-1]

    monkeypatch.setattr(pipeline, "make_step_cache", capture)
    latents = generate_latents(models, request)
    return latents, made[0] if made else None


def _computed(cache, branch: str) -> list[bool]:
    return [c for b, c in cache.history if b == branch]


# ---- First Block Cache: diffusers' ----------------------------------------------------------

FBC_STEPS, FBC_THRESHOLD = 8, 0.7  # tiny 5B, 3 blocks: 4 of 8 calls skipped; no distance within 0.04
# of 0.7, so sequential CFG (each branch its own distance) skips the same calls as batched (diffusers:
# one distance over the [uncond, cond] batch)


def _diffusers_fbc(ref, family, threshold: float) -> tuple[torch.Tensor, list[bool]]:
    """Diffusers' latents (unscaled, [1, C, F, h, w]) and which calls ran the last block."""
    pipe = ref_pipeline(CogVideoXPipeline, ref, "ddim", family)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    calls: list[bool] = []
    pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(False))
    last = pipe.transformer.transformer_blocks[-1].attn1  # runs only when the tail computes
    last.register_forward_pre_hook(lambda *_: calls.__setitem__(-1, True))
    latents = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=FBC_STEPS, guidance_scale=6.0,
                   generator=torch.Generator().manual_seed(SEED), output_type="latent",
                   num_frames=SIZE["frames"], height=SIZE["height"], width=SIZE["width"]).frames
    return (1 / family.vae_scaling_factor) * latents.permute(0, 2, 1, 3, 4), calls


def test_fbc_equals_diffusers(monkeypatch) -> None:
    ref, models = build("5b", layers=3)
    ref_latents, ref_calls = _diffusers_fbc(ref, models.family, FBC_THRESHOLD)
    ours, cache = _run(models, _request(FBC_STEPS, CacheOptions("fbc", FBC_THRESHOLD)), monkeypatch)
    assert _computed(cache, "batch") == ref_calls
    assert 0 < ref_calls.count(False) < FBC_STEPS - 1, ref_calls  # the case skips some, not all
    assert (ours - ref_latents).abs().max().item() <= 1e-4
    skipped = ref_calls.count(False)
    assert (cache.computed, cache.total) == (3 * FBC_STEPS - 2 * skipped, 3 * FBC_STEPS)


def test_fbc_distance_is_diffusers_rule() -> None:
    cache = FirstBlockCache(0.5)
    cache.reset(3)
    prev = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    assert cache.distance(prev) is None
    cache._state()["head"] = prev
    now = prev + torch.tensor([[0.5, 0.0], [0.0, -0.5]])
    assert cache.distance(now) == pytest.approx(0.25 / 2.5)


# ---- TeaCache: its rule re-derived ----------------------------------------------------------

TEA_FAMILY, TEA_STEPS, TEA_THRESHOLD = "1.5-5b", 12, 40.0  # tiny 1.5: rescaled distances 3..200


def _tembs(models) -> list[torch.Tensor]:
    """Record the timestep embedding of every model call (norm_out always runs)."""
    seen: list[torch.Tensor] = []
    models.transformer.norm_out.register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
    return seen


def _expected_teacache(tembs: list[torch.Tensor], family: str, threshold: float) -> list[bool]:
    """ali-vilab/TeaCache's teacache_forward, written out again: first and last call compute;
    in between the rescaled rel-L1 change of temb accumulates until it reaches the threshold."""
    poly, n, acc, out = np.poly1d(teacache_coefficients(family)), len(tembs), 0.0, []
    for i, emb in enumerate(tembs):
        if i in (0, n - 1):
            out.append(True)
            acc = 0.0
            continue
        prev = tembs[i - 1]
        acc += poly(((emb - prev).abs().mean() / prev.abs().mean()).item())
        out.append(bool(acc >= threshold))
        if acc >= threshold:
            acc = 0.0
    return out


@pytest.mark.parametrize("family,threshold", [(TEA_FAMILY, TEA_THRESHOLD), ("1.5-5b-i2v", 20.0)])
def test_teacache_follows_its_rule(family: str, threshold: float, monkeypatch) -> None:
    """1.5-I2V: temb includes the ofs embedding; rescaled distances 1..40 on the tiny model."""
    _, models = build(family)
    tembs = _tembs(models)
    image = torch.rand(1, SIZE["height"], SIZE["width"], 3, generator=torch.Generator().manual_seed(5))
    inputs = ConditioningInputs(image=image) if family.endswith("i2v") else None
    _, cache = _run(models, _request(TEA_STEPS, CacheOptions("teacache", threshold), inputs=inputs), monkeypatch)
    expected = _expected_teacache(tembs, family, threshold)
    assert len(tembs) == TEA_STEPS
    assert _computed(cache, "batch") == expected
    assert 0 < expected.count(False) < TEA_STEPS - 2, expected
    assert cache.computed == 2 * expected.count(True)  # 2 blocks per computed call


def test_teacache_threshold_zero_is_the_plain_run(monkeypatch) -> None:
    _, models = build(TEA_FAMILY)
    plain, _ = _run(models, _request(6, None), monkeypatch)
    cached, cache = _run(models, _request(6, CacheOptions("teacache", 0.0)), monkeypatch)
    assert all(c for _, c in cache.history) and len(cache.history) == 6
    assert torch.equal(plain, cached)


@pytest.mark.parametrize("method,threshold", [("teacache", TEA_THRESHOLD), ("fbc", FBC_THRESHOLD)])
def test_batched_and_sequential_cfg_skip_the_same_steps(method: str, threshold: float, monkeypatch) -> None:
    _, models = build(TEA_FAMILY if method == "teacache" else "5b", layers=2 if method == "teacache" else 3)
    steps = TEA_STEPS if method == "teacache" else FBC_STEPS
    _, batched = _run(models, _request(steps, CacheOptions(method, threshold)), monkeypatch)
    _, sequential = _run(models, _request(steps, CacheOptions(method, threshold), batched=False), monkeypatch)
    pattern = _computed(batched, "batch")
    assert False in pattern
    assert _computed(sequential, "cond") == pattern
    assert _computed(sequential, "uncond") == pattern
    assert [b for b, _ in sequential.history[:2]] == ["uncond", "cond"]


# ---- the run around it ----------------------------------------------------------------------

def test_failing_run_leaves_the_transformer_plain(monkeypatch, caplog) -> None:
    _, models = build("5b")
    plain = generate_latents(models, _request(4, None))
    block = models.transformer.transformer_blocks[0]  # runs on every call
    calls = {"n": 0}

    def boom(*_):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")

    handle = block.register_forward_pre_hook(boom)
    with caplog.at_level(logging.INFO, logger="cogvideox_core.generation.pipeline"), \
            pytest.raises(RuntimeError, match="boom"):
        generate_latents(models, _request(4, CacheOptions("fbc", 1e9)))
    handle.remove()
    assert "step cache fbc: 3 of 4 transformer block evaluations ran" in caplog.text
    assert not any(isinstance(v, (TeaCache, FirstBlockCache)) for v in vars(models.transformer).values())
    assert torch.equal(generate_latents(models, _request(4, None)), plain)


def test_log_line_counts_block_evaluations(monkeypatch, caplog) -> None:
    _, models = build("5b", layers=3)
    with caplog.at_level(logging.INFO, logger="cogvideox_core.generation.pipeline"):
        _run(models, _request(4, CacheOptions("fbc", 1e9)), monkeypatch)
    # first call computes 3 blocks, the other 3 run block 0 only
    assert "step cache fbc: 6 of 12 transformer block evaluations ran" in caplog.text


def test_context_windows_are_refused() -> None:
    _, models = build("5b")
    request = GenerateRequest(prompt=PROMPT, steps=2, cache=CacheOptions("fbc"), frames=17, height=32,
                              width=48, context=ContextOptions(9, 4))
    with pytest.raises(ValueError, match="context windows"):
        pipeline.validate(models, request)


# ---- options and CLI ------------------------------------------------------------------------

def test_options_defaults_and_coefficients() -> None:
    assert CacheOptions("teacache").resolved_threshold("t2v") == 0.2
    assert CacheOptions("teacache").resolved_threshold("i2v") == 0.1
    assert CacheOptions("fbc").resolved_threshold("i2v") == 0.05
    assert CacheOptions("fbc", 0.3).resolved_threshold("t2v") == 0.3
    assert teacache_coefficients("fun-2b-control") == teacache_coefficients("2b")
    assert teacache_coefficients("fun-1.5-5b-inp") == teacache_coefficients("1.5-5b")
    assert teacache_coefficients("5b-i2v") == teacache_coefficients("5b")
    for bad in (dict(method="magcache"), dict(method="fbc", threshold=float("nan")),
                dict(method="fbc", threshold=-1.0)):
        with pytest.raises(ValueError):
            CacheOptions(**bad)  # type: ignore[arg-type]


def _args(**kw) -> argparse.Namespace:
    base = dict(cfg=6.0, denoise=1.0, colour_match=1.0, steps=10, seed=0, frames=None, height=None, width=None,
                context_frames=None, context_overlap=16, context_batch=1, extend_chunks=1, extend_overlap=4,
                cache="none", cache_threshold=None)
    return argparse.Namespace(**{**base, **kw})


def test_cli_cache_flags() -> None:
    preflight.check_numbers(_args(cache="fbc", cache_threshold=0.1))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="--cache-threshold"):
            preflight.check_numbers(_args(cache="teacache", cache_threshold=bad))
    with pytest.raises(ValueError, match="without --cache"):
        preflight.check_numbers(_args(cache_threshold=0.1))
    assert _cache(_args()) is None
    assert _cache(_args(cache="teacache", cache_threshold=0.3)) == CacheOptions("teacache", 0.3)
    with pytest.raises(ValueError, match="--context-frames"):
        _cache(_args(cache="fbc", context_frames=33))


def test_cli_attention_cache_flags() -> None:
    assert _cache(_args(cache="pab")) == CacheOptions("pab")
    assert _cache(_args(cache="fastercache")) == CacheOptions("fastercache")
    with pytest.raises(ValueError, match="--cache-threshold 0.1 with --cache pab: only teacache and fbc"):
        preflight.check_numbers(_args(cache="pab", cache_threshold=0.1))
    with pytest.raises(ValueError, match="--cache fastercache with --cfg 1.0"):
        preflight.check_numbers(_args(cache="fastercache", cfg=1.0))
