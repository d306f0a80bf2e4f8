"""Chained extension and colour matching: Oklab round trips, matching moves a chunk's statistics
to the reference's, the chain loop feeds each chunk the tail of the video so far, progress runs
over all chunks, and the one-call ``generate_long`` equals its pieces used one at a time."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from scaffold import RecordingRuntime

from cogvideox_core.long_video.colour import (ColourStats, colour_difference, colour_stats, match_colour,
                                   oklab_to_rgb, rgb_to_oklab)
from cogvideox_core.generation.conditioning import ConditioningInputs
from cogvideox_core.tiny import random_models, tiny_family
from cogvideox_core.long_video.chain import (ChainOptions, ChainRuntime, chain, crossfade, extend,
                                      extend_chain, generate_long, tail_inputs)
from cogvideox_core.generation.pipeline import GenerateRequest, generate

H, W = 32, 48


def _frames(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, H, W, 3, generator=torch.Generator().manual_seed(seed))


# ---- colour ----------------------------------------------------------------------------------

def test_oklab_reference_values_and_round_trip() -> None:
    white, black = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(rgb_to_oklab(white), torch.tensor([1.0, 0.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(rgb_to_oklab(black), torch.zeros(3), atol=1e-6, rtol=0)
    red = rgb_to_oklab(torch.tensor([1.0, 0.0, 0.0]))  # Ottosson's table: (0.628, 0.225, 0.126)
    torch.testing.assert_close(red, torch.tensor([0.6280, 0.2249, 0.1258]), atol=1e-3, rtol=0)
    x = _frames(3)
    torch.testing.assert_close(oklab_to_rgb(rgb_to_oklab(x)), x, atol=1e-4, rtol=0)


def test_stats_of_a_flat_colour() -> None:
    grey = torch.full((2, H, W, 3), 0.5)
    stats = colour_stats(grey)
    torch.testing.assert_close(stats.mean, rgb_to_oklab(torch.full((3,), 0.5)).double(), atol=1e-6, rtol=0)
    assert float(stats.std.max()) < 1e-6


def _drifted(x: torch.Tensor) -> torch.Tensor:
    return (x * torch.tensor([0.8, 0.9, 0.7]) + torch.tensor([0.15, 0.05, 0.2])).clamp(0, 1)


def test_match_moves_mean_and_spread_to_the_reference() -> None:
    ref_frames = 0.2 + 0.6 * _frames(4)  # inside the gamut, so nothing clips
    reference = colour_stats(ref_frames)
    chunk = _drifted(0.2 + 0.6 * _frames(4, seed=1))
    before = colour_difference(colour_stats(chunk), reference)
    assert before > 0.02  # about noticeable
    matched = colour_stats(match_colour(chunk, reference, 1.0))
    assert colour_difference(matched, reference) < 0.05 * before
    torch.testing.assert_close(matched.std, reference.std, atol=0.002, rtol=0)
    half = colour_stats(match_colour(chunk, reference, 0.5))
    assert 0.4 * before < colour_difference(half, reference) < 0.6 * before
    assert match_colour(chunk, reference, 0.0) is chunk
    full, ramped = match_colour(chunk, reference, 1.0), match_colour(chunk, reference, 1.0, ramp=True)
    torch.testing.assert_close(ramped[0], chunk[0], atol=1e-4, rtol=0)  # none at the first frame
    torch.testing.assert_close(ramped[-1], full[-1], atol=1e-5, rtol=0)  # all at the last


def test_match_refuses_bad_inputs() -> None:
    stats = colour_stats(_frames(1))
    with pytest.raises(ValueError, match="strength=1.5"):
        match_colour(_frames(1), stats, 1.5)
    with pytest.raises(ValueError, match=r"frames has shape \(32, 48, 3\)"):
        match_colour(_frames(1)[0], stats)
    flat = torch.full((1, H, W, 3), 0.5)  # no spread to scale: shifted only, finite
    assert torch.isfinite(match_colour(flat, ColourStats(stats.mean, stats.std))).all()


# ---- the pieces and the chain loop -------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(chunks=0), "chunks=0"), (dict(overlap=0), "overlap=0"),
    (dict(colour_match=1.5), "colour_match=1.5"),
    (dict(chunks=3, prompts=["a", "b"]), "prompts has 2 entries for chunks=3"),
    (dict(chunks=1, prompts=["a"], prompt_embeds=[torch.zeros(1, 2, 3)]), "both"),
])
def test_chain_options_refuse(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChainOptions(**kwargs)


def test_chain_feeds_each_chunk_the_tail_and_the_end_image_to_the_last() -> None:
    family = tiny_family("fun-5b-inp")
    end = _frames(1, seed=9)
    seen: list[ConditioningInputs] = []

    def make_chunk(k: int, inputs: ConditioningInputs) -> torch.Tensor:
        seen.append(inputs)
        return torch.cat([inputs.image, torch.full((5, H, W, 3), 0.1 * k)])  # 9 frames

    video = _frames(9)
    out = chain(family, video, make_chunk, ChainOptions(3, 4, colour_match=0.0, end_image=end))
    assert out.shape[0] == 9 + 3 * 5
    assert torch.equal(seen[0].image, video[-4:])
    assert torch.equal(seen[1].image, out[9 + 5 - 4:9 + 5])  # the tail of the video so far
    assert [s.end_image is end for s in seen] == [False, False, True]
    assert torch.equal(out[:5], video[:5])


def test_matching_stops_drift_from_adding_up_and_keeps_joins_continuous() -> None:
    """A toy model that starts each chunk on the tail's last frame and drifts +0.04 in red."""
    family = tiny_family("fun-5b-inp")
    pattern = 0.3 + 0.4 * _frames(1)

    def make_chunk(k: int, inputs: ConditioningInputs) -> torch.Tensor:
        ramp = torch.linspace(0, 1, 9).view(-1, 1, 1, 1)
        return (inputs.image[-1:] + ramp * torch.tensor([0.04, 0.0, 0.0])).clamp(0, 1)

    first = make_chunk(0, ConditioningInputs(image=pattern))
    drift = {}
    for strength in (0.0, 1.0):
        video = chain(family, first, make_chunk, ChainOptions(6, 4, strength))
        drift[strength] = colour_difference(colour_stats(video[:9]), colour_stats(video[-9:]))
        steps = (video[1:] - video[:-1]).abs().mean(dim=(1, 2, 3))
        assert float(steps.max()) < 0.01  # no step at any join: 0.04 over 9 frames is 0.005
    assert drift[1.0] < 0.25 * drift[0.0]


def test_crossfade_and_tail_refusals() -> None:
    with pytest.raises(ValueError, match="overlap=5: must be 1..4"):
        crossfade(_frames(4), _frames(9), 5)
    i2v = tiny_family("5b-i2v")
    with pytest.raises(ValueError, match="end_image given for 5b-i2v"):
        tail_inputs(i2v, _frames(4), 1, _frames(1))
    with pytest.raises(ValueError, match=r"2b \(t2v\) cannot continue"):
        tail_inputs(tiny_family("2b"), _frames(4), 1)


def test_chain_runtime_counts_over_all_chunks() -> None:
    inner = RecordingRuntime()
    rt = ChainRuntime(inner, 3)
    for _chunk in range(3):
        for step in (1, 2):
            rt.progress(step, 2)
        rt.next_chunk()
    assert inner.steps == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]
    assert rt.device == inner.device  # everything else is the wrapped runtime's


# ---- generate_long on a tiny model ---------------------------------------------------------------

class PromptSpy:
    """A text encoder wrapper that records the prompts it encodes."""

    def __init__(self, inner) -> None:
        self.inner, self.model, self.prompts = inner, inner.model, []

    def encode(self, prompt):
        self.prompts.append(prompt)
        return self.inner.encode(prompt)


@pytest.fixture(scope="module")
def inp():
    return random_models("fun-5b-inp", seed=4)


def _req(**kwargs) -> GenerateRequest:
    base = dict(prompt="a red fox", frames=9, height=H, width=W, steps=2, seed=7, cfg=1.0,
                inputs=ConditioningInputs(image=_frames(1, seed=3)))
    return GenerateRequest(**{**base, **kwargs})


def test_generate_long_equals_its_pieces_one_at_a_time(inp) -> None:
    models = dataclasses.replace(inp, text_encoder=PromptSpy(inp.text_encoder))
    end = _frames(1, seed=5)
    runtime = RecordingRuntime()
    options = ChainOptions(3, 4, 0.8, end_image=end, prompts=["fox", "fox runs", "fox sleeps"])
    long = generate_long(models, _req(), options, runtime)
    assert long.shape == (9 + 2 * 5, H, W, 3)
    assert runtime.steps == [(i, 6) for i in range(1, 7)]  # one progress run over 3 chunks x 2 steps
    assert models.text_encoder.prompts == ["fox", "fox runs", "fox sleeps"]
    video = generate(inp, _req(prompt="fox"))
    reference = colour_stats(video)
    video = extend(inp, _req(prompt="fox runs", seed=8), video, 4, colour_match=0.8, reference=reference)
    video = extend(inp, _req(prompt="fox sleeps", seed=9), video, 4, colour_match=0.8,
                   reference=reference, end_image=end)
    assert torch.equal(long, video)


def test_extend_chain_adds_chunks_with_embeddings_per_chunk(inp) -> None:
    embeds = [inp.text_encoder.encode(p) for p in ("a", "b")]
    video = _frames(9)
    out = extend_chain(inp, _req(prompt="unused"), video, ChainOptions(2, 4, prompt_embeds=embeds))
    assert out.shape[0] == 9 + 2 * 5 and torch.equal(out[:5], video[:5])


def test_image_to_video_chain_overlaps_one_frame() -> None:
    models = random_models("5b-i2v", seed=2)  # tiny table: 9 frames at 64x96 only
    request = GenerateRequest(prompt="a boat", frames=9, steps=1, cfg=1.0,
                              inputs=ConditioningInputs(image=torch.rand(1, 64, 96, 3)))
    out = generate_long(models, request, ChainOptions(2, 1))
    assert out.shape == (17, 64, 96, 3)
    with pytest.raises(ValueError, match="overlap=4: 5b-i2v is conditioned on one start image"):
        generate_long(models, request, ChainOptions(2, 4))


@pytest.mark.parametrize("name, request_kwargs, options, match", [
    ("2b", dict(inputs=ConditioningInputs()), ChainOptions(2), r"2b \(t2v\) cannot continue"),
    ("fun-5b-inp", dict(), ChainOptions(2, 9), "frames=9 must exceed overlap=9"),
    ("fun-5b-inp", dict(inputs=ConditioningInputs(end_image=torch.rand(1, H, W, 3))), ChainOptions(2),
     "end_image in the request with chunks=2"),
    ("fun-5b-inp", dict(), ChainOptions(2, end_image=torch.rand(2, H, W, 3)), "end_image has 2 frames"),
])
def test_generate_long_refuses_before_any_chunk(name, request_kwargs, options, match) -> None:
    models = random_models(name, seed=0)
    calls = []
    models.transformer.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=match):
        generate_long(models, _req(**request_kwargs), options)
    assert not calls
