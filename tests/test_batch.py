"""Batch generation (``cogvideox_core.generation.batch`` and ``generate --prompt-list``).

Every video of a batch is compared with the one-video pipeline run with its prompt and seed on
the same tiny random weights. Tolerance 1e-5 (fp32, frames 0..1): a batch of B rows runs the same
math as B runs of one row, but the CPU's matmul kernels may block a [B*S, D] product differently
from a [S, D] one, which changes float summation order (measured: 0 for 5B, ~5e-6 for 1.5).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from batch_spy import spy_sample_rows
from cli_util import refused
from cogvideox_core.cli.main import main
from cogvideox_core.errors import Interrupted
from cogvideox_core.generation import batch as batch_mod
from cogvideox_core.generation.batch import BatchItem, batch_items, generate_batch, join_prefix
from cogvideox_core.generation.pipeline import GenerateRequest, generate, run_memory, validate
from cogvideox_core.memory import MemoryEstimate, for_rows, rows_that_fit
from cogvideox_core.models.step_cache import CacheOptions
from cogvideox_core.runtime import TorchRuntime
from cogvideox_core.tiny import demo_inputs, random_models

ATOL = 1e-5  # see the module doc: matmul blocking of a batch vs one row
FRAMES, STEPS = 9, 3


def _request(models, **changes) -> GenerateRequest:
    fam = models.family
    h, w = fam.fixed_size or (32, 48)
    base = dict(inputs=demo_inputs(fam, FRAMES, h, w), frames=FRAMES, height=h, width=w, steps=STEPS,
                cfg=6.0, negative_prompt="blurry")
    return GenerateRequest(**{**base, **changes})


def _single(models, request: GenerateRequest, item: BatchItem) -> torch.Tensor:
    import dataclasses

    return generate(models, dataclasses.replace(request, prompt=item.prompt, seed=item.seed))


def _run(models, request, items, runtime=None, **kwargs) -> list[batch_mod.FinishedVideo]:
    got: list[batch_mod.FinishedVideo] = []
    generate_batch(models, request, items, got.append, runtime, **kwargs)
    return got


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of videos in each sampled batch."""
    return spy_sample_rows(monkeypatch, batch_mod)


# the positional and conditioning kinds: 2B sincos + DDIM, 5B RoPE + stochastic DPM, 5B-I2V (a
# posterior sample per seed), Fun InP (extra channels, a second generator), 1.5 (temporal patch,
# padding latents)
@pytest.mark.parametrize("family, cfg_batched", [("2b", True), ("5b", True), ("5b", False), ("5b-i2v", True),
                                                 ("fun-5b-inp", False), ("1.5-5b", True)])
def test_a_batch_equals_the_single_runs(family: str, cfg_batched: bool, batch_sizes: list[int]) -> None:
    torch.manual_seed(0)
    models = random_models(family)
    request = _request(models, cfg_batched=cfg_batched)
    items = batch_items(["a red kite", "a blue boat"], [3, 2**63 + 5])
    got = _run(models, request, items)
    assert batch_sizes == [4]  # one batch of all four
    assert [v.item for v in got] == items
    for video in got:
        single = _single(models, request, video.item)
        assert video.frames.shape == single.shape == (FRAMES, *single.shape[1:])
        assert (video.frames - single).abs().max() <= ATOL, video.item


@pytest.fixture
def two_threads(keep_threads: None) -> None:
    """The CPU attention estimate counts per-thread blocks: with one thread this tiny model's
    sampling is so small that three videos fit where two do (the decode is the peak); two
    threads, whatever OMP_NUM_THREADS the run has, keep the rows apart."""
    torch.set_num_threads(2)


def test_rows_follow_the_free_memory(batch_sizes: list[int], two_threads: None) -> None:
    models = random_models("5b")
    request = _request(models)
    plan = validate(models, request)
    one = run_memory(models, request, plan, "cpu")
    assert for_rows(one, 3).total() > for_rows(one, 2).total(), "two and three rows need the same memory"

    class Tight(TorchRuntime):
        def free_memory(self) -> int:
            return for_rows(one, 2).total()  # room for two videos at a time

    items = batch_items(["a", "b", "c"], [1, 2])
    got = _run(models, request, items, Tight(device="cpu", show_progress=False))
    assert batch_sizes == [2, 2, 2] and len(got) == 6
    batch_sizes.clear()
    _run(models, request, items[:3], max_batch=2)
    assert batch_sizes == [2, 1]


def test_for_rows_counts_sampling_per_video() -> None:
    est = MemoryEstimate({"weights": 100, "activations": 10, "latents": 2}, "sampling", {"vae decode": 50})
    assert for_rows(est, 3).parts == {"weights": 100, "activations": 30, "latents": 6}
    decode_peak = MemoryEstimate({"vae decode": 50}, "vae decode", {"sampling": 12})
    assert for_rows(decode_peak, 3).total() == 50  # 36 < 50: the decode stays the peak
    assert for_rows(decode_peak, 5).phase == "sampling" and for_rows(decode_peak, 5).total() == 60
    assert rows_that_fit(est, 100 + 12 * 4, limit=8) == 4
    assert rows_that_fit(est, 10, limit=8) == 1  # not even one: the one-video check says why


def test_a_step_cache_samples_one_at_a_time_equal_to_singles(batch_sizes: list[int]) -> None:
    models = random_models("5b")
    request = _request(models, cache=CacheOptions("teacache", 0.3), steps=6)
    items = batch_items(["a red kite"], [1, 2])
    got = _run(models, request, items)
    assert batch_sizes == [1, 1]
    for video in got:
        assert (video.frames - _single(models, request, video.item)).abs().max() <= ATOL


def test_each_prompt_and_the_negative_are_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    models = random_models("5b")
    texts: list[str] = []
    real = models.text_encoder.encode
    monkeypatch.setattr(models.text_encoder, "encode", lambda text: texts.append(text) or real(text))
    _run(models, _request(models), batch_items(["a", "b"], [1, 2, 3], prefix="Film:"))
    assert sorted(texts) == ["Film: a", "Film: b", "blurry"]


class Recording(TorchRuntime):
    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__(device="cpu", show_progress=False)
        self.steps: list[tuple[int, int]] = []
        self.stop_after = stop_after

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        self.steps.append((step, total))
        assert preview is not None and preview.shape[0] == 1

    def check_interrupt(self) -> None:
        if self.stop_after is not None and len(self.steps) >= self.stop_after:
            raise Interrupted("interrupted")


def test_one_progress_bar_counts_the_whole_job() -> None:
    models = random_models("5b")
    runtime = Recording()
    _run(models, _request(models), batch_items(["a", "b", "c"], [1]), runtime, max_batch=2)
    total = 2 * STEPS  # two batches
    assert runtime.steps == [(i, total) for i in range(1, total + 1)]


def test_an_interrupt_keeps_the_finished_videos() -> None:
    models = random_models("5b")
    runtime = Recording(stop_after=STEPS + 1)  # the second video's first step
    got: list[batch_mod.FinishedVideo] = []
    items = batch_items(["a", "b", "c"], [1])
    with pytest.raises(Interrupted):
        generate_batch(models, _request(models), items, got.append, runtime, max_batch=1)
    assert [v.item for v in got] == items[:1]


@pytest.mark.parametrize("prompts, seeds, message", [
    ([], [1], "prompts=[]"), (["a", " "], [1], "prompt 2 is empty"), (["a"], [], "seeds=[]"),
    (["a"], [1, 1], "a seed is repeated"), (["a"], [-1], "seed=-1"), (["a"], [2**64], "seed=18446744073709551616"),
])
def test_batch_items_refuse(prompts: list[str], seeds: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        batch_items(prompts, seeds)


def test_batch_items_order_and_prefix() -> None:
    items = batch_items(["squat", "deadlift"], [7, 3], prefix=" A coach demonstrates a ")
    assert items == [BatchItem("A coach demonstrates a squat", 7, 0), BatchItem("A coach demonstrates a squat", 3, 0),
                     BatchItem("A coach demonstrates a deadlift", 7, 1), BatchItem("A coach demonstrates a deadlift", 3, 1)]
    assert join_prefix("", "x") == "x" and join_prefix("p", "") == "p"


# ---- the CLI ----------------------------------------------------------------------------------

CLI = ["--negative", "blurry", "--frames", "9", "--height", "32", "--width", "48", "--steps", "2",
       "--device", "cpu"]


def _prompt_list(tmp_path: Path, *lines: str, name: str = "prompts.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_writes_one_file_per_prompt_and_seed_and_a_manifest(tiny_5b, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    root, models = tiny_5b
    prompts = _prompt_list(tmp_path, "a red kite", "", "  a blue boat  ")
    out = tmp_path / "clips.safetensors"
    assert main(["generate", "--model", str(root), *CLI, "--prompt-list", str(prompts), "--prefix", "Film:",
                 "--seeds", "42, 7", "--out", str(out)]) == 0
    names = ["clips-001-42.safetensors", "clips-001-7.safetensors", "clips-002-42.safetensors",
             "clips-002-7.safetensors"]
    assert sorted(p.name for p in tmp_path.glob("clips*")) == sorted([*names, "clips.json"])
    assert not out.exists()
    manifest = json.loads((tmp_path / "clips.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is True and manifest["planned"] == 4
    assert [(v["prompt"], v["seed"], v["file"]) for v in manifest["videos"]] == [
        ("Film: a red kite", 42, names[0]), ("Film: a red kite", 7, names[1]),
        ("Film: a blue boat", 42, names[2]), ("Film: a blue boat", 7, names[3])]
    assert all(v["seconds"] > 0 for v in manifest["videos"])
    settings = manifest["settings"]
    assert (settings["family"], settings["frames"], settings["height"], settings["width"]) == ("5b", 9, 32, 48)
    assert settings["negative"] == "blurry" and settings["steps"] == 2 and settings["prefix"] == "Film:"
    video = load_file(str(tmp_path / names[3]))["frames"]
    single = generate(models, GenerateRequest(prompt="Film: a blue boat", negative_prompt="blurry", frames=9,
                                              height=32, width=48, steps=2, seed=7))
    assert (video - single).abs().max() <= ATOL
    assert "wrote 4 videos (clips-001-42.safetensors ... clips-002-7.safetensors)" in capsys.readouterr().out


def test_cli_seed_and_count(tiny_5b, tmp_path: Path) -> None:
    root, _models = tiny_5b
    out = tmp_path / "run.mp4"
    assert main(["generate", "--model", str(root), *CLI, "--prompt", "a kite", "--seed", "5", "--count", "2",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-001-5.mp4", "run-001-6.mp4", "run.json"]


def test_cli_never_overwrites_without_the_flag(tiny_5b, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root, _models = tiny_5b
    kept = tmp_path / "run-001-6.mp4"
    kept.write_bytes(b"the user's file")
    argv = ["generate", "--model", str(root), *CLI, "--prompt", "a kite", "--seeds", "5,6", "--out",
            str(tmp_path / "run.mp4")]
    with monkeypatch.context() as m:
        from cogvideox_core.loading import weights

        m.setattr(weights, "load_transformer", lambda *a, **k: pytest.fail("loaded before refusing"))
        err = refused(capsys, argv)
    assert "1 of the 3 files this run writes exist (run-001-6.mp4)" in err and "--overwrite" in err
    assert kept.read_bytes() == b"the user's file" and not (tmp_path / "run-001-5.mp4").exists()
    assert main([*argv, "--overwrite"]) == 0
    assert kept.read_bytes() != b"the user's file"


@pytest.mark.parametrize("extra, message", [
    (["--prompt", "x", "--prompt-list", "LIST"], "--prompt with --prompt-list"),
    (["--prompt-list", "LIST", "--seeds", "1,x"], "'x' is not a whole number"),
    (["--prompt-list", "LIST", "--seeds", "1", "--count", "2"], "--seeds with --count"),
    (["--prompt", "x", "--prefix", "p", "--count", "2"], "--prefix without --prompt-list"),
    (["--prompt-list", "LIST", "--extend-chunks", "2"], "--extend-chunks 2 with batch flags"),
    (["--prompt-list", "LIST", "--prompts-file", "LIST"], "--prompts-file"),
    (["--prompt-list", "EMPTY"], "no prompt in it"),
    (["--prompt", "x", "--count", "0"], "--count 0: must be in 1..100000"),
    (["--prompt", "x", "--seeds", "3,3"], "a seed is repeated"),
])
def test_cli_refusals(tiny_5b, tmp_path: Path, capsys: pytest.CaptureFixture, no_loading: None,
                      extra: list[str], message: str) -> None:
    root, _models = tiny_5b
    listed = {"LIST": str(_prompt_list(tmp_path, "a", "b")), "EMPTY": str(_prompt_list(tmp_path, "", name="empty.txt"))}
    argv = [listed.get(a, a) for a in extra]
    err = refused(capsys, ["generate", "--model", str(root), *CLI, *argv, "--out", str(tmp_path / "o.mp4")])
    assert message in err


def test_cli_interrupt_keeps_the_finished_videos(tiny_5b, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root, _models = tiny_5b
    import cogvideox_core.video_io as video_io

    real_write = video_io.write_frames
    written: list[Path] = []

    def write_then_interrupt(frames, out, fps):
        written.append(real_write(frames, out, fps))
        return written[-1]

    def check_interrupt(self) -> None:
        if written:
            raise Interrupted("interrupted")

    monkeypatch.setattr(video_io, "write_frames", write_then_interrupt)
    monkeypatch.setattr(TorchRuntime, "check_interrupt", check_interrupt)
    out = tmp_path / "run.mp4"
    code = main(["generate", "--model", str(root), *CLI, "--prompt", "a kite", "--seeds", "5,6,7",
                 "--batch-size", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130, err
    assert "after 1 of 3 videos: those are kept, listed in" in err and "nothing written" not in err
    manifest = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is False and [v["file"] for v in manifest["videos"]] == ["run-001-5.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-001-5.mp4", "run.json"]
