"""What the shipped tiny-world models' videos show (cogvideox_core/data/tiny_world), through the
pack's public pipeline: ``generate`` / ``GenerateRequest``, ``ConditioningInputs``, context
windows (``GenerateRequest.context``, as ``generate --context-frames``) and chained extension
(``long_video.chain.generate_long``, as ``generate --extend-chunks``), the exact tiled VAE
decode, and a LoRA loaded by ``cogvideox_core.loading.lora.load_lora``.

Every model-quality check is a rate over prompt-seed pairs, read back by the world's analyser
(benchmarks/tiny_world/analyse.py), asserted against a floor below; each test logs a
``RESULT`` line with its measured numbers (``pytest -o log_cli=true`` shows them) and repeats
them in its assertion message. Skipped only when the shipped files are absent.

Re-measure after retraining::

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_tiny_world_models.py -o log_cli=true \\
        -o log_cli_level=INFO | grep RESULT
"""
from __future__ import annotations

import logging
import math

import pytest
import torch

from benchmarks.tiny_world import evaluate
from benchmarks.tiny_world.analyse import analyse, foreground_mask, largest_step
from benchmarks.tiny_world.long_video import PROMPTS, SMOOTH_PX, long_rates, moves_smoothly
from benchmarks.tiny_world.models import DATA, load_models
from benchmarks.tiny_world.train_lora import LoraAdapters, lora_path, merged_lora
from benchmarks.tiny_world.world import (FRAMES, HALF_SIZE, HEIGHT, WIDTH, make_clip, parse_caption, render,
                                         sample_scenes)
from cogvideox_core.generation.conditioning import ConditioningInputs
from cogvideox_core.generation.pipeline import GenerateRequest, generate, generate_latents
from cogvideox_core.long_video.chain import ChainOptions, generate_long
from cogvideox_core.sampling.windows import ContextOptions
from cogvideox_core.vae import tiling_exact
from cogvideox_core.vae.tiling import tiled_decode

logger = logging.getLogger("tiny_world_models")

# ---- floors: set from the shipped weights (the placeholders' numbers in brackets) ----------
# a. text-to-video, share of evaluate.cases(20) (20 steps, cfg 6) whose video matches the prompt
T2V_COLOUR_FLOOR = 0.85  # measured 1.0 on the shipped weights (chance 1/3)
T2V_SHAPE_FLOOR = 0.6  # measured 0.7 (14 of 20; chance 1/2): the weakest attribute, squares come out rounded
# (per prompt: 13 of the 13 circle prompts read circle, 3 of the 7 square prompts square, fill 0.86-0.87
# where the VAE renders a square at 0.91): a model that drew only circles would score 0.65, so this
# floor shows the shape is drawn whole, not that the model tells squares from circles
T2V_DIRECTION_FLOOR = 0.85  # measured 1.0 (chance 1/4)
T2V_ALL_FLOOR = 0.55  # measured 0.7 (chance 1/24)
T2V_SMOOTH_FLOOR = 0.8  # one shape in >= MIN_COVERAGE of the frames, no step > MAX_STEP_PX; measured 1.0
# b. Fun InP: share of world clips whose first (last) generated frame is close to the start
#    (end) image: mean abs diff < INP_MAD_MAX, analyser colour equal, centroid within INP_POS_PX
INP_START_FLOOR = 0.8  # measured 1.0 (12 of 12: mean abs diff 0.0086, centroid 1.07 px)
# The end image is kept roughly (mean 1.73 px off, mean abs diff 0.0147 against a blank frame's
# 0.032; the models before 2026-12-05: 3.84 px, 0.0257), so it is judged at INP_END_POS_PX.
INP_END_FLOOR = 0.65  # share within INP_END_POS_PX and of the end image's colour; measured 1.0
# c. context windows in 17-frame windows overlapping 16 with causal weights (each frame from the
#    first window covering it: the demo's default), long_video.PROMPTS (right, left, down, up) x 2
#    seeds: shares with one object throughout (no step longer than the shape is wide), smooth (no
#    step over long_video.SMOOTH_PX = 4 px), moving the prompt's way. At 2x (33 frames) the world
#    has room for the motion; at 4x (65 frames) the shape must cross an edge of the torus, which
#    the model has only partly learned.
# (the pyramid-weight and overlap-8 numbers in brackets: the models shipped before 2026-12-05)
CONTEXT_2X_ONE_OBJECT_FLOOR = 0.75  # measured 1.0 (pyramid weights: 1.0; overlap 8: 1.0)
CONTEXT_2X_SMOOTH_FLOOR = 0.75  # measured 1.0, largest steps 2.1-3.7 px (pyramid: 0.875, 8.7 px; overlap 8: 0.875)
CONTEXT_2X_DIRECTION_FLOOR = 0.75  # measured 1.0 (pyramid: 0.875)
# 4x is NOT smooth in most videos (3 of 8 under 4 px: the shape slows at an edge, or a window
# starts it again elsewhere): at 65 frames the shape must cross an edge of the torus, and the
# transformers have not learned to (the VAE has: test_the_vae_carries_a_shape_across_the_edges_smoothly)
CONTEXT_4X_ONE_OBJECT_FLOOR = 0.5  # measured 0.875 (pyramid: 0.625; overlap 8: 0.625)
# (over seeds 2-7, 24 videos: 7 smooth; the set shipped before: 4 of 8 here, 12 of 24 there; the
# models before 2026-12-05: 3 of 8, 9 of 32 over 8 seeds)
CONTEXT_4X_SMOOTH_FLOOR = 0.25  # measured 0.375 (pyramid 0.25, overlap 8: 0)
CONTEXT_4X_DIRECTION_FLOOR = 0.75  # measured 1.0 (pyramid: 1.0; overlap 8: 0.75)
# ... and where the shape is inside the frame (steps with its centre long_video.INSIDE_MARGIN from
# every edge; a crossing left out), the windows' seams do not jump in most videos: no step over
# SMOOTH_PX in 7 of 8, 22 of 24 over seeds 2-7 (the set shipped before: 7 of 8, 18 of 24; the
# models before 2026-12-05: 6 of 8, 25 of 32 over 8 seeds)
CONTEXT_4X_SMOOTH_INSIDE_FLOOR = 0.5  # measured 0.875
# d. chained extension (Fun InP, 3 chunks, colour match 1): share of seeds whose motion continues
#    across the seams (no step above CHAIN_MAX_STEP_PX) and whose colours match at them
CHAIN_MAX_STEP_PX = 4.0  # = MAX_STEP_PX
CHAIN_SMOOTH_FLOOR = 0.66  # measured 1.0 (largest steps 3.18, 2.76, 2.57 px; seams <= 1.2 px a frame)
CHAIN_COLOUR_FLOOR = 0.66  # measured 1.0 (seam colour difference <= 0.049)
# f. the "every shape blue" LoRA at strength 1: share of blue videos for red/green prompts
LORA_BLUE_FLOOR = 0.75  # measured 1.0 with the LoRA (8 of 8)
LORA_MARGIN = 0.5  # with - without; measured 1.0 (0 of 8 blue without it)

# ---- fixed judgements (the world's own scale, not the training's) ---------------------------
STEPS, CFG = 20, 6.0
INP_MAD_MAX = 0.06  # mean abs pixel difference (0..1) of a frame "close" to its image
INP_POS_PX = 3.0  # centroid distance of a frame "close" to its image
INP_END_POS_PX = 8.0  # the same for the end image (see INP_END_FLOOR)
MAX_STEP_PX = SMOOTH_PX  # 4 px: the world moves 1 px/frame, a larger centroid step is a jump
# MIN_COVERAGE (0.9, long_video's): share of frames with one shape in them
SEAM_COLOUR_MAX = 0.1  # mean foreground RGB (0..1) difference across a chain seam
TILED_TOL = 5e-5  # exact tiled decode vs vae.decode in fp32 (tests/test_tiling.py's bound; observed <= 1e-5)

CONTEXT_WINDOW, CONTEXT_OVERLAP = FRAMES, 16  # the demo's: windows 1 latent frame apart
CONTEXT_SEEDS = 2  # per prompt of long_video.PROMPTS
CHAIN_CHUNKS, CHAIN_OVERLAP = 3, 4  # 17 + 2 * 13 = 43 frames
CHAIN_SEEDS = (0, 1, 2)
CHAIN_START = (16.0, 32.0)  # a red square moving right from here stays inside for 43 frames
INP_SCENES = 6
VAE_CROSSING_CLIPS = 8

_SHIPPED = [DATA / "model_index.json", DATA / "transformer", DATA / "vae", DATA / "text_encoder",
            DATA / "inp" / "transformer"]
pytestmark = pytest.mark.skipif(not all(p.exists() for p in _SHIPPED),
                                reason=f"the tiny world's trained models are not shipped in {DATA}")


def _result(name: str, **numbers: object) -> str:
    line = f"RESULT {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in numbers.items())
    logger.info(line)
    return line


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


# ---- fixtures: each model loaded once, the text-to-video videos generated once --------------

@pytest.fixture(scope="module")
def t2v():
    return load_models("t2v")


@pytest.fixture(scope="module")
def inp():
    return load_models("inp")


@pytest.fixture(scope="module")
def t2v_videos(t2v) -> list[tuple[evaluate.Case, torch.Tensor]]:
    """(case, frames [17, 64, 96, 3]) of evaluate.cases(20) at 20 steps, cfg 6."""
    return [(case, generate(t2v, evaluate.request(case, STEPS, CFG))) for case in evaluate.cases(20)]


# ---- a. text-to-video follows the prompt ---------------------------------------------------

def test_text_to_video_follows_colour_shape_and_direction(t2v_videos) -> None:
    analyses = [analyse(video) for _, video in t2v_videos]
    found = [a.matches(parse_caption(case.prompt)) for a, (case, _) in zip(analyses, t2v_videos)]
    rates = {a: sum(f[a] for f in found) / len(found) for a in ("colour", "shape", "direction")}
    rates["all"] = sum(all(f.values()) for f in found) / len(found)
    steps = sorted(largest_step(a.track) for a in analyses)
    # the trained length's own smoothness: what the long-video tests (c, d) can hope for
    rates["smooth"] = sum(moves_smoothly(a, MAX_STEP_PX) for a in analyses) / len(analyses)
    line = _result("t2v follows the prompt (20 prompt-seed pairs, 20 steps, cfg 6)", **rates,
                   largest_step_px_median=steps[len(steps) // 2])
    floors = {"colour": T2V_COLOUR_FLOOR, "shape": T2V_SHAPE_FLOOR, "direction": T2V_DIRECTION_FLOOR,
              "all": T2V_ALL_FLOOR, "smooth": T2V_SMOOTH_FLOOR}
    for name, floor in floors.items():
        assert rates[name] >= floor, f"{name} rate {rates[name]:.2f} < floor {floor}; {line}"


# ---- b. Fun InP: the first (last) frame is the start (end) image -----------------------------

def _close(frame: torch.Tensor, image: torch.Tensor, pos_px: float = INP_POS_PX) -> tuple[bool, float, float]:
    """(close, mean abs diff, centroid distance px) of one generated frame to its image [H, W, 3]."""
    got, want = analyse(frame[None]), analyse(image[None])
    mad = float((frame - image).abs().mean())
    dist = float((got.track[0] - want.track[0]).norm())  # NaN when either has no shape
    return (mad < INP_MAD_MAX and got.colour == want.colour and dist <= pos_px), mad, dist


@pytest.fixture(scope="module")
def inp_results(inp) -> dict[str, list[tuple[bool, float, float]]]:
    """Per world clip: how close frame 0 is to the start image (start only; start + end) and
    how close the last frame is to the end image (start + end)."""
    out: dict[str, list] = {"start": [], "start_of_both": [], "end": []}
    for k, scene in enumerate(sample_scenes(INP_SCENES, seed=4321)):
        clip = render(scene)
        case = evaluate.Case(scene.caption, 1000 + k)
        start = generate(inp, evaluate.request(case, STEPS, CFG, ConditioningInputs(image=clip[:1])))
        both = generate(inp, evaluate.request(case, STEPS, CFG, ConditioningInputs(image=clip[:1],
                                                                                   end_image=clip[-1:])))
        out["start"].append(_close(start[0], clip[0]))
        out["start_of_both"].append(_close(both[0], clip[0]))
        out["end"].append(_close(both[-1], clip[-1], INP_END_POS_PX))
    return out


def test_inp_first_frame_is_the_start_image(inp_results) -> None:
    rows = inp_results["start"] + inp_results["start_of_both"]
    rate = sum(r[0] for r in rows) / len(rows)
    line = _result(f"InP start image ({len(rows)} videos)", rate=rate, mean_abs_diff=_mean([r[1] for r in rows]),
                   centroid_px=_mean([r[2] for r in rows]))
    assert rate >= INP_START_FLOOR, f"start rate {rate:.2f} < floor {INP_START_FLOOR}; {line}"


def test_inp_last_frame_is_the_end_image(inp_results) -> None:
    rows = inp_results["end"]
    rate = sum(r[0] for r in rows) / len(rows)
    line = _result(f"InP end image ({len(rows)} videos)", rate=rate, mean_abs_diff=_mean([r[1] for r in rows]),
                   centroid_px=_mean([r[2] for r in rows]))
    assert rate >= INP_END_FLOOR, f"end rate {rate:.2f} < floor {INP_END_FLOOR}; {line}"


# ---- c. context windows: 4x the trained length, one object moving smoothly --------------------

@pytest.mark.parametrize("times", [2, 4])
def test_context_windows_at_two_and_four_times_the_trained_length(t2v, times: int) -> None:
    frames = times * (FRAMES - 1) + 1  # 33, 65
    context = ContextOptions(CONTEXT_WINDOW, CONTEXT_OVERLAP, weights="causal")  # static schedule
    rates = long_rates(t2v, context, frames, CONTEXT_SEEDS, STEPS, CFG)
    line = _result(f"context windows {frames} frames ({times}x) in {CONTEXT_WINDOW}/{CONTEXT_OVERLAP}, causal "
                   f"({CONTEXT_SEEDS * len(PROMPTS)} videos)", **rates)
    floors = {2: {"one_object": CONTEXT_2X_ONE_OBJECT_FLOOR, "smooth": CONTEXT_2X_SMOOTH_FLOOR,
                  "direction": CONTEXT_2X_DIRECTION_FLOOR},
              4: {"one_object": CONTEXT_4X_ONE_OBJECT_FLOOR, "smooth": CONTEXT_4X_SMOOTH_FLOOR,
                  "smooth_inside": CONTEXT_4X_SMOOTH_INSIDE_FLOOR, "direction": CONTEXT_4X_DIRECTION_FLOOR}}[times]
    for name, floor in floors.items():
        assert rates[name] >= floor, f"{name} {rates[name]:.2f} < {floor}; {line}"


def _crosses_an_edge(scene) -> bool:
    """Whether ``scene``'s shape reaches past an edge of the frame during the clip."""
    r = HALF_SIZE
    return any(not (r <= x <= WIDTH - r and r <= y <= HEIGHT - r) for x, y in map(scene.centre, range(FRAMES)))


def test_the_vae_carries_a_shape_across_the_edges_smoothly(t2v) -> None:
    """Where the 4x videos jump, the shape crosses an edge of the torus. The shipped VAE is not
    why: world clips crossing an edge come back through encode + decode without a step over
    SMOOTH_PX (measured on 8 such clips: largest 3.25 px; the VAE before 2026-12-05: 3.43 px on 16);
    the transformers are."""
    scenes = [s for s in sample_scenes(100, 7, wrap=1.0) if _crosses_an_edge(s)][:VAE_CROSSING_CLIPS]
    assert len(scenes) == VAE_CROSSING_CLIPS
    steps = []
    with torch.no_grad():
        for scene in scenes:
            found = analyse(evaluate.round_trip(t2v.vae, render(scene)))
            steps.append(largest_step(found.track))
            assert moves_smoothly(found), f"{scene.caption} from {scene.start}: largest step {steps[-1]:.2f} px"
    _result(f"VAE round trip of {len(scenes)} clips crossing an edge", largest_step_px=max(steps))


# ---- d. chained extension: the motion and the colours continue across the seams ------------------

def _foreground_colour(frames: torch.Tensor) -> torch.Tensor:
    """Mean colour [3] of the foreground pixels of ``frames`` [F, H, W, 3] (NaN if none)."""
    mask = foreground_mask(frames)
    return frames[mask].mean(dim=0) if bool(mask.any()) else torch.full((3,), float("nan"))


def test_chained_extension_continues_motion_and_colour(inp) -> None:
    clip = make_clip("red", "square", "right", CHAIN_START)
    prompt = "a red square moving right on a white background"
    options = ChainOptions(CHAIN_CHUNKS, CHAIN_OVERLAP, colour_match=1.0)
    stride = FRAMES - CHAIN_OVERLAP
    seams = [k * stride for k in range(1, CHAIN_CHUNKS)]  # chunk k's first frame (the overlap starts)
    smooth, colour_ok, seam_px, colour_diff, steps = [], [], [], [], []
    for seed in CHAIN_SEEDS:
        request = GenerateRequest(prompt=prompt, inputs=ConditioningInputs(image=clip[:1]), frames=FRAMES,
                                  height=HEIGHT, width=WIDTH, steps=STEPS, cfg=CFG, seed=seed)
        video = generate_long(inp, request, options)
        assert video.shape == (FRAMES + (CHAIN_CHUNKS - 1) * stride, HEIGHT, WIDTH, 3)
        found = analyse(video)
        step = largest_step(found.track)
        # the centroid across each seam's overlap: frame before it -> frame after it, per frame
        around = [float((found.track[s + CHAIN_OVERLAP] - found.track[s - 1]).norm()) / (CHAIN_OVERLAP + 1)
                  for s in seams]
        # mean foreground colour of the 4 frames before each overlap vs the 4 after it
        diffs = [float((_foreground_colour(video[s - 4:s]) - _foreground_colour(
                 video[s + CHAIN_OVERLAP:s + CHAIN_OVERLAP + 4])).abs().max()) for s in seams]
        smooth.append(found.direction == "right" and moves_smoothly(found, CHAIN_MAX_STEP_PX)
                      and all(a <= CHAIN_MAX_STEP_PX for a in around))
        colour_ok.append(all(d <= SEAM_COLOUR_MAX for d in diffs))  # NaN compares False
        seam_px += around
        colour_diff += diffs
        steps.append(step)
        logger.info("chain seed %d: %s, largest step %.2f px, seam px/frame %s, seam colour diff %s",
                    seed, found, step, around, diffs)
    rates = {"smooth": sum(smooth) / len(smooth), "colour": sum(colour_ok) / len(colour_ok)}
    line = _result(f"chained extension {CHAIN_CHUNKS} chunks overlap {CHAIN_OVERLAP} ({len(CHAIN_SEEDS)} seeds)",
                   **rates, seam_px_per_frame_max=max(seam_px), seam_colour_diff_max=max(colour_diff),
                   largest_step_px=[round(s, 2) for s in steps])
    assert rates["smooth"] >= CHAIN_SMOOTH_FLOOR, f"smooth {rates['smooth']:.2f} < {CHAIN_SMOOTH_FLOOR}; {line}"
    assert rates["colour"] >= CHAIN_COLOUR_FLOOR, f"colour {rates['colour']:.2f} < {CHAIN_COLOUR_FLOOR}; {line}"


# ---- e. the exact tiled decode equals the untiled decode on a generated latent ------------------

def test_tiled_decode_equals_untiled_on_a_generated_latent(t2v, monkeypatch: pytest.MonkeyPatch) -> None:
    case = evaluate.cases(1)[0]
    z = generate_latents(t2v, evaluate.request(case, 8, CFG))  # [1, 16, 5, 8, 12] unscaled
    assert z.shape[2:] == (5, HEIGHT // 8, WIDTH // 8)
    with torch.no_grad():
        want = t2v.vae.decode(z)
    grids: list[int] = []
    real = tiling_exact.regions_for_budget

    def record(h: int, w: int, area: int) -> list:
        regions = real(h, w, area)
        grids.append(len(regions))
        return regions

    monkeypatch.setattr(tiling_exact, "regions_for_budget", record)
    diffs = {}
    for tile in ((32, 48), (24, 40)):  # latent 4x6 and 3x5 of the 8x12 frame
        grids.clear()
        got = tiled_decode(t2v.vae, z, tile=tile)
        assert got.shape == want.shape and max(grids) > 1, f"tile {tile}: not tiled ({grids})"
        diffs[f"{tile[0]}x{tile[1]}"] = float((got - want).abs().max())
    line = _result("tiled decode vs vae.decode (fp32, max abs diff)", **diffs, tol=TILED_TOL)
    assert all(d <= TILED_TOL for d in diffs.values()), line


# ---- f. a LoRA trained on blue clips paints red and green prompts blue ---------------------------

LORA_PAIRS = 8


def test_lora_makes_every_shape_blue(t2v, t2v_videos) -> None:
    path = lora_path("blue")
    if not path.exists():
        pytest.skip(f"{path} is not shipped (python -m benchmarks.tiny_world.train_lora writes it)")
    cases = evaluate.other_colour_cases("blue", LORA_PAIRS)
    made = {(c.prompt, c.seed): v for c, v in t2v_videos}
    without = [analyse(made[(c.prompt, c.seed)] if (c.prompt, c.seed) in made
                       else generate(t2v, evaluate.request(c, STEPS, CFG))).colour == "blue" for c in cases]
    before = {k: v.clone() for k, v in t2v.transformer.state_dict().items()}
    with merged_lora(t2v.transformer, path, 1.0) as weights:
        assert len(weights) == 6 * len(t2v.transformer.transformer_blocks)
        with_lora = [analyse(generate(t2v, evaluate.request(c, STEPS, CFG))).colour == "blue" for c in cases]
    after = t2v.transformer.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "the LoRA was not taken off"
    rates = {"without": sum(without) / len(cases), "with": sum(with_lora) / len(cases)}
    line = _result(f"LoRA every_shape_blue at strength 1, blue share of {len(cases)} red/green prompt-seed pairs",
                   **rates, shift=rates["with"] - rates["without"])
    assert rates["with"] >= LORA_BLUE_FLOOR, f"with {rates['with']:.2f} < {LORA_BLUE_FLOOR}; {line}"
    assert rates["with"] - rates["without"] >= LORA_MARGIN, f"shift < {LORA_MARGIN}; {line}"


def test_trained_lora_layout_is_what_the_pack_loads(t2v, tmp_path) -> None:
    """The training hooks (``x @ A.T @ B.T`` added to each target linear) and the saved file
    merged by ``load_lora`` (PEFT keys, no alpha: scale 1) give the same transformer output."""
    gen = torch.Generator().manual_seed(0)
    model = t2v.transformer
    x = torch.randn(1, 5, 16, HEIGHT // 8, WIDTH // 8, generator=gen)
    t, text = torch.tensor([500]), torch.randn(1, model.config.max_text_len, model.config.text_dim, generator=gen)
    with torch.no_grad():
        base = model(x, t, text)
        adapters = LoraAdapters(model, rank=4, seed=3)
        try:
            for up in adapters.up:
                up.copy_(0.05 * torch.randn(up.shape, generator=gen))
            hooked = model(x, t, text)
        finally:
            adapters.remove()
        path = adapters.save(tmp_path / "lora.safetensors", torch.float32)
        with merged_lora(model, path, 1.0) as weights:
            merged = model(x, t, text)
        assert model(x, t, text).equal(base), "hooks or merge left behind"
    keys = sorted(adapters.state())
    assert keys[0] == "transformer_blocks.0.attn1.to_k.lora_A.weight" and len(weights) == len(keys) // 2
    change, diff = float((hooked - base).abs().max()), float((merged - hooked).abs().max())
    line = _result("LoRA hooks vs merged file", change=change, max_abs_diff=diff)
    assert change > 1e-3 and diff <= 1e-4 * max(1.0, change), line
