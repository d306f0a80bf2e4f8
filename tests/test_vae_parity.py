"""CogVideoXVAE against diffusers AutoencoderKLCogVideoX: same random weights, same numbers.

Tiny real-architecture VAEs (4 down/up blocks, 8x spatial and 4x temporal compression, conv
shortcuts where the width changes) with seeded random weights, fp32 on the CPU. Max abs diffs
are logged (run with ``-o log_cli=true`` to see them).
"""
from __future__ import annotations

import logging

import pytest
import torch
from scaffold import randomize_norms
from vae_configs import TINY_VAE_CONFIGS

from cogvideox_core.families import VAEConfig
from cogvideox_core.ops import cast_ops
from cogvideox_core.vae.model import (CogVideoXVAE, DecoderCache, EncoderCache, decode_chunks, decoded_num_frames,
                                encode_chunks)
from cogvideox_core.vae import blocks as vae_blocks
from cogvideox_core.vae.blocks import CausalConv3d

import diffusers  # the oracle: installed by .ci/setup, never skipped

logger = logging.getLogger("tests.vae_parity")

TOL = 1e-5
CONFIGS = TINY_VAE_CONFIGS


def _make_pair(config: VAEConfig, seed: int = 0) -> tuple[torch.nn.Module, CogVideoXVAE]:
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKLCogVideoX(**config.to_diffusers()).eval()
    randomize_norms(ref, torch.Generator().manual_seed(seed + 1))
    ours = CogVideoXVAE(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, CogVideoXVAE]:
    return (request.param, *_make_pair(CONFIGS[request.param]))


@pytest.fixture(scope="module")
def tiny() -> CogVideoXVAE:
    return _make_pair(CONFIGS["c8-z4-l1-g4"])[1]


def _latents(config: VAEConfig, frames: int, h: int = 3, w: int = 5, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, config.latent_channels, frames, h, w, generator=torch.Generator().manual_seed(seed))


def _video(frames: int, h: int = 24, w: int = 40, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, frames, h, w, generator=gen) * 2 - 1)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_state_dict_is_diffusers(pair: tuple[str, torch.nn.Module, CogVideoXVAE]) -> None:
    _, ref, ours = pair
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs


@pytest.mark.parametrize("frames,h,w,batch", [(1, 3, 5, 1), (2, 3, 5, 1), (3, 4, 3, 1), (4, 2, 2, 1),
                                              (5, 3, 5, 2), (13, 3, 5, 1)])
def test_decode_parity(pair: tuple[str, torch.nn.Module, CogVideoXVAE], frames: int, h: int, w: int,
                       batch: int) -> None:
    name, ref, ours = pair
    z = _latents(ours.config, frames, h, w, batch)
    with torch.no_grad():
        expected = ref.decode(z).sample
        got = ours.decode(z)
    diff = _maxdiff(got, expected)
    logger.info("decode parity %s F_lat=%d %dx%d B=%d: shape %s, max abs diff %.3g",
                name, frames, h, w, batch, tuple(got.shape), diff)
    assert got.shape == expected.shape == (batch, 3, decoded_num_frames(frames), 8 * h, 8 * w)
    assert diff <= TOL


@pytest.mark.parametrize("frames", [1, 5, 9, 17, 21, 33])
def test_encode_parity(pair: tuple[str, torch.nn.Module, CogVideoXVAE], frames: int) -> None:
    name, ref, ours = pair
    x = _video(frames)
    with torch.no_grad():
        expected = ref.encode(x).latent_dist
        got = ours.encode(x)
    d_mean, d_logvar = _maxdiff(got.mean, expected.mean), _maxdiff(got.logvar, expected.logvar)
    logger.info("encode parity %s F=%d: mean %s, max abs diff mean %.3g logvar %.3g",
                name, frames, tuple(got.mean.shape), d_mean, d_logvar)
    assert got.mean.shape == expected.mean.shape == (1, ours.config.latent_channels, (frames - 1) // 4 + 1, 3, 5)
    assert d_mean <= TOL and d_logvar <= TOL
    assert torch.equal(got.mode(), got.mean)


def test_posterior_sample_matches_diffusers(pair: tuple[str, torch.nn.Module, CogVideoXVAE]) -> None:
    name, ref, ours = pair
    x = _video(9)
    with torch.no_grad():
        expected = ref.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(7))
        got = ours.encode(x).sample(generator=torch.Generator().manual_seed(7))
    diff = _maxdiff(got, expected)
    logger.info("posterior sample %s F=9: max abs diff %.3g", name, diff)
    assert diff <= TOL


def test_decode_chunk_by_chunk_equals_decode(tiny: CogVideoXVAE) -> None:
    z = _latents(tiny.config, 7)
    with torch.no_grad():
        whole = tiny.decode(z)
        cache, parts = None, []
        for start, end in decode_chunks(7):
            out, cache = tiny.decode_chunk(z[:, :, start:end], cache)
            assert isinstance(cache, DecoderCache)
            parts.append(out)
    assert [p.shape[2] for p in parts] == [9, 8, 8]
    assert torch.equal(torch.cat(parts, dim=2), whole)


def test_encode_chunk_by_chunk_equals_encode(tiny: CogVideoXVAE) -> None:
    x = _video(25)
    with torch.no_grad():
        whole = tiny.encode(x)
        cache, parts = None, []
        for start, end in encode_chunks(25):
            moments, cache = tiny.encode_chunk(x[:, :, start:end], cache)
            assert isinstance(cache, EncoderCache)
            parts.append(moments)
    assert [p.shape[2] for p in parts] == [3, 2, 2]
    got = torch.cat(parts, dim=2)
    assert torch.equal(got[:, :4], whole.mean)


def test_no_cache_leak_between_videos(tiny: CogVideoXVAE) -> None:
    za, zb = _latents(tiny.config, 5, seed=1), _latents(tiny.config, 5, seed=2)
    xa, xb = _video(17, seed=1), _video(17, seed=2)
    with torch.no_grad():
        b_alone, eb_alone = tiny.decode(zb), tiny.encode(xb).mean
        tiny.decode(za)
        b_after_a = tiny.decode(zb)
        tiny.encode(xa)
        eb_after_a = tiny.encode(xb).mean
        # the cache does carry information: continuing B from A's cache changes B
        _, cache_a = tiny.decode_chunk(za[:, :, :3], None)
        b_on_a_cache, _ = tiny.decode_chunk(zb[:, :, 3:5], cache_a)
    assert torch.equal(b_after_a, b_alone)
    assert torch.equal(eb_after_a, eb_alone)
    assert not torch.allclose(b_on_a_cache, b_alone[:, :, 9:17])


def test_cache_is_a_value_keyed_by_causal_conv(tiny: CogVideoXVAE) -> None:
    z = _latents(tiny.config, 5, h=2, w=3, batch=2)
    with torch.no_grad():
        _, first = tiny.decode_chunk(z[:, :, :3], None)
        before = {k: v.clone() for k, v in first.tails.items()}
        out1, second = tiny.decode_chunk(z[:, :, 3:5], first)
        out2, _ = tiny.decode_chunk(z[:, :, 3:5], first)  # the same cache again: same result
    assert torch.equal(out1, out2)
    assert all(torch.equal(first.tails[k], v) for k, v in before.items())  # input cache untouched
    assert set(first.tails) == set(second.tails)
    with pytest.raises(TypeError):
        first.tails["conv_in"] = before["conv_in"]  # type: ignore[index]
    convs = {n for n, m in tiny.decoder.named_modules() if isinstance(m, CausalConv3d) and m.time_kernel > 1}
    assert set(first.tails) == convs
    for key, tail in first.tails.items():
        conv = tiny.decoder.get_submodule(key)
        assert tail.shape[:3] == (2, conv.conv.in_channels, 2)
    assert first.nbytes == sum(v.numel() * 4 for v in first.tails.values())
    assert first.to("cpu").tails.keys() == first.tails.keys()


def _diffusers_chunks(n: int, per_chunk: int) -> list[tuple[int, int]]:
    """The loop of AutoencoderKLCogVideoX._encode/_decode, with Python's slice clamping."""
    out = []
    for i in range(max(n // per_chunk, 1)):
        rem = n % per_chunk
        start = per_chunk * i + (0 if i == 0 else rem)
        out.append((start, min(per_chunk * (i + 1) + rem, n)))
    return out


def test_reference_chunk_lists() -> None:
    assert decode_chunks(13) == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]
    assert decode_chunks(1) == [(0, 1)]
    assert decode_chunks(2) == [(0, 2)]
    assert decode_chunks(3) == [(0, 3)]
    assert decode_chunks(4) == [(0, 2), (2, 4)]
    assert decode_chunks(22) == [(i, i + 2) for i in range(0, 22, 2)]
    assert encode_chunks(49) == [(0, 9)] + [(i, i + 8) for i in range(9, 49, 8)]
    assert encode_chunks(1) == [(0, 1)]
    assert encode_chunks(5) == [(0, 5)]
    assert encode_chunks(9) == [(0, 9)]
    assert encode_chunks(13) == [(0, 13)]
    assert encode_chunks(21) == [(0, 13), (13, 21)]
    assert encode_chunks(85) == [(0, 13)] + [(i, i + 8) for i in range(13, 85, 8)]
    for n in range(1, 100):
        assert decode_chunks(n) == _diffusers_chunks(n, 2)
        assert encode_chunks(n) == _diffusers_chunks(n, 8)


def test_decoded_num_frames() -> None:
    assert [decoded_num_frames(n) for n in (1, 2, 3, 4, 5, 13, 21, 22)] == [1, 8, 9, 16, 17, 49, 81, 88]


def test_bf16_matches_diffusers_bf16() -> None:
    config = CONFIGS["c8-z4-l1-g4"]
    ref, _ = _make_pair(config)
    ref = ref.to(torch.bfloat16)
    ours = CogVideoXVAE(config, dtype=torch.bfloat16)
    ours.load_state_dict(ref.state_dict(), strict=True)
    z = _latents(config, 3)
    with torch.no_grad():
        expected = ref.decode(z.to(torch.bfloat16)).sample
        got = ours.decode(z)  # fp32 input, cast to the weights' dtype
    diff = _maxdiff(got, expected)
    logger.info("decode bf16 F_lat=3: max abs diff %.3g", diff)
    assert got.dtype == torch.bfloat16 and ours.dtype == torch.bfloat16
    assert diff <= 1e-2


def test_layers_come_from_injected_ops() -> None:
    vae = CogVideoXVAE(CONFIGS["c8-z4-l1-g4"], ops=cast_ops)
    kinds = {type(m).__name__: m for m in vae.modules() if type(m).__module__ == "cogvideox_core.ops"}
    assert set(kinds) == {"Conv3d", "Conv2d", "GroupNorm"}
    assert all(isinstance(m, (cast_ops.Conv3d, cast_ops.Conv2d, cast_ops.GroupNorm)) for m in kinds.values())


@pytest.mark.parametrize("call,match", [
    (lambda v: v.encode(torch.zeros(1, 4, 9, 16, 16)), r"video has 4 channels"),
    (lambda v: v.encode(torch.zeros(1, 3, 8, 16, 16)), r"video has 8 frames.*4k\+1"),
    (lambda v: v.encode(torch.zeros(1, 3, 9, 20, 16)), r"video height=20 is not a multiple of 8"),
    (lambda v: v.encode(torch.zeros(1, 3, 9, 16, 12)), r"video width=12 is not a multiple of 8"),
    (lambda v: v.encode(torch.zeros(3, 9, 16, 16)), r"video must be 5-D.*\(3, 9, 16, 16\)"),
    (lambda v: v.decode(torch.zeros(1, 16, 3, 2, 2)), r"z has 16 channels.*takes 4"),
    (lambda v: v.decode(torch.zeros(1, 4, 2, 2)), r"z must be 5-D"),
    (lambda v: v.encode_chunk(torch.zeros(1, 3, 8, 16, 16), None), r"x has 8 frames; a first encode chunk"),
    (lambda v: v.encode_chunk(torch.zeros(1, 3, 9, 16, 16), v.encode_chunk(torch.zeros(1, 3, 9, 16, 16), None)[1]),
     r"x has 9 frames; a continuing encode chunk"),
    (lambda v: v.decode_chunk(torch.zeros(1, 4, 3, 2, 2), v.decode_chunk(torch.zeros(1, 4, 3, 2, 2), None)[1]),
     r"z has 3 latent frames; a continuing decode chunk"),
    (lambda v: v.decode_chunk(torch.zeros(1, 4, 2, 2, 3), v.decode_chunk(torch.zeros(1, 4, 3, 2, 2), None)[1]),
     r"batch/height/width \(1, 2, 3\).*\(1, 2, 2\)"),
    (lambda v: v.decode_chunk(torch.zeros(1, 4, 2, 2, 2), v.encode_chunk(torch.zeros(1, 3, 1, 16, 16), None)[1]),
     r"cache is of type EncoderCache"),
    (lambda v: decode_chunks(0), r"num_frames=0"),
], ids=["encode-channels", "encode-frames", "encode-height", "encode-width", "encode-ndim", "decode-channels",
        "decode-ndim", "encode-first-chunk-frames", "encode-next-chunk-frames", "decode-next-chunk-odd",
        "decode-cache-other-tile", "decode-encoder-cache", "chunks-zero"])
def test_bad_inputs_raise_value_error(tiny: CogVideoXVAE, call, match: str) -> None:
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        call(tiny)


def test_time_split_conv_matches_diffusers(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' SafeConv3d splits big inputs along time; force our split on tiny inputs."""
    ref, ours = _make_pair(CONFIGS["c8-z4-l1-g4"])
    z, x = _latents(ours.config, 3), _video(9)
    with torch.no_grad():
        expected_dec, expected_enc = ref.decode(z).sample, ref.encode(x).latent_dist.mean
        # the 8-channel full-size conv inputs (11 frames x 24 x 40) now split in 2 parts
        monkeypatch.setattr(vae_blocks, "_SAFE_CONV_GIB", 1e-4)
        splits = []
        chunk = torch.chunk
        monkeypatch.setattr(torch, "chunk", lambda t, n, dim=0: splits.append(n) or chunk(t, n, dim))
        got_dec, got_enc = ours.decode(z), ours.encode(x).mean
    assert splits and max(splits) == 2
    d_dec, d_enc = _maxdiff(got_dec, expected_dec), _maxdiff(got_enc, expected_enc)
    logger.info("time-split convs F_lat=3 / F=9: max abs diff decode %.3g encode %.3g", d_dec, d_enc)
    assert d_dec <= TOL and d_enc <= TOL


def test_bad_temporal_compression() -> None:
    with pytest.raises(ValueError, match="temporal_compression=3"):
        CogVideoXVAE(VAEConfig(block_out_channels=(8, 8), norm_num_groups=4, temporal_compression=3))


def test_halve_time_runs_in_bfloat16_on_the_cpu() -> None:
    """avg_pool3d has no bfloat16 CPU kernel (a bf16 Fun InP encode on the CPU crashed): the
    pair mean equals the float32 average rounded once."""
    from cogvideox_core.vae.blocks import halve_time

    x = torch.randn(1, 4, 5, 3, 3, generator=torch.Generator().manual_seed(0)).bfloat16()
    f = x.float()
    want = torch.cat([f[:, :, :1], (f[:, :, 1::2] + f[:, :, 2::2]) / 2], dim=2)
    got = halve_time(x)
    assert got.dtype == torch.bfloat16 and got.shape == (1, 4, 3, 3, 3)
    assert torch.allclose(got.float(), want, atol=0, rtol=2**-8)  # one bf16 rounding: half an ulp
