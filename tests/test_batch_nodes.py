"""Batch generation through the node functions, without ComfyUI: several prompts (one per line,
with a prefix) in one conditioning, the sampler's prompts x batch videos each equal to its single
run, the video-list decode and one saved file per video, and the refusals.

Models are the tiny random ones of ``tests/tiny_models.py`` loaded through the pack's loaders;
``tests/node_host.py`` stands in for ComfyUI's patcher and progress bar. How ComfyUI runs the
nodes after a list output (once per item) is checked in the real hosts by ``tests/test_host.py``
(the batch workflow: one mp4 per prompt).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch

from batch_spy import spy_sample_rows
from make_workflows import BATCH_PREFIX, BATCH_PROMPTS, ROOT, load_pack
from tiny_models import FRAMES, HEIGHT, WIDTH

PACK = load_pack()
import node_host  # noqa: E402
from node_host import node  # noqa: E402
from cogvideox_pack.cogvideox_core.generation import batch as core_batch  # noqa: E402
from cogvideox_pack.cogvideox_core.loading.text import encode_prompts  # noqa: E402
from cogvideox_pack.nodes import host, sampling, text  # noqa: E402

PREFIX = "A fox in the snow,"
LINES = "runs to the left\n\n  jumps over a log  \nruns to the left\n"  # a blank line, a repeat
PROMPTS = [f"{PREFIX} runs to the left", f"{PREFIX} jumps over a log", f"{PREFIX} runs to the left"]
NEGATIVE = "blurry"
TOL = 1e-5  # batched rows differ from single runs by float summation order only


@pytest.fixture(scope="module", autouse=True)
def stand_in_host(node_models_dir: Path) -> Iterator[None]:
    with node_host.stand_in(host, node_models_dir):
        yield


@pytest.fixture(scope="module")
def tiny() -> dict:
    """The tiny 5B transformer, VAE and T5 (fp32), loaded through the pack's loaders."""
    model, _fps = node("CogVideoXModelLoader")("CogVideoX-5b", "fp32")
    vae, = node("CogVideoXVAELoader")("CogVideoX-5b", "fp32")
    t5, = node("CogVideoXT5Loader")("CogVideoX-5b", "fp32")
    return {"model": model, "vae": vae, "t5": t5}


@pytest.fixture(autouse=True)
def output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(host.folders, "OUTPUT_DIR", str(tmp_path / "output"))
    return tmp_path / "output"


def _encode(t5, positive: str, per_line: bool = False, prefix: str = ""):
    return node("CogVideoXTextEncode")(t5, positive, NEGATIVE, per_line, prefix)[0]


def _latent(batch: int = 1) -> dict:
    return node("CogVideoXEmptyLatent")(WIDTH, HEIGHT, FRAMES, batch)[0]


def _sample(model, cond, batch: int = 1, seed: int = 5, cfg: float = 6.0, latent: dict | None = None,
            cache=None) -> torch.Tensor:
    return node("CogVideoXSampler")(model, cond, latent or _latent(batch), seed, 2, cfg, "auto", 1.0,
                                    None, cache)[0]["samples"]


def _image(frames: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(frames, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def rows_per_call(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many videos each sampling call of the job took together."""
    return spy_sample_rows(monkeypatch, core_batch)


# ---- text encode ------------------------------------------------------------------------------

def test_prompts_per_line_each_distinct_prompt_encoded_once(tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    t5 = tiny["t5"]
    encoded: list[list[str]] = []

    def counting(model, tokenizer, prompts, **kwargs):
        encoded.append(list(prompts))
        return encode_prompts(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(text, "encode_prompts", counting)
    cond = _encode(t5, LINES, True, PREFIX)
    assert encoded == [[PROMPTS[0]], [PROMPTS[1]], [NEGATIVE]]  # the repeat and the negative once
    assert cond.prompts == 3 and cond.positive.shape == (3, 226, 32) and cond.negative.shape == (1, 226, 32)
    for row, prompt in zip(cond.positive, PROMPTS):
        assert torch.equal(row[None], encode_prompts(t5.patcher.model, t5.tokenizer, [prompt]))
    assert torch.equal(cond.negative, encode_prompts(t5.patcher.model, t5.tokenizer, [NEGATIVE]))


def test_old_workflows_keep_one_prompt(tiny: dict) -> None:
    """A saved workflow's widget values stop at negative: the new inputs are optional, last, and
    their defaults keep a multi-line prompt one prompt, exactly as it was encoded before."""
    for name in ("CogVideoXTextEncode", "CogVideoXCLIPTextEncode"):
        spec = PACK.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()
        assert list(spec["required"])[1:] == ["positive", "negative"]
        assert list(spec["optional"]) == ["prompts_per_line", "prefix"]
        assert [spec["optional"][k][1]["default"] for k in spec["optional"]] == [False, ""]
    t5 = tiny["t5"]
    cond, = node("CogVideoXTextEncode")(t5, "a fox\nin the snow ", NEGATIVE)
    assert torch.equal(cond.positive, encode_prompts(t5.patcher.model, t5.tokenizer, ["a fox\nin the snow "]))
    prefixed = _encode(t5, "in the snow", prefix=" a fox ")  # one prompt, the prefix joined
    assert torch.equal(prefixed.positive, encode_prompts(t5.patcher.model, t5.tokenizer, ["a fox in the snow"]))


class CountingClip:
    """ComfyUI's CLIP interface over the tiny T5 (ComfyUI's T5 tokenization: pairs, padded to
    77), counting the encodes."""

    def __init__(self, t5) -> None:
        self.t5, self.texts, self.encodes = t5, [], 0

    def tokenize(self, text_: str) -> dict:
        self.texts.append(text_)
        ids = self.t5.tokenizer(text_, add_special_tokens=True).input_ids
        return {"t5xxl": [[(i, 1.0) for i in ids + [0] * max(0, 77 - len(ids))]]}

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False) -> torch.Tensor:
        self.encodes += 1
        with torch.no_grad():
            return self.t5.patcher.model(torch.tensor([[e[0] for e in tokens["t5xxl"][0]]]))


def test_clip_encode_takes_prompts_per_line(tiny: dict) -> None:
    t5, clip = tiny["t5"], CountingClip(tiny["t5"])
    cond, = node("CogVideoXCLIPTextEncode")(clip, LINES, NEGATIVE, True, PREFIX)
    assert clip.texts == [PROMPTS[0], PROMPTS[1], NEGATIVE] and clip.encodes == 3
    assert cond.positive.shape == (3, 226, 32) and torch.equal(cond.positive[0], cond.positive[2])
    for row, prompt in zip(cond.positive, PROMPTS):
        assert torch.allclose(row[None], encode_prompts(t5.patcher.model, t5.tokenizer, [prompt]), atol=1e-6)


@pytest.mark.parametrize("name", ["CogVideoXTextEncode", "CogVideoXCLIPTextEncode"])
def test_prompts_per_line_refuses_an_empty_text(tiny: dict, name: str) -> None:
    handle = tiny["t5"] if name == "CogVideoXTextEncode" else CountingClip(tiny["t5"])
    with pytest.raises(ValueError, match=r"positive: prompts_per_line is on but every line is empty"):
        node(name)(handle, " \n\n  ", NEGATIVE, True, PREFIX)


# ---- sampler ----------------------------------------------------------------------------------

def test_sampler_prompts_times_batch_equal_their_single_runs(tiny: dict, rows_per_call: list[int]) -> None:
    """P prompts x batch B: P * B videos, prompt by prompt, video (p, i) the single run of prompt p
    with seed + i, sampled together as memory allows (here all six in one call)."""
    model, t5 = tiny["model"], tiny["t5"]
    cond = _encode(t5, LINES, True, PREFIX)
    out = _sample(model, cond, batch=2, seed=5)
    assert out.shape == (6, 16, 3, HEIGHT // 8, WIDTH // 8) and rows_per_call == [6]
    rows_per_call.clear()
    singles = {prompt: _encode(t5, prompt) for prompt in set(PROMPTS)}
    for p, prompt in enumerate(PROMPTS):
        for i in range(2):
            single = _sample(model, singles[prompt], seed=5 + i)
            assert (out[2 * p + i:2 * p + i + 1] - single).abs().max() <= TOL, (prompt, i)
    assert rows_per_call == [1] * 6
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[2])
    assert torch.allclose(out[0], out[4], atol=TOL)  # the repeated line, same seed: the same video


def test_one_prompt_is_sampled_as_before(tiny: dict, rows_per_call: list[int]) -> None:
    """One prompt: the videos of a batch one at a time, each exactly its one-video run (the
    numbers of earlier versions), with one progress bar over the batch."""
    model, cond = tiny["model"], _encode(tiny["t5"], "a fox in the snow")
    made: list[node_host.RecordingRuntime] = []
    real = host.runtime
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(host, "runtime", lambda *patchers: made.append(real(*patchers)) or made[-1])
        out = _sample(model, cond, batch=2, seed=7)
    assert rows_per_call == [1, 1] and made[0].steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert torch.equal(out[1:], _sample(model, cond, seed=8))


def test_seeds_wrap_and_cfg_one_needs_no_negative(tiny: dict) -> None:
    model, t5 = tiny["model"], tiny["t5"]
    cond = _encode(t5, "a fox\na cat", True)
    last = 2**64 - 1
    out = _sample(model, cond, batch=2, seed=last, cfg=1.0)  # seeds 2**64 - 1 and 0
    single = _sample(model, _encode(t5, "a cat"), seed=0, cfg=1.0)
    assert out.shape[0] == 4 and (out[3:] - single).abs().max() <= TOL


def test_conditioning_nodes_carry_the_prompts(node_models_dir: Path) -> None:
    """Image-to-video with two prompts: the I2V node keeps both, each video equals its single run."""
    model, _fps = node("CogVideoXModelLoader")("CogVideoX-5b-I2V", "fp32")
    vae, = node("CogVideoXVAELoader")("CogVideoX-5b-I2V", "fp32")
    t5, = node("CogVideoXT5Loader")("CogVideoX-5b-I2V", "fp32")
    image = _image()
    both, latent = node("CogVideoXImageToVideo")(_encode(t5, "a fox\na cat", True), vae, image, WIDTH, HEIGHT,
                                                 FRAMES)
    assert both.prompts == 2 and both.vae is vae
    out = _sample(model, both, latent=latent, seed=3)
    cat, latent1 = node("CogVideoXImageToVideo")(_encode(t5, "a cat"), vae, image, WIDTH, HEIGHT, FRAMES)
    assert out.shape[0] == 2 and (out[1:] - _sample(model, cat, latent=latent1, seed=3)).abs().max() <= TOL


def test_extend_video_refuses_several_prompts(tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampling, "extend_chain", lambda *a, **k: pytest.fail("extended with 2 prompts"))
    cond = _encode(tiny["t5"], "a fox\na cat", True)
    with pytest.raises(ValueError, match=r"conditioning: holds 2 prompts .*Extend Video takes one prompt"):
        node("CogVideoXExtendVideo")(tiny["model"], cond, tiny["vae"], _image(FRAMES), FRAMES, 4, 1, 2, 6.0)


def test_sampler_with_a_step_cache_samples_one_video_at_a_time(tiny: dict, rows_per_call: list[int]) -> None:
    cache, = node("CogVideoXCache")("fbc", 0.0)
    cond = _encode(tiny["t5"], "a fox\na cat", True)
    out = _sample(tiny["model"], cond, cache=cache)
    assert out.shape[0] == 2 and rows_per_call == [1, 1]
    assert torch.equal(out[1:], _sample(tiny["model"], _encode(tiny["t5"], "a cat"), cache=cache))


# ---- decode and save --------------------------------------------------------------------------

def test_decode_list_keeps_the_videos_apart(tiny: dict) -> None:
    vae, cls = tiny["vae"], PACK.NODE_CLASS_MAPPINGS["CogVideoXTiledDecodeList"]
    assert cls.OUTPUT_IS_LIST == (True,) and cls.RETURN_TYPES == ("IMAGE",)
    z = torch.randn(3, 16, 3, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(0))
    videos, = node("CogVideoXTiledDecodeList")(vae, {"samples": z}, True, 32, 0)
    glued, = node("CogVideoXTiledDecode")(vae, {"samples": z}, True, 32, 0)
    assert isinstance(videos, list) and len(videos) == 3
    for i, video in enumerate(videos):
        assert video.shape == (FRAMES, HEIGHT, WIDTH, 3)
        assert torch.equal(video, node("CogVideoXTiledDecode")(vae, {"samples": z[i:i + 1]}, True, 32, 0)[0])
        assert torch.allclose(video, glued[i * FRAMES:(i + 1) * FRAMES], atol=TOL)
    one, = node("CogVideoXTiledDecodeList")(vae, {"samples": z[:1]})  # a single video: as Tiled Decode
    assert len(one) == 1 and torch.equal(one[0], node("CogVideoXTiledDecode")(vae, {"samples": z[:1]})[0])


def test_save_video_writes_one_file_per_video(tiny: dict, output: Path) -> None:
    """ComfyUI runs Save Video once per item of the decode's list: one numbered mp4 per video."""
    import imageio_ffmpeg

    z = torch.randn(3, 16, 3, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(1))
    videos, = node("CogVideoXTiledDecodeList")(tiny["vae"], {"samples": z})
    items = [node("CogVideoXSaveVideo")(video, "batch/clip", 0.0, tiny["model"])["ui"]["images"][0]
             for video in videos]
    names = [item["filename"] for item in items]
    assert names == sorted(names) and len(set(names)) == 3
    for name in names:
        reader = imageio_ffmpeg.read_frames(str(output / "batch" / name))
        assert tuple(next(reader)["size"]) == (WIDTH, HEIGHT) and sum(1 for _ in reader) == FRAMES


def test_batch_workflow_is_the_issue_example() -> None:
    wf = json.loads((ROOT / "workflows" / "cogvideox_batch_prompts.json").read_text())
    by_type = {n["type"]: n for n in wf["nodes"]}
    positive, _negative, per_line, prefix = by_type["CogVideoXTextEncode"]["widgets_values"]
    assert positive.splitlines() == list(BATCH_PROMPTS) and per_line is True and prefix == BATCH_PREFIX
    assert by_type["CogVideoXEmptyLatent"]["widgets_values"][-1] == 1  # batch size 1: one video a prompt
    assert "CogVideoXTiledDecodeList" in by_type and "CogVideoXSaveVideo" in by_type
    assert by_type["CogVideoXModelLoader"]["widgets_values"][0] == "CogVideoX-5b"
