"""Fixtures shared by the tests: the tiny models folders, a tiny 5B diffusers tree, the loaders
trap of the CLI refusal tests, and one live ComfyUI per generation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyhosts import GENERATIONS, TIMINGS, LiveServer
from tiny_models import HEIGHT, WIDTH, extra_model_paths, write_models

from cogvideox_core.video_io import write_mp4


@pytest.fixture
def keep_threads():
    """A test that sets torch's thread count (the demo's ``--threads``, a pinned count) gives the
    test process its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """extra_model_paths.yaml of a folder of tiny models."""
    root = tmp_path_factory.mktemp("host_models")
    write_models(root / "models")
    return extra_model_paths(root / "models", root / "extra_model_paths.yaml")


@pytest.fixture(scope="session")
def node_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder of tiny models for the node tests that share one (written once)."""
    return write_models(tmp_path_factory.mktemp("node_models") / "models")


@pytest.fixture(scope="session")
def tiny_5b(tmp_path_factory: pytest.TempPathFactory):
    """(root, Models) of a tiny random 5B saved as a diffusers tree (written once)."""
    from pipeline_models import save_tree

    root = tmp_path_factory.mktemp("tiny-5b")
    return root, save_tree("5b", root)


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every loader fails the test: a refusal seen with this fixture happened before loading."""
    from cogvideox_core.loading import text, weights

    def called(*_a: object, **_k: object) -> None:
        raise AssertionError("a loader was called before the refusal")

    for module, name in ((weights, "load_transformer"), (weights, "load_vae"), (text, "load_text_encoder")):
        monkeypatch.setattr(module, name, called)


@pytest.fixture(scope="session", params=sorted(GENERATIONS))
def server(request: pytest.FixtureRequest, models: Path, tmp_path_factory: pytest.TempPathFactory):
    """A live ComfyUI of one generation (the test id says which) with the pack, the tiny
    models and the input files, latent previews on."""
    run_dir = tmp_path_factory.mktemp(f"comfyui_{request.param}")
    _inputs(run_dir / "input")
    live = LiveServer(request.param, models, run_dir, "--preview-method", "auto")
    yield live
    live.stop()


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




def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The host timings (workflow x host -> frames, size, seconds; pack import time) after the
    run, for the closing notes; nothing when no host test ran."""
    if TIMINGS:
        terminalreporter.section("ComfyUI host timings")
        for row in TIMINGS:
            terminalreporter.write_line(json.dumps(row))
