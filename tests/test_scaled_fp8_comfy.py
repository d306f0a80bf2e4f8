"""ComfyUI scaled-fp8 transformer files under the real ComfyUIs of tests/comfyhosts.py (March 2024
and December 2025, built in .cache when missing): a tiny file written as ComfyUI's quantizer
writes one (tests/test_scaled_fp8.py), loaded by the pack with its fp8 bytes and scales kept;
ComfyUI's own ModelPatcher loads it fully and partially (low VRAM: the fp8 bytes stay the
parameters, counted at 1 byte a weight and cast per call), the output unchanged and the storage
intact after unpatching; a LoRA through the layers' hooks full and partial (2025), refused by
the pack's LoRA node where ComfyUI has no hooks (2024). Tolerances: tests/comfy_probe_checks.py.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from comfyhosts import ensure_host
from test_scaled_fp8 import comfy_scaled_fp8
from weights_util import random_transformer, save, state

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "comfy_scaled_fp8_probe.py"


@pytest.fixture(scope="module")
def scaled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stored, _ = comfy_scaled_fp8(state(random_transformer("5b", small_sample=False)))
    return save(stored, tmp_path_factory.mktemp("scaled") / "cogvideox5b_fp8_e4m3fn_scaled.safetensors")


@pytest.mark.parametrize("generation, checks", [("2024", "full lowvram lora-refused"),
                                                ("2025", "full lowvram lora-full lora-lowvram")])
def test_scaled_fp8_under_comfyui(generation: str, checks: str, scaled_file: Path) -> None:
    python, comfy = ensure_host(generation)
    done = subprocess.run([str(python), str(PROBE), str(comfy), str(ROOT), str(scaled_file)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"OK {checks}"
