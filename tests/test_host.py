"""Every shipped workflow, run in real ComfyUIs of two generations with tiny models.

The hosts are the March 2024 and the December 2025 (v0.3.75) ComfyUI that
``../shared/comfyhost/registry_host.sh`` assembles from registry packages, one live server each
(``tests/comfyhosts.py``), started once per test session with latent previews on. Tiny random
models in the released names (``tests/tiny_models.py``) sit in a temporary models folder that an
``extra_model_paths.yaml`` points ComfyUI at; each ``workflows/*.json`` is converted as the editor
converts it, submitted with sizes, frames and steps set small, and its mp4 is checked: it
exists, with the expected frame count and size (the batch workflow: one mp4 per prompt,
``EXPECTED_VIDEOS``). A workflow wired with ComfyUI's own video nodes (``NEEDS_CORE_VIDEO``) is skipped in a host whose ``/object_info`` lacks them (2024); its mp4 is
the one core ``SaveVideo`` lists in its ui ``images`` (subfolder ``video/``).

Skipped only when ``COGVIDEOX_SKIP_HOST=1``; a host that cannot be set up is a failure.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest

from comfyhosts import GENERATIONS, TIMINGS, LiveServer, ensure_host, pack_import_seconds
from tiny_models import HEIGHT, WIDTH

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# The tiny-world demos run unshrunk with the models shipped in the pack: tests/test_host_tiny_world.py
SMALL_RUN = [w for w in WORKFLOWS if not w.stem.startswith("cogvideox_tiny_world_")]
FRAMES, LONG_FRAMES = 9, 17
SMALL = {  # node class -> inputs set for the tiny run
    "CogVideoXEmptyLatent": {"width": WIDTH, "height": HEIGHT, "frames": FRAMES},
    "CogVideoXImageToVideo": {"width": WIDTH, "height": HEIGHT, "frames": FRAMES},
    "CogVideoXFunInpaint": {"width": WIDTH, "height": HEIGHT, "frames": FRAMES},
    "CogVideoXVideoToVideo": {"width": WIDTH, "height": HEIGHT, "frames": FRAMES},
    "CogVideoXFunControl": {"width": WIDTH, "height": HEIGHT, "frames": FRAMES},
    "CogVideoXContextOptions": {"length_frames": 9, "overlap_frames": 4},
    "CogVideoXLoadVideo": {"frame_limit": 12},
    "CogVideoXSampler": {"steps": 2},
    "CogVideoXExtendVideo": {"steps": 2, "frames": FRAMES, "overlap_frames": 4},
}
PER_WORKFLOW = {  # long video: 17 frames (5 latents) in windows of 9 frames (3 latents)
    "cogvideox_long_video_context_windows": {"CogVideoXEmptyLatent": {"frames": LONG_FRAMES}},
}
EXPECTED_FRAMES = {  # chained: 9 frames, then two chunks of 9 that overlap the video by 4
    "cogvideox_long_video_context_windows": LONG_FRAMES,
    "cogvideox_chained_extension": FRAMES + 2 * (FRAMES - 4),
}
EXPECTED_VIDEOS = {  # batch: one prompt per line, batch size 1, Tiled Decode (video list): an mp4 each
    "cogvideox_batch_prompts": 4,
}
NEEDS_CORE_VIDEO = {"cogvideox_video_to_video_core_nodes"}  # wired with ComfyUI's own video nodes
CORE_VIDEO_NODES = ("LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo")  # not in 2024

pytestmark = pytest.mark.skipif(os.environ.get("COGVIDEOX_SKIP_HOST") == "1",
                                reason="COGVIDEOX_SKIP_HOST=1: real-host tests skipped on request")


def _small(extra: dict[str, dict] | None = None) -> dict[str, dict]:
    out = {k: dict(v) for k, v in SMALL.items()}
    for node, values in (extra or {}).items():
        out.setdefault(node, {}).update(values)
    return out


def _video_meta(path: str) -> tuple[int, tuple[int, int]]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta["size"])


def _mp4s(run) -> list[str]:
    return [f for f in run.files if f.endswith(".mp4")]


def _failure(server: LiveServer, run) -> str:
    return json.dumps(run.message("execution_error"), indent=1)[-4000:] + "\n" + server.log()[-3000:]


def test_pack_imports_fast(server: LiveServer) -> None:
    seconds = pack_import_seconds(server.log())
    TIMINGS.append({"host": server.generation, "pack import s": seconds, "server up s": server.startup_s})
    assert seconds < 1.0


@pytest.mark.parametrize("workflow", SMALL_RUN, ids=[w.stem for w in SMALL_RUN])
def test_workflow_runs_in_comfyui(server: LiveServer, workflow: Path) -> None:
    missing = [n for n in CORE_VIDEO_NODES if n not in server.object_info]
    if workflow.stem in NEEDS_CORE_VIDEO and missing:
        pytest.skip(f"this ComfyUI ({server.generation}) has no core video nodes: {', '.join(missing)} "
                    "are not in its /object_info")
    prompt = server.prompt_from_workflow(workflow, _small(PER_WORKFLOW.get(workflow.stem)))
    start = time.monotonic()
    run = server.run(prompt)
    seconds = time.monotonic() - start
    assert run.status == "success", _failure(server, run)
    videos = _mp4s(run)
    assert len(set(videos)) == len(videos) == EXPECTED_VIDEOS.get(workflow.stem, 1), videos
    metas = [_video_meta(video) for video in videos]
    frames, size = metas[0]
    TIMINGS.append({"host": server.generation, "workflow": workflow.stem, "videos": len(videos),
                    "frames": frames, "size": f"{size[0]}x{size[1]}", "seconds": round(seconds, 2)})
    assert set(metas) == {(EXPECTED_FRAMES.get(workflow.stem, FRAMES), (WIDTH, HEIGHT))}, metas


def test_workflow_saved_before_the_batch_inputs(server: LiveServer, tmp_path: Path) -> None:
    """A workflow saved before the text encode node had prompts_per_line and prefix (its widget
    values stop at negative) still runs: a multi-line prompt stays one prompt, one video."""
    wf = json.loads((ROOT / "workflows" / "cogvideox_5b_text_to_video.json").read_text())
    (text,) = [n for n in wf["nodes"] if n["type"] == "CogVideoXTextEncode"]
    text["widgets_values"] = ["a fox\nin the snow\nat dusk", "blurry"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(wf))
    prompt = server.prompt_from_workflow(old, _small())
    inputs = prompt[str(text["id"])]["inputs"]  # missing widgets take their defaults, as in the editor
    assert (inputs.get("prompts_per_line", False), inputs.get("prefix", "")) == (False, "")
    run = server.run(prompt)
    assert run.status == "success", _failure(server, run)
    assert [_video_meta(v) for v in _mp4s(run)] == [(FRAMES, (WIDTH, HEIGHT))]


def test_bad_input_is_a_node_error(server: LiveServer) -> None:
    """A width that is no multiple of 16 passes ComfyUI's min/max check; the node's ValueError
    reaches the client as an execution error naming the input and the rule, and the server lives."""
    workflow = ROOT / "workflows" / "cogvideox_2b_text_to_video.json"
    run = server.run(server.prompt_from_workflow(workflow, _small({"CogVideoXEmptyLatent": {"width": 100}})))
    assert run.status == "error"
    err = run.message("execution_error")
    assert err["node_type"] == "CogVideoXEmptyLatent"
    assert "width=100" in err["exception_message"] and "multiple of 16" in err["exception_message"]
    assert server.alive()


def test_loras_and_tiled_encode_in_comfyui(server: LiveServer) -> None:
    """Two chained LoRAs go through ComfyUI's ModelPatcher (patched at load, no patch errors in the
    log); the video is decoded, encoded and decoded again (API-format prompt)."""
    common = {"weight_dtype": "auto", "attention": "auto", "family": "auto"}
    prompt = {
        "1": {"class_type": "CogVideoXModelLoader", "inputs": {"model": "CogVideoX-2b", **common}},
        "2": {"class_type": "CogVideoXLoraLoader", "inputs": {"model": ["1", 0], "lora": "tiny_kohya.safetensors", "strength": 0.8}},
        "3": {"class_type": "CogVideoXLoraLoader", "inputs": {"model": ["2", 0], "lora": "tiny_peft.safetensors", "strength": 1.0}},
        "4": {"class_type": "CogVideoXVAELoader", "inputs": {"vae": "cogvideox_vae_tiny", "dtype": "auto"}},
        "5": {"class_type": "CogVideoXT5Loader", "inputs": {"t5": "CogVideoX-2b", "dtype": "auto"}},
        "6": {"class_type": "CogVideoXTextEncode", "inputs": {"t5": ["5", 0], "positive": "a panda", "negative": ""}},
        "7": {"class_type": "CogVideoXEmptyLatent", "inputs": {"width": WIDTH, "height": HEIGHT, "frames": FRAMES, "batch_size": 1}},
        "8": {"class_type": "CogVideoXSampler", "inputs": {"model": ["3", 0], "conditioning": ["6", 0], "latent": ["7", 0],
                                                          "seed": 3, "steps": 2, "cfg": 6.0, "sampler": "auto", "denoise": 1.0}},
        "9": {"class_type": "CogVideoXTiledDecode", "inputs": {"vae": ["4", 0], "latent": ["8", 0], "exact": True, "tile": 32, "overlap": 0}},
        "10": {"class_type": "CogVideoXTiledEncode", "inputs": {"vae": ["4", 0], "images": ["9", 0], "exact": False, "tile": 32, "overlap": 16}},
        "11": {"class_type": "CogVideoXTiledDecode", "inputs": {"vae": ["4", 0], "latent": ["10", 0]}},
        "12": {"class_type": "CogVideoXSaveVideo", "inputs": {"images": ["11", 0], "filename_prefix": "roundtrip", "frame_rate": 0.0, "model": ["3", 0]}},
    }
    run = server.run(prompt)
    assert run.status == "success", _failure(server, run)
    (video,) = _mp4s(run)
    assert _video_meta(video) == (FRAMES, (WIDTH, HEIGHT))
    log = server.log()
    assert "ERROR lora" not in log and "could not patch" not in log and "not recognized" not in log


def _ids(prompt: dict, *classes: str) -> list[str]:
    return [i for i, n in prompt.items() if n["class_type"] in classes]


def _progress(events, node: str) -> list[dict]:
    return [d for d in events.of_type("progress") if str(d.get("node")) == node]


def test_progress_previews_interrupt_and_rerun(server: LiveServer) -> None:
    """As a user sees it: the sampler's progress bar with latent previews, an interrupt from the
    UI (``/interrupt``) that stops it within a step, then the next prompt runs with the models
    still loaded (loaders cached, nothing read from disk again) and the decode reports progress."""
    workflow = ROOT / "workflows" / "cogvideox_2b_text_to_video.json"
    long = server.prompt_from_workflow(workflow, _small({"CogVideoXSampler": {"steps": 1000}}))
    (sampler,), (decode,) = _ids(long, "CogVideoXSampler"), _ids(long, "CogVideoXTiledDecode")
    prompt_id, events = server.submit(long)
    deadline = time.monotonic() + 300
    while not any(d["value"] >= 3 for d in _progress(events, sampler)):
        assert time.monotonic() < deadline, "no sampler progress reached the client"
        time.sleep(0.02)
    assert server.post("/interrupt", {})[0] == 200
    at_interrupt = max(d["value"] for d in _progress(events, sampler))
    run = server.wait(prompt_id, events)
    events.close()
    assert run.status == "error" and run.message("execution_interrupted"), _failure(server, run)
    last = max(d["value"] for d in _progress(events, sampler))
    assert last <= at_interrupt + 2 < 1000, (at_interrupt, last)  # stopped within a step (+1 in flight)
    assert all(d["max"] == 1000 for d in _progress(events, sampler))
    previews = [b for b in events.binary if b"\xff\xd8\xff" in b[:64]]  # JPEG after the event header
    assert len(previews) >= 2, f"{len(events.binary)} binary frames, {len(previews)} JPEG previews"
    loads = server.log().count("loaded 2b transformer")

    rerun = server.run(server.prompt_from_workflow(workflow, _small()))
    assert rerun.status == "success", _failure(server, rerun)
    assert _video_meta(_mp4s(rerun)[0]) == (FRAMES, (WIDTH, HEIGHT))
    loaders = _ids(long, "CogVideoXModelLoader", "CogVideoXVAELoader", "CogVideoXT5Loader")
    assert set(loaders) <= set(rerun.cached), rerun.cached
    assert server.log().count("loaded 2b transformer") == loads
    assert _progress(rerun.events, decode), "the decode reported no progress"


def test_second_run_reuses_models(server: LiveServer) -> None:
    """A second run with another seed samples again with the cached models and text encoding;
    the same run again executes nothing."""
    workflow = ROOT / "workflows" / "cogvideox_5b_text_to_video.json"
    prompt = server.prompt_from_workflow(workflow, _small())
    first = server.run(prompt)
    assert first.status == "success", _failure(server, first)
    loads = server.log().count("loaded 5b transformer")
    (sampler,) = _ids(prompt, "CogVideoXSampler")
    prompt[sampler]["inputs"]["seed"] = int(prompt[sampler]["inputs"]["seed"]) + 1
    second = server.run(prompt)
    assert second.status == "success", _failure(server, second)
    reused = _ids(prompt, "CogVideoXModelLoader", "CogVideoXVAELoader", "CogVideoXT5Loader", "CogVideoXTextEncode")
    assert set(reused) <= set(second.cached) and sampler not in second.cached
    assert server.log().count("loaded 5b transformer") == loads
    third = server.run(prompt)
    assert third.status == "success" and sampler in third.cached
    # "Unload models" in the UI: ComfyUI's memory manager detaches them; the next run reloads
    assert server.post("/free", {"unload_models": True, "free_memory": True})[0] == 200
    prompt[sampler]["inputs"]["seed"] += 1
    fourth = server.run(prompt)
    assert fourth.status == "success", _failure(server, fourth)
    assert _video_meta(_mp4s(fourth)[0]) == (FRAMES, (WIDTH, HEIGHT))


def test_chinese_names_are_served(server: LiveServer) -> None:
    """Current ComfyUI serves the pack's ``locales/`` at ``/i18n`` (the front end merges it); the
    2024 host has no such endpoint and shows the English names."""
    try:
        i18n = server.get("/i18n")
    except urllib.error.HTTPError as e:
        assert server.generation == "2024" and e.code == 404, e
        pytest.skip("this ComfyUI has no /i18n endpoint (locales arrived in late 2024)")
    node_defs = i18n["zh"]["nodeDefs"]
    ours = [name for name, info in server.object_info.items() if name.startswith("CogVideoX")]
    assert ours and all(name in node_defs for name in ours), sorted(set(ours) - set(node_defs))
    assert node_defs["CogVideoXSampler"]["display_name"] == "CogVideoX 采样器"
    assert "seed" in node_defs["CogVideoXSampler"]["inputs"]


def test_workflows_in_the_template_browser(server: LiveServer) -> None:
    """Current ComfyUI lists a pack's ``workflows/`` in its template browser and serves each file."""
    try:
        templates = server.get("/workflow_templates")
    except urllib.error.HTTPError as e:
        assert server.generation == "2024" and e.code == 404, e
        pytest.skip("this ComfyUI has no template browser for packs (it arrived in late 2024)")
    assert sorted(templates.get(ROOT.name, [])) == [w.stem for w in WORKFLOWS], templates
    for workflow in WORKFLOWS:
        served = server.get(f"/api/workflow_templates/{ROOT.name}/{workflow.name}")
        assert served == json.loads(workflow.read_text())


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
def test_patcher_contract(generation: str, models: Path) -> None:
    """Every model the pack hands to ComfyUI (transformer, LoRA-patched clone, VAE, T5) through
    load, partial load, unload, detach, reload, LoRA patch/unpatch and clone in that host's own
    ModelPatcher and memory manager, outputs unchanged (``tests/host_contract.py``)."""
    python, comfy_dir = ensure_host(generation)
    proc = subprocess.run([str(python), str(ROOT / "tests" / "host_contract.py"), str(comfy_dir),
                           str(models.parent / "models")], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "CONTRACT OK" in proc.stdout, out[-5000:]
    steps = ["load", "partial load t5", "partial load vae", "partial load transformer",
             "full load after partial", "LoRA patch and unpatch across clones"]
    steps += ["partial load lora"] if generation != "2024" else []  # see host_contract.py
    for step in steps:
        assert f"OK {step}" in proc.stdout, out[-3000:]
