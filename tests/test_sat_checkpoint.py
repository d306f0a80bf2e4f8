"""SAT ``.pt`` checkpoints (SwissArmyTransformer's ``mp_rank_00_model_states.pt``, the VAE's
``3d-vae.pt``): tiny diffusers models written in the SAT layout (``weights_util.sat_state``, the
inverse of diffusers' ``convert_cogvideox_to_diffusers.py`` rules) and saved with ``torch.save``
as SAT does, loaded by our loaders: the same state, bit for bit, as from diffusers safetensors.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from cogvideox_core.cli.main import main
from cogvideox_core.errors import WeightsError
from cogvideox_core.families import FAMILIES
from cogvideox_core.loading.weights import inspect_path, load_transformer, load_vae
from weights_util import layout_state, random_transformer, random_vae, sat_vae_state, save, state

SAT_PREFIX = "model.diffusion_model."
NAMES = ("5b", "5b-i2v", "1.5-5b", "1.5-5b-i2v")


def sat_transformer(name: str) -> dict[str, torch.Tensor]:
    """A tiny ``name`` transformer's diffusers state in the SAT layout, as SAT's module dict keys it."""
    sd = state(random_transformer(name, small_sample=False))
    return layout_state(sd, "sat", SAT_PREFIX, FAMILIES[name].transformer.uses_rope)


def save_sat_release(root: Path, module: dict[str, torch.Tensor], tag: str = "1000") -> Path:
    """``root/transformer/latest`` + ``root/transformer/<tag>/mp_rank_00_model_states.pt``."""
    folder = root / "transformer" / tag
    folder.mkdir(parents=True)
    (root / "transformer" / "latest").write_text(tag + "\n")
    path = folder / "mp_rank_00_model_states.pt"
    torch.save({"module": module, "iteration": int(tag), "rng": (1, 2, 3)}, path)
    return path


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_sat_transformer_equals_diffusers(tmp_path: Path, name: str) -> None:
    pt = save_sat_release(tmp_path / "sat", sat_transformer(name))
    ref = save(state(random_transformer(name, small_sample=False)), tmp_path / "ref.safetensors")
    family = name if name in ("5b", "5b-i2v") else None  # a tiny width cannot tell 2B from 5B
    expected, fam = load_transformer(ref, dtype=torch.float32, family=family)
    for path in (pt, pt.parents[1], tmp_path / "sat"):  # the file, transformer/, the root
        got, got_family = load_transformer(path, dtype=torch.float32, family=family)
        assert got_family.name == fam.name == name
        assert_same(got, expected)
    if name == "1.5-5b-i2v":
        assert "ofs_embedding.linear_2.weight" in got.state_dict()  # SAT ofs_embed.2


def test_bf16_sat_file_converted_while_reading(tmp_path: Path) -> None:
    module = {k: v.to(torch.bfloat16) for k, v in sat_transformer("1.5-5b").items()}
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": module}, path)
    got, _ = load_transformer(path, dtype=torch.float32)
    ref = save(state(random_transformer("1.5-5b", small_sample=False)), tmp_path / "ref.safetensors")
    expected, _ = load_transformer(ref, dtype=torch.bfloat16)
    for key, value in expected.state_dict().items():
        assert torch.equal(got.state_dict()[key], value.float()), key


@pytest.mark.parametrize("wrap", ["state_dict", "module", None])
def test_sat_vae(tmp_path: Path, wrap: str | None) -> None:
    sd = state(random_vae())
    sat = sat_vae_state(sd)
    path = tmp_path / "vae" / "3d-vae.pt"
    path.parent.mkdir()
    torch.save({wrap: sat} if wrap else sat, path)
    expected = load_vae(save(sd, tmp_path / "ref.safetensors"), dtype=torch.float32)
    for where in (path, path.parent):
        assert_same(load_vae(where, dtype=torch.float32), expected)


def test_sat_root_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "CogVideoX1.5-5B-I2V-SAT"
    save_sat_release(root, sat_transformer("1.5-5b-i2v"))
    (root / "vae").mkdir()
    torch.save({"state_dict": sat_vae_state(state(random_vae()))}, root / "vae" / "3d-vae.pt")
    info = inspect_path(root)
    assert info.family == "1.5-5b-i2v" and info.component_names == ["transformer", "vae"]
    assert info.to_dict()["details"]["transformer"]["format"] == "SAT checkpoint (.pt)"
    assert main(["info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "family: 1.5-5b-i2v" in out and out.count("SAT checkpoint (.pt)") == 2


class NotATensor:
    """An object only arbitrary unpickling can rebuild."""


@pytest.mark.parametrize("extra", [NotATensor(), argparse.Namespace(lr=1e-4)])
def test_objects_need_arbitrary_unpickling(tmp_path: Path, extra: object) -> None:
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": sat_transformer("5b"), "args": extra}, path)
    with pytest.raises(WeightsError) as err:
        load_transformer(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "needs arbitrary unpickling" in message and "does not unpickle" in message


def test_unreadable_and_empty_checkpoints(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\0" * 16)
    with pytest.raises(WeightsError, match=r"junk\.pt: not a zip-format torch checkpoint"):
        load_transformer(junk)
    empty = tmp_path / "empty.ckpt"
    torch.save({"iteration": 3, "module": {}}, empty)
    with pytest.raises(WeightsError, match=r"empty\.ckpt: no state dict"):
        inspect_path(empty)
    two = tmp_path / "two"
    two.mkdir()
    for n in ("a.pt", "b.pt"):
        torch.save({"x": torch.zeros(1)}, two / n)
    with pytest.raises(WeightsError, match="several torch checkpoints"):
        load_transformer(two)


def test_views_dtypes_and_scalars_are_located(tmp_path: Path) -> None:
    """Tensors sharing one storage (contiguous views at an offset), several dtypes and a 0-d
    tensor are read from their place in the archive; a non-contiguous view is refused."""
    from cogvideox_core.loading.weights import read_state_dict

    w = torch.randn(6, 4)
    sd = {"a": w[:3], "b": w[3:], "c": torch.randn(5).half(), "d": torch.tensor(2.5, dtype=torch.float64),
          "e": torch.randn(7, dtype=torch.bfloat16), "f": torch.arange(3)}
    path = tmp_path / "views.pt"
    torch.save({"state_dict": sd}, path)
    got = read_state_dict(path)
    for key, value in sd.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    torch.save({"x": w.t()}, tmp_path / "strided.pth")
    with pytest.raises(WeightsError, match=r"strided\.pth: tensor 'x' is stored as a non-contiguous view"):
        read_state_dict(tmp_path / "strided.pth")
