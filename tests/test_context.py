"""Context windows: schedules cover every frame with full-length windows, weights sum to one,
windowed denoising equals full denoising where it must, and families refuse windows they cannot
take."""
from __future__ import annotations

import pytest
import torch

from cogvideox_core.sampling.windows import (
    SCHEDULES, WEIGHTINGS, WEIGHTS, ContextOptions, LatentContext, causal_weights, check_window_length, get_schedule,
    get_weights, plan_windows, run_windows, schedule_looped,
    schedule_static, schedule_uniform, slice_windows, weights_pyramid, window_weights,
)
from cogvideox_core.families import get_family, latent_frames

PAIRS = [(1, 0), (2, 1), (4, 0), (4, 3), (8, 2), (13, 4), (13, 12), (16, 8), (6, 5)]
STEPS = [0, 1, 2, 3, 7]


def _contiguous(w: list[int]) -> bool:
    return w == list(range(w[0], w[0] + len(w)))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("length,overlap", PAIRS)
def test_every_frame_covered_full_windows_weights_sum_to_one(name, length, overlap):
    fn = get_schedule(name)
    for num_frames in range(1, 61):
        for step in STEPS:
            windows = fn(num_frames, length, overlap, step, 10)
            assert {f for w in windows for f in w} == set(range(num_frames))
            for w in windows:
                assert len(w) == min(num_frames, length)
                assert len(set(w)) == len(w) and 0 <= min(w) and max(w) < num_frames
                if name != "looped":
                    assert _contiguous(w)
            for weights_name in WEIGHTS:
                # float64 everywhere; float32 (the same math, cast) on a sample of lengths
                for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
                    if dtype == torch.float32 and (num_frames % 7 or step):
                        continue
                    ws = window_weights(windows, num_frames, weights_name, dtype=dtype)
                    assert all(wt.dtype == dtype and wt.shape == (len(w),)
                               for w, wt in zip(windows, ws))
                    flat = torch.cat(ws).double()
                    assert bool((flat > 0).all())
                    total = torch.zeros(num_frames, dtype=torch.float64).index_add_(
                        0, torch.tensor([f for w in windows for f in w]), flat)
                    assert torch.allclose(total, torch.ones_like(total), rtol=0, atol=tol), \
                        (name, num_frames, length, overlap, step, weights_name)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_single_window_when_video_fits(name):
    for num_frames in (1, 7, 13):
        assert get_schedule(name)(num_frames, 13, 4, 3, 10) == [list(range(num_frames))]


def test_static_last_window_shifted_back_not_shortened():
    windows = schedule_static(20, 8, 2)
    assert windows == [list(range(0, 8)), list(range(6, 14)), list(range(12, 20))]
    windows = schedule_static(17, 8, 2)
    assert [w[0] for w in windows] == [0, 6, 9]  # last one shifted back from 12 to 9
    assert all(len(w) == 8 for w in windows) and windows[-1][-1] == 16
    assert schedule_static(40, 13, 4, 0, 10) == schedule_static(40, 13, 4, 5, 10)


def test_static_neighbours_overlap_at_least_overlap():
    for num_frames in range(14, 61):
        windows = schedule_static(num_frames, 13, 4)
        for a, b in zip(windows, windows[1:]):
            assert len(set(a) & set(b)) >= 4


def test_uniform_seams_move_between_steps():
    seams = [tuple(w[0] for w in schedule_uniform(40, 13, 4, step, 20)) for step in range(4)]
    assert all(a != b for a, b in zip(seams, seams[1:]))
    assert len(set(seams)) == 4
    assert schedule_uniform(40, 13, 4, 0, 20) == schedule_static(40, 13, 4)


def test_looped_wraps_around_the_end():
    num_frames, length, overlap = 30, 13, 4
    for step in range(4):
        windows = schedule_looped(num_frames, length, overlap, step, 10)
        wrapped = [w for w in windows if not _contiguous(w)]
        assert wrapped, step
        for w in wrapped:  # crosses the end: ..., F-1, 0, ...
            i = w.index(num_frames - 1)
            assert w[i + 1] == 0
            assert w == [(w[0] + j) % num_frames for j in range(length)]
        # every seam, the one over the wrap included, shares at least `overlap` frames
        for a, b in zip(windows, windows[1:] + windows[:1]):
            assert len(set(a) & set(b)) >= overlap
    assert schedule_looped(30, 13, 4, 0, 10) != schedule_looped(30, 13, 4, 1, 10)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_causal_takes_each_frame_from_the_first_window_covering_it(name):
    fn = get_schedule(name)
    for length, overlap in PAIRS:
        for num_frames in (1, 9, 30, 47):
            for step in STEPS:
                windows = fn(num_frames, length, overlap, step, 10)
                ws = window_weights(windows, num_frames, "causal", dtype=torch.float64)
                assert [w.dtype for w in ws] == [torch.float64] * len(windows)
                first = {}
                for k, w in enumerate(windows):
                    for f in w:
                        first.setdefault(f, k)
                for k, (w, wt) in enumerate(zip(windows, ws)):
                    assert wt.tolist() == [1.0 if first[f] == k else 0.0 for f in w], (name, k)
    # static windows 0-3, 2-5, 4-7 of 8 frames: the later windows keep only their new frames
    assert [w.tolist() for w in causal_weights(schedule_static(8, 4, 2), 8)] == [
        [1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]
    with pytest.raises(ValueError, match="uncovered"):
        causal_weights([[0, 1], [3, 4]], 5)
    with pytest.raises(ValueError, match="rule over the whole window list"):
        get_weights("causal")
    assert ContextOptions(49, 16, weights="causal").to_latent(get_family("5b")).weights == "causal"


def test_pyramid_ramps_and_ends():
    assert torch.equal(weights_pyramid(5, 0, 0), torch.ones(5, dtype=torch.float64))
    w = weights_pyramid(6, 2, 2)
    assert torch.allclose(w, torch.tensor([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3], dtype=torch.float64))
    # two windows sharing 2 frames: the first is not ramped at frame 0, the last not at the end
    ws = window_weights([[0, 1, 2, 3], [2, 3, 4, 5]], 6, "pyramid", dtype=torch.float64)
    assert torch.allclose(ws[0], torch.tensor([1, 1, 2 / 3, 1 / 3], dtype=torch.float64))
    assert torch.allclose(ws[1], torch.tensor([1 / 3, 2 / 3, 1, 1], dtype=torch.float64))
    # a single window is weighted 1 everywhere
    assert torch.equal(window_weights([list(range(9))], 9)[0], torch.ones(9))


def test_window_weights_refuses_bad_windows():
    with pytest.raises(ValueError, match="uncovered"):
        window_weights([[0, 1, 2]], 5)
    with pytest.raises(ValueError, match="num_frames=3"):
        window_weights([[0, 1, 3]], 3)
    with pytest.raises(ValueError, match="twice"):
        window_weights([[0, 1, 1]], 2)
    with pytest.raises(ValueError, match="weights='nope'.*flat, pyramid"):
        window_weights([[0]], 1, "nope")


# --- run_windows --------------------------------------------------------------------------------

def _x(num_frames: int, b: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, num_frames, 3, 4, 5, generator=g)


def test_single_window_equals_denoiser_exactly():
    x = _x(9)

    def mixing(xw: torch.Tensor, wins: list[list[int]]) -> torch.Tensor:  # mixes all frames
        return torch.sin(xw) * xw.mean(dim=1, keepdim=True) + 0.3

    for name in SCHEDULES:
        windows, weights = plan_windows(LatentContext(13, 4, name, "pyramid"), 9, 2, 10)
        assert torch.equal(run_windows(mixing, x, windows, weights), mixing(x, [list(range(9))]))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("weights_name", sorted(WEIGHTINGS))
def test_framewise_denoiser_windowed_equals_full(name, weights_name):
    def framewise(xw: torch.Tensor, wins: list[list[int]]) -> torch.Tensor:
        return xw * 2 + 0.5

    for num_frames, length, overlap, step in [(30, 13, 4, 0), (30, 13, 4, 3), (23, 8, 2, 1),
                                              (14, 13, 12, 5), (17, 4, 1, 2)]:
        x = _x(num_frames)
        windows, weights = plan_windows(LatentContext(length, overlap, name, weights_name),
                                        num_frames, step, 10)
        out = run_windows(framewise, x, windows, weights)
        assert torch.equal(out, framewise(x, []))  # float64 blending: exactly, not just closely


def test_denoiser_gets_window_indices_and_batching_matches():
    num_frames = 31
    x = _x(num_frames)
    cond = torch.arange(num_frames, dtype=torch.float32).view(1, -1, 1, 1, 1).expand(2, -1, 1, 1, 1)
    calls: list[int] = []

    def denoise(xw: torch.Tensor, wins: list[list[int]]) -> torch.Tensor:
        calls.append(len(wins))
        assert xw.shape[0] == 2 * len(wins)
        assert torch.equal(xw, slice_windows(x, wins))  # windows are stacked window-major
        return xw * 1.5 + slice_windows(cond, wins) * 0.25  # per-frame conditioning by index

    for name in SCHEDULES:
        windows, weights = plan_windows(LatentContext(8, 3, name, "pyramid"), num_frames, 1, 10)
        calls.clear()
        single = run_windows(denoise, x, windows, weights)
        assert calls == [1] * len(windows)
        calls.clear()
        batched = run_windows(denoise, x, windows, weights, batch_windows=3)
        assert sum(calls) == len(windows) and max(calls) == 3
        assert torch.equal(single, batched)
        torch.testing.assert_close(single, x * 1.5 + cond * 0.25, rtol=0, atol=1e-6)


def test_batching_keeps_unequal_lengths_apart():
    x = _x(6, b=1)
    windows = [[0, 1, 2], [2, 3, 4], [4, 5]]
    weights = window_weights(windows, 6)
    calls: list[int] = []

    def denoise(xw: torch.Tensor, wins: list[list[int]]) -> torch.Tensor:
        calls.append(len(wins))
        return -xw

    out = run_windows(denoise, x, windows, weights, batch_windows=4)
    assert calls == [2, 1]
    torch.testing.assert_close(out, -x, rtol=0, atol=1e-6)


def test_run_windows_accumulates_in_float64_and_returns_prediction_dtype():
    x = _x(20).to(torch.bfloat16)
    windows, weights = plan_windows(LatentContext(8, 4, "static", "pyramid"), 20)
    out = run_windows(lambda xw, wins: xw, x, windows, weights)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, x)


def test_run_windows_refuses_mismatches():
    x = _x(6)
    with pytest.raises(ValueError, match="weights"):
        run_windows(lambda xw, w: xw, x, [[0, 1, 2, 3, 4, 5]], [])
    with pytest.raises(ValueError, match="batch_windows=0"):
        run_windows(lambda xw, w: xw, x, [list(range(6))], [torch.ones(6)], batch_windows=0)
    with pytest.raises(ValueError, match="shape"):
        run_windows(lambda xw, w: xw[:, :1], x, [list(range(6))], [torch.ones(6)])


# --- options and family rules -------------------------------------------------------------------

def test_pixel_to_latent():
    assert [latent_frames(f) for f in (0, 1, 4, 5, 16, 17, 49, 81, 85)] == \
        [0, 1, 1, 2, 4, 5, 13, 21, 22]
    ctx = ContextOptions(49, 16, "uniform", "flat").to_latent(get_family("5b"))
    assert ctx == LatentContext(13, 4, "uniform", "flat")
    assert ContextOptions(49, 0).to_latent(get_family("2b")).overlap == 0


@pytest.mark.parametrize("family,frames,ok", [
    ("1.5-5b", 81, False), ("1.5-5b", 85, True), ("1.5-5b-i2v", 49, False),
    ("fun-1.5-5b-inp", 53, True), ("fun-1.5-5b-inp", 45, True), ("fun-1.5-5b-inp", 49, False),
    ("5b-i2v", 49, True), ("5b-i2v", 33, False), ("5b-i2v", 65, False),
    ("fun-2b-inp", 49, True), ("fun-2b-inp", 33, True), ("fun-2b-inp", 53, False),
    ("2b", 81, True), ("5b", 33, True), ("fun-5b-control", 97, True),
])
def test_family_window_rules(family, frames, ok):
    opts = ContextOptions(frames, 8)
    if ok:
        assert opts.to_latent(get_family(family)).length == latent_frames(frames)
    else:
        with pytest.raises(ValueError, match=f"length_frames={frames}") as err:
            opts.to_latent(get_family(family))
        assert family in str(err.value)


def test_fun_2b_window_limit_is_its_table_and_batching_carries_over():
    from cogvideox_core.tiny import tiny_family

    tiny = tiny_family("fun-2b-inp")  # a 9-frame (3-latent) table
    assert tiny.max_latent_frames == 3 and get_family("fun-2b-inp").max_latent_frames == 13
    assert get_family("5b").max_latent_frames is None
    with pytest.raises(ValueError, match="at most 3 latent frames"):
        ContextOptions(13, 4).to_latent(tiny)
    assert ContextOptions(9, 4, batch_windows=4).to_latent(tiny) == LatentContext(3, 1, batch_windows=4)


def test_family_messages_state_the_rule():
    with pytest.raises(ValueError, match="even.*77 or 85"):
        ContextOptions(81, 8).to_latent(get_family("1.5-5b"))
    with pytest.raises(ValueError, match="exactly 13 latent frames"):
        ContextOptions(33, 8).to_latent(get_family("5b-i2v"))
    with pytest.raises(ValueError, match="at most 13 latent frames"):
        ContextOptions(53, 8).to_latent(get_family("fun-2b-inp"))
    with pytest.raises(ValueError, match="odd|even"):
        check_window_length(11, get_family("1.5-5b"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(length_frames=0), "length_frames=0"),
    (dict(overlap_frames=-1), "overlap_frames=-1"),
    (dict(length_frames=17, overlap_frames=17), "overlap_frames=17.*less than length_frames=17"),
    (dict(schedule="batched"), "schedule='batched'.*static, uniform, looped"),
    (dict(weights="relative"), "weights='relative'.*flat, pyramid"),
    (dict(batch_windows=0), "batch_windows=0"),
])
def test_options_refuse_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContextOptions(**kwargs)


def test_overlap_equal_in_latents_refused():
    # 6 and 5 pixel frames are both 2 latent frames: the windows would never advance
    with pytest.raises(ValueError, match="overlap_frames=5 is 2 latent frames.*at most 1"):
        ContextOptions(6, 5).to_latent(get_family("5b"))


@pytest.mark.parametrize("args,match", [
    ((0, 4, 1, 0, 1), "num_frames=0"), ((10, 0, 0, 0, 1), "length=0"),
    ((10, 4, 4, 0, 1), "overlap=4"), ((10, 4, -1, 0, 1), "overlap=-1"),
    ((10, 4, 1, -1, 1), "step_index=-1"),
])
def test_schedules_refuse_invalid(args, match):
    for fn in SCHEDULES.values():
        with pytest.raises(ValueError, match=match):
            fn(*args)
    with pytest.raises(ValueError, match="schedule='x'"):
        get_schedule("x")
    with pytest.raises(ValueError, match="weights='x'"):
        get_weights("x")
    with pytest.raises(ValueError, match="overlap=4"):
        LatentContext(4, 4)
