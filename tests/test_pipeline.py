"""The generation pipeline's own behaviour on tiny random models (no diffusers needed): seeds and
the initial noise, progress and previews, interrupts, every Fun InP mode end to end, context
windows, refusals before any heavy work."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from scaffold import RecordingRuntime
from torch import nn

from cogvideox_core.generation.conditioning import ConditioningInputs
from cogvideox_core.sampling.windows import ContextOptions
from cogvideox_core.tiny import random_models
from cogvideox_core.errors import Interrupted
from cogvideox_core.generation.pipeline import GenerateRequest, generate, generate_latents

H, W = 32, 48


class Spy(nn.Module):
    """Wraps a transformer and records every call's input (``calls``) and text states (``texts``)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, torch.Tensor, float | None]] = []
        self.texts: list[torch.Tensor] = []

    def check_input(self, *args, **kwargs) -> None:
        self.inner.check_input(*args, **kwargs)

    def forward(self, x, timestep, context, ofs=None):
        self.calls.append((x.clone(), timestep.clone(), ofs))
        self.texts.append(context.clone())
        return self.inner(x, timestep, context, ofs=ofs)


@pytest.fixture(scope="module")
def t2v():
    return random_models("5b", seed=3)


def _req(**kwargs) -> GenerateRequest:
    base = dict(prompt="a red fox running", frames=9, height=H, width=W, steps=3, seed=7)
    return GenerateRequest(**{**base, **kwargs})


def test_initial_noise_is_a_seeded_cpu_draw_of_the_pipeline_shape(t2v) -> None:
    models = dataclasses.replace(t2v, transformer=Spy(t2v.transformer))
    generate_latents(models, _req(sampler="ddim"))
    x, timestep, _ofs = models.transformer.calls[0]
    noise = torch.randn((1, 3, 16, 4, 6), generator=torch.Generator().manual_seed(7))
    assert x.shape == (2, 3, 16, 4, 6)  # CFG batch [uncond, cond]
    assert torch.equal(x[0], noise[0]) and torch.equal(x[1], noise[0])
    assert timestep.tolist() == [999, 999] and timestep.dtype == torch.int64


def test_same_seed_same_video_other_seed_other_video(t2v) -> None:
    a, b = generate(t2v, _req(steps=2)), generate(t2v, _req(steps=2))
    assert torch.equal(a, b) and a.shape == (9, H, W, 3)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert not torch.equal(a, generate(t2v, _req(steps=2, seed=8)))


def test_progress_every_step_with_clean_latent_preview(t2v) -> None:
    runtime = RecordingRuntime()
    latents = generate_latents(t2v, _req(sampler="ddim", steps=4), runtime)
    assert runtime.steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(p.shape == (1, 16, 3, 4, 6) for p in runtime.previews)
    # DDIM's last step lands on the predicted x0: the last preview is the result
    assert torch.allclose(runtime.previews[-1], latents, atol=1e-6)


def test_interrupt_raises_and_leaves_the_models_usable(t2v) -> None:
    expected = generate_latents(t2v, _req(sampler="dpm"))
    runtime = RecordingRuntime(stop_at=2)
    with pytest.raises(Interrupted):
        generate_latents(t2v, _req(sampler="dpm"), runtime)
    assert runtime.steps == [(1, 3), (2, 3)]
    assert torch.equal(generate_latents(t2v, _req(sampler="dpm"), RecordingRuntime()), expected)


def test_sequential_cfg_and_no_cfg(t2v) -> None:
    batched = generate_latents(t2v, _req())
    sequential = generate_latents(t2v, _req(cfg_batched=False))
    assert torch.allclose(batched, sequential, atol=1e-5)
    models = dataclasses.replace(t2v, transformer=Spy(t2v.transformer))
    generate_latents(models, _req(cfg=1.0))
    assert all(x.shape[0] == 1 for x, _t, _o in models.transformer.calls)


def test_bfloat16_run_is_finite() -> None:
    models = random_models("2b", seed=1, dtype=torch.bfloat16)
    frames = generate(models, _req(steps=2))
    assert frames.dtype == torch.float32 and torch.isfinite(frames).all()


def _img(k: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(k, H, W, 3, generator=torch.Generator().manual_seed(seed))


INP_MODES = {
    "text only": dict(),
    "start": dict(image=_img()),
    "end": dict(end_image=_img(seed=1)),
    "start+end": dict(image=_img(), end_image=_img(seed=1)),
    "start frames": dict(image=_img(4)),
    "video+mask": dict(video=torch.rand(9, H, W, 3, generator=torch.Generator().manual_seed(2)),
                       mask=torch.cat([torch.zeros(1, H, W // 2), torch.ones(1, H, W // 2)], dim=2)),
}


@pytest.fixture(scope="module")
def inp():
    return random_models("fun-5b-inp", seed=4)


@pytest.mark.parametrize("mode", list(INP_MODES))
def test_inp_full_run(inp, mode: str) -> None:
    models = dataclasses.replace(inp, transformer=Spy(inp.transformer))
    request = _req(inputs=ConditioningInputs(**INP_MODES[mode]), steps=2)
    frames = generate(models, request)
    assert frames.shape == (9, H, W, 3) and torch.isfinite(frames).all()
    x, _t, _ofs = models.transformer.calls[0]
    assert x.shape == (2, 3, 33, 4, 6)  # [noise 16 | mask 1 | masked video 16], same for both CFG halves
    assert torch.equal(x[0, :, 16:], x[1, :, 16:])
    known_mask = {"text only": 0, "end": 0}.get(mode, 1)
    assert bool(x[0, 0, 16].any()) == bool(known_mask)
    assert torch.equal(frames, generate(inp, request))


class SmallMemoryRuntime(RecordingRuntime):
    """A CPU runtime that reports 256 KiB free (the VAE passes run in many small regions) and
    records the memory each load asks for."""

    def __init__(self) -> None:
        super().__init__(free=256 * 1024)
        self.loads: list[tuple[str, int]] = []

    def load(self, model: nn.Module, extra_memory: int = 0) -> None:
        self.loads.append((type(model).__name__, extra_memory))
        super().load(model, extra_memory)


def test_vae_passes_are_tiled_and_exact_in_little_memory(inp, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline encodes its conditioning pixels and decodes its latents with the exact tiled
    VAE passes, tiles sized from the runtime's free memory: little free memory means many
    regions per layer and the same frames (within test_tiling's 5e-5) as a roomy host; the
    progress bar stays the sampler's."""
    from cogvideox_core.generation import pipeline
    from cogvideox_core.vae import tiling, tiling_exact
    from cogvideox_core.vae.tiling import pass_memory

    request = _req(inputs=ConditioningInputs(**INP_MODES["start+end"]), frames=13, steps=3)
    roomy = generate(inp, request)
    grids: list[int] = []
    real = tiling_exact.regions_for_budget
    monkeypatch.setattr(tiling_exact, "regions_for_budget",
                        lambda h, w, area: grids.append(len(real(h, w, area))) or real(h, w, area))
    passes: list[str] = []
    for module, name in ((tiling, "tiled_encode"), (pipeline, "tiled_decode")):
        real_pass = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _n=name, _f=real_pass, **k: passes.append(_n) or _f(*a, **k))
    # 256 KiB is below what the run needs in all (its VAE store, its activations): the memory
    # check before sampling would refuse it; this test is about tile sizing alone
    monkeypatch.setattr(pipeline, "check_memory", lambda *a, **k: None)
    runtime = SmallMemoryRuntime()
    small = generate(inp, request, runtime)
    assert passes == ["tiled_encode", "tiled_decode"]
    cfg, size = inp.vae.config, (H, W)
    vae_loads = [extra for name, extra in runtime.loads if name == "CogVideoXVAE"]
    assert pass_memory(cfg, 1, size, inp.vae.dtype, encode=True) in vae_loads  # room for the encode
    assert vae_loads[-1] == pass_memory(cfg, 1, size, inp.vae.dtype)  # and for the decode
    assert max(grids) >= 4
    assert (small - roomy).abs().max().item() <= 5e-5
    assert runtime.steps == [(1, 3), (2, 3), (3, 3)]  # the sampler's bar only


def test_inp_15_with_noise_on_known_pixels_runs() -> None:
    models = random_models("fun-1.5-5b-inp", seed=5)
    request = _req(inputs=ConditioningInputs(image=_img()), frames=13, steps=2)
    frames = generate(models, request)  # seeded known-pixel noise: see test_conditioning
    assert frames.shape == (13, H, W, 3) and torch.isfinite(frames).all()


def test_context_windows_cover_the_video_and_slice_the_image_conditioning() -> None:
    models = random_models("5b-i2v", seed=6)  # tiny table: windows of exactly 3 latents (9 frames)
    spy = Spy(models.transformer)
    models = dataclasses.replace(models, transformer=spy)
    request = GenerateRequest(prompt="a boat", inputs=ConditioningInputs(image=torch.rand(1, 64, 96, 3)),
                              frames=25, height=64, width=96, steps=1, seed=1,
                              context=ContextOptions(length_frames=9, overlap_frames=4))
    latents = generate_latents(models, request)
    assert latents.shape == (1, 16, 7, 8, 12)
    image_frames = [x[:, :, 16:].flatten(2).abs().sum(-1).gt(0).any(0).tolist() for x, _t, _o in spy.calls]
    assert image_frames == [[True, False, False], [False, False, False], [False, False, False]]


def test_one_window_covering_everything_equals_no_windows(t2v, caplog) -> None:
    plain = generate_latents(t2v, _req(frames=13))
    for length in (13, 49):  # exactly the video, and longer than it
        with caplog.at_level(logging.DEBUG, logger="cogvideox_core.sampling.windows"):
            windowed = generate_latents(t2v, _req(frames=13, context=ContextOptions(length, 4)))
        assert "1 windows in 1 denoiser calls" in caplog.text  # the windowed path ran
        caplog.clear()
        assert torch.equal(plain, windowed)


def test_causal_windows_keep_the_short_videos_frames(t2v) -> None:
    # each frame from the first window covering it: the first window is never blended with the
    # others, so a long video's first window is the short video of the same seed (DDIM draws no
    # noise per step and the initial noise is drawn frame-major); pyramid blending changes it
    short = generate_latents(t2v, _req(frames=9, sampler="ddim"))  # 3 latent frames
    for weights, same in (("causal", True), ("pyramid", False)):
        long = generate_latents(t2v, _req(frames=25, sampler="ddim",
                                          context=ContextOptions(9, 4, weights=weights)))
        assert long.shape[2] == 7
        assert torch.equal(long[:, :, :3], short) == same, weights


class Forbidden:
    """A text encoder / VAE stand-in that fails if used."""

    model = nn.Linear(1, 1)

    def encode(self, *args, **kwargs):
        raise AssertionError("heavy work before validation")


@pytest.mark.parametrize("name, request_kwargs, match", [
    ("5b", dict(inputs=ConditioningInputs(end_image=torch.rand(1, H, W, 3))), "end_image"),
    ("5b-i2v", dict(inputs=ConditioningInputs(image=torch.rand(1, H, W, 3))), "height x width=32x48"),
    ("5b", dict(frames=10), "frames=10"),
    ("5b", dict(sampler="heun"), "sampler='heun'"),
    ("5b", dict(steps=0), "steps=0"),
    ("5b", dict(context=ContextOptions(8, 4)), None),  # 8 frames is 2 latents: fine for 5B
])
def test_refused_before_any_heavy_work(name: str, request_kwargs: dict, match: str | None) -> None:
    models = random_models(name, seed=0)
    models = dataclasses.replace(models, vae=Forbidden(), text_encoder=Forbidden())
    if match is None:
        with pytest.raises(AssertionError, match="heavy work"):
            generate(models, _req(**request_kwargs))
        return
    with pytest.raises(ValueError, match=match):
        generate(models, _req(**request_kwargs))


# ---- context windows through the real pipeline ------------------------------------------------

def test_fun_2b_windows_go_past_its_13_latent_table() -> None:
    models = random_models("fun-2b-inp", seed=8)  # tiny table: 3 latent frames (9 pixel frames)
    inputs = ConditioningInputs(image=_img())
    with pytest.raises(ValueError, match="frames=17.*at most 9 frames"):
        generate_latents(models, _req(inputs=inputs, frames=17, steps=1))
    windowed = generate_latents(models, _req(inputs=inputs, frames=17, steps=1,
                                             context=ContextOptions(9, 4)))
    assert windowed.shape == (1, 16, 5, 4, 6) and torch.isfinite(windowed).all()
    with pytest.raises(ValueError, match="length_frames=13.*at most 3 latent frames"):
        generate_latents(models, _req(inputs=inputs, frames=17, context=ContextOptions(13, 4)))


def _window_extras(models, inputs: ConditioningInputs) -> list[torch.Tensor]:
    spy = Spy(models.transformer)
    request = _req(inputs=inputs, frames=25, steps=1, context=ContextOptions(9, 4))
    generate_latents(dataclasses.replace(models, transformer=spy), request)
    return [x[0, :, 16:] for x, _t, _o in spy.calls]  # [L, 1 + 16, h, w] per window


def test_inp_start_goes_to_the_first_window_and_end_to_the_last(inp) -> None:
    start, end = _img(), _img(seed=1)
    both = _window_extras(inp, ConditioningInputs(image=start, end_image=end))
    start_only = _window_extras(inp, ConditioningInputs(image=start))
    assert len(both) == 3  # 7 latents in windows [0, 1, 2], [2, 3, 4], [4, 5, 6]
    assert [bool(e[:, 0].any(dim=(-1, -2))[0]) for e in both] == [True, False, False]  # start mask
    assert not both[1][:, 0].any() and not both[2][:, 0].any()  # nothing known in the mask there
    assert torch.equal(both[0], start_only[0]) and torch.equal(both[1], start_only[1])
    assert not torch.equal(both[2][-1], start_only[2][-1])  # the end frame's latent: last window


class FrameWise(nn.Module):
    """A synthetic transformer that never mixes frames: elementwise in the noisy latents, the
    Fun InP mask and masked-video channels, the timestep and the text, so windows predict each
    frame exactly as the whole video does."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.9))

    def check_input(self, *args, **kwargs) -> None:
        pass

    def forward(self, x, timestep, context, ofs=None):
        noisy, mask, known = x[:, :, :16], x[:, :, 16:17], x[:, :, 17:]
        t = (timestep.float() / 1000).view(-1, 1, 1, 1, 1)
        text = context[:, 0, 0].view(-1, 1, 1, 1, 1)
        return self.scale * noisy * t + 0.3 * known * (1 + mask) + text - 0.1


@pytest.mark.parametrize("schedule", ["static", "uniform", "looped"])
def test_framewise_denoiser_windowed_sampling_equals_full_sampling(inp, schedule: str) -> None:
    models = dataclasses.replace(inp, transformer=FrameWise())
    inputs = ConditioningInputs(image=_img(2), end_image=_img(seed=1))
    request = _req(inputs=inputs, frames=37, steps=4)  # 10 latents; dpm draws noise every step
    full = generate_latents(models, request)
    for weights in ("pyramid", "flat"):
        context = ContextOptions(9, 4, schedule, weights)  # windows of 3 latents, overlap 1
        assert torch.equal(generate_latents(models, dataclasses.replace(request, context=context)), full)


def test_batched_windows_fewer_calls_same_video(t2v) -> None:
    spy = Spy(t2v.transformer)
    models = dataclasses.replace(t2v, transformer=spy)
    one = generate_latents(models, _req(frames=25, steps=2, context=ContextOptions(9, 4)))
    calls_one = len(spy.calls)
    spy.calls.clear()
    three = generate_latents(models, _req(frames=25, steps=2, context=ContextOptions(9, 4, batch_windows=3)))
    assert (calls_one, len(spy.calls)) == (6, 2)  # 3 windows x 2 steps; CFG batched in each call
    assert spy.calls[0][0].shape[0] == 2 * 3
    torch.testing.assert_close(one, three, rtol=0, atol=1e-5)


def test_a_run_that_cannot_fit_is_refused_before_sampling(t2v, monkeypatch: pytest.MonkeyPatch) -> None:
    """Free memory below the estimate: NotEnoughMemory with the estimate, the limit and a change
    that fits, before the transformer runs once; with room the same request samples."""
    from cogvideox_core.generation import pipeline
    from cogvideox_core.memory import NotEnoughMemory
    from scaffold import RecordingRuntime

    request = _req(frames=33)
    need = pipeline.run_memory(t2v, request, pipeline.validate(t2v, request), "cpu").total()
    calls: list[int] = []
    real = type(t2v.transformer).forward
    monkeypatch.setattr(type(t2v.transformer), "forward", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    with pytest.raises(NotEnoughMemory) as info:
        pipeline.generate_latents(t2v, request, RecordingRuntime(free=need - 1))
    message = str(info.value)
    assert calls == [] and "on cpu but" in message and "would fit: " in message
    assert "frames instead of 33" in message
    pipeline.generate_latents(t2v, _req(frames=33, steps=1), RecordingRuntime(free=need))
    assert calls


def test_frames_beyond_the_trained_length_warn(t2v, caplog: pytest.LogCaptureFixture) -> None:
    from cogvideox_core.generation.pipeline import validate
    from cogvideox_core.sampling.windows import ContextOptions

    with caplog.at_level("WARNING"):
        validate(t2v, _req(frames=53))
    assert "frames=53 is beyond the 49 frames" in caplog.text and "context windows" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        validate(t2v, _req(frames=53, context=ContextOptions(49, 16)))
        validate(t2v, _req(frames=49))
    assert "beyond" not in caplog.text


def test_a_model_of_fewer_text_rows_reads_the_first_prompt_states() -> None:
    """A 2B model made for 32 text states (the tiny world's) gets the first 32 of the 226 the
    pack encodes, from a prompt and from given embeddings alike."""
    from cogvideox_core.models.transformer import CogVideoXTransformer
    from cogvideox_core.tiny import init_random

    base = random_models("2b", seed=3)
    cfg = dataclasses.replace(base.family.transformer, max_text_len=32)
    spy = Spy(init_random(CogVideoXTransformer(cfg), 3).eval())
    models = dataclasses.replace(base, transformer=spy, family=dataclasses.replace(base.family, transformer=cfg))
    video = generate(models, _req(steps=2, cfg=6.0))
    cond, uncond = (base.text_encoder.encode(p) for p in ("a red fox running", ""))
    assert cond.shape[1] == 226 and {t.shape[1] for t in spy.texts} == {32}
    assert torch.equal(spy.texts[0], torch.cat([uncond, cond])[:, :32])
    given = generate(models, _req(steps=2, cfg=6.0, prompt_embeds=cond, negative_embeds=uncond))
    assert torch.equal(video, given)


def test_a_prompt_longer_than_the_text_rows_read_is_named(caplog) -> None:
    """A model made for 8 text states reads the first 8 of a prompt's: a longer prompt (or
    negative prompt) is named in a warning with its token count; a short one is not."""
    from cogvideox_core.models.transformer import CogVideoXTransformer
    from cogvideox_core.tiny import init_random

    base = random_models("2b", seed=3)
    cfg = dataclasses.replace(base.family.transformer, max_text_len=8)
    models = dataclasses.replace(base, transformer=init_random(CogVideoXTransformer(cfg), 3).eval(),
                                 family=dataclasses.replace(base.family, transformer=cfg))
    with caplog.at_level(logging.WARNING, logger="cogvideox_core.generation.pipeline"):
        generate(models, _req(prompt="a red fox", steps=1, cfg=6.0))
        assert "reads the first" not in caplog.text
        generate(models, _req(prompt="a red fox running through the snowy forest at dawn", steps=1, cfg=6.0,
                              negative_prompt="blurry, low quality, jpeg artefacts everywhere"))
    lines = [r.getMessage() for r in caplog.records if "reads the first 8 T5 states" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("prompt: ") and lines[1].startswith("negative prompt: ")
