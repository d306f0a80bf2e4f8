"""The tiny synthetic world (benchmarks/tiny_world): clips, captions, the analyser, and the
trained models shipped in cogvideox_core/data/tiny_world (when present)."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.tiny_world.analyse import (analyse, calibrate, centroid_depth, classify_shape, fill_ratio,
                                           foreground_mask, largest_step, largest_step_inside)
from benchmarks.tiny_world.long_video import INSIDE_MARGIN
from benchmarks.tiny_world.world import (COLOURS, DIRECTIONS, FRAMES, HALF_SIZE, HEIGHT, SHAPES, SPEED, WIDTH,
                                         Attributes, all_captions, caption, make_clip, parse_caption,
                                         render, sample_clips, sample_scenes, start_range)


def test_clips_are_deterministic_from_the_seed():
    a, b, c = sample_clips(4, seed=7), sample_clips(4, seed=7), sample_clips(4, seed=8)
    assert [x[0] for x in a] == [x[0] for x in b]
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert [x[0] for x in a] != [x[0] for x in c] or not torch.equal(a[0][1], c[0][1])


def test_clip_shape_range_and_background():
    clip = make_clip("red", "circle", "right", (20.0, 30.0))
    assert clip.shape == (FRAMES, HEIGHT, WIDTH, 3) and clip.dtype == torch.float32
    assert float(clip.min()) >= 0.0 and float(clip.max()) <= 1.0
    assert torch.equal(clip[:, 0, 0], torch.ones(FRAMES, 3))  # white corner
    black = make_clip("red", "circle", "right", (20.0, 30.0), background="black")
    assert torch.equal(black[:, 0, 0], torch.zeros(FRAMES, 3))


def test_caption_form_and_parser_round_trip():
    attrs = Attributes("red", "circle", "right")
    assert caption(attrs) == "a red circle moving right on a white background"
    assert parse_caption("  A Red circle moving   right on a white background ") == attrs
    for text in all_captions(("white", "black")):
        assert caption(parse_caption(text)) == text
    assert len(all_captions()) == len(COLOURS) * len(SHAPES) * len(DIRECTIONS)


@pytest.mark.parametrize("text", ["a red circle", "a purple circle moving right on a white background",
                                  "a red circle moving sideways on a white background"])
def test_parser_refuses_other_text(text):
    with pytest.raises(ValueError, match="caption=|not in the world"):
        parse_caption(text)


def test_shape_stays_inside_the_frame():
    for direction in DIRECTIONS:
        (x0, x1), (y0, y1) = start_range(direction)
        for x, y in ((x0, y0), (x1, y1)):
            clip = make_clip("blue", "square", direction, (x, y))
            border = torch.cat([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]], dim=1)
            assert torch.equal(border, torch.ones_like(border)), direction


def test_analyser_reads_every_world_clip_right():
    for scene in sample_scenes(48, seed=3):
        found = analyse(render(scene))
        assert all(found.matches(scene.attributes).values()), (scene, found)
        assert found.coverage == 1.0


def test_analyser_track_and_fill():
    clip = make_clip("green", "circle", "down", (32.0, 14.0))
    found = analyse(clip)
    steps = (found.track[1:] - found.track[:-1])
    assert torch.allclose(steps, torch.tensor([0.0, SPEED]).expand_as(steps), atol=0.05)
    assert largest_step(found.track) == pytest.approx(SPEED, abs=0.05)
    assert found.fill == pytest.approx(math.pi / 4, abs=0.05)
    square = foreground_mask(make_clip("green", "square", "down", (32.0, 14.0)))[0]
    assert fill_ratio(square) == pytest.approx(1.0, abs=0.02)
    assert 2 * HALF_SIZE - 1 <= int(square.any(dim=0).sum()) <= 2 * HALF_SIZE + 1


def test_the_world_is_a_torus_and_the_analyser_follows_a_shape_across_edges():
    # a shape past the right edge shows at the left: the same pixels as a whole shape rolled
    whole = make_clip("red", "square", "right", (42.0, 30.0))
    assert torch.allclose(make_clip("red", "square", "right", (90.0, 30.0)), torch.roll(whole, 48, dims=2), atol=1e-6)
    assert torch.allclose(make_clip("red", "square", "down", (42.0, 60.0)), torch.roll(
        make_clip("red", "square", "down", (42.0, 28.0)), 32, dims=1), atol=1e-6)
    # 65 frames moving right from x=60: crosses the right edge, keeps moving right, 1 px a frame
    found = analyse(make_clip("blue", "circle", "right", (60.0, 30.0), frames=65))
    steps = found.track[1:] - found.track[:-1]
    assert torch.allclose(steps, torch.tensor([SPEED, 0.0]).expand_as(steps), atol=0.05)
    assert found.track[-1, 0] == pytest.approx(60.0 + 64 * SPEED, abs=0.05)  # unwrapped: past the width
    assert (found.direction, found.shape, found.coverage) == ("right", "circle", 1.0)
    # every clip drawn anywhere on the torus reads right; a split square still fills its box
    for scene in sample_scenes(48, seed=4, wrap=1.0):
        found = analyse(render(scene))
        assert all(found.matches(scene.attributes).values()), (scene, found)
    split = foreground_mask(make_clip("green", "square", "up", (94.0, 2.0)))[0]
    assert bool(split[:, 0].any() and split[:, -1].any() and split[0].any() and split[-1].any())
    assert fill_ratio(split) == pytest.approx(1.0, abs=0.02)
    assert sum(1 for s in sample_scenes(200, seed=1, wrap=0.5) if not 11 <= s.start[0] <= 85) > 20


def test_steps_inside_the_frame_leave_out_the_edge_crossings_only():
    """A clip that jumps 12 px inside the frame shows the jump; one that jumps 12 px while its
    shape crosses the right edge (centre within the margin of it) does not; a smooth crossing
    reads the world's speed both ways."""
    def jumped(start_x: float, at: int) -> torch.Tensor:  # 33 frames moving right, 12 px skipped at frame `at`
        clip = make_clip("red", "circle", "right", (start_x, 32.0), frames=33)
        later = make_clip("red", "circle", "right", (start_x + 12 * SPEED, 32.0), frames=33)
        return torch.cat([clip[:at], later[at:]])
    margin = INSIDE_MARGIN  # 14 px: x = 88 is within it of the right edge, 30 and 42 are not
    inside = analyse(jumped(20.0, 10)).track  # the jump at x = 30 -> 42
    crossing = analyse(jumped(70.0, 18)).track  # at x = 88 -> 100 (= 4): across the right edge
    for track in (inside, crossing):
        assert largest_step(track) == pytest.approx(13 * SPEED, abs=0.1)
    assert largest_step_inside(inside, WIDTH, HEIGHT, margin) == pytest.approx(13 * SPEED, abs=0.1)
    assert largest_step_inside(crossing, WIDTH, HEIGHT, margin) == pytest.approx(SPEED, abs=0.05)
    smooth = analyse(make_clip("blue", "square", "down", (40.0, 20.0), frames=65)).track
    assert largest_step(smooth) == pytest.approx(SPEED, abs=0.05)
    assert largest_step_inside(smooth, WIDTH, HEIGHT, margin) == pytest.approx(SPEED, abs=0.05)
    still_at_edge = torch.tensor([[2.0, 30.0]] * 5)  # never inside: nothing to judge
    assert largest_step_inside(still_at_edge, WIDTH, HEIGHT, margin) == 0.0


def test_shape_rules_tolerate_blur():
    assert classify_shape(0.99) == "square" and classify_shape(0.88) == "square"
    assert classify_shape(0.785) == "circle" and classify_shape(0.83) == "circle"
    circle = foreground_mask(make_clip("red", "circle", "left", (40.0, 30.0)))[0]
    assert centroid_depth(circle) == pytest.approx(0.5, abs=0.03)


def test_calibrated_prototypes_classify_the_world():
    scenes = sample_scenes(24, seed=5)
    proto = calibrate([(s.attributes.shape, render(s)) for s in scenes])
    assert proto.means["square"][0] == pytest.approx(1.0, abs=0.02)
    assert proto.means["circle"][0] == pytest.approx(math.pi / 4, abs=0.03)
    for scene in sample_scenes(12, seed=6):
        assert analyse(render(scene), proto).shape == scene.attributes.shape


def test_analyser_on_an_empty_clip_and_bad_input():
    found = analyse(torch.ones(FRAMES, HEIGHT, WIDTH, 3))
    assert (found.colour, found.shape, found.direction, found.coverage) == (None, None, None, 0.0)
    with pytest.raises(ValueError, match="clip has shape"):
        analyse(torch.ones(FRAMES, HEIGHT, WIDTH))


# ---- the trained models (cogvideox_core/data/tiny_world), when shipped --------------------


# ---- the training's pieces ----------------------------------------------------------------------

def test_an_inp_model_started_from_the_text_to_video_one_predicts_what_it_does():
    """``inp_from_t2v``: every weight copied, the extra input channels' patch weights zero, so at
    the trained grid the Fun InP model ignores mask and masked-video latents and predicts what the
    text-to-video model predicts (the sincos tables of both kinds agree there)."""
    from benchmarks.tiny_world.models import Size, family
    from benchmarks.tiny_world.train_dit import inp_from_t2v
    from cogvideox_core.models.transformer import CogVideoXTransformer
    from cogvideox_core.tiny import init_random

    size = Size(heads=2, head_dim=16, layers=1, text_len=8)
    t2v = init_random(CogVideoXTransformer(family("t2v", size).transformer), 0).eval()
    inp = inp_from_t2v(t2v, family("inp", size)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, HEIGHT // 8, WIDTH // 8, generator=g)
    extra = torch.randn(2, 5, 17, HEIGHT // 8, WIDTH // 8, generator=g)
    t, text = torch.tensor([10, 700]), torch.randn(2, 8, 32, generator=g)
    with torch.no_grad():
        assert torch.equal(inp(torch.cat([x, extra], dim=2), t, text), t2v(x, t, text))
    with pytest.raises(ValueError, match="cannot hold"):
        inp_from_t2v(inp, family("t2v", size))


def test_the_vae_loss_encodes_the_white_clip_with_the_batch_as_on_its_own():
    """The VAE's loss encodes the plain white clip in the clips' batch (a batch of one runs ATen's
    slow conv backward): its latents are those of the white clip encoded alone (GroupNorm is per
    clip), up to the convolutions' summation order."""
    from benchmarks.tiny_world.models import vae_config
    from benchmarks.tiny_world.train_vae import clip_batch, vae_loss
    from cogvideox_core.tiny import init_random
    from cogvideox_core.vae.model import CogVideoXVAE

    vae = init_random(CogVideoXVAE(vae_config()), 0).eval()
    x, weight = clip_batch(0, 1, seed=0)
    x, weight = x[:, :, :5], weight[:, :, :5]
    with torch.no_grad():
        parts = vae_loss(vae, x, weight, torch.Generator().manual_seed(0))
        alone = vae.encode(torch.ones_like(x)).mean.pow(2).mean()
        post = vae.encode(x)
    assert float(parts["bg"]) == pytest.approx(float(alone), rel=1e-4)
    assert float(parts["z_rms"]) == pytest.approx(float(post.mean.pow(2).mean().sqrt()), rel=1e-4)
