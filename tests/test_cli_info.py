"""``python -m cogvideox_core info PATH [--json]``: text and JSON reports, exit codes.

Most cases call :func:`cogvideox_core.cli.main.main` in-process; one runs the real
``python -m cogvideox_core`` to check the entry point, the exit code and that an error is one
line without a traceback.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cogvideox_core.cli.main import build_parser, main
from cogvideox_core.families import FAMILIES, FAMILY_NAMES
from weights_util import layout_shapes, random_transformer, random_vae, real_shapes, write_header_only

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real-size CogVideoX-5B diffusers tree: headers only (sparse files), sharded transformer."""
    root = tmp_path_factory.mktemp("CogVideoX-5b")
    shapes = real_shapes("5b")
    keys = sorted(shapes)
    files = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
             "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in files.items():
        write_header_only(root / "transformer" / name, {k: shapes[k] for k in part})
    index = {"metadata": {}, "weight_map": {k: name for name, part in files.items() for k in part}}
    (root / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (root / "transformer" / "config.json").write_text(json.dumps(FAMILIES["5b"].transformer.to_diffusers()))
    random_vae().save_pretrained(root / "vae")
    (root / "tokenizer").mkdir()
    shutil.copy(ROOT / "cogvideox_core" / "data" / "t5_tokenizer" / "tokenizer.json", root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "CogVideoXDPMScheduler"}')
    return root


def run_info(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["info", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_report_of_a_model_root(model_root: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_info(capsys, str(model_root))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert "family: 5b" in lines
    assert "components: transformer, vae, tokenizer, scheduler" in lines
    assert any(line.startswith("  transformer: ") and "2 file(s)" in line and "BF16" in line for line in lines)
    assert any("42 layers, 48 heads x 64, 16 input channels, positions rope_linspace" in line for line in lines)


def test_json_report(model_root: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_info(capsys, str(model_root), "--json")
    report = json.loads(out)
    assert code == 0
    assert report["family"] == "5b" and report["family"] in FAMILY_NAMES
    assert report["components"] == ["transformer", "vae", "tokenizer", "scheduler"]
    assert report["transformer_config"]["num_layers"] == 42
    assert report["details"]["transformer"]["layout"] == "diffusers"
    assert len(report["details"]["transformer"]["files"]) == 2
    assert report["details"]["transformer"]["bytes"] > 10 * 2**30  # the real 5B, from headers
    assert report["vae_config"]["latent_channels"] == 4


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_family_name_in_json(tmp_path: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    path = write_header_only(tmp_path / "m.safetensors", layout_shapes(name, "comfyui", "model.diffusion_model."))
    code, out, _ = run_info(capsys, str(path), "--json")
    report = json.loads(out)
    assert (code, report["family"], report["components"]) == (0, name, ["transformer"])
    assert report["details"]["transformer"]["layout"] == "comfyui"


def test_info_is_instant_on_a_large_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_header_only(tmp_path / "CogVideoX1.5-5B.safetensors", real_shapes("1.5-5b-i2v"), "F32")
    assert path.stat().st_size > 20 * 2**30  # sparse: no disk used
    start = time.perf_counter()
    code, out, _ = run_info(capsys, str(path))
    assert code == 0 and "family: 1.5-5b-i2v" in out
    assert time.perf_counter() - start < 2.0


def test_single_tiny_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import save_file

    sd = {"model.diffusion_model." + k: v.contiguous() for k, v in random_transformer("1.5-5b").state_dict().items()}
    save_file(sd, str(tmp_path / "tiny.safetensors"))
    code, out, _ = run_info(capsys, str(tmp_path / "tiny.safetensors"))
    assert code == 0 and "family: 1.5-5b" in out.splitlines()
    assert "prefix 'model.diffusion_model.'" in out


@pytest.mark.parametrize("kind", ["unet", "missing", "empty folder", "garbage"])
def test_not_cogvideox_exits_nonzero_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, kind: str) -> None:
    path = tmp_path / "x.safetensors"
    if kind == "unet":
        write_header_only(path, {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "F16")
    elif kind == "empty folder":
        path = tmp_path / "folder"
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"GIF89a" + b"\0" * 100)
    code, out, err = run_info(capsys, str(path), "--json")
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(path) in err


def test_entry_point_exit_codes(model_root: Path, tmp_path: Path) -> None:
    bad = write_header_only(tmp_path / "clip.safetensors", {"text_model.encoder.layers.0.mlp.fc1.weight": (8, 8)}, "F32")
    good = subprocess.run([sys.executable, "-m", "cogvideox_core", "info", str(model_root), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and json.loads(good.stdout)["family"] == "5b"
    failed = subprocess.run([sys.executable, "-m", "cogvideox_core", "info", str(bad)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and failed.stdout == ""
    assert "Traceback" not in failed.stderr and failed.stderr.count("\n") == 1
    assert "not a CogVideoX transformer" in failed.stderr and "CLIP" in failed.stderr


def test_parser_has_subcommands() -> None:
    parser = build_parser()
    args = parser.parse_args(["info", "somewhere", "--json"])
    assert args.command == "info" and args.json and callable(args.run)
    with pytest.raises(SystemExit):
        parser.parse_args([])
