"""``generate`` under bad input and faults: one early line naming the flag, nothing lost.

Early refusals run in-process with every loader replaced by one that fails the test, so each is
proven to happen before any weights load. The rest run the CLI as a subprocess: exit code, no
``Traceback``, and the hashes of the user's files before and after.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_util import refused as _refused
from pipeline_models import save_tree

from cogvideox_core.models.transformer import CogVideoXTransformer
from cogvideox_core.video_io import write_mp4

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--prompt", "a lighthouse at dusk", "--frames", "9", "--height", "32", "--width", "48",
         "--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-5b")
    save_tree("5b", root)
    return root


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("media")
    Image.new("RGB", (48, 32), (90, 120, 200)).save(folder / "start.png")
    Image.new("RGB", (1, 1), (90, 120, 200)).save(folder / "dot.png")
    (folder / "notes.png").write_text("not an image")
    (folder / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    write_mp4(torch.rand(12, 32, 48, 3), folder / "clip.mp4")
    return {p.stem: p for p in folder.iterdir()}


def _transformer_file(tree: Path) -> Path:
    return next((tree / "transformer").glob("*.safetensors"))


def _cases(tree: Path, media: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """case -> (argv after ``generate``, substrings of the error line)."""
    model = ["--model", str(tree)]
    out = ["--out", str(tmp / "out.mp4")]
    folder_out = tmp / "folder.safetensors"
    folder_out.mkdir(exist_ok=True)
    (tmp / "a_file").write_text("x")
    return {
        "cfg inf": ([*model, *SMALL, "--cfg", "inf", *out], ["--cfg inf", "finite"]),
        "cfg nan": ([*model, *SMALL, "--cfg", "nan", *out], ["--cfg nan", "finite"]),
        "steps 0": ([*model, *SMALL, "--steps", "0", *out], ["--steps 0", "1..1000"]),
        "steps 5000": ([*model, *SMALL, "--steps", "5000", *out], ["--steps 5000", "1..1000"]),
        "steps x denoise": ([*model, *SMALL, "--video", str(media["clip"]), "--denoise", "0.2", *out],
                            ["--steps 2 x --denoise 0.2", "--steps"]),
        "denoise nan": ([*model, *SMALL, "--denoise", "nan", *out], ["--denoise nan", "(0, 1]"]),
        "seed -1": ([*model, *SMALL, "--seed", "-1", *out], ["--seed -1", "0..18446744073709551615"]),
        "frames 10": ([*model, *SMALL, "--frames", "10", *out], ["frames=10", "4k+1"]),
        "mp4 too wide": ([*model, *SMALL, "--width", "16400", *out], ["--out .mp4", "16384", ".safetensors"]),
        "family contradicts the config": ([*model, "--family", "2b", *SMALL, *out],
                                          ["--family 2b", "config.json", "says '5b'"]),
        "device tpu9": ([*model, *SMALL, "--device", "tpu9", *out], ["--device tpu9", "cpu, cuda"]),
        "out .txt": ([*model, *SMALL, "--out", str(tmp / "out.txt")], ["--out", ".mp4 or .safetensors"]),
        "out is a folder": ([*model, *SMALL, "--out", str(folder_out)], ["--out", "is a folder"]),
        "out under a file": ([*model, *SMALL, "--out", str(tmp / "a_file" / "x.mp4")], ["is a file"]),
        "out is the weights": ([*model, *SMALL, "--out", str(_transformer_file(tree))],
                               ["--out", "the --model input", "destroy"]),
        "out inside the model": ([*model, *SMALL, "--out", str(tree / "transformer" / "v.mp4")],
                                 ["inside the --model input"]),
        "text encoder is a VAE": ([*model, *SMALL, "--text-encoder", str(tree / "vae"), *out],
                                  ["--text-encoder", "T5 encoder", "found: vae"]),
        "no VAE": (["--model", str(tree / "transformer"), *SMALL, *out], ["give --vae"]),
        "unreadable image": ([*model, *SMALL, "--image", str(media["notes"]), *out],
                             ["--image", "notes.png"]),
        "prompts file not UTF-8": ([*model, *SMALL, "--prompts-file", str(media["latin1"]),
                                    "--extend-chunks", "1", *out], ["--prompts-file", "UTF-8"]),
        "prompts file missing": ([*model, *SMALL, "--prompts-file", str(tmp / "none.txt"), *out],
                                 ["--prompts-file", "cannot read"]),
    }


CASES = ["cfg inf", "cfg nan", "steps 0", "steps 5000", "steps x denoise", "denoise nan", "seed -1",
         "frames 10", "mp4 too wide", "family contradicts the config", "device tpu9", "out .txt", "out is a folder", "out under a file",
         "out is the weights", "out inside the model", "text encoder is a VAE",
         "no VAE", "unreadable image", "prompts file not UTF-8", "prompts file missing"]


@pytest.mark.parametrize("case", CASES)
def test_refused_before_loading(case: str, tree: Path, media: dict[str, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture, no_loading: None) -> None:
    argv, wanted = _cases(tree, media, tmp_path)[case]
    err = _refused(capsys, ["generate", *argv])
    for text in wanted:
        assert text in err, err


def test_out_naming_the_image_with_a_video_suffix_is_refused(tree: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture,
                                                             no_loading: None) -> None:
    clip = tmp_path / "source.mp4"
    write_mp4(torch.rand(12, 32, 48, 3), clip)
    before = _hash(clip)
    err = _refused(capsys, ["generate", "--model", str(tree), *SMALL, "--video", str(clip),
                            "--denoise", "0.9", "--steps", "4", "--out", str(clip)])
    assert "the --video input" in err and _hash(clip) == before


def test_unwritable_folder_is_refused(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch, no_loading: None) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    err = _refused(capsys, ["generate", "--model", str(tree), *SMALL, "--out", str(locked / "v.mp4")])
    assert "not writable" in err and str(locked) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for a torch without CUDA")
def test_cuda_on_a_cpu_torch(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_loading: None) -> None:
    err = _refused(capsys, ["generate", "--model", str(tree), *SMALL, "--device", "cuda",
                            "--out", str(tmp_path / "v.mp4")])
    assert "--device cuda" in err and ("CPU-only" in err or "no CUDA GPU" in err)


def test_tiny_start_image_is_refused(tmp_path_factory: pytest.TempPathFactory, media: dict[str, Path],
                                     capsys: pytest.CaptureFixture, no_loading: None) -> None:
    root = tmp_path_factory.mktemp("tiny-fun-5b-inp")
    save_tree("fun-5b-inp", root)
    err = _refused(capsys, ["generate", "--model", str(root), *SMALL, "--image", str(media["dot"]),
                            "--out", str(root.parent / "v.mp4")])
    assert "image is 1x1 pixels" in err and "too small" in err


def test_a_run_that_cannot_fit_is_refused_before_loading(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch, no_loading: None) -> None:
    from cogvideox_core.runtime import TorchRuntime

    monkeypatch.setattr(TorchRuntime, "free_memory", lambda self: 4 * 2**30)
    err = _refused(capsys, ["generate", "--model", str(tree), *SMALL, "--height", "32", "--width", "100000",
                            "--out", str(tmp_path / "v.safetensors")])
    assert "this run needs about" in err and "on cpu but 4.0 GiB is available" in err and "would fit" in err


# ---- faults during the run ------------------------------------------------------------------

def test_non_finite_latents_are_not_written(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = CogVideoXTransformer.forward
    monkeypatch.setattr(CogVideoXTransformer, "forward",
                        lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    out = tmp_path / "v.mp4"
    err = _refused(capsys, ["generate", "--model", str(tree), *SMALL, "--out", str(out)])
    assert "step 1/2" in err and "NaN" in err and "nothing written" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fault, wanted", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), ["out of memory", "--frames"]),
    (RuntimeError("CUDA error: an illegal memory access was encountered"),
     ["RuntimeError", "illegal memory access", "--verbose"]),
])
def test_runtime_failures_are_one_line(fault: Exception, wanted: list[str], tree: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a: object, **_k: object) -> None:
        raise fault

    monkeypatch.setattr(CogVideoXTransformer, "forward", fail)
    err = _refused(capsys, ["generate", "--model", str(tree), *SMALL, "--out", str(tmp_path / "v.mp4")])
    for text in wanted:
        assert text in err, err
    assert list(tmp_path.iterdir()) == []


# ---- as a subprocess ------------------------------------------------------------------------

def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cogvideox_core", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_out_on_the_weights_file_leaves_it_intact(tree: Path) -> None:
    weights = _transformer_file(tree)
    before = _hash(weights)
    done = _run("generate", "--model", str(tree), *SMALL, "--out", str(weights))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "destroy" in done.stderr and _hash(weights) == before


def test_verbose_shows_the_traceback(tree: Path, tmp_path: Path) -> None:
    done = _run("generate", "--model", str(tree), *SMALL, "--cfg", "nan", "--verbose",
                "--out", str(tmp_path / "v.mp4"))
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --cfg nan")


def test_a_replaced_output_keeps_its_mode(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old")
    out.chmod(0o664)
    done = _run("generate", "--model", str(tree), *SMALL, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o664 and out.read_bytes() != b"old"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_the_next_step_and_writes_nothing(signum: int, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    out.write_bytes(b"the user's earlier video")
    before = _hash(out)
    proc = subprocess.Popen([sys.executable, "-m", "cogvideox_core", "generate", "--model", str(tree), *SMALL,
                             "--steps", "1000", "--out", str(out)], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = _read_until(proc, "/1000")
    proc.send_signal(signum)
    _stdout, rest = proc.communicate(timeout=60)
    err = seen + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted at step ") and last.endswith("/1000: nothing written"), last
    assert _hash(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def _read_until(proc: subprocess.Popen, text: str, timeout: float = 90) -> str:
    seen, start = "", time.monotonic()
    while text not in seen:
        char = proc.stderr.read(1)
        assert char and time.monotonic() - start < timeout, f"no progress: {seen}"
        seen += char
    return seen
