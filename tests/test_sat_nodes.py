"""The loader nodes list and load SAT ``.pt`` checkpoints where users keep them (no ComfyUI:
the pack's host fallback, ``host.folders.MODELS_DIR`` pointed at a temporary models folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from make_workflows import load_pack
from test_sat_checkpoint import sat_transformer, save_sat_release
from weights_util import random_vae, sat_vae_state, state

PACK = load_pack()
import node_host  # noqa: E402
from node_host import node  # noqa: E402
from cogvideox_pack.nodes import host  # noqa: E402


@pytest.fixture(autouse=True)
def sat_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """models/CogVideo/CogVideoX-5b-sat (SAT release root), diffusion_models/*.pt, vae/3d-vae.pt."""
    save_sat_release(tmp_path / "CogVideo" / "CogVideoX-5b-sat", sat_transformer("1.5-5b"))
    (tmp_path / "diffusion_models").mkdir()
    torch.save({"module": sat_transformer("1.5-5b-i2v")}, tmp_path / "diffusion_models" / "i2v_sat.pt")
    (tmp_path / "vae").mkdir()
    torch.save({"state_dict": sat_vae_state(state(random_vae()))}, tmp_path / "vae" / "3d-vae.pt")
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "not_a_lora.pt").write_bytes(b"")
    monkeypatch.setattr(host.folders, "MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(host.folders, "SHIPPED", ())  # the user's folders only
    with pytest.MonkeyPatch.context() as mp:
        node_host.install(mp, host)
        yield tmp_path


def test_dropdowns_list_sat_checkpoints() -> None:
    assert host.list_models("transformer") == ["CogVideoX-5b-sat", "i2v_sat.pt"]
    assert host.list_models("vae") == ["3d-vae.pt"]
    assert host.list_models("lora") == []  # LoRAs stay .safetensors


def test_loader_nodes_load_sat_checkpoints() -> None:
    model, fps = node("CogVideoXModelLoader")("CogVideoX-5b-sat", "fp32")
    assert model.family.name == "1.5-5b" and fps == 16.0
    model, _fps = node("CogVideoXModelLoader")("i2v_sat.pt", "fp32")
    assert model.family.name == "1.5-5b-i2v"
    vae, = node("CogVideoXVAELoader")("3d-vae.pt", "fp32")
    assert vae is not None
