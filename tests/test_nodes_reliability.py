"""Bad input and faults through the node functions, without ComfyUI: every refusal names the
input, comes before anything is loaded onto the device, and an out-of-memory error says what
to change and leaves the models usable for the next run.

Models are the tiny random ones of ``tests/tiny_models.py`` loaded through the pack's loaders
(as ``tests/test_nodes.py`` does); ``tests/node_host.py`` stands in for ComfyUI's patcher.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import pytest
import torch

from make_workflows import load_pack
from tiny_models import FRAMES, HEIGHT, WIDTH

PACK = load_pack()
import node_host  # noqa: E402
from node_host import node  # noqa: E402
from cogvideox_pack.cogvideox_core.errors import CogVideoXError  # noqa: E402
from cogvideox_pack.nodes import host  # noqa: E402
from cogvideox_pack.nodes.common import OutOfMemory, is_out_of_memory, out_of_memory  # noqa: E402

NODES = PACK.NODE_CLASS_MAPPINGS
CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB of "
            "which 1.06 GiB is free. Of the allocated memory 20.1 GiB is allocated by PyTorch")
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
           "tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")


@pytest.fixture(scope="module", autouse=True)
def stand_in_host(node_models_dir: Path) -> Iterator[None]:
    with node_host.stand_in(host, node_models_dir):
        yield


@pytest.fixture(autouse=True)
def output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(host.folders, "OUTPUT_DIR", str(tmp_path / "output"))
    return tmp_path


def _load(root: str) -> dict:
    model, _fps = node("CogVideoXModelLoader")(root, "fp32")
    vae, = node("CogVideoXVAELoader")(root, "fp32")
    t5, = node("CogVideoXT5Loader")(root, "fp32")
    cond, = node("CogVideoXTextEncode")(t5, "a fox in the snow", "blurry")
    return {"model": model, "vae": vae, "t5": t5, "cond": cond}


@pytest.fixture(scope="module")
def t2v(stand_in_host: None) -> dict:
    return _load("CogVideoX-2b")


@pytest.fixture(scope="module")
def inp(stand_in_host: None) -> dict:
    return _load("CogVideoX-Fun-V1.1-5b-InP")


def _image(frames: int = 1, seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    return torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))


def _latent(frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT) -> dict:
    return node("CogVideoXEmptyLatent")(width, height, frames, 1)[0]


def _sample(m: dict, latent: dict, cond=None, cfg: float = 6.0, denoise: float = 1.0,
            context=None) -> torch.Tensor:
    return node("CogVideoXSampler")(m["model"], cond or m["cond"], latent, 1, 2, cfg, "auto", denoise,
                                    context)[0]["samples"]


def _extend(m: dict, video: torch.Tensor, frames: int = FRAMES, overlap: int = 4, cfg: float = 6.0,
            **kwargs) -> torch.Tensor:
    return node("CogVideoXExtendVideo")(m["model"], m["cond"], m["vae"], video, frames, overlap, 3, 2, cfg,
                                        "auto", **kwargs)[0]


class LoadRecorder:
    """Every load onto the device, through the runtime a node makes or ``host.load``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads: list[str] = []
        recorder = self

        class Runtime(node_host.RecordingRuntime):
            def load(self, model: torch.nn.Module, extra_memory: int = 0) -> None:
                recorder.loads.append(type(model).__name__)
                super().load(model, extra_memory)

        monkeypatch.setattr(host, "runtime", lambda *patchers: Runtime(patchers))


# ---- non-finite numbers ------------------------------------------------------------------------

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_sampler_refuses_non_finite_cfg_and_denoise(t2v: dict, value: float,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rec = LoadRecorder(monkeypatch)
    with pytest.raises(ValueError, match=rf"^cfg={value!r} is not allowed: cfg takes a finite number "
                                         r"from 0 to 30$"):
        _sample(t2v, _latent(), cfg=value)
    with pytest.raises(ValueError, match=rf"^denoise={value!r} .*finite number from 0.01 to 1$"):
        _sample(t2v, _latent(), denoise=value)
    assert rec.loads == []


@pytest.mark.parametrize("name, call", [
    ("cfg", lambda m, v: _extend(m, _image(FRAMES), cfg=v)),
    ("colour_match", lambda m, v: _extend(m, _image(FRAMES), colour_match=v)),
    ("noise_aug", lambda m, v: node("CogVideoXFunInpaint")(m["cond"], m["vae"], WIDTH, HEIGHT, FRAMES,
                                                          start_images=_image(), noise_aug=v)),
    ("strength", lambda m, v: node("CogVideoXLoraLoader")(m["model"], "no_lora.safetensors", v)),
    ("frame_rate", lambda m, v: node("CogVideoXSaveVideo")(_image(FRAMES), "x", v)),
])
def test_float_inputs_refuse_nan_and_infinity_naming_the_input(inp: dict, name: str, call,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rec = LoadRecorder(monkeypatch)
    for value in NON_FINITE:
        with pytest.raises(ValueError, match=rf"^{name}={value!r} is not allowed: {name} takes a finite number "
                                             r"from -?[\d.]+ to [\d.]+$"):
            call(inp, value)
    assert rec.loads == []


def test_the_checker_reads_the_range_from_the_widget() -> None:
    from cogvideox_pack.nodes.common import check_finite

    sampler = NODES["CogVideoXSampler"]()
    check_finite(sampler, cfg=6, denoise=0.5)  # ints and floats in range pass
    for bad in ("6", None, True):
        with pytest.raises(ValueError, match=r"cfg=.* is not allowed: cfg takes a finite number from 0 to 30"):
            check_finite(sampler, cfg=bad)


# ---- validation before loading -------------------------------------------------------------------

def test_sampler_validates_before_anything_is_loaded(t2v: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = LoadRecorder(monkeypatch)
    i2v_cond, latent = node("CogVideoXImageToVideo")(t2v["cond"], t2v["vae"], _image(), WIDTH, HEIGHT, FRAMES)
    cases = [
        (lambda: _sample(t2v, latent, cond=i2v_cond), r"image given to 2b"),
        (lambda: _sample(t2v, _latent(), denoise=0.5), r"denoise=0.5"),
        (lambda: _sample(t2v, {"samples": torch.zeros(1, 16, 3, 5, 12)}), r"height=40"),
        (lambda: _sample(t2v, {"samples": torch.zeros(0, 16, 3, 8, 12)}),
         r"latent: samples \(0, 16, 3, 8, 12\) are empty"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert rec.loads == []
    _sample(t2v, _latent())  # the recorder sees loads when there are some
    assert rec.loads and "CogVideoXTransformer" in rec.loads[0]


def test_extend_validates_before_the_text_encoder_or_model_is_loaded(t2v: dict, inp: dict,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rec = LoadRecorder(monkeypatch)
    video = _image(FRAMES)
    cases = [  # each with prompts for the T5 to encode: the request is refused before it loads
        (lambda: _extend(t2v, video, t5=t2v["t5"], prompts="a fox"), r"2b \(t2v\) cannot continue a video"),
        (lambda: _extend(inp, video, frames=10, t5=inp["t5"], prompts="a fox"), r"frames=10 must be 4k\+1"),
        (lambda: _extend(inp, _image(2), t5=inp["t5"], prompts="a fox"),
         r"overlap_frames=4 exceeds the 2 frames of images"),
        (lambda: _extend(inp, video, overlap=9, t5=inp["t5"], prompts="a fox"), r"frames=9 must exceed overlap=9"),
        (lambda: _extend(inp, _image(FRAMES, height=40), t5=inp["t5"], prompts="a fox"), r"height=40"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert rec.loads == []


# ---- out of memory ---------------------------------------------------------------------------------

def _failing(monkeypatch: pytest.MonkeyPatch, module: torch.nn.Module, error: BaseException) -> dict:
    """``module.forward`` raises ``error`` while the returned switch's ``"on"`` is true."""
    switch = {"on": True, "calls": 0}
    real = module.forward

    def forward(*args, **kwargs):
        switch["calls"] += 1
        if switch["on"]:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "forward", forward)
    return switch


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_params(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_sampler_out_of_memory_says_what_to_change_and_the_model_stays_usable(
        t2v: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    model = t2v["model"]
    reference = _sample(t2v, _latent(5))
    before = _params(model.model)
    switch = _failing(monkeypatch, model.model, torch.OutOfMemoryError(CUDA_OOM))
    with pytest.raises(OutOfMemory) as info:
        _sample(t2v, _latent())
    switch["on"] = False
    message = str(info.value)
    assert message.startswith(f"Out of memory while sampling {FRAMES} frames at {WIDTH}x{HEIGHT} "
                              "(OutOfMemoryError: tried to allocate 2.00 GiB). To fit, change one of: ")
    for change in ("fewer frames or a smaller width/height", "CogVideoX Context Options node on context_options",
                   "weight_dtype fp8"):
        assert change in message
    assert "GPU 0 has a total capacity" not in message  # the allocator's statistics stay in the log
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert _same_params(model.model, before)
    again = _sample(t2v, _latent(5))  # the same model objects, a smaller video
    assert torch.equal(again, reference)


def test_sampler_with_context_windows_suggests_smaller_windows(t2v: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, = node("CogVideoXContextOptions")(5, 4, "static", "pyramid", 2)
    switch = _failing(monkeypatch, t2v["model"].model, RuntimeError(CPU_OOM))
    with pytest.raises(OutOfMemory, match=r"sampling 9 frames at 96x64 \(RuntimeError: tried to allocate "
                                          r"1024.00 GiB\).*shorter length_frames, or batch_windows 1"):
        _sample(t2v, _latent(), context=ctx)
    switch["on"] = False
    assert torch.isfinite(_sample(t2v, _latent(), context=ctx)).all()


def test_extend_out_of_memory(inp: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    video = _image(FRAMES)
    reference = _extend(inp, video)
    switch = _failing(monkeypatch, inp["model"].model, torch.OutOfMemoryError(CUDA_OOM))
    with pytest.raises(OutOfMemory, match=rf"^Out of memory while extending by chunks of {FRAMES} frames at "
                                          rf"{WIDTH}x{HEIGHT} .*fewer frames per chunk .*smaller images"):
        _extend(inp, video)
    switch["on"] = False
    assert torch.equal(_extend(inp, video), reference)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError(CUDA_OOM), RuntimeError(CPU_OOM), MemoryError()],
                         ids=["cuda", "cpu-allocator", "memory-error"])
def test_decode_out_of_memory_and_the_vae_stays_usable(t2v: dict, error: BaseException,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    vae = t2v["vae"]
    z = torch.randn(1, 16, 3, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(0))
    reference, = node("CogVideoXTiledDecode")(vae, {"samples": z}, True, 32, 0)
    before = _params(vae.model)
    # the first convolution of any decode; the exact decode retries a region in halves on
    # torch's OutOfMemoryError, so it keeps failing until it gives up
    switch = _failing(monkeypatch, vae.model.decoder.conv_in.conv, error)
    with pytest.raises(OutOfMemory, match=rf"^Out of memory while decoding 1 x {FRAMES} frames at "
                                          rf"{WIDTH}x{HEIGHT} \(.*\)\. To fit, change one of: a tile below 32; "
                                          r"dtype bf16"):
        node("CogVideoXTiledDecode")(vae, {"samples": z}, True, 32, 0)
    switch["on"] = False
    assert _same_params(vae.model, before)
    again, = node("CogVideoXTiledDecode")(vae, {"samples": z}, True, 32, 0)
    # not bit-equal: the patched conv_in (its forward replaced) now runs through torch's call,
    # not the direct oneDNN one (blocks._onednn_direct): another summation order
    assert float((again - reference).abs().max()) <= 1e-5


def test_encode_out_of_memory_names_the_tile(t2v: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing(monkeypatch, t2v["vae"].model.encoder.conv_in.conv, torch.OutOfMemoryError(CUDA_OOM))
    with pytest.raises(OutOfMemory, match=rf"encoding {FRAMES} frames at {WIDTH}x{HEIGHT} "
                                          r".*a tile of 256 or less"):
        node("CogVideoXTiledEncode")(t2v["vae"], _image(FRAMES), True, 0, 0)


def test_the_guard_translates_only_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list = []
    monkeypatch.setattr(host, "release_memory", lambda *patchers: released.append(patchers))

    class NotEnoughMemory(CogVideoXError, RuntimeError):  # what the core refuses with, unchanged
        pass

    for error in (ValueError("cfg=7: out of memory is not this"), NotEnoughMemory("out of memory: 3 GiB short"),
                  RuntimeError("shape mismatch"), KeyError("x")):
        with pytest.raises(type(error)) as info:
            with out_of_memory("sampling", ("fewer frames",), "p"):
                raise error
        assert info.value is error
    assert released == []
    with pytest.raises(OutOfMemory, match=r"^Out of memory while sampling \(RuntimeError: MPS backend out of "
                                          r"memory\)\. To fit, change one of: fewer frames; a smaller size\. "):
        with out_of_memory("sampling", ("fewer frames", "a smaller size"), "p"):
            raise RuntimeError("MPS backend out of memory")
    assert released == [("p",)]
    assert isinstance(OutOfMemory("x"), CogVideoXError)
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape mismatch"))


def test_out_of_memory_frees_the_failed_calls_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The traceback's finished frames are cleared: the activations of the failed call are freed
    when the error is raised, not when ComfyUI drops the error."""
    import weakref

    monkeypatch.setattr(host, "release_memory", lambda *patchers: None)
    refs = []

    def work() -> None:
        activations = torch.zeros(1000)
        refs.append(weakref.ref(activations))
        raise torch.OutOfMemoryError(CUDA_OOM)

    with pytest.raises(OutOfMemory) as info:
        with out_of_memory("sampling", ("fewer frames",)):
            work()
    assert refs[0]() is None and info.value.__cause__ is not None


def test_save_paths_never_land_on_an_old_file_or_leave_the_output_folder(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ComfyUI's folder_paths: the next counter is past the highest (a gap left by a
    deleted file does not make a new video replace _00003), and a prefix climbing out of the
    output folder is refused."""
    from cogvideox_pack.nodes.host import folders

    monkeypatch.setattr(folders, "_folder_paths", lambda: None)
    monkeypatch.setattr(folders, "OUTPUT_DIR", str(tmp_path))
    for name in ("clip_00001_.mp4", "clip_00003_.mp4", "clipper_00009_.mp4"):
        (tmp_path / name).write_bytes(b"old")
    path, filename, _sub = folders.save_path("clip", 48, 32, ".mp4")
    assert filename == "clip_00004_.mp4" and path == tmp_path / filename
    with pytest.raises(ValueError, match="leads out of the output folder"):
        folders.save_path("../escaped", 48, 32, ".mp4")
