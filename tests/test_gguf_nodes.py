"""The Model Loader node lists and loads GGUF transformers where ComfyUI-GGUF users keep them
(``models/diffusion_models``, ``models/unet``); no ComfyUI: the pack's host fallback with
``host.folders.MODELS_DIR`` pointed at a temporary models folder."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from make_workflows import load_pack
from test_gguf import block_type, tiny, write_gguf
from weights_util import state

PACK = load_pack()
import node_host  # noqa: E402
from node_host import node  # noqa: E402
from cogvideox_pack.nodes import host  # noqa: E402


@pytest.fixture(autouse=True)
def gguf_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """diffusion_models/tiny-Q8_0.gguf (a tiny 1.5-5B transformer), and a .gguf in vae/ that
    the VAE dropdown must not list."""
    (tmp_path / "diffusion_models").mkdir()
    write_gguf(tmp_path / "diffusion_models" / "tiny-Q8_0.gguf", state(tiny("1.5-5b")), block_type("Q8_0"))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "not_a_vae.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(host.folders, "MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(host.folders, "SHIPPED", ())  # the user's folders only
    with pytest.MonkeyPatch.context() as mp:
        node_host.install(mp, host)
        yield tmp_path


def test_dropdowns_list_gguf_transformers_only() -> None:
    assert host.list_models("transformer") == ["tiny-Q8_0.gguf"]
    assert host.list_models("vae") == []


def test_model_loader_loads_gguf() -> None:
    model, fps = node("CogVideoXModelLoader")("tiny-Q8_0.gguf", "fp32")
    assert model.family.name == "1.5-5b" and fps == 16.0
    layers = [m for m in model.patcher.model.modules() if type(m).__name__ == "GGUFLinear"]
    assert layers and all(m.weight.dtype.itemsize == 1 for m in layers)
