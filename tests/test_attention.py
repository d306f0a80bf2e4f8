"""``--attention auto|sdpa|sage|flash``: the choice, its refusals and its dispatch.

This machine has no GPU and no ``sageattention``: the kernels themselves cannot run here. What
is tested is everything around them: sdpa is the default numerically; flash and sage on the CPU
are a ``ValueError`` naming what is missing; with a CUDA device faked (``torch.cuda`` checks
monkeypatched) and a fake ``sageattention`` module, ``sage`` calls ``sageattn`` with the layout
and shapes SageAttention takes and gives SDPA's numbers, ``flash`` enters torch's
FlashAttention-only context, ``auto`` picks sage, else flash, else sdpa; the CLI refuses an
attention that cannot run before any weights load.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_util import refused as _refused
from pipeline_models import save_tree

from cogvideox_core import attention as attn
from cogvideox_core.attention import ATTENTION_CHOICES, select_attention
from cogvideox_core.cli.main import main as cli_main
from cogvideox_core.ops import sdpa_attention

HEADS, HEAD_DIM = 4, 8


def qkv(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 7, HEADS * HEAD_DIM, generator=g).to(dtype) for _ in range(3))


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int]]:
    """torch believes in a CUDA GPU of the capability put in the returned dict (default 8.9)."""
    gpu = {"capability": (8, 9)}
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu["capability"])
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    return gpu


@pytest.fixture
def no_sage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sageattention", None)  # `import sageattention` raises ImportError


@pytest.fixture
def fake_sage(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """A ``sageattention`` module whose ``sageattn`` records each call and returns SDPA's result."""
    calls: list[dict] = []

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, **kw):
        calls.append({"shapes": [tuple(t.shape) for t in (q, k, v)], "layout": tensor_layout,
                      "is_causal": is_causal, "kw": kw})
        if tensor_layout == "NHD":  # [B, S, H, D] -> [B, H, S, D] and back
            return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v)

    module = types.ModuleType("sageattention")
    module.sageattn = sageattn
    monkeypatch.setitem(sys.modules, "sageattention", module)
    return calls


# ---- the choices ----------------------------------------------------------------------------

def test_choices() -> None:
    assert ATTENTION_CHOICES == ("auto", "sdpa", "sage", "flash")
    with pytest.raises(ValueError, match="--attention 'xformers': must be one of auto, sdpa, sage, flash"):
        select_attention("xformers", torch.device("cpu"), torch.float32)


def test_sdpa_is_the_default_numerically() -> None:
    fn = select_attention("sdpa", torch.device("cpu"), torch.float32)
    q, k, v = qkv()
    assert fn is sdpa_attention and torch.equal(fn(q, k, v, HEADS), sdpa_attention(q, k, v, HEADS))


def test_auto_on_the_cpu_is_sdpa(no_sage: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cogvideox_core.attention"):
        assert select_attention("auto", torch.device("cpu"), torch.float32) is sdpa_attention
    assert "attention auto: sdpa" in caplog.text and "pip install sageattention" in caplog.text


def test_flash_on_the_cpu_is_refused() -> None:
    with pytest.raises(ValueError) as e:
        select_attention("flash", torch.device("cpu"), torch.bfloat16)
    assert "--attention flash on cpu in bfloat16" in str(e.value) and "needs a CUDA GPU" in str(e.value)
    assert "--attention sdpa" in str(e.value)


def test_sage_on_the_cpu_names_what_is_missing(no_sage: None) -> None:
    with pytest.raises(ValueError) as e:
        select_attention("sage", "cpu", torch.float32)
    msg = str(e.value)
    assert "--attention sage on cpu in float32" in msg
    assert "pip install sageattention" in msg and "needs a CUDA GPU" in msg


def test_sage_with_the_package_still_needs_cuda(fake_sage: list[dict]) -> None:
    with pytest.raises(ValueError, match="needs a CUDA GPU") as e:
        select_attention("sage", "cpu", torch.bfloat16)
    assert "sageattention" not in str(e.value).split(":", 1)[1]  # the package is not what is missing


@pytest.mark.parametrize("name", ["sage", "flash"])
def test_old_gpu_and_fp32_are_refused(name: str, fake_cuda: dict, fake_sage: list[dict]) -> None:
    fake_cuda["capability"] = (7, 5)
    with pytest.raises(ValueError, match=r"compute capability 8\.0 or newer .* is 7\.5"):
        select_attention(name, "cuda", torch.bfloat16)
    fake_cuda["capability"] = (8, 0)
    with pytest.raises(ValueError, match=r"needs dtype bfloat16 or float16 \(got float32\)"):
        select_attention(name, "cuda", torch.float32)


# ---- the dispatch ---------------------------------------------------------------------------

def test_sage_calls_sageattn_in_nhd(fake_cuda: dict, fake_sage: list[dict]) -> None:
    fn = select_attention("sage", torch.device("cuda"), torch.bfloat16)
    q, k, v = qkv()  # float32 on the CPU: the fake sageattn computes SDPA, exactly comparable
    out = fn(q, k, v, HEADS)
    assert fake_sage == [{"shapes": [(2, 7, HEADS, HEAD_DIM)] * 3, "layout": "NHD", "is_causal": False, "kw": {}}]
    assert out.shape == q.shape
    assert (out - sdpa_attention(q, k, v, HEADS)).abs().max().item() <= 1e-6


def test_flash_restricts_sdpa_to_the_flash_backend(fake_cuda: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.attention as nn_attention

    entered: list[object] = []

    def sdpa_kernel(backends, *a, **kw):
        entered.append(backends)
        return contextlib.nullcontext()

    monkeypatch.setattr(nn_attention, "sdpa_kernel", sdpa_kernel)
    fn = select_attention("flash", "cuda", torch.float16)
    q, k, v = qkv()
    out = fn(q, k, v, HEADS)
    assert entered == [nn_attention.SDPBackend.FLASH_ATTENTION]
    assert torch.equal(out, sdpa_attention(q, k, v, HEADS))


def test_auto_prefers_sage_then_flash(fake_cuda: dict, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cogvideox_core.attention"):
        monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=lambda *a, **k: None))
        assert select_attention("auto", "cuda", torch.bfloat16) is attn.sage_attention
        monkeypatch.setitem(sys.modules, "sageattention", None)
        assert select_attention("auto", "cuda", torch.bfloat16) is attn.flash_attention
        assert select_attention("auto", "cuda", torch.float32) is sdpa_attention
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "attention auto: sage"
    assert lines[1].startswith("attention auto: flash (sage: the sageattention package does not import")
    assert lines[2].startswith("attention auto: sdpa (") and "float32" in lines[2]


def test_the_transformer_runs_on_the_chosen_attention(fake_cuda: dict, fake_sage: list[dict]) -> None:
    """A tiny model built on ``sage`` (faked: SDPA's numbers) gives the default model's output."""
    from scaffold import tiny_config

    from cogvideox_core.models.transformer import CogVideoXTransformer

    torch.manual_seed(0)
    plain = CogVideoXTransformer(tiny_config("5b"), ops=torch.nn).eval()
    sage = CogVideoXTransformer(tiny_config("5b"), ops=torch.nn, attention=select_attention("sage", "cuda", torch.bfloat16))
    sage.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 3, 16, 8, 12, generator=g), torch.randn(1, 226, 8, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        assert (sage.eval()(x, t, ctx) - plain(x, t, ctx)).abs().max().item() <= 1e-5
    assert len(fake_sage) == 2 and fake_sage[0]["layout"] == "NHD"  # one call per block


# ---- the CLI --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-5b")
    save_tree("5b", root)
    return root


SMALL = ["--prompt", "a lighthouse", "--frames", "9", "--height", "32", "--width", "48", "--steps", "2",
         "--device", "cpu"]


def test_cli_refuses_sage_on_the_cpu_before_loading(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    no_loading: None, no_sage: None) -> None:
    err = _refused(capsys, ["generate", "--model", str(tree), *SMALL, "--attention", "sage",
                            "--out", str(tmp_path / "v.mp4")])
    assert "--attention sage on cpu" in err and "pip install sageattention" in err and "CUDA" in err


def test_cli_refuses_flash_on_the_cpu_before_loading(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     no_loading: None) -> None:
    err = _refused(capsys, ["generate", "--model", str(tree), *SMALL, "--attention", "flash",
                            "--out", str(tmp_path / "v.mp4")])
    assert "--attention flash on cpu in float32: needs a CUDA GPU" in err


def test_cli_rejects_an_unknown_attention(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:  # argparse: usage error, exit 2
        cli_main(["generate", "--model", "m", "--attention", "xformers", "--out", str(tmp_path / "v.mp4")])
    assert e.value.code == 2 and "--attention: invalid choice: 'xformers'" in capsys.readouterr().err


class _Loaded(Exception):
    """Stops the run at the transformer load, after the options were seen."""


def test_cli_passes_the_choices_to_the_loader(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from cogvideox_core.loading import weights

    seen: dict = {}

    def load_transformer(*a: object, **kw: object) -> None:
        seen.update(kw)
        raise _Loaded

    monkeypatch.setattr(weights, "load_transformer", load_transformer)
    code = cli_main(["generate", "--model", str(tree), *SMALL, "--attention", "sdpa", "--weight-dtype",
                     "fp8_e4m3fn", "--no-fp8-matmul", "--out", str(tmp_path / "v.mp4")])
    assert code == 1 and "_Loaded" in capsys.readouterr().err
    assert seen["attention"] is sdpa_attention and seen["weight_dtype"] == torch.float8_e4m3fn
    assert seen["fp8_compute"] is False
