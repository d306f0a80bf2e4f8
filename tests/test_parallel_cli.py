"""``torchrun --nproc-per-node N -m cogvideox_core generate ... --parallel ...`` on gloo (CPU).

The launch writes one file (rank 0) equal to the one-process pipeline on the same weights within
1e-5: the CFG branches run as two batch-1 calls instead of one batch-2 call, whose float summation
order differs (tests/test_parallel.py measures the same gap between two one-process runs).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cli_util import refused
from cogvideox_core.generation.pipeline import GenerateRequest, generate

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--prompt", "a kite", "--negative", "blurry", "--frames", "9", "--height", "32", "--width", "48",
        "--steps", "3", "--seed", "4", "--device", "cpu"]
ATOL = 1e-5


def _torchrun(n: int, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
                           "--standalone", "-m", "cogvideox_core", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_torchrun_cfg2_ulysses2_equals_one_process(tiny_5b, tmp_path: Path) -> None:
    root, models = tiny_5b
    out = tmp_path / "four.safetensors"
    proc = _torchrun(4, ["generate", "--model", str(root), *ARGS, "--parallel", "cfg=2,ulysses=2",
                         "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1 and "--parallel cfg=2,ulysses=2 on 4 processes" in proc.stdout
    frames = load_file(str(out))["frames"]
    single = generate(models, GenerateRequest(prompt="a kite", negative_prompt="blurry", frames=9, height=32,
                                              width=48, steps=3, seed=4))
    assert (frames - single).abs().max() <= ATOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["four.safetensors"]


@pytest.mark.parametrize("extra, message", [
    (["--parallel", "cfg=3"], "cfg"),
    (["--parallel", "ulysses=3"], "do not divide by 3"),
    (["--parallel", "cfg=2", "--count", "2"], "with batch flags"),
    (["--parallel", "cfg=2", "--cache", "teacache"], "cache='teacache' with --parallel"),
])
def test_parallel_refusals_before_anything_joins(tiny_5b, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 no_loading: None, extra: list[str], message: str) -> None:
    root, _models = tiny_5b
    err = refused(capsys, ["generate", "--model", str(root), *ARGS, *extra, "--out", str(tmp_path / "o.mp4")])
    assert message in err
