"""``python -m cogvideox_core generate``.

A tiny random model (diffusers components, see ``pipeline_models``) is saved to disk with
``save_pretrained`` as a diffusers tree and generated from through the CLI; the result must equal
the in-process pipeline on the same weights. ``demo``: ``test_demo.py``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import diffusers  # noqa: F401  the oracle: installed by .ci/setup, never skipped
from pipeline_models import save_tree  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from cogvideox_core.cli.main import main  # noqa: E402
from cogvideox_core.generation.conditioning import ConditioningInputs  # noqa: E402
from cogvideox_core.sampling.windows import ContextOptions  # noqa: E402
from cogvideox_core.long_video.chain import ChainOptions, generate_long  # noqa: E402
from cogvideox_core.generation.pipeline import GenerateRequest, generate  # noqa: E402
from cogvideox_core.video_io import count_frames, read_image  # noqa: E402

ARGS = ["--prompt", "a lighthouse at dusk", "--negative", "blurry", "--frames", "9", "--height", "32",
        "--width", "48", "--steps", "3", "--seed", "11", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_inp(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tiny-fun-5b-inp")
    return root, save_tree("fun-5b-inp", root)


def test_generate_mp4(tiny_5b, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, _models = tiny_5b
    out = tmp_path / "video.mp4"
    assert main(["generate", "--model", str(root), *ARGS, "--out", str(out)]) == 0
    assert count_frames(out) == 9
    assert f"wrote {out} (9 frames, 48x32, 5b" in capsys.readouterr().out


def test_generate_safetensors_equals_the_pipeline(tiny_5b, tmp_path: Path) -> None:
    root, models = tiny_5b
    out = tmp_path / "frames.safetensors"
    assert main(["generate", "--model", str(root), *ARGS, "--sampler", "ddim", "--out", str(out)]) == 0
    frames = load_file(str(out))["frames"]
    assert frames.shape == (9, 32, 48, 3) and frames.dtype == torch.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    request = GenerateRequest(prompt="a lighthouse at dusk", negative_prompt="blurry", frames=9, height=32,
                              width=48, steps=3, seed=11, sampler="ddim")
    assert torch.equal(frames, generate(models, request))


@pytest.mark.parametrize("method", ["pab", "fastercache"])
def test_generate_with_an_attention_cache_equals_the_pipeline(tiny_5b, tmp_path: Path, method: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """--cache pab|fastercache: the core pipeline's frames with the cache, and its summary logged
    at INFO by a logger the CLI lets through without --verbose (the root stays at WARNING)."""
    import logging

    from cogvideox_core.models.step_cache import CacheOptions

    root, models = tiny_5b
    out = tmp_path / "frames.safetensors"
    args = [a if a != "3" else "12" for a in ARGS]  # 12 steps: the caches reuse on some
    assert main(["generate", "--model", str(root), *args, "--sampler", "ddim", "--cache", method,
                 "--out", str(out)]) == 0
    summary = [r for r in caplog.records if r.name == "cogvideox_core.models.step_cache"]
    assert len(summary) == 1 and summary[0].getMessage().startswith(f"step cache {method}: ")
    assert logging.getLogger(summary[0].name).getEffectiveLevel() == logging.INFO
    request = GenerateRequest(prompt="a lighthouse at dusk", negative_prompt="blurry", frames=9, height=32,
                              width=48, steps=12, seed=11, sampler="ddim", cache=CacheOptions(method))
    cached = load_file(str(out))["frames"]
    assert torch.equal(cached, generate(models, request))
    plain = generate(models, GenerateRequest(prompt="a lighthouse at dusk", negative_prompt="blurry", frames=9,
                                             height=32, width=48, steps=12, seed=11, sampler="ddim"))
    assert not torch.equal(cached, plain)


def _png(path: Path, seed: int) -> Path:
    from PIL import Image

    pixels = torch.randint(0, 256, (32, 48, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def test_generate_start_and_end_images_with_an_inp_model(tiny_inp, tmp_path: Path) -> None:
    root, models = tiny_inp
    start, end = _png(tmp_path / "start.png", 1), _png(tmp_path / "end.png", 2)
    out = tmp_path / "inp.safetensors"
    assert main(["generate", "--model", str(root), *ARGS, "--image", str(start), "--end-image", str(end),
                 "--out", str(out)]) == 0
    inputs = ConditioningInputs(image=read_image(start), end_image=read_image(end))
    request = GenerateRequest(prompt="a lighthouse at dusk", negative_prompt="blurry", inputs=inputs,
                              frames=9, height=32, width=48, steps=3, seed=11)
    assert torch.equal(load_file(str(out))["frames"], generate(models, request))


def test_generate_with_context_windows_equals_the_pipeline(tiny_5b, tmp_path: Path) -> None:
    root, models = tiny_5b
    out = tmp_path / "windows.safetensors"
    args = [a if a != "9" else "17" for a in ARGS]  # 17 frames: 5 latents in windows of 3
    assert main(["generate", "--model", str(root), *args, "--context-frames", "9", "--context-overlap", "4",
                 "--context-schedule", "uniform", "--context-weights", "flat", "--out", str(out)]) == 0
    request = GenerateRequest(prompt="a lighthouse at dusk", negative_prompt="blurry", frames=17, height=32,
                              width=48, steps=3, seed=11, context=ContextOptions(9, 4, "uniform", "flat"))
    assert torch.equal(load_file(str(out))["frames"], generate(models, request))


def test_generate_chained_with_a_prompts_file_equals_generate_long(tiny_inp, tmp_path: Path) -> None:
    root, models = tiny_inp
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\n\na lighthouse at night\n")
    end = _png(tmp_path / "end.png", 2)
    out = tmp_path / "chain.safetensors"
    assert main(["generate", "--model", str(root), *ARGS, "--extend-chunks", "2", "--extend-overlap", "4",
                 "--prompts-file", str(prompts), "--colour-match", "0.5", "--end-image", str(end),
                 "--out", str(out)]) == 0
    request = GenerateRequest(prompt="ignored", negative_prompt="blurry", frames=9, height=32, width=48,
                              steps=3, seed=11)
    options = ChainOptions(2, 4, 0.5, end_image=read_image(end),
                           prompts=["a lighthouse at dusk", "a lighthouse at night"])
    frames = load_file(str(out))["frames"]
    assert frames.shape[0] == 9 + 5 and torch.equal(frames, generate_long(models, request, options))


@pytest.mark.parametrize("extra, message", [
    (["--end-image", "{png}"], "error: end_image given to 5b (t2v): only the Fun InP families"),
    (["--frames", "10"], "error: frames=10 must be 4k+1 (1, 5, 9"),
    (["--extend-chunks", "2"], "error: 5b (t2v) cannot continue a video"),
    (["--extend-chunks", "3", "--prompts-file", "{txt}"], "error: --prompts-file"),
    (["--context-frames", "9", "--context-overlap", "9"], "error: overlap_frames=9"),
    (["--context-frames", "9", "--context-schedule", "spiral"], "usage:"),
])
def test_refusals_are_one_line(tiny_5b, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                               message: str) -> None:
    root, _models = tiny_5b
    png = str(_png(tmp_path / "x.png", 3))
    txt = tmp_path / "p.txt"
    txt.write_text("one\ntwo\n")
    args = ["generate", "--model", str(root), *ARGS, *[a.format(png=png, txt=txt) for a in extra],
            "--out", str(tmp_path / "x.mp4")]
    if message == "usage:":  # argparse refuses the choice itself
        with pytest.raises(SystemExit):
            main(args)
        assert "invalid choice: 'spiral'" in capsys.readouterr().err
        return
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "x.mp4").exists()


def test_out_must_be_mp4_or_safetensors(tiny_5b, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, _models = tiny_5b
    assert main(["generate", "--model", str(root), *ARGS, "--out", str(tmp_path / "x.gif")]) == 1
    assert "must end in .mp4 or .safetensors" in capsys.readouterr().err
