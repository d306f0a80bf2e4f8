"""torch.compile of the transformer blocks (``cogvideox_core.models.compile``), on the CPU with
inductor: equal to eager within 1e-4 (fp32) for the plain forward and for ``reusing`` with a given
attention output, one graph shared by every block and step, state-dict keys unchanged, a clear
error when no compiler is there, an interrupted compile that leaves the model usable, and the
``--compile`` CLI flag and the CogVideoX Torch Compile node against their uncompiled runs, the
node also in both real ComfyUIs' model management (``tests/host_compile.py``).

Inductor compiles take seconds each on a small CPU: one compiled model serves the model tests,
and ``reset`` (``torch._dynamo.reset``) starts and ends the module.
"""
from __future__ import annotations

import copy
import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import diffusers  # noqa: F401  (pipeline_models builds the tiny trees with it)
from comfyhosts import GENERATIONS, ensure_host
from make_workflows import ROOT, load_pack
from safetensors.torch import load_file
from tiny_models import FRAMES, HEIGHT, WIDTH

from cogvideox_core.cli.main import main
from cogvideox_core.errors import Interrupted
from cogvideox_core.generation.pipeline import GenerateRequest, generate
from cogvideox_core.models import compile as comp
from cogvideox_core.models.transformer import CogVideoXTransformer, _Block
from cogvideox_core.ops import sdpa_attention
from cogvideox_core.runtime import TorchRuntime
from cogvideox_core.tiny import init_random, tiny_family

PACK = load_pack()
import node_host  # noqa: E402
from node_host import node  # noqa: E402
from cogvideox_pack.cogvideox_core.models import compile as pack_comp  # noqa: E402
from cogvideox_pack.nodes import host  # noqa: E402
from cogvideox_pack.nodes.torch_compile import compiled_patcher  # noqa: E402

TOL = 1e-4
LATENT = (1, 3, 16, 8, 12)  # [B, F, C, H, W]: 3 x 4 x 6 = 72 video tokens
TEXT_LEN = 16


def _frames() -> int:
    return comp._compiled_frames()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[CogVideoXTransformer, CogVideoXTransformer, list[str]]]:
    """(compiled, eager copy, state-dict keys before compiling) of a tiny 5B (RoPE, 2 blocks)."""
    comp.reset()
    eager = init_random(CogVideoXTransformer(tiny_family("5b").transformer), 0).eval()
    model = copy.deepcopy(eager)
    keys = list(model.state_dict())
    comp.compile_blocks(model)
    yield model, eager, keys
    comp.reset()


def _inputs(shape: tuple[int, ...] = LATENT, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randn(shape[0], TEXT_LEN, 32, generator=g)


# ---- the model ------------------------------------------------------------------------------

@torch.no_grad()
def test_forward_equals_eager_with_one_graph_for_every_block_and_step(pair) -> None:
    model, eager, keys = pair
    x, text = _inputs()
    start = _frames()
    for step, t in enumerate((900.0, 500.0, 100.0)):
        out = model(x, torch.tensor([t]), text)
        if step == 0:
            after_first = _frames()
        torch.testing.assert_close(out, eager(x, torch.tensor([t]), text), atol=TOL, rtol=0)
    assert after_first - start == 1  # both blocks in one graph
    assert _frames() == after_first  # and no step recompiles
    assert comp.unexpected_recompiles() == 0
    assert list(model.state_dict()) == keys and comp.is_compiled(model)


@torch.no_grad()
def test_reusing_with_a_given_attention_output_equals_eager(pair) -> None:
    model, eager, _keys = pair
    g = torch.Generator().manual_seed(1)
    n = LATENT[1] * (LATENT[3] // 2) * (LATENT[4] // 2)  # video tokens
    video, text = torch.randn(1, n, 32, generator=g), torch.randn(1, TEXT_LEN, 32, generator=g)
    temb, given = torch.randn(1, 16, generator=g), torch.randn(1, TEXT_LEN + n, 32, generator=g)
    rope = model._rope(model._grid(*LATENT[1:2], *LATENT[3:]), video.device)
    start = _frames()
    for block, ref in zip(model.transformer_blocks, eager.transformer_blocks):
        for attn_out in (given, None):
            got = block.reusing(video, text, temb, rope, sdpa_attention, attn_out)
            want = _Block.reusing(ref, video, text, temb, rope, sdpa_attention, attn_out)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    assert _frames() - start <= 2  # attn_out given, and None for this shape: every block shares them
    assert comp.unexpected_recompiles() == 0


@torch.no_grad()
def test_an_attention_dynamo_cannot_trace_runs_eagerly_without_recompiles(pair) -> None:
    model, eager, _keys = pair

    def split_attention(q, k, v, heads):  # the name of ComfyUI's memory-dependent split attention
        return sdpa_attention(q, k, v, heads)

    wrapped = comp.traceable_attention(split_attention)
    assert wrapped is not split_attention and comp.traceable_attention(split_attention) is wrapped
    assert comp.traceable_attention(sdpa_attention) is sdpa_attention
    x, text = _inputs(seed=2)
    for m in (model, eager):
        m.attention = split_attention
    try:
        first = model(x, torch.tensor([700.0]), text)
        frames = _frames()
        again = model(x, torch.tensor([300.0]), text)
        assert _frames() == frames and comp.unexpected_recompiles() == 0
        torch.testing.assert_close(first, eager(x, torch.tensor([700.0]), text), atol=TOL, rtol=0)
        torch.testing.assert_close(again, eager(x, torch.tensor([300.0]), text), atol=TOL, rtol=0)
    finally:
        for m in (model, eager):
            m.attention = sdpa_attention


@torch.no_grad()
def test_an_interrupted_compile_leaves_the_model_usable(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Ctrl-C lands wherever the program is, inductor included: the next call compiles
    again and is right."""
    import torch._inductor.compile_fx as compile_fx

    model, eager, _keys = pair
    x, text = _inputs((1, 3, 16, 8, 8), seed=3)  # a size not compiled yet

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(compile_fx, "compile_fx", interrupted)
        with pytest.raises(KeyboardInterrupt):
            model(x, torch.tensor([500.0]), text)
    out = model(x, torch.tensor([500.0]), text)
    torch.testing.assert_close(out, eager(x, torch.tensor([500.0]), text), atol=TOL, rtol=0)
    assert comp.unexpected_recompiles() == 0


@torch.no_grad()
def test_a_failed_compile_is_one_error_naming_the_flag(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.compile_fx as compile_fx

    model, eager, _keys = pair
    x, text = _inputs((1, 3, 16, 8, 4), seed=4)  # a size not compiled yet

    def broken(*args, **kwargs):
        raise RuntimeError("Cannot find a working triton installation")

    monkeypatch.setattr(compile_fx, "compile_fx", broken)
    with pytest.raises(comp.CompileError, match=r"--compile\) failed to compile a transformer block on "
                                                 r"cpu: .*working triton.*Run without --compile"):
        model(x, torch.tensor([500.0]), text)
    monkeypatch.undo()  # the compiler works again: so does the model, compiled
    frames = _frames()
    out = model(x, torch.tensor([500.0]), text)
    torch.testing.assert_close(out, eager(x, torch.tensor([500.0]), text), atol=TOL, rtol=0)
    assert _frames() > frames


def test_recompiles_beyond_the_bound_are_warned(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Counted by dynamo's frame counter around each call (here a stand-in that compiles every
    time, as blocks specialised one by one would)."""
    tracker, frames = comp._Tracker(), [0]

    def compiles(_block, *args):
        frames[0] += 1

    monkeypatch.setattr(comp, "_compiled_frames", lambda: frames[0])
    args = (torch.zeros(1, 4, 2), torch.zeros(1, 2, 2), torch.zeros(1, 2), None, sdpa_attention, None)
    for _ in range(1 + comp.RECOMPILE_WARN):
        tracker.call(compiles, None, args, None)
    assert tracker.unexpected == comp.RECOMPILE_WARN and len(tracker.seen) == 1
    assert "compiling the transformer blocks for video [1, 4, 2]" in caplog.text
    assert f"recompiled {comp.RECOMPILE_WARN} times for a size already compiled (video [1, 4, 2])" in caplog.text
    for n in range(comp.RECOMPILE_LIMIT):
        tracker.call(compiles, None, (torch.zeros(1, 5 + n, 2), *args[1:]), None)
    assert "input signatures compiled, more than the 16 dynamo keeps" in caplog.text


def test_copies_and_uncompile(pair) -> None:
    model, _eager, keys = pair
    twin = copy.deepcopy(model)
    assert all(b.forward.block is b and b.reusing.block is b for b in twin.transformer_blocks)
    comp.uncompile_blocks(twin)
    assert not comp.is_compiled(twin) and list(twin.state_dict()) == keys
    assert all("forward" not in vars(b) and "reusing" not in vars(b) for b in twin.transformer_blocks)
    assert comp.is_compiled(model)


# ---- refusals -------------------------------------------------------------------------------

def test_a_missing_compiler_or_triton_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor_config
    import torch.utils._triton as triton_check

    comp.check_compile_support("cpu")  # gcc is here
    with inductor_config.patch({"cpp.cxx": (None, "no-such-cxx")}), \
            pytest.raises(comp.CompileError, match=r"--compile.*C\+\+ compiler.*no-such-cxx"):
        comp.check_compile_support("cpu")
    monkeypatch.setattr(triton_check, "has_triton", lambda: False)
    with pytest.raises(comp.CompileError, match="--compile.*cuda needs triton.*pip install triton"):
        comp.check_compile_support("cuda")
    with pytest.raises(ValueError, match="mode='reduce-overhead' is not allowed; choose one of: default"):
        comp.check_mode("reduce-overhead")


# ---- the CLI and the node -------------------------------------------------------------------

ARGS = ["--prompt", "a lighthouse at dusk", "--negative", "blurry", "--frames", "9", "--height", "32",
        "--width", "48", "--steps", "3", "--seed", "11", "--device", "cpu", "--sampler", "ddim"]


def test_cli_compile_equals_the_eager_pipeline(tiny_5b, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, models = tiny_5b
    out = tmp_path / "frames.safetensors"
    assert main(["generate", "--model", str(root), *ARGS, "--compile", "--out", str(out)]) == 0
    assert "compiling the transformer blocks for video [2, 18, 32], text [2, 226, 32]" in caplog.text  # batched CFG
    request = GenerateRequest(prompt="a lighthouse at dusk", negative_prompt="blurry", frames=9, height=32,
                              width=48, steps=3, seed=11, sampler="ddim")
    torch.testing.assert_close(load_file(str(out))["frames"], generate(models, request), atol=TOL, rtol=0)
    assert not comp.is_compiled(models.transformer)  # the CLI compiled its own copy


class StopAtFirstStep(TorchRuntime):
    """The user stops the run during its first step (the runtime's interrupt flag)."""

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        self.interrupt()


def test_an_interrupted_run_leaves_the_compiled_model_usable(tiny_5b) -> None:
    _root, models = tiny_5b
    compiled = dataclasses.replace(models, transformer=copy.deepcopy(models.transformer))
    comp.compile_blocks(compiled.transformer)
    request = GenerateRequest(prompt="a lighthouse at dusk", frames=9, height=32, width=48, steps=3, seed=5)
    with pytest.raises(Interrupted):
        generate(compiled, request, StopAtFirstStep(device="cpu", show_progress=False))
    torch.testing.assert_close(generate(compiled, request), generate(models, request), atol=TOL, rtol=0)


def test_cli_refuses_compile_without_a_compiler(tiny_5b, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch._inductor.config as inductor_config

    root, _models = tiny_5b
    out = tmp_path / "x.mp4"
    with inductor_config.patch({"cpp.cxx": (None, "no-such-cxx")}):
        assert main(["generate", "--model", str(root), *ARGS, "--compile", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: torch.compile (--compile) on the CPU needs a C++ compiler") and err.count("\n") == 1
    assert not out.exists()


class ObjectPatcher:
    """The part of ComfyUI's ``ModelPatcher`` the node uses: ``clone`` and ``add_object_patch``."""

    def __init__(self, model: torch.nn.Module, load_device: torch.device) -> None:
        self.model, self.load_device, self.object_patches = model, load_device, {}

    def clone(self) -> ObjectPatcher:
        other = ObjectPatcher(self.model, self.load_device)
        other.object_patches = dict(self.object_patches)
        return other

    def add_object_patch(self, name: str, obj: object) -> None:
        self.object_patches[name] = obj


def _set_attr(obj: object, path: str, value: object) -> None:
    """ComfyUI's ``comfy.utils.set_attr`` (how ``patch_model`` applies object patches)."""
    *parents, last = path.split(".")
    for name in parents:
        obj = getattr(obj, name)
    setattr(obj, last, value)


def test_node_samples_equal_to_the_uncompiled_model(node_models_dir: Path) -> None:
    with node_host.stand_in(host, node_models_dir):
        model, _fps = node("CogVideoXModelLoader")("CogVideoX-2b", "fp32")
        t5, = node("CogVideoXT5Loader")("CogVideoX-2b", "fp32")
        cond, = node("CogVideoXTextEncode")(t5, "a fox in the snow", "blurry")
        latent = node("CogVideoXEmptyLatent")(WIDTH, HEIGHT, FRAMES, 1)[0]

        def sample(handle) -> torch.Tensor:
            return node("CogVideoXSampler")(handle, cond, latent, 3, 2, 6.0, "ddim", 1.0)[0]["samples"]

        eager = sample(model)
        # under ComfyUI: object patches on a clone, applied when the model loads for sampling
        patcher = compiled_patcher(ObjectPatcher(model.model, torch.device("cpu")), "default")
        blocks = len(model.model.transformer_blocks)
        assert sorted(patcher.object_patches) == sorted(
            f"transformer_blocks.{i}.{name}" for i in range(blocks) for name in ("forward", "reusing"))
        assert not pack_comp.is_compiled(model.model)  # the input model is unchanged
        for key, call in patcher.object_patches.items():
            _set_attr(model.model, key, call)
        patched = sample(model)
        assert pack_comp.compiled_signatures() == 1 and pack_comp.unexpected_recompiles() == 0
        for block in model.model.transformer_blocks:
            del block.forward, block.reusing  # ComfyUI's unpatch puts the originals back
        # without ComfyUI's object patches the node compiles the model in place
        compiled, = node("CogVideoXTorchCompile")(model, "default")
        in_place = sample(compiled)
    torch.testing.assert_close(patched, eager, atol=TOL, rtol=0)
    torch.testing.assert_close(in_place, eager, atol=TOL, rtol=0)
    assert pack_comp.is_compiled(compiled.model) and pack_comp.unexpected_recompiles() == 0
    pack_comp.reset()


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
def test_node_in_comfyui_model_management(generation: str, node_models_dir: Path) -> None:
    """The node's object patches in that host's own ModelPatcher: on with the compiled clone, off
    with the input model, kept by a LoRA clone, and through a partial low-VRAM load
    (``tests/host_compile.py``)."""
    python, comfy_dir = ensure_host(generation)
    proc = subprocess.run([str(python), str(ROOT / "tests" / "host_compile.py"), str(comfy_dir),
                           str(node_models_dir)], check=False, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "HOST COMPILE OK" in proc.stdout, out[-5000:]
    assert "OK partial load" in proc.stdout and "OK LoRA on the compiled model" in proc.stdout, out[-3000:]
