"""``python -m cogvideox_core demo``: the plumbing around the tiny models shipped in
``cogvideox_core/data/tiny_world``. The README's first command once as a real subprocess; the
``generate`` arguments the demo builds (which model root, size, flags); ``--random``; the
refusals, before any loading. What the videos show is tested with the models' own tests
(``test_tiny_world_models.py``), not here: the weights are retrained from time to time.
"""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_util import refused
from safetensors.torch import load_file

from benchmarks.tiny_world import world
from benchmarks.tiny_world.strip import GAP_GREY, stack, strip, write_png
from cogvideox_core.cli import demo
from cogvideox_core.cli.main import build_parser, main
from cogvideox_core.video_io import count_frames, probe_media, write_frames

ROOT = Path(__file__).resolve().parents[1]
README_COMMAND = "python -m cogvideox_core demo --out demo.mp4"


def demo_args(*extra: str) -> list[str]:
    return ["demo", "--out", "x.mp4", *extra]


def generate_args(*extra: str):
    return build_parser().parse_args(demo.trained_generate_argv(build_parser().parse_args(demo_args(*extra))))


def test_the_readme_first_command(tmp_path: Path) -> None:
    assert README_COMMAND in (ROOT / "README.md").read_text(encoding="utf-8")
    out = tmp_path / "demo.mp4"
    proc = subprocess.run([sys.executable, "-m", "cogvideox_core", "demo", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)  # a hang guard, not a timing
    assert proc.returncode == 0, proc.stderr
    assert "20/20" in proc.stderr  # the progress bar
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("demo: tiny 2b text-to-video model") and demo.DEFAULT_PROMPT in lines[0], lines
    assert lines[1].startswith(f"wrote {out} (17 frames, 96x64, 2b"), lines
    info = probe_media(out)
    assert (info.frames, info.width, info.height) == (17, 96, 64)


def test_the_demo_knows_the_world(capsys: pytest.CaptureFixture) -> None:
    """The core may not import benchmarks/: its copy of the world's words must match the world's."""
    assert demo.WORLD == {"colour": tuple(world.COLOURS), "shape": tuple(world.SHAPES),
                          "direction": tuple(world.DIRECTIONS),
                          "background": inspect.signature(world.sample_scenes).parameters["backgrounds"].default}
    assert demo.DEFAULT_PROMPT in world.all_captions()
    assert demo.TRAINED_SIZE == {"frames": world.FRAMES, "height": world.HEIGHT, "width": world.WIDTH}
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("a <red|green|blue> <circle|square> moving <left|right|up|down> on a white background"
            in help_text), help_text


def test_text_to_video_by_default() -> None:
    gen = generate_args()
    assert Path(gen.model) == demo.TRAINED
    assert Path(gen.vae) == demo.TRAINED / "vae" and Path(gen.text_encoder) == demo.TRAINED / "text_encoder"
    assert (gen.prompt, gen.frames, gen.height, gen.width) == (demo.DEFAULT_PROMPT, 17, 64, 96)
    assert (gen.steps, gen.cfg, gen.device, gen.image, gen.end_image) == (20, demo.DEFAULT_CFG, "cpu", None, None)
    assert gen.context_frames is None and gen.extend_chunks == 1


@pytest.mark.parametrize("extra, image, end_image", [
    (["--image", "start.png"], ["start.png"], None),
    (["--end-image", "end.png"], None, "end.png"),
    (["--image", "start.png", "--end-image", "end.png"], ["start.png"], "end.png"),
    (["--extend-chunks", "2"], None, None),
], ids=["image", "end-image", "both", "extend"])
def test_images_and_chains_take_the_inp_model(extra: list[str], image, end_image) -> None:
    gen = generate_args(*extra)
    assert Path(gen.model) == demo.TRAINED / "inp"
    assert Path(gen.vae) == demo.TRAINED / "vae" and Path(gen.text_encoder) == demo.TRAINED / "text_encoder"
    assert (gen.image, gen.end_image) == (image, end_image)
    assert gen.extend_chunks == (2 if "--extend-chunks" in extra else 1)


def test_flags_pass_on() -> None:
    gen = generate_args("--prompt", "a blue square moving up on a white background", "--frames", "65",
                        "--context-frames", "17", "--context-overlap", "8", "--context-schedule", "uniform",
                        "--steps", "7", "--cfg", "4.5", "--seed", "3", "--width", "48")
    assert Path(gen.model) == demo.TRAINED
    assert (gen.prompt, gen.frames, gen.height, gen.width) == ("a blue square moving up on a white background",
                                                               65, 64, 48)
    assert (gen.context_frames, gen.context_overlap, gen.context_schedule) == (17, 8, "uniform")
    assert gen.context_weights == "causal"  # the demo's default (benchmarks/tiny_world/long_video.py)
    defaults = generate_args("--frames", "65", "--context-frames", "17")
    assert (defaults.context_overlap, defaults.context_weights) == (16, "causal")
    assert generate_args("--frames", "65", "--context-frames", "17", "--context-weights", "flat").context_weights == "flat"
    assert (gen.steps, gen.cfg, gen.seed) == (7, 4.5, 3)
    assert gen.lora is None
    lora = generate_args("--lora", "every_shape_blue:0.5", "--lora", "mine.safetensors").lora
    assert lora == [f"{demo.SHIPPED_LORAS['every_shape_blue']}:0.5", "mine.safetensors"]


def test_the_shipped_lora_paints_a_red_prompt_blue(tmp_path: Path, keep_threads: None,
                                                   capsys: pytest.CaptureFixture) -> None:
    """``--lora every_shape_blue``: the shipped LoRA (trained by benchmarks/tiny_world/train_lora.py)
    through ``generate --lora``; the analyser reads the colour back (strength 0: the prompt's red)."""
    from benchmarks.tiny_world.analyse import analyse

    colours = {}
    for strength in ("0", "1"):
        out = tmp_path / f"lora{strength}.safetensors"
        assert main(["demo", "--lora", f"every_shape_blue:{strength}", "--out", str(out)]) == 0
        colours[strength] = analyse(load_file(out)["frames"]).colour
    line = capsys.readouterr().out.splitlines()[-2]
    assert "LoRA every_shape_blue.safetensors at 1" in line and demo.DEFAULT_PROMPT in line, line
    assert colours == {"0": "red", "1": "blue"}


def test_start_and_end_images_run(tmp_path: Path, keep_threads: None, capsys: pytest.CaptureFixture) -> None:
    image = write_frames(torch.ones(1, 64, 96, 3), tmp_path / "white.mp4", 8)  # reads as an image
    out = tmp_path / "inp.safetensors"
    assert main(["demo", "--image", str(image), "--end-image", str(image), "--steps", "2",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("demo: tiny fun-2b-inp start/end-frame") and "data/tiny_world/inp" in lines[0]
    assert load_file(out)["frames"].shape == (17, 64, 96, 3)


def test_random_still_works(tmp_path: Path, keep_threads: None, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "random.mp4"
    assert main(["demo", "--random", "--steps", "2", "--out", str(out)]) == 0
    assert "demo: tiny random 5b model" in capsys.readouterr().out
    assert count_frames(out) == 25


def test_random_takes_the_prompt_and_the_guidance(tmp_path: Path, keep_threads: None,
                                                  capsys: pytest.CaptureFixture) -> None:
    """--prompt and --cfg reach the random model (they used to be dropped silently)."""
    def frames(name: str, *extra: str) -> torch.Tensor:
        out = tmp_path / f"{name}.safetensors"
        assert main(["demo", "--random", "--steps", "2", "--frames", "9", "--height", "32", "--width", "48",
                     "--out", str(out), *extra]) == 0
        return load_file(out)["frames"]

    base = frames("base")
    assert f"cfg 6: '{demo.DEFAULT_PROMPT}'" in capsys.readouterr().out
    other_prompt = frames("prompt", "--prompt", "a green square moving up on a white background")
    assert "'a green square moving up on a white background'" in capsys.readouterr().out
    other_cfg = frames("cfg", "--cfg", "1")
    assert "cfg 1: " in capsys.readouterr().out
    assert not torch.equal(base, other_prompt) and not torch.equal(base, other_cfg)
    assert torch.equal(base, frames("again")), "the same flags must give the same video"


@pytest.mark.parametrize("extra, words", [
    (["--image", "missing.png"], ["--image missing.png", "no such file"]),
    (["--end-image", "."], ["--end-image .", "is a folder"]),
    (["--random", "--image", "start.png"], ["--image start.png with --random"]),
    (["--random", "--end-image", "end.png"], ["--end-image end.png with --random"]),
    (["--random", "--extend-chunks", "2"], ["--extend-chunks 2 with --random"]),
    (["--random", "--lora", "every_shape_blue"], ["--lora every_shape_blue with --random"]),
    (["--lora", "missing.safetensors"], ["--lora missing.safetensors", "no such file"]),
    (["--lora", "every_shape_blue:x"], ["every_shape_blue.safetensors:x", "'x' is not a number"]),
    (["--family", "5b"], ["--family 5b: only with --random"]),
    (["--out", "demo.gif"], ["--out demo.gif", ".mp4 or .safetensors"]),
    (["--random", "--out", "demo.gif"], ["--out demo.gif"]),
    (["--steps", "0"], ["--steps 0"]),
    (["--cfg", "nan"], ["--cfg nan"]),
], ids=["missing-image", "folder-end-image", "random-image", "random-end-image", "random-extend",
        "random-lora", "missing-lora", "lora-strength", "family-without-random", "out-gif", "random-out-gif",
        "steps", "cfg"])
def test_refusals_before_loading(extra: list[str], words: list[str], tmp_path: Path, no_loading: None,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "start.png").write_bytes(b"")  # exists: the refusal is the flag combination
    (tmp_path / "end.png").write_bytes(b"")
    err = refused(capsys, ["demo", "--out", "demo.mp4", *extra] if "--out" not in extra else ["demo", *extra])
    assert all(w in err for w in words), err
    assert not list(tmp_path.glob("demo.*"))


def test_missing_models_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(demo, "TRAINED", tmp_path / "tiny_world")
    err = refused(capsys, ["demo", "--out", str(tmp_path / "demo.mp4")])
    assert "trained tiny models are not in" in err and "--random" in err, err


def test_the_readme_strip_layout(tmp_path: Path) -> None:
    """benchmarks/tiny_world/strip.py: every 4th of 17 frames, 2 px apart, 2x nearest; PNG by ffmpeg."""
    frames = (torch.arange(17, dtype=torch.uint8)[:, None, None, None] * 10).expand(17, 64, 96, 3).numpy()
    row = strip(frames, every=4, gap=2, scale=2)
    assert row.shape == (128, 5 * 192 + 4 * 2, 3)
    assert row[0, 0, 0] == 0 and row[0, 194, 0] == 40 and row[0, 192, 0] == GAP_GREY
    image = stack([row, row[:, :100]], gap=2)
    assert image.shape == (2 * 128 + 2, 968, 3)
    png = write_png(image, tmp_path / "strip.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = probe_media(png)
    assert (info.width, info.height) == (968, 258)
