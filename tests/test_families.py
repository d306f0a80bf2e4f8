"""The family rules at their one home (``cogvideox_core.families``): frames <-> latent frames,
the 4k+1 and size rules with messages naming the input, and each family's limits (Fun-2B's 13
latent frames, 5B-I2V's fixed size, 1.5's RoPE table and temporal padding) read from its
positional tables, full size and tiny."""
from __future__ import annotations

import pytest

from cogvideox_core.families import (FAMILIES, FAMILY_NAMES, LATENT_CHANNELS, SIZE_UNIT, check_frames,
                                     check_size, get_family, latent_frames, latent_shape, pixel_frames)
from cogvideox_core.models.transformer import CogVideoXTransformer
from cogvideox_core.tiny import tiny_family


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_frames_latents_round_trip(name: str) -> None:
    tc = get_family(name).transformer.temporal_compression
    for lat in range(1, 40):
        assert latent_frames(pixel_frames(lat, tc), tc) == lat
        assert pixel_frames(latent_frames(4 * lat + 1, tc), tc) == 4 * lat + 1
    assert (latent_frames(49), latent_frames(81), latent_frames(85)) == (13, 21, 22)
    assert (pixel_frames(13), pixel_frames(21), pixel_frames(22)) == (49, 81, 85)


def test_overlaps_convert_with_the_same_rule() -> None:
    """0 pixel frames stay 0 latents; 1..4 are one latent (context-window overlaps)."""
    assert [latent_frames(f) for f in range(0, 10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert pixel_frames(0) == 0


@pytest.mark.parametrize("frames, near", [(10, "9 or 13"), (50, "49 or 53"), (0, "1"), (2, "1 or 5")])
def test_check_frames_names_the_input_value_and_rule(frames: int, near: str) -> None:
    with pytest.raises(ValueError, match=rf"images \(frame count\)={frames} must be 4k\+1 .*nearest: {near}$"):
        check_frames("images (frame count)", frames)
    assert check_frames("frames", 49) == 13 and check_frames("frames", 1) == 1


@pytest.mark.parametrize("value, near", [(100, "96 or 112"), (8, "16"), (40, "32 or 48"), (0, "16")])
def test_check_size_names_the_input_value_and_rule(value: int, near: str) -> None:
    with pytest.raises(ValueError, match=rf"width={value} must be a multiple of 16, at least 16 .*nearest: {near}$"):
        check_size("width", value)
    check_size("width", 720)


def test_latent_shape_checks_every_unit() -> None:
    assert latent_shape(49, 480, 720, 2) == (2, LATENT_CHANNELS, 13, 60, 90)
    for args, match in (((49, 480, 100), r"width=100"), ((49, 488, 720), r"height=488"),
                        ((50, 480, 720), r"frames=50 must be 4k\+1"), ((49, 480, 720, 0), r"batch_size=0")):
        with pytest.raises(ValueError, match=match):
            latent_shape(*args)


def test_every_family_takes_its_own_defaults() -> None:
    for fam in FAMILIES.values():
        fam.check_size(fam.default_height, fam.default_width)
        lat = fam.check_frames(fam.default_frames)
        assert fam.size_unit == SIZE_UNIT and lat == latent_frames(fam.default_frames)


def test_limits_come_from_the_positional_tables() -> None:
    limits = {name: (f.max_latent_frames, f.fixed_size, f.max_size) for name, f in FAMILIES.items()}
    assert limits["fun-2b-inp"] == (13, None, None)
    assert limits["5b-i2v"] == (None, (480, 720), None)
    for name in ("1.5-5b", "1.5-5b-i2v", "fun-1.5-5b-inp"):
        assert limits[name] == (None, None, (2400, 2400))
    for name in ("2b", "5b", "fun-5b-inp", "fun-2b-control", "fun-5b-control"):
        assert limits[name] == (None, None, None)
    # a tiny model's small trained grid gives small limits, from the same rule
    assert tiny_family("fun-2b-inp").max_latent_frames == 3
    assert tiny_family("5b-i2v").fixed_size == (64, 96)
    assert tiny_family("1.5-5b").max_size == (96, 96)


def test_family_frame_rules() -> None:
    fun2b = get_family("fun-2b-inp")
    with pytest.raises(ValueError, match=r"frames=53 \(14 latent frames\): fun-2b-inp takes at most 49 frames"):
        fun2b.check_frames(53)
    assert fun2b.check_frames(53, windowed=True) == 14  # windows bound each model call instead
    fun15 = get_family("fun-1.5-5b-inp")
    with pytest.raises(ValueError, match=r"frames=49 \(13 latent frames\) for fun-1.5-5b-inp: .*even.*45 or 53"):
        fun15.check_frames(49)
    assert fun15.check_frames(85) == 22 and fun15.temporal_padding(22) == 0
    t15 = get_family("1.5-5b")
    assert t15.check_frames(81) == 21 and t15.temporal_padding(21) == 1 and t15.temporal_padding(22) == 0
    assert get_family("5b").temporal_padding(13) == 0
    with pytest.raises(ValueError, match=r"frames=48 must be 4k\+1"):
        get_family("5b").check_frames(48)


def test_family_size_rules() -> None:
    with pytest.raises(ValueError, match=r"height x width=480x736: 5b-i2v takes only 480x720"):
        get_family("5b-i2v").check_size(480, 736)
    with pytest.raises(ValueError, match=r"height x width=768x2416: 1.5-5b takes at most 2400x2400"):
        get_family("1.5-5b").check_size(768, 2416)
    with pytest.raises(ValueError, match=r"height=470 must be a multiple of 16"):
        get_family("5b").check_size(470, 720)
    get_family("5b").check_size(1024, 2048)  # RoPE linspace: no limit


def test_temporal_padding_is_the_patch_rule() -> None:
    cfg = get_family("1.5-5b").transformer
    assert [cfg.temporal_padding(n) for n in (1, 2, 3, 21, 22)] == [1, 0, 1, 1, 0]
    assert get_family("5b").transformer.temporal_padding(13) == 0


def test_other_family_facts() -> None:
    assert {n for n, f in FAMILIES.items() if f.ofs is not None} == {"1.5-5b-i2v"}
    assert get_family("1.5-5b-i2v").ofs == 2.0
    assert {n for n, f in FAMILIES.items() if not f.bf16_trained} == {"2b", "fun-2b-inp", "fun-2b-control"}
    assert {n for n, f in FAMILIES.items() if f.fps == 16} == {"1.5-5b", "1.5-5b-i2v"}
    assert get_family("2b").snr_shift_scale == 3.0 and get_family("2b").vae_scaling_factor == 1.15258426


@pytest.mark.parametrize("name, frames_lat, height_lat, width_lat, match", [
    ("fun-2b-inp", 4, 8, 12, r"frames_lat=4 exceeds 3"),
    ("5b-i2v", 3, 8, 16, r"8x16 must be 8x12"),
    ("1.5-5b", 4, 14, 12, r"height_lat=14 exceeds 12"),
    ("1.5-5b", 3, 8, 8, r"frames_lat=3 .*prepend 1"),
])
def test_the_transformer_enforces_the_same_limits(name: str, frames_lat: int, height_lat: int,
                                                  width_lat: int, match: str) -> None:
    """The model asks its config for the limits the planner checks in pixels (one rule)."""
    fam = tiny_family(name)
    model = CogVideoXTransformer(fam.transformer, device="meta")
    with pytest.raises(ValueError, match=match):
        model.check_input(frames_lat, height_lat, width_lat, fam.transformer.max_text_len)


def test_requests_outside_the_15_training_envelope_are_noted() -> None:
    """1.5: short side 768, long side up to 1360, 16k+1 frames; other families note nothing for
    4k+1 frames."""
    fam = get_family("1.5-5b")
    assert fam.untrained(81, 768, 1360) == [] and fam.untrained(49, 1360, 768) == []
    notes = fam.untrained(53, 480, 720)
    assert len(notes) == 2 and "trained on 16k+1 frames; nearest: 49 or 65" in notes[0]
    assert "short side 768" in notes[1]
    assert any("long side at most 1360" in n for n in fam.untrained(81, 768, 1600))
    assert get_family("5b").untrained(53, 480, 720) == []
