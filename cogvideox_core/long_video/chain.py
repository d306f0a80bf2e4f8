"""Chained extension: a long video as a chain of generations, each conditioned on the tail of the
video so far (the CogVideoX-Fun reference's long-video loop, SPEC.md "Fun InP").

Each chunk of ``frames`` frames starts with its first ``overlap`` frames known (Fun InP; image-to-
video families use the last frame as start image, overlap 1), gets its colours matched to the
first chunk's (:mod:`cogvideox_core.long_video.colour`) and is crossfaded onto the video over the
overlap; chunk k uses seed ``seed + k``. The pieces work alone: :func:`tail_inputs`,
:func:`crossfade`, :func:`join`, :func:`chain` (the loop over any chunk function, where the
benchmark's synthetic generator plugs in), :func:`extend`, :func:`extend_chain`, and
:func:`generate_long` (the whole video in one call).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .colour import ColourStats, colour_stats, match_colour
from ..generation.conditioning import ConditioningInputs
from ..families import Family
from ..generation.pipeline import GenerateRequest, Models, generate, validate
from ..runtime import Runtime, TorchRuntime

logger = logging.getLogger(__name__)

# make_chunk(k, inputs) -> frames [G, H, W, 3] 0..1: chunk k of a chain, conditioned on inputs
ChunkFn = Callable[[int, ConditioningInputs], torch.Tensor]


@dataclass(frozen=True, eq=False)
class ChainOptions:
    """How a call chains chunks: ``chunks`` generations (the first one included for
    :func:`generate_long`, added to the video for :func:`extend_chain`), each overlapping the
    video by ``overlap`` frames; ``colour_match`` strength 0..1 (0: off, as the reference);
    ``end_image`` [1, H, W, 3] on the last chunk (Fun InP); ``prompts`` or ``prompt_embeds``
    ([1, L, D] each): one per chunk, None = the request's for every chunk."""

    chunks: int = 2
    overlap: int = 4
    colour_match: float = 1.0
    end_image: torch.Tensor | None = None
    prompts: Sequence[str] | None = None
    prompt_embeds: Sequence[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.chunks < 1:
            raise ValueError(f"chunks={self.chunks}: must be at least 1")
        if self.overlap < 1:
            raise ValueError(f"overlap={self.overlap}: a chained chunk needs at least 1 known frame")
        if not 0.0 <= self.colour_match <= 1.0:
            raise ValueError(f"colour_match={self.colour_match}: strength must be in 0..1")
        if self.prompts is not None and self.prompt_embeds is not None:
            raise ValueError("prompts and prompt_embeds both given: give one list (one entry per chunk)")
        for name in ("prompts", "prompt_embeds"):
            given = getattr(self, name)
            if given is not None and len(given) != self.chunks:
                raise ValueError(f"{name} has {len(given)} entries for chunks={self.chunks}: give one "
                                 "per chunk (or none to use the request's prompt for all)")

    def tail(self, chunks: int) -> "ChainOptions":
        """The options of the last ``chunks`` chunks (their prompts)."""
        cut = self.chunks - chunks
        return dataclasses.replace(
            self, chunks=chunks, prompts=None if self.prompts is None else self.prompts[cut:],
            prompt_embeds=None if self.prompt_embeds is None else self.prompt_embeds[cut:])


# ---- the pieces ------------------------------------------------------------------------------

def tail_inputs(family: Family, video: torch.Tensor, overlap: int,
                end_image: torch.Tensor | None = None) -> ConditioningInputs:
    """The conditioning that makes a chunk start with the last ``overlap`` frames of ``video``
    [F, H, W, 3] (and end on ``end_image``, Fun InP); ``ValueError`` for a family that cannot
    be conditioned so."""
    if overlap < 1:
        raise ValueError(f"overlap={overlap}: a chained chunk needs at least 1 known frame")
    if overlap > video.shape[0]:
        raise ValueError(f"overlap={overlap} exceeds the video's {video.shape[0]} frames")
    if family.conditioning == "inp":
        return ConditioningInputs(image=video[-overlap:], end_image=end_image)
    if family.conditioning == "i2v":
        if overlap != 1:
            raise ValueError(f"overlap={overlap}: {family.name} is conditioned on one start image; "
                             "use overlap 1 (several known frames: the Fun InP families)")
        if end_image is not None:
            raise ValueError(f"end_image given for {family.name}: an image-to-video model takes a "
                             "start image only (an end frame: the Fun InP families)")
        return ConditioningInputs(image=video[-1:])
    raise ValueError(f"{family.name} ({family.conditioning}) cannot continue a video: chained "
                     "extension needs a Fun InP or an image-to-video family")


def crossfade(video: torch.Tensor, chunk: torch.Tensor, overlap: int) -> torch.Tensor:
    """``video`` [F, H, W, C] then ``chunk`` [G, H, W, C] whose first ``overlap`` frames redo the
    video's last ones: those are blended, chunk weight i/O -> [F + G - overlap, H, W, C]."""
    if video.shape[1:] != chunk.shape[1:]:
        raise ValueError(f"chunk frames {tuple(chunk.shape[1:])} do not match the video's "
                         f"{tuple(video.shape[1:])}")
    if not 1 <= overlap <= min(video.shape[0], chunk.shape[0]):
        raise ValueError(f"overlap={overlap}: must be 1..{min(video.shape[0], chunk.shape[0])} "
                         "(the frames of both the video and the chunk)")
    w = (torch.arange(overlap, dtype=chunk.dtype, device=chunk.device) / overlap).view(-1, 1, 1, 1)
    blended = (1 - w) * video[-overlap:].to(chunk) + w * chunk[:overlap]
    return torch.cat([video[:-overlap].to(chunk), blended, chunk[overlap:]])


def join(video: torch.Tensor, chunk: torch.Tensor, overlap: int, reference: ColourStats | None,
         colour_match: float = 1.0) -> torch.Tensor:
    """``chunk`` colour-matched to ``reference`` (if given, at strength ``colour_match``), then
    crossfaded onto ``video`` over ``overlap`` frames.

    The match is ramped (:func:`~cogvideox_core.long_video.colour.match_colour` ``ramp=True``): none at the
    chunk's first frame, full at its last. A chunk starts where the video left off (its first
    frames redo the tail) and drifts from there; a correction applied evenly would shift its
    start away from the tail, a visible step at every join. Ramped, the correction follows the
    drift: the join stays continuous, the chunk's end lands on the reference's colours, so the
    next chunk starts from them and drift never accumulates (it stays within one chunk's own).
    """
    if reference is not None and colour_match > 0:
        chunk = match_colour(chunk, reference, colour_match, ramp=True)
    return crossfade(video, chunk, overlap)


def chain(family: Family, video: torch.Tensor, make_chunk: ChunkFn, options: ChainOptions,
          reference: ColourStats | None = None) -> torch.Tensor:
    """``video`` [F, H, W, 3] continued by ``options.chunks`` chunks of ``make_chunk(k, inputs)``,
    each conditioned on the tail of the video so far (the last one on ``options.end_image``
    too), colour-matched to ``reference`` (default: the stats of ``video``) and crossfaded on."""
    if reference is None and options.colour_match > 0:
        reference = colour_stats(video)
    for k in range(options.chunks):
        end = options.end_image if k == options.chunks - 1 else None
        chunk = make_chunk(k, tail_inputs(family, video, options.overlap, end))
        video = join(video, chunk, options.overlap, reference, options.colour_match)
        logger.info("chain: chunk %d/%d joined, %d frames so far", k + 1, options.chunks, video.shape[0])
    return video


# ---- progress over a whole chain -------------------------------------------------------------

class ChainRuntime:
    """A runtime whose progress counts over all chunks of a chain: the step of chunk k is
    reported as (steps of chunks 0..k-1) + step, out of that plus the steps left. Everything
    else is the wrapped runtime's."""

    def __init__(self, inner: Runtime, chunks: int) -> None:
        self._inner, self._chunks = inner, chunks
        self._index, self._done, self._total = 0, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        self._total = total
        grand = self._done + total * (self._chunks - self._index)
        self._inner.progress(self._done + step, grand, preview)

    def next_chunk(self) -> None:
        """Count the finished chunk's steps as done."""
        self._index, self._done = self._index + 1, self._done + self._total


# ---- the calls on models -----------------------------------------------------------------------

def _frames(models: Models, request: GenerateRequest) -> int:
    return request.frames or models.family.default_frames


def chunk_request(request: GenerateRequest, options: ChainOptions, k: int, inputs: ConditioningInputs,
                  frames: int, height: int, width: int) -> GenerateRequest:
    """The request of chunk ``k`` of a call: its inputs, size, seed ``seed + k`` and prompt."""
    changes: dict[str, Any] = dict(inputs=inputs, frames=frames, height=height, width=width,
                                   seed=(request.seed + k) % 2**64)
    if options.prompts is not None:
        changes["prompt"] = options.prompts[k]
    if options.prompt_embeds is not None:
        changes["prompt_embeds"] = options.prompt_embeds[k]
    return dataclasses.replace(request, **changes)


def check_tail(family: Family, options: ChainOptions, frames: int, height: int,
               width: int) -> ConditioningInputs:
    """The conditioning of a chained chunk of ``frames`` frames on a stand-in tail (zeros):
    ``ValueError`` for a family, overlap or end image the chain cannot take (no weights needed)."""
    if frames <= options.overlap:
        raise ValueError(f"frames={frames} must exceed overlap={options.overlap}, or the video "
                         "does not grow")
    tail = torch.zeros(options.overlap, height, width, 3)
    return tail_inputs(family, tail, options.overlap, options.end_image)


def check_chain(models: Models, request: GenerateRequest, options: ChainOptions, height: int,
                width: int) -> None:
    """``ValueError`` before any heavy work for a chain the models cannot make: the family, the
    overlap, the end image and the chunk requests are checked on a stand-in tail."""
    frames = _frames(models, request)
    inputs = check_tail(models.family, options, frames, height, width)
    for k in {0, options.chunks - 1}:
        validate(models, chunk_request(request, options, k, inputs, frames, height, width))


def _extend_chain(models: Models, request: GenerateRequest, video: torch.Tensor, options: ChainOptions,
                  runtime: ChainRuntime, reference: ColourStats | None) -> torch.Tensor:
    frames, (height, width) = _frames(models, request), video.shape[1:3]

    def make_chunk(k: int, inputs: ConditioningInputs) -> torch.Tensor:
        chunk = generate(models, chunk_request(request, options, k, inputs, frames, height, width), runtime)
        runtime.next_chunk()
        return chunk

    return chain(models.family, video, make_chunk, options, reference)


@torch.no_grad()
def extend_chain(models: Models, request: GenerateRequest, video: torch.Tensor, options: ChainOptions,
                 runtime: Runtime | None = None, reference: ColourStats | None = None) -> torch.Tensor:
    """``video`` [F, H, W, 3] (0..1) continued by ``options.chunks`` chunks of ``request.frames``
    frames at the video's size: [F + chunks (frames - overlap), H, W, 3] on the runtime's
    intermediate device. Colours are matched to ``reference``, by default the video's first
    ``frames`` frames (its first chunk, when it was made by a chain)."""
    runtime = runtime or TorchRuntime(show_progress=False)
    check_chain(models, request, options, video.shape[1], video.shape[2])
    if reference is None and options.colour_match > 0:
        reference = colour_stats(video[:_frames(models, request)])
    return _extend_chain(models, request, video, options, ChainRuntime(runtime, options.chunks), reference)


def extend(models: Models, request: GenerateRequest, video: torch.Tensor, overlap: int,
           runtime: Runtime | None = None, *, colour_match: float = 0.0,
           reference: ColourStats | None = None, end_image: torch.Tensor | None = None) -> torch.Tensor:
    """``video`` [F, H, W, 3] continued by one chunk: [F + frames - overlap, H, W, 3]. Without
    ``colour_match`` (the default) this is the reference's plain step."""
    options = ChainOptions(1, overlap, colour_match, end_image)
    out = extend_chain(models, request, video, options, runtime, reference)
    logger.info("extended %d frames to %d (%d overlapping)", video.shape[0], out.shape[0], overlap)
    return out


@torch.no_grad()
def generate_long(models: Models, request: GenerateRequest, options: ChainOptions,
                  runtime: Runtime | None = None) -> torch.Tensor:
    """A whole long video [F + (chunks - 1)(F - overlap), H, W, 3] in one call: the first chunk
    from ``request`` (text, start image, ...; its prompt ``options.prompts[0]`` if given), then
    ``chunks - 1`` chained chunks colour-matched to it, the last one ending on
    ``options.end_image``. Progress runs once over all chunks' steps."""
    runtime = runtime or TorchRuntime(show_progress=False)
    first = _first_request(models, request, options)
    plan = validate(models, first)
    rest = options.tail(options.chunks - 1) if options.chunks > 1 else None
    if rest is not None:
        check_chain(models, request, rest, plan.height, plan.width)
    progress = ChainRuntime(runtime, options.chunks)
    video = generate(models, first, progress)
    progress.next_chunk()
    if rest is None:
        return video
    reference = colour_stats(video) if options.colour_match > 0 else None
    later = dataclasses.replace(request, seed=(request.seed + 1) % 2**64)
    return _extend_chain(models, later, video, rest, progress, reference)


def _first_request(models: Models, request: GenerateRequest, options: ChainOptions) -> GenerateRequest:
    """Chunk 0 of :func:`generate_long`: the request's inputs (plus the end image when it is
    also the last chunk) and prompt 0."""
    inputs = request.inputs
    if inputs.end_image is not None and options.chunks > 1:
        raise ValueError(f"end_image in the request with chunks={options.chunks}: pass it as "
                         "ChainOptions.end_image, which puts it on the last chunk")
    if options.end_image is not None and options.chunks == 1:
        inputs = dataclasses.replace(inputs, end_image=options.end_image)
    return chunk_request(request, options, 0, inputs, _frames(models, request),
                         request.height, request.width)  # type: ignore[arg-type]


__all__ = ["ChainOptions", "ChunkFn", "ChainRuntime", "tail_inputs", "crossfade", "join", "chain",
           "chunk_request", "check_tail", "check_chain", "extend", "extend_chain", "generate_long"]
