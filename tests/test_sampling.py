"""cogvideox_core.sampling against diffusers 0.42 as the oracle.

Tolerances, stated once:
- schedules (alphas_cumprod, timesteps): the same float64 ops as diffusers, compared to 1e-12.
- full sampling loops in float32 against the real CogVideoX pipelines (tiny fake transformer,
  latents given, ``output_type="latent"``): max |ours - diffusers| <= 1e-5 (the step
  coefficients are Python floats here, 0-dim float64 tensors there: a few float32 ulps).
- batched vs sequential CFG: <= 1e-6. add_noise: <= 1e-6.
- toy problems in float64: a single known x0 must come back to 1e-4; on Gaussian data the
  exact probability-flow answer is known and the error must shrink at each solver's order.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import types

import pytest
import torch

from cogvideox_core.sampling import (SAMPLER_NAMES, STOCHASTIC_SAMPLERS, SchedulerConfig, add_noise,
                                     alphas_cumprod, cfg_denoiser, dynamic_cfg_scale, get_sampler,
                                     make_schedule, schedule_sigmas, spaced_timesteps,
                                     timesteps_for_strength)

import diffusers  # noqa: F401 the oracle: installed by .ci/setup, never skipped
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline  # noqa: E402
from diffusers.pipelines.cogvideo.pipeline_cogvideox_video2video import CogVideoXVideoToVideoPipeline  # noqa: E402

LOOP_ATOL = 1e-5
SHAPE = (1, 2, 4, 3, 5)  # [B, F_lat, C, H_lat, W_lat]: 5 frames, 24x40 pixels


def shipped(snr: float) -> dict[str, object]:
    """The scheduler_config.json the checkpoints ship (2B: snr 3.0, others 1.0)."""
    return {"_class_name": "CogVideoXDDIMScheduler", "_diffusers_version": "0.31.0.dev0",
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "clip_sample": False, "clip_sample_range": 1.0, "num_train_timesteps": 1000,
            "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "sample_max_value": 1.0,
            "set_alpha_to_one": True, "snr_shift_scale": snr, "steps_offset": 0,
            "timestep_spacing": "trailing", "trained_betas": None}


def diffusers_scheduler(cls: type, snr: float):
    cfg = {k: v for k, v in shipped(snr).items() if not k.startswith("_")}
    return cls(**cfg)


class FakeTransformer(torch.nn.Module):
    """A deterministic v-model: nonlinear in x, depends on t and on the text states."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(patch_size_t=None, in_channels=channels,
                                            use_rotary_positional_embeddings=False)
        self.pattern = torch.randn(channels, 1, 1, generator=torch.Generator().manual_seed(7))

    device = property(lambda self: torch.device("cpu"))
    dtype = property(lambda self: torch.float32)

    def cache_context(self, name: str):
        return contextlib.nullcontext()

    def forward(self, hidden_states, encoder_hidden_states, timestep, image_rotary_emb=None,
                attention_kwargs=None, return_dict=False):
        tt = timestep.float().view(-1, 1, 1, 1, 1) / 1000  # [B, 1, 1, 1, 1]
        text = encoder_hidden_states.float().mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        v = 0.6 * hidden_states * torch.cos(tt) + 0.3 * torch.sin(hidden_states + tt) + text * self.pattern
        return (v.to(hidden_states.dtype),)


def model_fn_for(fake: FakeTransformer):
    def model_fn(x: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        timestep = torch.tensor(t, dtype=torch.int64).expand(x.shape[0])
        return fake(hidden_states=x, encoder_hidden_states=cond, timestep=timestep)[0]
    return model_fn


def inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(SHAPE, generator=g).to(dtype)
    cond, uncond = torch.randn(1, 7, 8, generator=g).to(dtype), torch.randn(1, 7, 8, generator=g).to(dtype)
    return latents, cond, uncond


# ---------------------------------------------------------------- schedules

@pytest.mark.parametrize("snr", [1.0, 3.0])
def test_alphas_cumprod_matches_diffusers(snr):
    ours = alphas_cumprod(SchedulerConfig(snr_shift_scale=snr))
    ref = diffusers_scheduler(CogVideoXDDIMScheduler, snr).alphas_cumprod
    assert ours.dtype == torch.float64 and ref.dtype == torch.float64
    assert (ours - ref).abs().max().item() <= 1e-12
    assert ours[-1].item() == 0.0  # zero terminal SNR


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 3, 5, 7, 50])
def test_timesteps_match_diffusers(steps, spacing):
    ref = CogVideoXDDIMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert spaced_timesteps(steps, SchedulerConfig(timestep_spacing=spacing)) == ref.timesteps.tolist()


def test_trailing_timesteps_never_reach_minus_one():
    """diffusers' float arange gives N + 1 trailing timesteps for N = 61 (the last one -1); we keep N."""
    ref = diffusers_scheduler(CogVideoXDDIMScheduler, 1.0)
    ref.set_timesteps(61)
    ours = spaced_timesteps(61)
    assert len(ref.timesteps) == 62 and ref.timesteps[-1].item() == -1
    assert ours == ref.timesteps[:61].tolist()
    assert all(len(spaced_timesteps(n)) == n and min(spaced_timesteps(n)) >= 0 for n in range(1, 1001, 7))


def test_step_goes_to_t_minus_stride_not_next_listed():
    s = make_schedule(3)
    assert s.timesteps == (999, 666, 332) and s.prev_timesteps == (666, 333, -1)
    assert s.alpha(-1) == 1.0 and s.next_timestep(2) == -1


def test_sigmas_infinite_at_zero_snr():
    sig = schedule_sigmas(make_schedule(5))
    assert math.isinf(sig[0].item()) and sig[-1].item() == 0.0 and torch.isfinite(sig[1:]).all()


@pytest.mark.parametrize("steps", [1, 5, 10, 50])
@pytest.mark.parametrize("strength", [0.1, 0.25, 0.5, 0.7, 0.8, 1.0])
def test_timesteps_for_strength_matches_v2v_get_timesteps(steps, strength):
    sched = diffusers_scheduler(CogVideoXDDIMScheduler, 1.0)
    sched.set_timesteps(steps)
    ref, n = CogVideoXVideoToVideoPipeline.get_timesteps(types.SimpleNamespace(scheduler=sched), steps,
                                                        sched.timesteps, strength, "cpu")
    if n == 0:
        with pytest.raises(ValueError, match="strength"):
            timesteps_for_strength(steps, strength)
    else:
        assert timesteps_for_strength(steps, strength) == ref.tolist() and len(ref) == n


def test_add_noise_matches_scheduler():
    x0 = inputs()[0]
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    sched = diffusers_scheduler(CogVideoXDDIMScheduler, 3.0)
    for t in (999, 500, 0):
        ref = sched.add_noise(x0, noise, torch.tensor([t]))
        ours = add_noise(x0, noise, t, alphas_cumprod(SchedulerConfig(snr_shift_scale=3.0)))
        assert (ours - ref).abs().max().item() <= 1e-6


# ---------------------------------------------------------------- config

def test_scheduler_config_from_file_and_dict(tmp_path, caplog):
    from cogvideox_core.loading.weights import load_scheduler_config

    folder = tmp_path / "scheduler"
    folder.mkdir()
    (folder / "scheduler_config.json").write_text(json.dumps(shipped(3.0)))
    assert SchedulerConfig.from_json(folder / "scheduler_config.json") == SchedulerConfig(snr_shift_scale=3.0)
    # one search rule: the model root, or the folder holding a component folder or file
    (tmp_path / "transformer").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"")
    for path in (tmp_path, tmp_path / "transformer", tmp_path / "model.safetensors"):
        assert load_scheduler_config(path) == SchedulerConfig(snr_shift_scale=3.0), path
    assert load_scheduler_config(tmp_path / "transformer" / "deeper") is None  # not further up
    with caplog.at_level(logging.WARNING):
        cfg = SchedulerConfig.from_json({**shipped(1.0), "mystery_knob": 2})
    assert cfg == SchedulerConfig() and "mystery_knob" in caplog.text
    assert "clip_sample" not in caplog.text and "_class_name" not in caplog.text


def test_scheduler_config_errors(tmp_path):
    with pytest.raises(ValueError, match="prediction_type='epsilon'"):
        SchedulerConfig(prediction_type="epsilon")
    with pytest.raises(ValueError, match="timestep_spacing"):
        SchedulerConfig.from_json({"timestep_spacing": "karras"})
    with pytest.raises(ValueError, match="scheduler_config.json"):
        SchedulerConfig.from_json(tmp_path)  # a folder: finding the file is the loader's job


# ---------------------------------------------------------------- full loops vs the pipelines

def run_pipeline(cls, sampler, snr, steps, scale, dynamic, dtype=torch.float32, **extra):
    latents, cond, uncond = inputs(dtype)
    scheduler = diffusers_scheduler(CogVideoXDPMScheduler if sampler == "dpm" else CogVideoXDDIMScheduler, snr)
    pipe = cls(tokenizer=None, text_encoder=None, vae=None, transformer=FakeTransformer(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=latents, height=24, width=40,
                num_inference_steps=steps, guidance_scale=scale, use_dynamic_cfg=dynamic,
                generator=torch.Generator().manual_seed(42), output_type="latent", return_dict=False,
                **extra)[0]


def run_ours(sampler, snr, steps, scale, dynamic, dtype=torch.float32, strength=1.0, batched=True):
    latents, cond, uncond = inputs(dtype)
    schedule = make_schedule(steps, SchedulerConfig(snr_shift_scale=snr), strength=strength)
    denoise = cfg_denoiser(model_fn_for(FakeTransformer()), cond, uncond, scale, batched=batched,
                           dynamic="diffusers" if dynamic else None, timesteps=schedule.timesteps)
    return get_sampler(sampler)(denoise, latents, schedule, generator=torch.Generator().manual_seed(42))


@pytest.mark.parametrize("sampler,snr,steps,scale,dynamic", [
    ("ddim", 3.0, 5, 6.0, False), ("ddim", 3.0, 7, 6.0, True), ("ddim", 1.0, 4, 1.0, False),
    ("dpm", 1.0, 5, 6.0, False), ("dpm", 1.0, 7, 6.0, True), ("dpm", 3.0, 4, 1.0, False),
    ("dpm", 1.0, 1, 6.0, False),
])
def test_t2v_loop_matches_pipeline(sampler, snr, steps, scale, dynamic):
    ref = run_pipeline(CogVideoXPipeline, sampler, snr, steps, scale, dynamic, num_frames=5)
    ours = run_ours(sampler, snr, steps, scale, dynamic)
    assert ours.dtype == ref.dtype and torch.isfinite(ours).all()
    assert (ours - ref).abs().max().item() <= LOOP_ATOL


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_v2v_loop_matches_pipeline(sampler):
    """Given (already noised) latents the V2V pipeline runs the last int(N * strength) steps."""
    ref = run_pipeline(CogVideoXVideoToVideoPipeline, sampler, 1.0, 10, 6.0, False, strength=0.6)
    ours = run_ours(sampler, 1.0, 10, 6.0, False, strength=0.6)
    assert (ours - ref).abs().max().item() <= LOOP_ATOL


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_bf16_loop_matches_pipeline(sampler):
    """bf16 latents: noise drawn in bf16, coefficients on bf16 tensors rounded to bf16 as diffusers'
    0-dim float64 tensors are, latents cast back each step: bit-identical here (checked to 1e-6)."""
    ref = run_pipeline(CogVideoXPipeline, sampler, 1.0, 5, 6.0, True, dtype=torch.bfloat16, num_frames=5)
    ours = run_ours(sampler, 1.0, 5, 6.0, True, dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    assert (ours.float() - ref.float()).abs().max().item() <= 1e-6


# ---------------------------------------------------------------- guidance

@pytest.mark.parametrize("dynamic", [None, "step", "diffusers"])
def test_batched_and_sequential_cfg_agree(dynamic):
    a = run_ours("dpm", 1.0, 5, 6.0, dynamic is not None, batched=True)
    b = run_ours("dpm", 1.0, 5, 6.0, dynamic is not None, batched=False)
    assert (a - b).abs().max().item() <= 1e-6
    x, cond, uncond = inputs()
    ts = make_schedule(5).timesteps
    fns = [cfg_denoiser(model_fn_for(FakeTransformer()), cond, uncond, 6.0, batched=bt, dynamic=dynamic,
                        timesteps=ts) for bt in (True, False)]
    assert (fns[0](x, ts[2]) - fns[1](x, ts[2])).abs().max().item() <= 1e-6


def test_dict_conditioning_is_batched_key_by_key():
    seen = {}

    def model_fn(x, t, cond):
        seen.update(cond)
        return x * cond["text"].mean() + cond["scale"]

    x = torch.ones(1, 2)
    cfg_denoiser(model_fn, {"text": torch.full((1, 3), 2.0), "scale": 1.0},
                 {"text": torch.zeros(1, 3), "scale": 1.0}, 3.0)(x, 999)
    assert seen["text"].shape == (2, 3) and seen["text"][0].sum() == 0 and seen["scale"] == 1.0


def test_dynamic_cfg_formulas():
    ts = make_schedule(50).timesteps
    step = [dynamic_cfg_scale(6.0, t, ts, "step") for t in ts]
    assert step[0] == pytest.approx(7.0) and step[-1] == pytest.approx(1.0, abs=1e-6)
    assert all(a >= b for a, b in zip(step, step[1:]))
    t = ts[3]  # diffusers: the raw timestep in place of the step index
    assert dynamic_cfg_scale(6.0, t, ts, "diffusers") == 1 + 6.0 * (
        (1 - math.cos(math.pi * ((50 - t) / 50) ** 5.0)) / 2)


def test_no_guidance_at_scale_one_calls_model_once():
    calls = []
    fn = cfg_denoiser(lambda x, t, c: calls.append(x.shape[0]) or x, torch.zeros(1, 3), torch.zeros(1, 3), 1.0)
    assert fn(torch.ones(1, 2), 999).dtype == torch.float32 and calls == [1]


# ---------------------------------------------------------------- toy problems with known answers

def gaussian_denoiser(schedule, mu: float, s: float):
    """Exact v for data N(mu, s^2) per element: x0_hat = mu + sqrt(a) s^2 (x - sqrt(a) mu) / (a s^2 + 1 - a)."""
    def denoise(x, t):
        a = schedule.alpha(t)
        x0 = mu + (a**0.5 * s * s / (a * s * s + 1 - a)) * (x - a**0.5 * mu)
        eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
        return a**0.5 * eps - (1 - a) ** 0.5 * x0
    return denoise


def noise64(n=256, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("steps", [1, 8, 50])
def test_single_known_x0_is_recovered(name, steps):
    assert single_x0_error(name, steps) <= 1e-4


def single_x0_error(name: str, steps: int) -> float:
    """Max error of a run whose denoiser returns the exact v for one known x0."""
    schedule = make_schedule(steps, SchedulerConfig(snr_shift_scale=3.0))
    x0 = 0.25 + noise64(seed=1)

    def denoise(x, t):
        a = schedule.alpha(t)
        return a**0.5 * (x - a**0.5 * x0) / (1 - a) ** 0.5 - (1 - a) ** 0.5 * x0

    out = get_sampler(name)(denoise, noise64(), schedule, generator=torch.Generator().manual_seed(3))
    return (out - x0).abs().max().item()


def test_cogvideox_steps_miss_the_listed_timesteps_when_n_does_not_divide_1000():
    """N = 7: ddim/dpm step to t - 142 but the model is next asked at the listed t - 143 (diffusers'
    behaviour, kept); our own solvers step between listed timesteps and stay exact."""
    assert single_x0_error("ddim", 7) > 1e-2 and single_x0_error("dpm", 7) > 1e-2
    assert single_x0_error("euler", 7) <= 1e-4 and single_x0_error("dpmpp_2m", 7) <= 1e-4


def test_solvers_converge_at_their_order():
    """Final alpha a[0] (set_alpha_to_one=False) keeps the last step finite, so orders show."""
    cfg, mu, s, xt = SchedulerConfig(snr_shift_scale=3.0, set_alpha_to_one=False), 0.5, 0.8, noise64()

    def error(name, steps):
        schedule = make_schedule(steps, cfg)
        af = schedule.final_alpha
        exact = af**0.5 * mu + (af * s * s + 1 - af) ** 0.5 * xt  # the PF-ODE keeps the z-score
        return (get_sampler(name)(gaussian_denoiser(schedule, mu, s), xt, schedule) - exact).abs().max().item()

    assert 3.0 < error("euler", 40) / error("euler", 160) < 5.0  # first order: ~4x for 4x steps
    assert error("dpmpp_2m", 40) / error("dpmpp_2m", 160) > 8.0  # second order: towards 16x
    assert error("dpmpp_2m", 160) < error("euler", 160) / 4


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "ddim"])
def test_zero_snr_gaussian_converges_and_is_deterministic(name):
    mu, s, xt = 0.5, 0.8, noise64()
    errs = []
    for steps in (10, 50, 100):
        schedule = make_schedule(steps, SchedulerConfig(snr_shift_scale=3.0))
        run = lambda: get_sampler(name)(gaussian_denoiser(schedule, mu, s), xt, schedule)
        out = run()
        assert torch.equal(out, run())
        errs.append((out - (mu + s * xt)).abs().max().item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.1


@pytest.mark.parametrize("name", sorted(STOCHASTIC_SAMPLERS))
def test_stochastic_samplers_repeat_with_the_same_seed(name):
    schedule = make_schedule(6)
    denoise = gaussian_denoiser(schedule, 0.5, 0.8)
    runs = [get_sampler(name)(denoise, noise64(), schedule, generator=torch.Generator().manual_seed(s))
            for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# ---------------------------------------------------------------- callback, errors

def test_callback_every_step_and_interrupt_propagates():
    schedule = make_schedule(4)
    seen = []
    get_sampler("dpmpp_2m")(gaussian_denoiser(schedule, 0.0, 1.0), noise64(), schedule, callback=seen.append)
    assert [d["step"] for d in seen] == [0, 1, 2, 3] and {d["total"] for d in seen} == {4}
    assert [d["t"] for d in seen] == list(schedule.timesteps)
    assert set(seen[0]) == {"step", "total", "x", "denoised", "t"}

    class Stop(Exception):
        pass

    def stop(info):
        if info["step"] == 1:
            raise Stop

    with pytest.raises(Stop):
        get_sampler("ddim")(gaussian_denoiser(schedule, 0.0, 1.0), noise64(), schedule, callback=stop)


def test_errors_name_parameter_value_and_rule():
    with pytest.raises(ValueError, match=r"steps=0 must be in 1\.\.num_train_timesteps=1000"):
        make_schedule(0)
    with pytest.raises(ValueError, match="steps=1001"):
        make_schedule(1001)
    with pytest.raises(ValueError, match=r"sampler='heun'.*known: ddim, dpm, euler"):
        get_sampler("heun")
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=rf"strength={bad} must be in \(0, 1\]"):
            make_schedule(10, strength=bad)
    schedule = make_schedule(3)
    with pytest.raises(ValueError, match="generator=None"):
        get_sampler("dpm")(lambda x, t: x, noise64(), schedule)
    with pytest.raises(ValueError, match=r"eta=2\.0 must be in \[0, 1\]"):
        get_sampler("euler")(lambda x, t: x, noise64(), schedule, eta=2.0)
    with pytest.raises(ValueError, match="dynamic='cosine'"):
        cfg_denoiser(lambda x, t, c: x, torch.zeros(1), torch.zeros(1), 6.0, dynamic="cosine", timesteps=(1,))
    with pytest.raises(ValueError, match="timesteps=None"):
        cfg_denoiser(lambda x, t, c: x, torch.zeros(1), torch.zeros(1), 6.0, dynamic="step")
    with pytest.raises(ValueError, match="t=5 is not one of the timesteps"):
        dynamic_cfg_scale(6.0, 5, (999, 499), "step")
