"""Every shipped workflow, run in a real ComfyUI with tiny models.

The host is the March 2024 ComfyUI that ``../shared/comfyhost/registry_host.sh`` assembles from
registry packages (legacy node API), set up once in ``.cache/comfyhost`` (reused while the pack's
requirements are unchanged) with the pack's requirements installed next to its torch. Tiny
random models in the released names (``tests/tiny_models.py``) sit in a temporary models folder
that an ``extra_model_paths.yaml`` points ComfyUI at; each ``workflows/*.json`` goes through
``run_workflow.py`` (UI format, converted through ``/object_info``) with sizes, frames and steps
set small, and its mp4 is checked: it exists, with the expected frame count and size.

Skipped only when ``COGVIDEOX_SKIP_HOST=1``; a host that cannot be set up is a failure.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import HEIGHT, WIDTH, extra_model_paths, write_models  # noqa: E402

from cogvideox_core.video_io import write_mp4  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMFYHOST = ROOT.parent / "shared" / "comfyhost"
CACHE = ROOT / ".cache" / "comfyhost"
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
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

pytestmark = pytest.mark.skipif(os.environ.get("COGVIDEOX_SKIP_HOST") == "1",
                                reason="COGVIDEOX_SKIP_HOST=1: real-host tests skipped on request")


def _requirements_stamp() -> str:
    return hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def host_python() -> Path:
    """The host's interpreter: ComfyUI set up in .cache/comfyhost with the pack's requirements."""
    python, stamp = CACHE / "venv" / "bin" / "python", CACHE / ".cogvideox-requirements"
    ready = (CACHE / "ComfyUI" / "main.py").is_file() and python.is_file()
    if not (ready and stamp.is_file() and stamp.read_text() == _requirements_stamp()):
        assert (COMFYHOST / "registry_host.sh").is_file(), f"no host scripts at {COMFYHOST}"
        subprocess.run(["bash", str(COMFYHOST / "registry_host.sh"), str(CACHE)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(CACHE / "constraints.txt"),
                        "-r", str(ROOT / "requirements.txt")], check=True)
        stamp.write_text(_requirements_stamp())
    return python


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """extra_model_paths.yaml of a folder of tiny models."""
    root = tmp_path_factory.mktemp("host_models")
    write_models(root / "models")
    return extra_model_paths(root / "models", root / "extra_model_paths.yaml")


def _inputs(folder: Path) -> None:
    """The input files the workflows name: two images and a video."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, HEIGHT), torch.linspace(0, 1, WIDTH), indexing="ij")
    for name, img in (("start_frame.png", torch.stack([ys, xs, 1 - ys], -1)),
                      ("end_frame.png", torch.stack([1 - xs, ys, xs], -1))):
        Image.fromarray((img * 255).byte().numpy()).save(folder / name)
    drift = torch.linspace(0, 0.5, 12)[:, None, None, None]
    write_mp4((torch.stack([ys, xs, 1 - ys], -1)[None] + drift) % 1.0, folder / "input_video.mp4")


def _overrides(workflow: dict, extra: dict[str, dict] | None = None) -> list[str]:
    sets = []
    for node in workflow.get("nodes", []):  # UI format; API prompts are written small
        for name, value in {**SMALL.get(node["type"], {}), **(extra or {}).get(node["type"], {})}.items():
            sets += ["--set", f"{node['id']}.{name}={json.dumps(value)}"]
    return sets


def run_workflow(python: Path, workflow: Path, models: Path, run_dir: Path,
                 extra: dict[str, dict] | None = None) -> tuple[int, dict, str]:
    """(exit code, summary, harness output) of one run of ``workflow`` in the host."""
    _inputs(run_dir / "input")
    summary = run_dir / "summary.json"
    cmd = [sys.executable, str(COMFYHOST / "run_workflow.py"), "--comfy-dir", str(CACHE / "ComfyUI"),
           "--python", str(python), "--pack", str(ROOT), "--workflow", str(workflow),
           "--extra-model-paths", str(models), "--run-dir", str(run_dir), "--summary-json", str(summary),
           "--timeout", "900", *_overrides(json.loads(workflow.read_text()), extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    return proc.returncode, json.loads(summary.read_text()), proc.stdout + proc.stderr


def _video_meta(path: str) -> tuple[int, tuple[int, int]]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta["size"])


def _pack_import_seconds(server_log: str) -> float:
    text = Path(server_log).read_text(errors="replace")
    m = re.search(r"^\s*([0-9.]+) seconds(?: \(IMPORT FAILED\))?: \S*" + re.escape(ROOT.name) + r"\s*$",
                  text, re.M)
    assert m, f"the pack is not in the server's import times:\n{text[-3000:]}"
    assert "IMPORT FAILED" not in m.group(0)
    return float(m.group(1))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_workflow_runs_in_comfyui(host_python: Path, models: Path, tmp_path: Path, workflow: Path) -> None:
    extra = PER_WORKFLOW.get(workflow.stem, {})
    rc, summary, out = run_workflow(host_python, workflow, models, tmp_path / "run", extra)
    assert rc == 0, out[-6000:]
    files = [f for o in summary["outputs"].values() for f in o["files"] if f.endswith(".mp4")]
    assert len(files) == 1 and Path(files[0]).is_file(), out[-3000:]
    frames = EXPECTED_FRAMES.get(workflow.stem, FRAMES)
    assert _video_meta(files[0]) == (frames, (WIDTH, HEIGHT))
    assert _pack_import_seconds(summary["server_log"]) < 1.0


def test_bad_input_is_a_node_error(host_python: Path, models: Path, tmp_path: Path) -> None:
    """A width that is no multiple of 16 passes ComfyUI's min/max check; the node's ValueError
    reaches the client as an execution error naming the input and the rule, and the server lives."""
    workflow = ROOT / "workflows" / "cogvideox_2b_text_to_video.json"
    rc, summary, out = run_workflow(host_python, workflow, models, tmp_path / "run",
                                    {"CogVideoXEmptyLatent": {"width": 100}})
    assert rc == 1, out[-3000:]
    err = summary["execution_error"]
    assert err["node_type"] == "CogVideoXEmptyLatent"
    assert "width=100" in err["exception_message"] and "multiple of 16" in err["exception_message"]


def test_loras_and_tiled_encode_in_comfyui(host_python: Path, models: Path, tmp_path: Path) -> None:
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
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps(prompt))
    rc, summary, out = run_workflow(host_python, path, models, tmp_path / "run")
    assert rc == 0, out[-6000:]
    (video,) = [f for o in summary["outputs"].values() for f in o["files"]]
    assert _video_meta(video) == (FRAMES, (WIDTH, HEIGHT))
    log = Path(summary["server_log"]).read_text(errors="replace")
    assert "ERROR lora" not in log and "could not patch" not in log and "not recognized" not in log
