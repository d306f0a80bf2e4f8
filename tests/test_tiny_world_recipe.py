"""The tiny world's whole training recipe (``benchmarks/tiny_world/run_all.sh``) run end to end at toy
sizes (a few steps per stage, a pool of 16 clips): every stage runs in the script's order (the two
transformers side by side), the files it writes load through the pack, and the same command makes
the same files again (the recipe's claim: seeded, reproducible on one machine).

The real run's sizes and what its models do are in the script's header and in
``test_tiny_world_models.py``; this checks the script itself, which otherwise runs only by hand.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "tiny_world" / "run_all.sh"
TINY = {"VAE_STEPS": "2", "POOL": "16", "T2V_STEPS": "3", "T2V_MORE_STEPS": "2", "INP_STEPS": "3",
        "LORA_STEPS": "2", "LORA_CLIPS": "16", "VAE_EVAL_N": "2", "LORA_EVAL_N": "1", "EVAL_N": "1",
        "EVAL_STEPS": "2"}
NO_EVAL = {"VAE_EVAL_N": "1", "LORA_EVAL_N": "0", "EVAL": "0"}  # the second run: the same training
FILES = ("text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors",
         "transformer/diffusion_pytorch_model.safetensors",
         "inp/transformer/diffusion_pytorch_model.safetensors", "lora/every_shape_blue.safetensors")


def run_recipe(tmp: Path, name: str, **sizes: str) -> tuple[Path, Path, str]:
    out, work = tmp / name, tmp / f"{name}_work"
    env = {**os.environ, **TINY, **sizes, "PY": sys.executable, "OUT": str(out), "WORK": str(work)}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return out, work, log


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[tuple[Path, Path, str], tuple[Path, Path, str]]:
    tmp = tmp_path_factory.mktemp("recipe")
    return run_recipe(tmp, "a"), run_recipe(tmp, "b", **NO_EVAL)


def test_every_stage_runs_and_logs_its_minutes(two_runs) -> None:
    (out, work, log), _ = two_runs
    for stage in ("text", "vae", "pool", "t2v", "inp", "eval"):
        assert f"stage {stage}: " in log, stage
        assert (work / f"summary_{stage}.json").is_file(), stage
    # the continued text-to-video round after the side-by-side stages, then the LoRA
    assert log.count("stage t2v: ") == 2, log[-3000:]
    assert log.index("t2v done: 2 steps") > log.index("inp done: 3 steps"), "the continued round ran first"
    assert "lora: saved" in log and "lora: share of blue videos" in log
    for name in FILES:
        assert (out / name).is_file(), name


def test_the_files_load_through_the_pack(two_runs) -> None:
    from benchmarks.tiny_world.models import load_models
    from cogvideox_core.loading.lora import check_lora_file
    from cogvideox_core.loading.lora_apply import weight_shapes

    (out, _, _), _ = two_runs
    t2v, inp = load_models("t2v", out), load_models("inp", out)
    assert t2v.family.conditioning == "t2v" and inp.family.conditioning == "inp"
    assert t2v.family.transformer.max_text_len == inp.family.transformer.max_text_len == 32
    assert check_lora_file(out / FILES[-1], weight_shapes(t2v.transformer)) > 0


def test_the_same_command_makes_the_same_files(two_runs) -> None:
    (a, _, _), (b, _, _) = two_runs
    differ = [name for name in FILES if (a / name).read_bytes() != (b / name).read_bytes()]
    assert not differ, f"two runs of the same command wrote different {differ}"
