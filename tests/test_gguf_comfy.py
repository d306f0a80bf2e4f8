"""GGUF layers under the real ComfyUIs of tests/comfyhosts.py (March 2024 and December 2025, built
in .cache when missing), Q8_0, Q4_0 and Q4_K: ComfyUI's own ModelPatcher loads them fully and
partially (low VRAM: the uint8 blocks stay the parameter, counted at their size and dequantized
per call), equal to the reference dequantization, unchanged after unload; the pack's LoRA
route (an object patch added at compute) full and partial, the blocks never written; in 2025,
ComfyUI's own per-call weight patch through the layer's hooks, and a full-load merge refused.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import gguf
import pytest
import torch

from comfyhosts import ensure_host
from test_gguf import Q, k_blocks

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "comfy_gguf_probe.py"
TYPES = ["Q8_0", "Q4_0", "Q4_K"]
PER_TYPE = {"2024": "full lowvram lora-full lora-lowvram", "2025": "full lowvram lora-full lora-lowvram hooks"}


def write_data(path: Path) -> Path:
    """One [64, 256] weight in each type (raw blocks and the gguf package's dequantization), an
    input, a bias and a rank-4 LoRA, for the probe."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g)
    data: dict = {"types": TYPES, "x": torch.randn(5, 256, generator=g), "bias": torch.randn(64, generator=g),
                  "up": torch.randn(64, 4, generator=g) * 0.05, "down": torch.randn(4, 256, generator=g) * 0.05}
    for name in TYPES:
        raw = k_blocks(w.numpy(), name) if name.endswith("_K") else gguf.quants.quantize(w.numpy(), getattr(Q, name))
        real = gguf.quants.dequantize(raw, getattr(Q, name))
        data[name] = {"raw": torch.from_numpy(raw.copy()), "real": torch.from_numpy(real.copy()).float()}
    torch.save(data, path)
    return path


@pytest.mark.parametrize("generation", ["2024", "2025"])
def test_gguf_under_comfyui(generation: str, tmp_path: Path) -> None:
    python, comfy = ensure_host(generation)
    data = write_data(tmp_path / "gguf_layers.pt")
    done = subprocess.run([str(python), str(PROBE), str(comfy), str(ROOT), str(data)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    want = " ".join(f"{t}:{c}" for t in TYPES for c in PER_TYPE[generation].split())
    assert done.stdout.strip().splitlines()[-1] == f"OK {want}"
