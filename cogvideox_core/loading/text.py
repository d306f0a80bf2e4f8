"""T5 prompt encoding, exactly as the diffusers CogVideoX pipelines' ``_get_t5_prompt_embeds``.

Every family reads T5-v1.1-XXL hidden states [B, 226, 4096]: tokenized to exactly 226 tokens
(``padding="max_length"``, truncation, ``</s>``) and encoded WITHOUT an attention mask, as in
training (README "How it works"); a longer prompt warns how many tokens were dropped, and one
T5 cannot read (Chinese, emoji: ``<unk>``) warns too (:class:`PromptReport`). Weights: a
diffusers ``text_encoder/`` folder or a single ComfyUI-style T5 file, whose config is read off
the shapes (so tiny test files work); fp8 files are upcast, ``scaled_fp8`` dequantised, and
``weight_dtype=fp8`` keeps ``wo`` in ``dtype`` (transformers casts activations to its dtype).
The tokenizer comes from the model or the copy in ``cogvideox_core/data/t5_tokenizer``.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import WeightsError
from ..ops import cast_ops, default_ops
from .files import TOKENIZER_FILES, index_shapes, is_model_root
from .weights import component_plan, find_component, load_module, plan_shapes, storage_dtypes

logger = logging.getLogger(__name__)

MAX_LENGTH = 226  # max_text_seq_length of every CogVideoX transformer
UNKNOWN_SHARE = 0.25  # warn from this share of a prompt unknown to T5 (PromptReport.mostly_unknown)
SHIPPED_TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "t5_tokenizer"
T5_FP8_KEYS = re.compile(
    r"^encoder\.block\.\d+\.layer\.\d+\.(SelfAttention\.[qkvo]|DenseReluDense\.wi(_[01])?)\.weight$")


class T5Encoder(nn.Module):
    """The pack's module around transformers' ``T5EncoderModel`` (child ``t5``).

    Hosts manage it like the pack's other models: ComfyUI's ``ModelPatcher`` writes ``device``
    and its bookkeeping attributes onto the module it wraps, which transformers' models refuse
    (``device`` is a read-only property there); this module takes them.
    """

    def __init__(self, t5: nn.Module) -> None:
        super().__init__()
        self.t5 = t5
        self.train(t5.training)  # inference modules stay in eval mode

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> last hidden states [B, L, d_model] (no attention mask)."""
        return self.t5(input_ids=input_ids)[0]


@dataclass
class TextEncoder:
    """A T5 encoder with its tokenizer; :meth:`encode` is the pipelines' prompt encoding."""

    model: nn.Module  # T5Encoder (a bare transformers T5EncoderModel is wrapped in one)
    tokenizer: object  # transformers PreTrainedTokenizerBase
    max_length: int = MAX_LENGTH

    def __post_init__(self) -> None:
        if not isinstance(self.model, T5Encoder):
            self.model = T5Encoder(self.model)

    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Prompts -> last hidden states [B, max_length, d_model] in the model's dtype/device
        (logs what :meth:`report` finds)."""
        return encode_prompts(self.model, self.tokenizer, prompts, self.max_length)

    def report(self, prompts: str | Sequence[str]) -> list[PromptReport]:
        """What the encoder will make of each prompt (cut, unknown), without encoding."""
        return prompt_reports(self.tokenizer, prompts, self.max_length)


def load_tokenizer(path: str | Path | None = None) -> object:
    """A T5 tokenizer from a folder holding ``tokenizer.json`` or ``spiece.model`` (offline), or
    the shipped copy when ``path`` is None."""
    from transformers import AutoTokenizer

    folder = Path(path).expanduser() if path is not None else SHIPPED_TOKENIZER
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise WeightsError(f"{folder}: no T5 tokenizer here (expected tokenizer.json or spiece.model)")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


@dataclass(frozen=True)
class PromptReport:
    """What the T5 encoder makes of one prompt, for the console and for a host to show.

    ``tokens``: its length with ``</s>`` before truncation. ``unknown`` of ``total``: how much of
    it T5's vocabulary lacks, counted per character, each unknown character as one token: the
    tokenizer fuses a run of unknown characters into one ``<unk>``, so a whole Chinese sentence is
    1 ``<unk>`` of 2 tokens and a token share would understate it (``total`` = known tokens +
    unknown characters; ``</s>``, padding and bare word-start pieces do not count)."""

    tokens: int
    max_length: int
    unknown: int
    total: int

    @property
    def dropped(self) -> int:
        """Tokens cut from the end (``</s>`` is kept)."""
        return max(0, self.tokens - self.max_length)

    @property
    def mostly_unknown(self) -> bool:
        """True from :data:`UNKNOWN_SHARE` of the prompt unknown: stray symbols T5 lacks
        (``{ } ~ <``, an accented letter) in an English prompt stay below it; a Chinese clause or
        an emoji-only prompt does not."""
        return self.unknown > 0 and self.unknown >= UNKNOWN_SHARE * self.total

    def warnings(self, name: str = "prompt") -> list[str]:
        """The console lines for this prompt (none when it is fine); ``name`` says which prompt."""
        out = []
        if self.dropped:
            out.append(f"{name} truncated to {self.max_length} tokens: {self.dropped} tokens dropped "
                       f"(the T5 encoder reads at most {self.max_length})")
        if self.mostly_unknown:
            out.append(f"{name}: {self.unknown} of {self.total} tokens are unknown to the T5 encoder "
                       "(it reads English; translate the prompt)")
        return out


def prompt_reports(tokenizer: object, prompts: str | Sequence[str],
                   max_length: int = MAX_LENGTH) -> list[PromptReport]:
    """A :class:`PromptReport` per prompt, without encoding (cheap: one tokenizer call)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    fast = bool(getattr(tokenizer, "is_fast", False))  # offsets need a tokenizers-backed one
    # verbose=False: transformers' own "longer than the maximum" warning says nothing we don't
    enc = tokenizer(prompts, add_special_tokens=True, verbose=False,  # type: ignore[operator]
                    return_offsets_mapping=fast)
    offsets = enc["offset_mapping"] if fast else [None] * len(prompts)
    return [PromptReport(len(ids), max_length, *_unknown_share(tokenizer, text, ids, spans))
            for text, ids, spans in zip(prompts, enc["input_ids"], offsets)]


def _unknown_share(tokenizer: Any, text: str, ids: list[int],
                   spans: list[tuple[int, int]] | None) -> tuple[int, int]:
    """(unknown characters, known tokens + unknown characters) of one tokenized prompt."""
    unk, special = tokenizer.unk_token_id, set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    unknown = known = 0
    for i, (tok, piece) in enumerate(zip(ids, pieces)):
        if tok == unk:  # a fused run of unknown characters: count its non-space characters
            unknown += 1 if spans is None else max(1, sum(not c.isspace() for c in text[slice(*spans[i])]))
        elif tok not in special and piece.strip("\u2581"):  # "\u2581": SentencePiece's word start
            known += 1
    return unknown, unknown + known


def tokenize(tokenizer: object, prompts: str | Sequence[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Token ids [B, max_length] as the pipelines make them; logs one warning per cut or mostly
    unknown prompt (:meth:`PromptReport.warnings`)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = tokenizer(prompts, padding="max_length", max_length=max_length,  # type: ignore[operator]
                    truncation=True, add_special_tokens=True, return_tensors="pt").input_ids
    for i, report in enumerate(prompt_reports(tokenizer, prompts, max_length)):
        for line in report.warnings("prompt" if len(prompts) == 1 else f"prompt {i}"):
            logger.warning("%s", line)
    return ids


def encode_prompts(model: nn.Module, tokenizer: object, prompts: str | Sequence[str],
                   max_length: int = MAX_LENGTH, device: torch.device | None = None) -> torch.Tensor:
    """T5 last hidden states [B, max_length, d_model] (no attention mask, as the pipelines).

    ``model``: a :class:`T5Encoder`; ``device``: where the tokens go (the host's compute device:
    under partial loading some weights stay elsewhere); default: the first weight's device."""
    ids = tokenize(tokenizer, prompts, max_length)
    device = device if device is not None else next(model.parameters()).device
    with torch.no_grad():
        return model(ids.to(device))


def t5_config_from_shapes(shapes: Mapping[str, Sequence[int]], where: str = "T5 weights") -> object:
    """A transformers ``T5Config`` read off a T5 encoder's shapes (T5-v1.1 conventions)."""
    from transformers import T5Config

    blocks = {int(k.split(".")[2]) for k in shapes if k.startswith("encoder.block.")}
    attn = "encoder.block.0.layer.0.SelfAttention."
    ff = "encoder.block.0.layer.1.DenseReluDense."
    gated = ff + "wi_0.weight" in shapes
    try:
        vocab, d_model = shapes["shared.weight"]
        buckets, heads = shapes[attn + "relative_attention_bias.weight"]
        inner = shapes[attn + "q.weight"][0]
        d_ff = shapes[ff + ("wi_0.weight" if gated else "wi.weight")][0]
    except KeyError as e:
        raise WeightsError(f"{where}: not a T5 encoder: no {e.args[0]!r}") from None
    return T5Config(vocab_size=int(vocab), d_model=int(d_model), d_kv=int(inner) // int(heads),
                    d_ff=int(d_ff), num_layers=len(blocks), num_heads=int(heads),
                    relative_attention_num_buckets=int(buckets), relative_attention_max_distance=128,
                    feed_forward_proj="gated-gelu" if gated else "relu", layer_norm_epsilon=1e-6,
                    is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)


def load_t5_encoder(path: str | Path, dtype: torch.dtype = torch.bfloat16,
                    device: torch.device | str = "cpu", weight_dtype: torch.dtype | None = None,
                    ops: Any = None) -> T5Encoder:
    """A :class:`T5Encoder` from a ``text_encoder/`` folder, a model root or one file, built on
    meta and assign-loaded like the transformer (no second copy). Its layers take ``ops``'
    classes (default: the core's; weights cast at call time when stored in fp8), so a host can
    stream them (ComfyUI's partial loading)."""
    from transformers import T5Config, T5EncoderModel

    dtype_for = storage_dtypes(dtype, weight_dtype, T5_FP8_KEYS)
    comp = find_component(path, "text_encoder")
    plan = component_plan(comp)
    if comp.config is not None:
        config = T5Config.from_dict(dict(comp.config))
    else:
        config = t5_config_from_shapes(plan_shapes(plan, index_shapes(comp.index)), comp.location)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    adopt_layers(model, ops if ops is not None else (cast_ops if weight_dtype not in (None, dtype) else default_ops))
    load_module(model, plan, comp.index, dtype_for, device, comp.location)
    logger.info("loaded T5 encoder (%d layers, d_model %d) from %s", config.num_layers, config.d_model,
                comp.location)
    return T5Encoder(model)


def adopt_layers(model: nn.Module, ops: Any) -> nn.Module:
    """Give transformers' plain layers other classes (in place; subclasses only, so state and
    numerics are kept): Linear from ``ops``; Embedding and T5's norm the core's, which move
    their weight to the input's device at call time (a host's classes may need state their
    constructor sets). Every weight then computes wherever its input is, as a host's memory
    manager needs when it leaves some weights off the compute device."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    swaps = {nn.Linear: ops.Linear, nn.Embedding: cast_ops.Embedding, T5LayerNorm: _cast_t5_norm()}
    for module in model.modules():
        new = swaps.get(type(module))
        if new is not None and issubclass(new, type(module)):
            module.__class__ = new
    return model


@functools.cache
def _cast_t5_norm() -> type:
    """T5's RMS norm with its weight moved to the input's device at call time."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    class CastT5LayerNorm(T5LayerNorm):
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
            hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
            weight = self.weight.to(hidden_states.device)
            if weight.dtype in (torch.float16, torch.bfloat16):
                hidden_states = hidden_states.to(weight.dtype)
            return weight * hidden_states

    return CastT5LayerNorm


def tokenizer_folder(path: str | Path) -> Path | None:
    """The tokenizer that comes with the T5 weights at ``path``, if any."""
    path = Path(path).expanduser()
    candidates = []
    if path.is_dir() and is_model_root(path):
        candidates.append(path / "tokenizer")
    elif path.is_dir():
        candidates += [path, path.parent / "tokenizer"]
    for folder in candidates:
        if any((folder / f).is_file() for f in TOKENIZER_FILES):
            return folder
    return None


def load_text_encoder(path: str | Path, dtype: torch.dtype = torch.bfloat16,
                      device: torch.device | str = "cpu", tokenizer: str | Path | None = None,
                      weight_dtype: torch.dtype | None = None, ops: Any = None) -> TextEncoder:
    """T5 weights at ``path`` plus the tokenizer from ``tokenizer``, the weights' own folder
    tree, or the shipped copy."""
    model = load_t5_encoder(path, dtype, device, weight_dtype, ops)
    folder = Path(tokenizer) if tokenizer is not None else tokenizer_folder(path)
    if folder is None:
        logger.info("no tokenizer beside %s: using the shipped T5 tokenizer", path)
    return TextEncoder(model, load_tokenizer(folder))


__all__ = ["MAX_LENGTH", "SHIPPED_TOKENIZER", "UNKNOWN_SHARE", "PromptReport", "T5Encoder", "TextEncoder",
           "adopt_layers", "load_tokenizer", "prompt_reports", "tokenize",
           "encode_prompts", "t5_config_from_shapes", "load_t5_encoder", "tokenizer_folder",
           "load_text_encoder"]
