"""The pack's nodes mixed with ComfyUI's own nodes, in the real hosts (tiny models, API prompts).

Users wire core nodes around ours: ``LoadImage``/``ImageScale`` into image-to-video (both hosts),
and the core video nodes of 2025 ComfyUI (``LoadVideo``, ``GetVideoComponents``, ``CreateVideo``,
``SaveVideo``) around video-to-video. The March 2024 host has no core video nodes: those tests
skip there, decided from the server's ``/object_info``. Saved videos are read back with
imageio-ffmpeg: frame count, size and frame rate.

Skipped only when ``COGVIDEOX_SKIP_HOST=1``; a host that cannot be set up is a failure.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from comfyhosts import LiveServer
from make_workflows import CORE_NODES, CORE_WIDGET_SOCKETS
from tiny_models import HEIGHT, WIDTH

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 9
CORE_VIDEO_NODES = ("LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo")
CORE_WORKFLOW = ROOT / "workflows" / "cogvideox_video_to_video_core_nodes.json"
SMALL = {  # node class -> inputs set for the tiny run of the shipped workflow
    "CogVideoXVideoToVideo": {"width": WIDTH, "height": HEIGHT, "frames": FRAMES},
    "CogVideoXSampler": {"steps": 2},
}

pytestmark = pytest.mark.skipif(os.environ.get("COGVIDEOX_SKIP_HOST") == "1",
                                reason="COGVIDEOX_SKIP_HOST=1: real-host tests skipped on request")


def _meta(path: str) -> tuple[int, tuple[int, int], float]:
    """(frames, (width, height), fps) of a video file."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta["size"]), float(meta["fps"])


def _one_mp4(server: LiveServer, run) -> str:
    assert run.status == "success", (json.dumps(run.message("execution_error"), indent=1)[-4000:]
                                     + "\n" + server.log()[-3000:])
    videos = [f for f in run.files if f.endswith(".mp4")]
    assert len(videos) == 1 and Path(videos[0]).is_file(), (run.outputs, run.files)
    return videos[0]


def _needs_core_video_nodes(server: LiveServer) -> None:
    missing = [n for n in CORE_VIDEO_NODES if n not in server.object_info]
    if missing:
        pytest.skip(f"this ComfyUI ({server.generation}) has no core video nodes: {', '.join(missing)} "
                    "are not in its /object_info")


def _loaders(model: str) -> dict[str, dict]:
    return {
        "1": {"class_type": "CogVideoXModelLoader",
              "inputs": {"model": model, "weight_dtype": "auto", "attention": "auto", "family": "auto"}},
        "2": {"class_type": "CogVideoXVAELoader", "inputs": {"vae": model, "dtype": "auto"}},
        "3": {"class_type": "CogVideoXT5Loader", "inputs": {"t5": model, "dtype": "auto"}},
        "4": {"class_type": "CogVideoXTextEncode", "inputs": {"t5": ["3", 0], "positive": "a panda", "negative": ""}},
    }


def _sample_decode(cond: list, latent: list, denoise: float) -> dict[str, dict]:
    return {
        "20": {"class_type": "CogVideoXSampler", "inputs": {
            "model": ["1", 0], "conditioning": cond, "latent": latent, "seed": 5, "steps": 2, "cfg": 6.0,
            "sampler": "auto", "denoise": denoise}},
        "21": {"class_type": "CogVideoXTiledDecode", "inputs": {"vae": ["2", 0], "latent": ["20", 0]}},
    }


def test_core_load_image_and_image_scale_feed_image_to_video(server: LiveServer) -> None:
    """Core LoadImage -> ImageScale up (192x128) -> ImageScale down (96x64) -> our image-to-video
    (5B-I2V) -> sampler -> tiled decode -> our mp4: 9 frames at 96x64, the family's 8 fps."""
    prompt = {
        **_loaders("CogVideoX-5b-I2V"),
        "10": {"class_type": "LoadImage", "inputs": {"image": "start_frame.png"}},
        "11": {"class_type": "ImageScale", "inputs": {"image": ["10", 0], "upscale_method": "bicubic",
                                                      "width": 2 * WIDTH, "height": 2 * HEIGHT, "crop": "disabled"}},
        "12": {"class_type": "ImageScale", "inputs": {"image": ["11", 0], "upscale_method": "area",
                                                      "width": WIDTH, "height": HEIGHT, "crop": "center"}},
        "13": {"class_type": "CogVideoXImageToVideo", "inputs": {
            "conditioning": ["4", 0], "vae": ["2", 0], "image": ["12", 0],
            "width": WIDTH, "height": HEIGHT, "frames": FRAMES}},
        **_sample_decode(["13", 0], ["13", 1], 1.0),
        "30": {"class_type": "CogVideoXSaveVideo", "inputs": {
            "images": ["21", 0], "filename_prefix": "core_i2v", "frame_rate": 0.0, "model": ["1", 0]}},
    }
    video = _one_mp4(server, server.run(prompt))
    assert _meta(video) == (FRAMES, (WIDTH, HEIGHT), 8.0)


def test_core_video_nodes_around_video_to_video(server: LiveServer) -> None:
    """Core LoadVideo + GetVideoComponents (12 frames, 8 fps) -> our video-to-video (denoise 0.6)
    -> sampler -> decode -> core CreateVideo at the source's fps (GetVideoComponents' fps) -> core
    SaveVideo mp4/h264: 9 frames, 96x64, 8 fps
    (CreateVideo's own default is 30)."""
    _needs_core_video_nodes(server)
    prompt = {
        **_loaders("CogVideoX-2b"),
        "10": {"class_type": "LoadVideo", "inputs": {"file": "input_video.mp4"}},
        "11": {"class_type": "GetVideoComponents", "inputs": {"video": ["10", 0]}},
        "13": {"class_type": "CogVideoXVideoToVideo", "inputs": {
            "conditioning": ["4", 0], "vae": ["2", 0], "video": ["11", 0],
            "width": WIDTH, "height": HEIGHT, "frames": FRAMES}},
        **_sample_decode(["13", 0], ["13", 1], 0.6),
        "30": {"class_type": "CreateVideo", "inputs": {"images": ["21", 0], "fps": ["11", 2]}},
        "31": {"class_type": "SaveVideo", "inputs": {"video": ["30", 0], "filename_prefix": "video/core_v2v",
                                                     "format": "mp4", "codec": "h264"}},
    }
    video = _one_mp4(server, server.run(prompt))
    assert Path(video).parent.name == "video"  # SaveVideo's subfolder, reported in its ui images
    assert _meta(video) == (FRAMES, (WIDTH, HEIGHT), 8.0)


def test_text_to_video_into_core_create_video_at_the_model_frame_rate(server: LiveServer) -> None:
    """Our decoded IMAGE into core CreateVideo with the model loader's frame_rate output (the 2B
    family's 8 fps, not CreateVideo's default 30) -> core SaveVideo."""
    _needs_core_video_nodes(server)
    prompt = _t2v_into_core_video(1, "video/core_t2v")
    assert _meta(_one_mp4(server, server.run(prompt))) == (FRAMES, (WIDTH, HEIGHT), 8.0)


def _t2v_into_core_video(batch_size: int, filename_prefix: str) -> dict:
    """2B text-to-video, decoded, into core CreateVideo (the loader's frame rate) -> SaveVideo."""
    return {
        **_loaders("CogVideoX-2b"),
        "13": {"class_type": "CogVideoXEmptyLatent", "inputs": {"width": WIDTH, "height": HEIGHT,
                                                                "frames": FRAMES, "batch_size": batch_size}},
        **_sample_decode(["4", 0], ["13", 0], 1.0),
        "30": {"class_type": "CreateVideo", "inputs": {"images": ["21", 0], "fps": ["1", 1]}},
        "31": {"class_type": "SaveVideo", "inputs": {"video": ["30", 0], "filename_prefix": filename_prefix,
                                                     "format": "mp4", "codec": "h264"}},
    }


def test_video_list_into_core_create_video_one_file_per_video(server: LiveServer) -> None:
    """Two prompts (one per line) x batch 2 -> Tiled Decode (video list) -> core CreateVideo ->
    core SaveVideo: ComfyUI runs both core nodes once per video, four mp4 files."""
    _needs_core_video_nodes(server)
    prompt = _t2v_into_core_video(2, "video/core_list")
    prompt["4"]["inputs"].update(positive="a panda\na fox", prompts_per_line=True)
    prompt["21"]["class_type"] = "CogVideoXTiledDecodeList"
    run = server.run(prompt)
    assert run.status == "success", json.dumps(run.message("execution_error"), indent=1)[-4000:]
    videos = [f for f in run.files if f.endswith(".mp4")]
    assert len(set(videos)) == 4, (run.outputs, run.files)
    assert {_meta(v) for v in videos} == {(FRAMES, (WIDTH, HEIGHT), 8.0)}


def test_our_load_video_feeds_core_create_video(server: LiveServer) -> None:
    """Our CogVideoXLoadVideo's IMAGE and frame_rate (FLOAT) outputs go straight into core
    CreateVideo -> SaveVideo: a 12 fps source keeps its 12 frames, size and 12 fps."""
    _needs_core_video_nodes(server)
    import torch

    from cogvideox_core.video_io import write_mp4

    name = "input_video_12fps.mp4"
    ramp = torch.linspace(0, 1, 12)[:, None, None, None].expand(12, HEIGHT, WIDTH, 3)
    write_mp4(ramp, server.run_dir / "input" / name, fps=12.0)
    prompt = {
        "1": {"class_type": "CogVideoXLoadVideo", "inputs": {"video": name, "frame_limit": 0}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": ["1", 2]}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/ours_to_core",
                                                    "format": "auto", "codec": "auto"}},
    }
    video = _one_mp4(server, server.run(prompt))
    assert _meta(video) == (12, (WIDTH, HEIGHT), 12.0)


def test_shipped_core_nodes_workflow_runs(server: LiveServer) -> None:
    """workflows/cogvideox_video_to_video_core_nodes.json, converted as the editor does, with
    sizes, frames and steps set small: SaveVideo's mp4 has 9 frames at 96x64 and the source's
    8 fps."""
    _needs_core_video_nodes(server)
    prompt = server.prompt_from_workflow(CORE_WORKFLOW, SMALL)
    assert {n["class_type"] for n in prompt.values()} >= set(CORE_VIDEO_NODES)
    video = _one_mp4(server, server.run(prompt))
    assert _meta(video) == (FRAMES, (WIDTH, HEIGHT), 8.0)


def test_core_node_sockets_of_the_workflow_builder_match_the_host(server: LiveServer) -> None:
    """The core nodes' outputs and socket inputs that ``tests/make_workflows.py`` writes into the
    UI workflows are the host's own (names, types, order), for every core node the host has."""
    present = [n for n in CORE_NODES if n in server.object_info]
    assert "LoadImage" in present
    for name in present:
        info = server.object_info[name]
        outputs, sockets = CORE_NODES[name]
        assert list(zip(info["output_name"], info["output"])) == outputs, name
        spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for socket, kind in sockets:
            assert socket in spec and spec[socket][0] == kind, (name, socket, spec.get(socket))
        for node, widget in CORE_WIDGET_SOCKETS:
            if node == name:
                assert spec[widget][0] in ("INT", "FLOAT", "STRING", "BOOLEAN"), (node, widget)
