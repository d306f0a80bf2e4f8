"""int8 layers under the real ComfyUIs of tests/comfyhosts.py (March 2024 and December 2025, built
in .cache when missing): ComfyUI's own ModelPatcher loads the int8 storage fully and
partially, counting it at 1 byte a weight and casting it per call in low-VRAM partial loading,
and (2025: ``get_key_weight``) applies a LoRA through the layer's convert/set hooks, full and
partial, the codes restored after (checks: tests/comfy_probe_checks.py).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from comfyhosts import ensure_host

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "comfy_int8_probe.py"


@pytest.mark.parametrize("generation, checks", [("2024", "full lowvram"), ("2025", "full lowvram lora-full lora-lowvram")])
def test_int8_under_comfyui(generation: str, checks: str) -> None:
    python, comfy = ensure_host(generation)
    done = subprocess.run([str(python), str(PROBE), str(comfy), str(ROOT)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"OK {checks}"
