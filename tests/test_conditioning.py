"""Conditioning plans and builders: the Fun InP mask channel values of SPEC.md exactly, what each
mode hands the sampler, and every refusal (before any heavy work, naming the input)."""
from __future__ import annotations

import pytest
import torch

from cogvideox_core.generation.conditioning import (INP_NOISE_SIGMA, ConditioningInputs, build_conditioning,
                                         inp_mask_channel, known_frames_mask, plan_conditioning,
                                         to_pixels)
from cogvideox_core.tiny import init_random, tiny_family, tiny_vae_config
from cogvideox_core.families import get_family
from cogvideox_core.vae.model import CogVideoXVAE

H, W = 32, 48  # pixels; latents 4 x 6


def _mask_values(frames: int, known: list[int]) -> list[float]:
    """The mask channel before scaling, one value per latent frame (spatially constant here)."""
    lat = (frames - 1) // 4 + 1
    m = inp_mask_channel(known_frames_mask(frames, known, 16, 16), lat, 2, 2, scale=1.0)  # [1, F, 1, 2, 2]
    assert torch.equal(m, m[..., :1, :1].expand_as(m))
    return m[0, :, 0, 0, 0].tolist()


@pytest.mark.parametrize("known, expected", [
    ([0], [1.0] + [0.0] * 12),  # start image
    ([0, 48], [1.0] + [0.0] * 12),  # start + end: the end frame only through the masked video
    ([0, 46, 47, 48], [1.0] + [0.0] * 11 + [1.0]),  # start + the last 3 frames
    ([0, 1, 2, 3], [1.0, 1.0] + [0.0] * 11),  # 4 known start frames
    ([], [0.0] * 13),  # nothing known (T2V with an InP model)
    ([48], [0.0] * 13),  # end image only
])
def test_spec_mask_channel_values_exactly(known: list[int], expected: list[float]) -> None:
    assert _mask_values(49, known) == expected


def test_mask_channel_is_scaled_and_spatial() -> None:
    mask = torch.zeros(1, 1, 9, 32, 32)
    mask[..., 16:] = 1.0  # generate the right half
    m = inp_mask_channel(mask, 3, 4, 4, scale=0.7)  # [1, 3, 1, 4, 4]
    assert torch.equal(m[..., :2], torch.full_like(m[..., :2], 0.7))
    assert torch.equal(m[..., 2:], torch.zeros_like(m[..., 2:]))


class SpyVAE:
    """A tiny random CogVideoX VAE that records the pixels it encodes."""

    def __init__(self, family) -> None:
        self.vae = init_random(CogVideoXVAE(tiny_vae_config(family)), 0).eval()
        self.seen: list[torch.Tensor] = []

    def encode(self, video: torch.Tensor):
        self.seen.append(video.clone())
        with torch.no_grad():
            return self.vae.encode(video)


def _build(name: str, inputs: ConditioningInputs, frames: int = 9, h: int = H, w: int = W, seed: int = 0):
    family = tiny_family(name)
    plan = plan_conditioning(family, inputs, frames, h, w)
    spy = SpyVAE(family)
    cond = build_conditioning(plan, inputs, family, spy, torch.Generator().manual_seed(seed),
                              aug_generator=torch.Generator().manual_seed(seed + 1))
    return family, plan, cond, spy


def _img(k: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(k, H, W, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode, inputs, known, mask_lat", [
    ("start", dict(image=_img()), [0], [1, 0, 0]),
    ("end", dict(end_image=_img(seed=1)), [8], [0, 0, 0]),
    ("start+end", dict(image=_img(), end_image=_img(seed=1)), [0, 8], [1, 0, 0]),
    ("start frames", dict(image=_img(4)), [0, 1, 2, 3], [1, 1, 0]),
])
def test_inp_builds_mask_and_masked_video(mode: str, inputs: dict, known: list[int],
                                          mask_lat: list[int]) -> None:
    family, plan, cond, spy = _build("fun-5b-inp", ConditioningInputs(**inputs))
    s = family.vae_scaling_factor
    assert plan.mode == "inp" and cond.extra.shape == (1, 3, 17, 4, 6)
    assert cond.extra[0, :, 0, 0, 0].tolist() == [pytest.approx(v * s) for v in mask_lat]
    (pixels,) = spy.seen  # [1, 3, 9, H, W]: known frames as given (2x - 1), others -1
    unknown = [i for i in range(9) if i not in known]
    assert torch.equal(pixels[:, :, unknown], torch.full_like(pixels[:, :, unknown], -1.0))
    images = torch.cat([inputs[k] for k in ("image", "end_image") if k in inputs])
    assert torch.equal(pixels[:, :, known], to_pixels(images, H, W)[0:1])
    z = s * spy.vae.encode(pixels).mode().permute(0, 2, 1, 3, 4)
    assert torch.equal(cond.extra[:, :, 1:], z)


def test_inp_video_with_spatial_mask() -> None:
    video = torch.rand(9, H, W, 3, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, H, W)
    mask[:, :, W // 2:] = 1.0  # generate the right half of every frame
    family, plan, cond, spy = _build("fun-5b-inp", ConditioningInputs(video=video, mask=mask))
    (pixels,) = spy.seen
    assert torch.equal(pixels[..., W // 2:], torch.full_like(pixels[..., W // 2:], -1.0))
    assert torch.equal(pixels[..., :W // 2], to_pixels(video, H, W)[..., :W // 2])
    m = cond.extra[0, :, 0]  # [3, 4, 6]
    assert torch.equal(m[..., :3], torch.full_like(m[..., :3], family.vae_scaling_factor))
    assert torch.equal(m[..., 3:], torch.zeros_like(m[..., 3:]))


def test_inp_noise_on_known_pixels_where_the_config_asks() -> None:
    inputs = ConditioningInputs(image=_img())
    _f, _p, _c, spy = _build("fun-1.5-5b-inp", inputs, frames=13)  # add_noise_in_inpaint: true
    noisy = spy.seen[0]
    diff = noisy[:, :, 0] - to_pixels(inputs.image, H, W)[:, :, 0]
    assert 0.8 * INP_NOISE_SIGMA < diff.std().item() < 1.2 * INP_NOISE_SIGMA
    assert torch.equal(noisy[:, :, 1:], torch.full_like(noisy[:, :, 1:], -1.0))
    _f, _p, _c, spy = _build("fun-5b-inp", inputs)  # V1.1 config: no noise
    assert torch.equal(spy.seen[0][:, :, 0], to_pixels(inputs.image, H, W)[:, :, 0])
    again = _build("fun-1.5-5b-inp", inputs, frames=13)[3].seen[0]
    assert torch.equal(again, noisy)  # seeded: the same noise every time


def test_t2v_with_inp_model_is_zeros_and_encodes_nothing() -> None:
    family, plan, cond, spy = _build("fun-2b-inp", ConditioningInputs())
    assert plan.mode == "t2v" and spy.seen == []
    assert torch.equal(cond.extra, torch.zeros(1, 3, 17, 4, 6))


def test_i2v_image_latent_in_frame_zero_then_zeros() -> None:
    image = _img()
    family, plan, cond, spy = _build("5b-i2v", ConditioningInputs(image=image), h=64, w=96)
    gen = torch.Generator().manual_seed(0)
    z = spy.vae.encode(to_pixels(image, 64, 96)).sample(gen).permute(0, 2, 1, 3, 4)
    assert torch.equal(cond.extra[:, :1], family.vae_scaling_factor * z)
    assert not cond.extra[:, 1:].any() and cond.extra.shape == (1, 3, 16, 8, 12)


def test_15_i2v_inverted_scale_ofs_and_padding() -> None:
    image = _img()
    family, plan, cond, spy = _build("1.5-5b-i2v", ConditioningInputs(image=image))
    assert (plan.latent_frames, plan.padding, plan.ofs) == (3, 1, 2.0)
    z = spy.vae.encode(to_pixels(image, H, W)).sample(torch.Generator().manual_seed(0))
    assert torch.equal(cond.extra[:, :1], (1 / family.vae_scaling_factor) * z.permute(0, 2, 1, 3, 4))
    assert cond.extra.shape[1] == 4 and not cond.extra[:, 1:].any()


def test_v2v_and_control_latents() -> None:
    video = torch.rand(9, H, W, 3, generator=torch.Generator().manual_seed(4))
    family, plan, cond, spy = _build("5b", ConditioningInputs(video=video, denoise=0.6))
    assert plan.mode == "v2v" and plan.denoise == 0.6 and cond.extra is None
    z = spy.vae.encode(to_pixels(video, H, W)).sample(torch.Generator().manual_seed(0))
    assert torch.equal(cond.init_latents, family.vae_scaling_factor * z.permute(0, 2, 1, 3, 4))
    family, plan, cond, spy = _build("fun-2b-control", ConditioningInputs(control=video))
    z = spy.vae.encode(to_pixels(video, H, W)).mode()
    assert torch.equal(cond.extra, family.vae_scaling_factor * z.permute(0, 2, 1, 3, 4))


def test_frames_default_to_source_video_and_are_cut_to_request() -> None:
    video = torch.rand(13, H, W, 3)
    assert plan_conditioning(tiny_family("fun-5b-control"), ConditioningInputs(control=video),
                             None, H, W).frames == 13
    assert plan_conditioning(tiny_family("5b"), ConditioningInputs(video=torch.rand(12, H, W, 3)),
                             None, H, W).frames == 9  # the most 4k+1 frames of the clip
    assert plan_conditioning(tiny_family("fun-2b-inp"), ConditioningInputs(video=video, mask=torch.ones(1, H, W)),
                             None, H, W).frames == 9  # at most the 3 latents of its (tiny) table
    assert plan_conditioning(tiny_family("5b"), ConditioningInputs(video=video), 9, H, W).frames == 9


def test_pixel_layouts_convert_once_both_ways() -> None:
    """IMAGE [F, H, W, C] 0..1 <-> VAE video [B, 3, F, H, W] -1..1, the one pair every caller uses."""
    from cogvideox_core.video_io import frames_to_video, video_to_frames

    frames = torch.rand(5, H, W, 4)  # alpha is dropped
    video = frames_to_video(frames)
    assert video.shape == (1, 3, 5, H, W)
    assert torch.equal(video[0, :, 2], frames[2, ..., :3].permute(2, 0, 1) * 2 - 1)
    assert torch.equal(to_pixels(frames, H, W), video)  # the target size passes through untouched
    assert torch.allclose(video_to_frames(video), frames[..., :3], atol=1e-6)
    two = video_to_frames(torch.cat([video, -video]) * 1.5)  # a batch, out of range: clamped
    assert two.shape == (10, H, W, 3) and two.min() == 0 and two.max() == 1
    assert video_to_frames(video.bfloat16()).dtype == torch.float32


def test_other_image_sizes_are_cropped_and_resized() -> None:
    px = to_pixels(torch.rand(1, 50, 120, 3), H, W)
    assert px.shape == (1, 3, 1, H, W) and px.min() >= -1 and px.max() <= 1


@pytest.mark.parametrize("family, inputs, kwargs, match", [
    ("5b", dict(end_image=_img()), {}, r"end_image given to 5b \(t2v\).*fun-2b-inp"),
    ("5b", dict(image=_img()), {}, r"image given to 5b.*5b-i2v"),
    ("2b", dict(mask=torch.ones(1, H, W)), {}, r"mask given to 2b"),
    ("5b-i2v", dict(image=_img()), dict(height=480, width=720), r"height x width=480x720.*only 64x96"),
    ("5b-i2v", {}, dict(height=64, width=96), r"image=None: 5b-i2v"),
    ("5b-i2v", dict(image=_img(2)), dict(height=64, width=96), r"image has 2 frames: 5b-i2v takes one"),
    ("5b", {}, dict(frames=50), r"frames=50 must be 4k\+1.*49 or 53"),
    ("fun-2b-inp", {}, dict(frames=13), r"frames=13 .*fun-2b-inp takes at most 9 frames"),
    ("fun-1.5-5b-inp", dict(image=_img()), dict(frames=9), r"frames=9 \(3 latent frames\).*even.*5 or 13"),
    ("1.5-5b", dict(video=torch.rand(9, H, W, 3)), dict(frames=9), r"frames=9.*video-to-video on 1.5"),
    ("fun-5b-inp", dict(mask=torch.ones(1, H, W)), {}, r"mask given without a video"),
    ("fun-5b-inp", dict(video=torch.rand(9, H, W, 3)), {}, r"mask=None with a video"),
    ("fun-5b-control", {}, {}, r"control=None: fun-5b-control"),
    ("5b", dict(control=torch.rand(9, H, W, 3)), {}, r"control video given to 5b.*fun-2b-control"),
    ("fun-5b-control", dict(control=torch.rand(9, H, W, 3), image=_img()), {}, r"image given to fun-5b-control"),
    ("5b", dict(denoise=0.5), {}, r"denoise=0.5 < 1 needs a source video"),
    ("5b", dict(video=torch.rand(9, H, W, 3), denoise=0.0), {}, r"denoise=0.0: must be in \(0, 1\]"),
    ("5b", dict(video=torch.rand(5, H, W, 3)), dict(frames=9), r"video has 5 frames; frames=9"),
    ("5b", {}, dict(height=40), r"height=40 must be a multiple of 16.*32 or 48"),
    ("1.5-5b", {}, dict(width=112), r"height x width=32x112: 1.5-5b takes at most 96x96"),
    ("5b", dict(image=torch.rand(1, H, W)), {}, r"image"),
    ("2b", dict(noise_aug=0.1), {}, r"noise_aug=0.1 given to 2b"),
])
def test_refusals_name_the_input(family: str, inputs: dict, kwargs: dict, match: str) -> None:
    size = {"frames": 9, "height": H, "width": W, **kwargs}
    with pytest.raises(ValueError, match=match):
        plan_conditioning(tiny_family(family), ConditioningInputs(**inputs), **size)


def test_15_t2v_and_i2v_pad_odd_latents() -> None:
    for name, inputs in (("1.5-5b", {}), ("1.5-5b-i2v", dict(image=_img()))):
        plan = plan_conditioning(tiny_family(name), ConditioningInputs(**inputs), 9, H, W)
        assert (plan.latent_frames, plan.padding, plan.noise_shape()) == (3, 1, (1, 4, 16, 4, 6))
        plan = plan_conditioning(tiny_family(name), ConditioningInputs(**inputs), 13, H, W)
        assert plan.padding == 0


def test_inputs_far_smaller_than_the_video_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    """More than 8x enlargement (less than one pixel per latent cell) is refused naming the
    input; more than 2x warns; the target size passes quietly."""
    fam = get_family("5b-i2v")
    with pytest.raises(ValueError, match=r"image is 1x1 pixels: too small for a 720x480 video"):
        plan_conditioning(fam, ConditioningInputs(image=torch.rand(1, 1, 1, 3)), 49)
    with caplog.at_level("WARNING"):
        plan_conditioning(fam, ConditioningInputs(image=torch.rand(1, 120, 180, 3)), 49)
    assert "enlarged 4.0x" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        plan_conditioning(fam, ConditioningInputs(image=torch.rand(1, 480, 720, 3)), 49)
    assert "enlarged" not in caplog.text


def test_real_family_rules() -> None:
    """The full-size configs: 5B-I2V fixed at 480x720, Fun-2B at most 49 frames, 1.5 up to 2400 px."""
    image = torch.rand(1, 240, 360, 3)  # half size: enlarged 2x (a 48x32 one would be refused, 15x)
    assert plan_conditioning(get_family("5b-i2v"), ConditioningInputs(image=image), 49).height == 480
    with pytest.raises(ValueError, match="at most 49 frames"):
        plan_conditioning(get_family("fun-2b-inp"), ConditioningInputs(), 53, 480, 720)
    plan = plan_conditioning(get_family("1.5-5b"), ConditioningInputs(), 81, 768, 1360)
    assert (plan.latent_frames, plan.padding) == (21, 1)
    assert plan_conditioning(get_family("fun-1.5-5b-inp"), ConditioningInputs(), 85).latent_frames == 22
