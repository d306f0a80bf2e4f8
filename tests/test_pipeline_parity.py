"""End-to-end parity with diffusers' CogVideoX pipelines: same tiny random weights, same seed,
same scheduler, fp32 on the CPU.

For every pipeline diffusers has (text-to-video 2B sincos and 5B RoPE and 1.5 with its odd-latent
padding, image-to-video 5B-I2V and 1.5-I2V, video-to-video, Fun Control), with DDIM and DPM, our
:func:`~cogvideox_core.generation.pipeline.generate_latents` is compared with the pipeline's
``output_type="latent"`` result (its padding dropped, divided by the VAE scale) and our decoded
frames with the pipeline's own ``decode_latents`` + ``postprocess_video``. Tolerance 1e-4 (the
observed differences are 0 or a few float32 ulps). Run ``python tests/test_pipeline_parity.py``
for the table of max abs diffs.
"""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

import diffusers  # noqa: F401  the oracle: installed by .ci/setup, never skipped
from diffusers import (CogVideoXFunControlPipeline, CogVideoXImageToVideoPipeline,  # noqa: E402
                       CogVideoXPipeline, CogVideoXVideoToVideoPipeline)
from pipeline_models import build, ref_pipeline  # noqa: E402

from cogvideox_core.generation.conditioning import ConditioningInputs  # noqa: E402
from cogvideox_core.generation.pipeline import GenerateRequest, generate_latents, latents_to_frames  # noqa: E402

logger = logging.getLogger("tests.pipeline_parity")

TOL = 1e-4
PROMPT, NEGATIVE, SEED = "a panda playing a guitar", "blurry, low quality", 1234
RESULTS: dict[str, tuple[float, float]] = {}  # case -> (latents, frames) max abs diff


def _image(h: int, w: int, seed: int = 5) -> torch.Tensor:
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))  # [1, H, W, 3]


def _video(f: int, h: int, w: int, seed: int = 6) -> torch.Tensor:
    base = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))
    drift = torch.linspace(0, 0.3, f)[:, None, None, None]
    return (base + drift) % 1.0  # [F, H, W, 3]


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    pipeline: type
    sampler: str
    frames: int = 9
    height: int = 32
    width: int = 48
    mode: str = "t2v"  # t2v | i2v | v2v | control
    steps: int = 4
    denoise: float = 1.0
    dynamic: bool = False
    batched: bool = True


CASES = {
    "t2v-2b-ddim": Case("2b", CogVideoXPipeline, "ddim"),
    "t2v-2b-dpm-48x80": Case("2b", CogVideoXPipeline, "dpm", height=48, width=80),
    "t2v-5b-ddim-13-frames": Case("5b", CogVideoXPipeline, "ddim", frames=13),
    "t2v-5b-dpm-80x64-dynamic": Case("5b", CogVideoXPipeline, "dpm", height=80, width=64, dynamic=True),
    "t2v-5b-dpm-cfg-sequential": Case("5b", CogVideoXPipeline, "dpm", batched=False),
    "t2v-1.5-dpm-padded": Case("1.5-5b", CogVideoXPipeline, "dpm"),
    "t2v-1.5-ddim-even": Case("1.5-5b", CogVideoXPipeline, "ddim", frames=13, height=64, width=80),
    # 5B-I2V takes the size of its (tiny) learned table only: 64x96
    "i2v-5b-i2v-dpm": Case("5b-i2v", CogVideoXImageToVideoPipeline, "dpm", height=64, width=96, mode="i2v"),
    "i2v-5b-i2v-ddim": Case("5b-i2v", CogVideoXImageToVideoPipeline, "ddim", height=64, width=96, mode="i2v"),
    "i2v-1.5-i2v-dpm-padded": Case("1.5-5b-i2v", CogVideoXImageToVideoPipeline, "dpm", mode="i2v"),
    "i2v-1.5-i2v-ddim-padded": Case("1.5-5b-i2v", CogVideoXImageToVideoPipeline, "ddim", height=64,
                                    width=80, mode="i2v"),
    "v2v-5b-dpm-0.5": Case("5b", CogVideoXVideoToVideoPipeline, "dpm", mode="v2v", denoise=0.5),
    "v2v-2b-ddim-0.75": Case("2b", CogVideoXVideoToVideoPipeline, "ddim", mode="v2v", denoise=0.75),
    "control-fun-2b-ddim": Case("fun-2b-control", CogVideoXFunControlPipeline, "ddim", mode="control"),
    # diffusers' Fun Control pipeline calls every scheduler like DDIM (its DPM branch is missing)
    "control-fun-5b-ddim-80x64": Case("fun-5b-control", CogVideoXFunControlPipeline, "ddim",
                                      height=80, width=64, mode="control"),
}


def _inputs(case: Case) -> tuple[ConditioningInputs, dict[str, object]]:
    """Our conditioning inputs and the same pixels in the form the diffusers pipeline takes."""
    f, h, w = case.frames, case.height, case.width
    if case.mode == "i2v":
        image = _image(h, w)
        return ConditioningInputs(image=image), {"image": image.permute(0, 3, 1, 2), "num_frames": f}
    if case.mode == "v2v":
        video = _video(f, h, w)
        return (ConditioningInputs(video=video, denoise=case.denoise),
                {"video": video.permute(0, 3, 1, 2), "strength": case.denoise})
    if case.mode == "control":
        video = _video(f, h, w)
        return ConditioningInputs(control=video), {"control_video": video.permute(0, 3, 1, 2)[None]}
    return ConditioningInputs(), {"num_frames": f}


def _run(case: Case) -> tuple[float, float]:
    ref, models = build(case.family)
    family = models.family
    pipe = ref_pipeline(case.pipeline, ref, case.sampler, family)
    inputs, ref_inputs = _inputs(case)
    ref_latents = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=case.height, width=case.width,
                       num_inference_steps=case.steps, guidance_scale=6.0, use_dynamic_cfg=case.dynamic,
                       generator=torch.Generator().manual_seed(SEED), output_type="latent",
                       **ref_inputs).frames  # [1, F_total, C, h, w] scaled, padding included
    request = GenerateRequest(prompt=PROMPT, negative_prompt=NEGATIVE, inputs=inputs, frames=case.frames,
                              height=case.height, width=case.width, steps=case.steps, cfg=6.0,
                              dynamic_cfg="diffusers" if case.dynamic else None,
                              cfg_batched=case.batched, sampler=case.sampler, seed=SEED)
    ours = generate_latents(models, request)  # [1, C, F_lat, h, w] unscaled
    pad = ref_latents.shape[1] - ours.shape[2]
    ref_unscaled = (1 / family.vae_scaling_factor) * ref_latents[:, pad:].permute(0, 2, 1, 3, 4)
    ref_frames = pipe.video_processor.postprocess_video(pipe.decode_latents(ref_latents[:, pad:]),
                                                        output_type="pt")[0]  # [F, 3, H, W]
    frames = latents_to_frames(models, ours)  # [F, H, W, 3]
    assert ours.shape == ref_unscaled.shape
    assert frames.shape == ref_frames.permute(0, 2, 3, 1).shape
    d_lat = (ours - ref_unscaled).abs().max().item()
    d_frames = (frames - ref_frames.permute(0, 2, 3, 1)).abs().max().item()
    return d_lat, d_frames


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_diffusers(name: str) -> None:
    d_lat, d_frames = _run(CASES[name])
    RESULTS[name] = (d_lat, d_frames)
    logger.info("%s: latents %.3g, frames %.3g", name, d_lat, d_frames)
    assert d_lat <= TOL, f"{name}: latents differ by {d_lat}"
    assert d_frames <= TOL, f"{name}: frames differ by {d_frames}"


def test_padding_frame_is_dropped_for_15() -> None:
    """1.5 with 9 frames: 3 latents padded to 4 for sampling, 3 handed out, 9 frames decoded."""
    _ref, models = build("1.5-5b")
    request = GenerateRequest(prompt=PROMPT, frames=9, height=32, width=48, steps=2, seed=SEED)
    latents = generate_latents(models, request)
    assert latents.shape == (1, 16, 3, 4, 6)
    assert latents_to_frames(models, latents).shape == (9, 32, 48, 3)


if __name__ == "__main__":
    torch.set_num_threads(2)
    for case_name in CASES:
        lat, fr = _run(CASES[case_name])
        print(f"{case_name:32s} latents {lat:.3g}  frames {fr:.3g}")
