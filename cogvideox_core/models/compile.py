"""torch.compile of the transformer, block by block, in place (static shapes).

:func:`compile_blocks` gives every ``_Block`` of ``model.transformer_blocks`` two instance
attributes, ``forward`` and ``reusing``, that call one shared compiled ``_Block.reusing`` (one
``torch.compile`` per mode; dynamo keeps its graphs on the function's code object). So:

- state-dict keys do not change (no wrapper module, no ``_orig_mod.`` prefix), and
  :func:`uncompile_blocks` deletes the two attributes again;
- the blocks share one graph per input signature: dynamo inlines module calls and lifts the
  parameters to graph inputs (``inline_inbuilt_nn_modules``), so the next block passes the
  guards of the first and nothing recompiles per block;
- every caller benefits: the plain loop, TeaCache and First Block Cache call ``block(...)``
  (attention computed), Pyramid Attention Broadcast and FasterCache ``block.reusing(...,
  attn_out)``: two graphs per input signature (``attn_out`` None or a tensor).

Shapes are static: a new video size, batch (batched or sequential CFG, context batches) or dtype
compiles anew, logged at INFO (that step is slower); :data:`MAX_SHAPES` signatures fit in
dynamo's cache, later ones run eagerly (warned). A compile for a signature already compiled (a
guard failure: a changing attention function, or a torch that specialises on each block) is
counted and warned about after :data:`RECOMPILE_WARN` of them.

The attention function is an argument: dynamo guards on its identity (one per model, no
recompile per block) and traces into it. Functions it cannot trace run eagerly through
``torch.compiler.disable`` (see :func:`traceable_attention`): one graph break per block.
"""
from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import CogVideoXError
from ..ops import AttentionFn
from .transformer import CogVideoXTransformer, _Block

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
MAX_SHAPES = 8  # input sizes (video x batch x dtype) kept compiled per process
GRAPHS_PER_SHAPE = 2  # attn_out None (attention computed) and attn_out given
RECOMPILE_LIMIT = MAX_SHAPES * GRAPHS_PER_SHAPE  # dynamo's limit for the shared code object
RECOMPILE_WARN = 3  # unexpected recompiles before the warning
# Attention kernels dynamo cannot trace (custom CUDA kernels, memory-dependent splitting):
# matched in the function's name or module; they run eagerly between two compiled graphs.
EAGER_ATTENTION = ("sage", "xformers", "split", "sub_quad")
_ATTRS = ("forward", "reusing")


class CompileError(CogVideoXError, RuntimeError):
    """torch.compile cannot run here (a missing compiler or triton) or failed to compile."""


# ---- checks -------------------------------------------------------------------------------

def check_compile_support(device: torch.device | str) -> None:
    """Raise :class:`CompileError` naming what is missing for inductor on ``device``: dynamo
    support for this Python, triton on CUDA/XPU, a C++ compiler on the CPU."""
    import torch._dynamo  # not at import: it takes seconds, and the node file imports this module

    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        raise CompileError(f"torch.compile (--compile) is not supported by torch {torch.__version__} "
                           "on this Python: upgrade torch, or run without --compile")
    if device.type in ("cuda", "xpu"):
        from torch.utils._triton import has_triton

        if not has_triton():
            raise CompileError(f"torch.compile (--compile) on {device.type} needs triton, which does not "
                               "import: pip install triton (Windows: triton-windows), or run without "
                               "--compile")
    elif device.type == "cpu":
        missing = _missing_cpp_compiler()
        if missing:
            raise CompileError(f"torch.compile (--compile) on the CPU needs a C++ compiler: {missing}; "
                               "install one (e.g. g++), or run without --compile")


def _missing_cpp_compiler() -> str | None:
    """Why inductor finds no working C++ compiler, or None (it runs ``<cxx> --version``)."""
    try:
        from torch._inductor import config
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except (ImportError, RuntimeError, OSError):  # inductor raises InvalidCxxCompiler(RuntimeError)
        tried = [c for c in _as_tuple(getattr(getattr(config, "cpp", None), "cxx", None)) if c]
        return f"none of {tried or ['g++']} runs (set CXX to a compiler's path)"
    return None


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def check_mode(mode: str | None) -> str | None:
    """The torch.compile mode for ``mode`` (None or "default": inductor's default)."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"mode={mode!r} is not allowed; choose one of: {', '.join(COMPILE_MODES)} "
                         "(CUDA-graph modes are left out: ComfyUI moves weights between calls)")
    return None if mode in (None, "default") else mode


# ---- compile ------------------------------------------------------------------------------

def compile_blocks(model: CogVideoXTransformer, mode: str | None = None,
                   device: torch.device | str | None = None) -> None:
    """Compile every block of ``model`` in place (see the module docstring); ``device`` (default:
    the model's) is where it will run, checked for a compiler first."""
    if device is None:
        device = next(model.parameters()).device
    check_compile_support(device)
    for block in model.transformer_blocks:
        for name, call in block_calls(block, mode).items():
            setattr(block, name, call)
    logger.info("torch.compile: %d transformer blocks set to compile on first use (mode %s); the "
                "first step of each size is slower", len(model.transformer_blocks), mode or "default")


def block_calls(block: nn.Module, mode: str | None = None) -> dict[str, Callable[..., Any]]:
    """``{"forward": ..., "reusing": ...}``: the compiled calls of one block, for
    :func:`compile_blocks` or a host's per-attribute patches (ComfyUI's object patches)."""
    if not isinstance(block, _Block):
        raise TypeError(f"block is a {type(block).__name__}; expected a CogVideoX transformer block")
    mode = check_mode(mode)
    compiled = _compiled_reusing(mode)
    return {"forward": _CompiledForward(block, compiled, mode), "reusing": _CompiledReusing(block, compiled, mode)}


def uncompile_blocks(model: CogVideoXTransformer) -> None:
    """Undo :func:`compile_blocks`: the blocks run eagerly again."""
    for block in model.transformer_blocks:
        for name in _ATTRS:
            block.__dict__.pop(name, None)


def is_compiled(model: CogVideoXTransformer) -> bool:
    """Whether :func:`compile_blocks` (or the same object patches) set the blocks' calls."""
    return any(isinstance(block.__dict__.get("forward"), _CompiledForward) for block in model.transformer_blocks)


@functools.cache
def _compiled_reusing(mode: str | None) -> Callable[..., Any]:
    """One compiled ``_Block.reusing`` per mode, shared by every block of every model."""
    _configure_dynamo()
    return torch.compile(_Block.reusing, mode=mode, dynamic=False)


def _configure_dynamo() -> None:
    """Blocks share graphs only with inlined module calls; the cache holds MAX_SHAPES signatures."""
    import torch._dynamo

    config = torch._dynamo.config
    with warnings.catch_warnings():  # deprecated (always True) from torch 2.8
        warnings.simplefilter("ignore", FutureWarning)
        inline = getattr(config, "inline_inbuilt_nn_modules", True)
    if not inline:
        logger.info("torch.compile: inlining module calls (inline_inbuilt_nn_modules) so that the "
                    "transformer blocks share one graph instead of one each")
        config.inline_inbuilt_nn_modules = True
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # < 2.6
    if getattr(config, name) < RECOMPILE_LIMIT:
        logger.info("torch.compile: dynamo %s %d -> %d (%d sizes x %d block graphs)",
                    name, getattr(config, name), RECOMPILE_LIMIT, MAX_SHAPES, GRAPHS_PER_SHAPE)
        setattr(config, name, RECOMPILE_LIMIT)


# ---- the calls ----------------------------------------------------------------------------

class _CompiledCall:
    """A block's call through the shared compiled function; holds the block (deep copies of
    the model copy it along), so it is a plain attribute, not a submodule."""

    def __init__(self, block: nn.Module, compiled: Callable[..., Any], mode: str | None) -> None:
        self.block, self.compiled, self.mode = block, compiled, mode

    def run(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, rope: Any,
            attention: AttentionFn, attn_out: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        args = (_dense(video), _dense(text), temb, rope, traceable_attention(attention),
                attn_out if attn_out is None else _dense(attn_out))
        try:
            return _TRACKER.call(self.compiled, self.block, args, self.mode)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            raise CompileError(f"torch.compile (--compile) failed to compile a transformer block on "
                               f"{video.device}: {_first_line(e)}. Run without --compile") from e


class _CompiledForward(_CompiledCall):
    def __call__(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, rope: Any,
                 attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
        video, text, _ = self.run(video, text, temb, rope, attention, None)
        return video, text


class _CompiledReusing(_CompiledCall):
    def __call__(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, rope: Any,
                 attention: AttentionFn, attn_out: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.run(video, text, temb, rope, attention, attn_out)  # type: ignore[return-value]


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major strides. The first block gets slices of the token tensor: with
    batch 1 they count as contiguous, but their batch stride differs, and dynamo's stride
    guards would give the first block a graph of its own (a view fixes that without a copy)."""
    if not t.is_contiguous():
        return t.contiguous()
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    strides.reverse()
    return t if list(t.stride()) == strides else t.as_strided(t.shape, strides, t.storage_offset())


def _first_line(e: BaseException) -> str:
    cause = e.__cause__ or e
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text[:200]}"


@functools.cache
def traceable_attention(attention: AttentionFn) -> AttentionFn:
    """``attention`` itself, or wrapped in ``torch.compiler.disable`` when its name or module
    names a kernel dynamo cannot trace (:data:`EAGER_ATTENTION`: SageAttention's and xformers'
    custom kernels, ComfyUI's memory-dependent split and sub-quadratic attention, which would
    recompile whenever free memory changes). Cached, so the wrapper keeps one identity and
    dynamo's guard on it holds."""
    where = f"{getattr(attention, '__module__', '')}.{getattr(attention, '__name__', '')}".lower()
    if not any(word in where for word in EAGER_ATTENTION):
        return attention
    logger.info("torch.compile: attention %s runs eagerly between compiled graphs (dynamo cannot "
                "trace its kernels or memory-dependent splitting): one graph break per block", where)
    return torch.compiler.disable(attention)


# ---- recompiles ---------------------------------------------------------------------------

class _Tracker:
    """Input signatures compiled so far (process-wide, as dynamo's cache is) and compiles that
    happened for a signature already compiled."""

    def __init__(self) -> None:
        self.seen: set[tuple] = set()
        self.unexpected = 0

    def call(self, fn: Callable[..., Any], block: nn.Module, args: tuple, mode: str | None) -> Any:
        key = (*_signature(args), mode)
        new = key not in self.seen
        if new:
            self._new(key)
        before = _compiled_frames()
        out = fn(block, *args)  # an interrupted compile leaves the key unseen: compiled next time
        if not new and _compiled_frames() > before:
            self._recompiled(key)
        self.seen.add(key)
        return out

    def _new(self, key: tuple) -> None:
        (shape, dtype, device), text = key[0], key[1][0]
        logger.info("torch.compile: compiling the transformer blocks for video %s, text %s (%s on %s), "
                    "%s, attention %s: signature %d, this step is slower", list(shape), list(text), dtype,
                    device, key[5], getattr(key[4], "__name__", key[4]), len(self.seen) + 1)
        if len(self.seen) >= RECOMPILE_LIMIT:
            logger.warning("torch.compile: %d input signatures compiled, more than the %d dynamo keeps "
                           "(%d sizes); new sizes may run eagerly", len(self.seen) + 1, RECOMPILE_LIMIT,
                           MAX_SHAPES)

    def _recompiled(self, key: tuple) -> None:
        self.unexpected += 1
        if self.unexpected == RECOMPILE_WARN:
            logger.warning("torch.compile: the transformer blocks recompiled %d times for a size already "
                           "compiled (video %s): a guard keeps failing (a changing attention function, "
                           "blocks specialised one by one, or ComfyUI's low-VRAM partial loading "
                           "casting some blocks' weights per call); compile brings less here",
                           self.unexpected, list(key[0][0]))

    def reset(self) -> None:
        self.seen.clear()
        self.unexpected = 0


def _meta(t: Any) -> Any:
    if isinstance(t, torch.Tensor):
        return tuple(t.shape), str(t.dtype).removeprefix("torch."), str(t.device)
    if isinstance(t, tuple):
        return tuple(_meta(x) for x in t)
    return t


def _signature(args: tuple) -> tuple:
    """(video, text, temb, rope, attention, attn_out kind, grad mode) of one call."""
    video, text, temb, rope, attention, attn_out = args
    kind = "attention computed" if attn_out is None else "attention given"
    return (_meta(video), _meta(text), _meta(temb), _meta(rope), attention, kind, torch.is_grad_enabled())


def _compiled_frames() -> int:
    """Frames dynamo compiled in this process (its own counter)."""
    import torch._dynamo.utils

    return int(torch._dynamo.utils.counters["frames"]["ok"])


_TRACKER = _Tracker()


def compiled_signatures() -> int:
    """Input signatures the blocks were compiled for in this process."""
    return len(_TRACKER.seen)


def unexpected_recompiles() -> int:
    """Compiles for a signature already compiled (should stay 0)."""
    return _TRACKER.unexpected


def reset() -> None:
    """Forget every compiled graph (``torch._dynamo.reset``) and the signatures seen."""
    import torch._dynamo

    torch._dynamo.reset()
    _TRACKER.reset()


__all__ = ["COMPILE_MODES", "CompileError", "check_compile_support", "check_mode", "compile_blocks",
           "block_calls", "uncompile_blocks", "is_compiled", "traceable_attention", "compiled_signatures",
           "unexpected_recompiles", "reset"]
