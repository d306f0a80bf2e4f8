"""The step cache through the node functions, without ComfyUI: the CogVideoX Cache node's options,
the sampler and Extend Video with a cache against the core pipeline, and the refusals.

Models are the tiny random ones of ``tests/tiny_models.py`` loaded through the pack's loaders (as
``tests/test_nodes.py`` does); ``tests/node_host.py`` stands in for ComfyUI's patcher.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest
import torch

from make_workflows import load_pack
from tiny_models import FRAMES, HEIGHT, WIDTH

PACK = load_pack()
import node_host  # noqa: E402
from node_host import node  # noqa: E402
from cogvideox_pack.cogvideox_core.generation.pipeline import GenerateRequest, Models, generate_latents  # noqa: E402
from cogvideox_pack.cogvideox_core.models.step_cache import CacheOptions  # noqa: E402
from cogvideox_pack.nodes import host  # noqa: E402

SKIPPING = 2.0  # the widget's max: FBC skips every step it may on the tiny model


@pytest.fixture(scope="module", autouse=True)
def stand_in_host(node_models_dir: Path) -> Iterator[None]:
    with node_host.stand_in(host, node_models_dir):
        yield


def _load(root: str) -> tuple:
    model, _fps = node("CogVideoXModelLoader")(root, "fp32")
    vae, = node("CogVideoXVAELoader")(root, "fp32")
    t5, = node("CogVideoXT5Loader")(root, "fp32")
    cond, = node("CogVideoXTextEncode")(t5, "a fox in the snow", "blurry")
    return model, vae, cond


@pytest.fixture(scope="module")
def loaded() -> tuple:
    return _load("CogVideoX-2b")


def _latent(frames: int = FRAMES) -> dict:
    return node("CogVideoXEmptyLatent")(WIDTH, HEIGHT, frames, 1)[0]


def _sample(model, cond, latent=None, context=None, cache=None, steps=4) -> torch.Tensor:
    return node("CogVideoXSampler")(model, cond, latent or _latent(), 3, steps, 6.0, "ddim", 1.0,
                                    context, cache)[0]["samples"]


def test_cache_node_gives_the_options() -> None:
    assert node("CogVideoXCache")("fbc", 0.3) == (CacheOptions("fbc", 0.3),)
    assert node("CogVideoXCache")("teacache", 0.0) == (CacheOptions("teacache", None),)  # 0: the default
    assert node("CogVideoXCache")("teacache") == (CacheOptions("teacache", None),)
    with pytest.raises(ValueError, match=r"method='magcache'.*teacache, fbc"):
        node("CogVideoXCache")("magcache", 0.1)
    with pytest.raises(ValueError, match=r"threshold=-1.0"):
        node("CogVideoXCache")("fbc", -1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_threshold_is_refused_naming_the_input(bad: float) -> None:
    with pytest.raises(ValueError, match=r"threshold=(nan|inf) is not allowed: threshold takes a finite "
                                         r"number from 0 to 2"):
        node("CogVideoXCache")("fbc", bad)


def test_sampler_with_fbc_is_the_core_pipeline_with_the_cache(loaded: tuple, caplog) -> None:
    model, _vae, cond = loaded
    cache, = node("CogVideoXCache")("fbc", SKIPPING)
    with caplog.at_level(logging.INFO):
        cached = _sample(model, cond, cache=cache)
    assert "step cache fbc" in caplog.text  # the cache ran, and skipped blocks:
    assert not torch.equal(cached, _sample(model, cond))
    models = Models(model.model, model.family, scheduler=model.scheduler)
    request = GenerateRequest(frames=FRAMES, height=HEIGHT, width=WIDTH, steps=4, cfg=6.0, sampler="ddim",
                              seed=3, prompt_embeds=cond.positive, negative_embeds=cond.negative,
                              cache=CacheOptions("fbc", SKIPPING))
    assert torch.equal(cached, generate_latents(models, request))


def test_sampler_with_the_teacache_default(loaded: tuple) -> None:
    model, _vae, cond = loaded
    cache, = node("CogVideoXCache")("teacache", 0.0)
    out = _sample(model, cond, cache=cache)
    assert out.shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8) and torch.isfinite(out).all()
    models = Models(model.model, model.family, scheduler=model.scheduler)
    request = GenerateRequest(frames=FRAMES, height=HEIGHT, width=WIDTH, steps=4, cfg=6.0, sampler="ddim",
                              seed=3, prompt_embeds=cond.positive, negative_embeds=cond.negative,
                              cache=CacheOptions("teacache"))
    assert torch.equal(out, generate_latents(models, request))


def test_cache_with_context_options_is_refused_naming_both(loaded: tuple, monkeypatch) -> None:
    model, _vae, cond = loaded
    monkeypatch.setattr(PACK.nodes.sampling, "sample_batches", None)  # refused before sampling
    cache, = node("CogVideoXCache")("fbc", 0.0)
    ctx, = node("CogVideoXContextOptions")(9, 4)
    with pytest.raises(ValueError, match=r"cache \(fbc\) with context_options: .*cannot be combined"):
        _sample(model, cond, _latent(17), context=ctx, cache=cache)


def test_extend_video_passes_the_cache_to_every_chunk(monkeypatch) -> None:
    model, vae, cond = _load("CogVideoX-Fun-V1.1-5b-InP")
    seen: list = []
    real = PACK.cogvideox_core.long_video.chain.generate

    def spy(models, request, runtime=None):
        seen.append(request.cache)
        return real(models, request, runtime)

    monkeypatch.setattr(PACK.cogvideox_core.long_video.chain, "generate", spy)
    video = torch.rand(FRAMES, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(0))
    cache, = node("CogVideoXCache")("fbc", SKIPPING)

    def extend(**kwargs) -> torch.Tensor:
        return node("CogVideoXExtendVideo")(model, cond, vae, video, FRAMES, 4, 3, 3, 6.0, "auto",
                                            chunks=2, **kwargs)[0]

    cached = extend(cache=cache)
    assert seen == [cache, cache] and cached.shape[0] == FRAMES + 2 * (FRAMES - 4)
    assert not torch.equal(cached, extend())


@pytest.mark.parametrize("method", ["pab", "fastercache"])
def test_sampler_with_attention_caches_is_the_core_pipeline(loaded: tuple, method: str, caplog) -> None:
    model, _vae, cond = loaded
    cache, = node("CogVideoXCache")(method, 0.0)
    assert cache == CacheOptions(method)
    with caplog.at_level(logging.INFO):
        out = _sample(model, cond, cache=cache, steps=12)
    assert f"step cache {method}:" in caplog.text
    assert not torch.equal(out, _sample(model, cond, steps=12))  # it reused something
    models = Models(model.model, model.family, scheduler=model.scheduler)
    request = GenerateRequest(frames=FRAMES, height=HEIGHT, width=WIDTH, steps=12, cfg=6.0, sampler="ddim",
                              seed=3, prompt_embeds=cond.positive, negative_embeds=cond.negative,
                              cache=CacheOptions(method))
    assert torch.equal(out, generate_latents(models, request))


def test_attention_cache_refusals_name_the_input(loaded: tuple, monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"threshold=0.3 with method pab: only teacache and fbc"):
        node("CogVideoXCache")("pab", 0.3)
    model, _vae, cond = loaded
    monkeypatch.setattr(PACK.nodes.sampling, "sample_batches", None)  # refused before sampling
    cache, = node("CogVideoXCache")("fastercache", 0.0)
    with pytest.raises(ValueError, match=r"cfg <= 1"):
        node("CogVideoXSampler")(model, cond, _latent(), 3, 4, 1.0, "ddim", 1.0, None, cache)
