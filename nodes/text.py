"""Text encode nodes: prompt embeddings from the pack's T5 loader or from ComfyUI's own CLIP.

Every CogVideoX family reads T5-XXL states of exactly 226 tokens computed without a mask
(``cogvideox_core.loading.text``). ComfyUI's CLIP tokenizes with its own padding rules, so the CLIP
node rewrites the T5 token stream to the CogVideoX rule before encoding: the prompt's tokens,
cut to 225, then ``</s>``, then ``<pad>`` up to 226.

Both nodes also take several prompts at once (``prompts_per_line``: one per non-empty line, with
an optional ``prefix``): each distinct prompt is encoded once, in its own call as the pipelines
do, and the conditioning carries them as positive [P, 226, D]; the sampler makes one video per
prompt and batch entry. The new inputs are optional and last, so a saved workflow (whose
widget values stop before them) keeps its meaning: the whole text is one prompt.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from ..cogvideox_core.generation.batch import join_prefix
from ..cogvideox_core.loading.text import MAX_LENGTH, encode_prompts
from . import host
from .common import CONDITIONING, T5, PromptConditioning, T5Handle, tip

logger = logging.getLogger(__name__)

T5_PAD, T5_EOS = 0, 1  # T5's vocabulary: <pad> is 0, </s> is 1
PROMPT_TIP = ("What the video shows (T5 reads 226 tokens; a longer prompt is cut, with a warning in the "
              "log). With prompts_per_line on: one prompt per line.")
NEGATIVE_TIP = "What to steer away from (used when cfg > 1); the pipelines' default is empty."
PER_LINE_TIP = ("Off: the whole text is one prompt. On: each non-empty line is its own prompt: one video "
                "per line (times the latent's batch size), in line order, each saved as its own file.")
PREFIX_TIP = ("Text put before every prompt, joined with one space (a shared subject or style, e.g. "
              "'A fitness coach in a bright gym,'); empty: nothing added.")


def _prompt_inputs() -> dict[str, tuple]:
    return {"positive": tip("STRING", PROMPT_TIP, multiline=True, default=""),
            "negative": tip("STRING", NEGATIVE_TIP, multiline=True, default="")}


def _batch_inputs() -> dict[str, tuple]:
    """Optional and after the others: old workflows' widget values never reach them."""
    return {"prompts_per_line": tip("BOOLEAN", PER_LINE_TIP, default=False),
            "prefix": tip("STRING", PREFIX_TIP, default="")}


def prompt_texts(positive: str, prompts_per_line: bool = False, prefix: str = "") -> list[str]:
    """The prompts of ``positive``: the whole text (unchanged without a prefix), or each
    non-empty line; ``prefix`` joined before each. A ValueError when the lines are all empty."""
    if not prompts_per_line:
        return [join_prefix(prefix, positive) if prefix.strip() else positive]
    lines = [line.strip() for line in positive.splitlines() if line.strip()]
    if not lines:
        raise ValueError("positive: prompts_per_line is on but every line is empty: write one prompt "
                         "per line (or turn prompts_per_line off)")
    return [join_prefix(prefix, line) for line in lines]


def encode_each(prompts: list[str], encode: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """T5 states [P, 226, D] of ``prompts`` in order, ``encode`` (one prompt -> [1, 226, D])
    called once per distinct prompt."""
    states: dict[str, torch.Tensor] = {}
    for text in prompts:
        if text not in states:
            states[text] = encode(text)
    if len(prompts) == 1:
        return states[prompts[0]]
    logger.info("encoded %d prompts (%d distinct): one video per prompt and batch entry",
                len(prompts), len(states))
    return torch.cat([states[text] for text in prompts])


class CogVideoXTextEncode:
    DESCRIPTION = ("Encodes the positive and negative prompts with the pack's T5 loader (226 tokens, no mask); "
                   "with prompts_per_line, one prompt per line (one video each).")
    CATEGORY = "CogVideoX/conditioning"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"t5": tip(T5, "From CogVideoX T5 Text Encoder Loader."), **_prompt_inputs()},
                "optional": _batch_inputs()}

    def encode(self, t5: T5Handle, positive: str, negative: str = "", prompts_per_line: bool = False,
               prefix: str = "") -> tuple[PromptConditioning]:
        prompts = prompt_texts(positive, prompts_per_line, prefix)  # before loading
        runtime = host.runtime(t5.patcher)
        model = host.load(runtime, t5.patcher)

        def states(text: str) -> torch.Tensor:  # [1, 226, D]; one call per prompt, as the pipelines
            return host.to_intermediate(encode_prompts(model, t5.tokenizer, [text], device=runtime.device))

        return (PromptConditioning(encode_each(prompts, states), states(negative)),)


def encode_lines(t5: T5Handle | None, text: str, expected: int,
                 input_name: str = "prompts") -> list[torch.Tensor] | None:
    """One T5 embedding [1, 226, D] per non-empty line of ``text`` (there must be ``expected``
    of them: one per chunk), or None when it has none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    if len(lines) != expected:
        raise ValueError(f"{input_name}: {len(lines)} prompt line(s) for chunks={expected}: give one "
                         "prompt per chunk, one per line (or none)")
    if t5 is None:
        raise ValueError(f"{input_name}: {len(lines)} prompt line(s) given without t5: connect a "
                         "CogVideoX T5 Text Encoder Loader to encode them")
    runtime = host.runtime(t5.patcher)
    model = host.load(runtime, t5.patcher)
    return [host.to_intermediate(encode_prompts(model, t5.tokenizer, [line], device=runtime.device))
            for line in lines]


def cogvideox_tokens(tokens: dict, input_name: str = "clip") -> dict:
    """ComfyUI ``clip.tokenize`` output with its T5 stream rewritten to the CogVideoX rule.

    The stream is the only one, or the one named ``t5xxl``; its chunks are joined, padding and
    ``</s>`` removed, the tokens cut to 225, then ``</s>`` and pads fill 226. Entries keep the
    shape ComfyUI gives them ((token, weight) or (token, weight, word id)).
    """
    key = next(iter(tokens)) if len(tokens) == 1 else ("t5xxl" if "t5xxl" in tokens else None)
    if key is None:
        raise ValueError(f"{input_name}: a CLIP with token streams {sorted(tokens)} is not a T5-XXL "
                         "text encoder; load t5xxl with CLIPLoader (or use the CogVideoX T5 loader)")
    entries = [e for chunk in tokens[key] for e in chunk]
    template = entries[0] if entries else (T5_PAD, 1.0)
    while entries and _token(entries[-1]) in (T5_PAD, T5_EOS):
        entries.pop()
    entries = entries[:MAX_LENGTH - 1]
    entries.append(_like(template, T5_EOS))
    entries += [_like(template, T5_PAD)] * (MAX_LENGTH - len(entries))
    return {**tokens, key: [entries]}


def _token(entry: Any) -> int:
    t = entry[0]
    return int(t) if isinstance(t, (int, torch.Tensor)) else -1  # embeddings are not ids


def _like(template: Any, token: int) -> tuple:
    return (token, 1.0, *([0] * (len(template) - 2)))


class CogVideoXCLIPTextEncode:
    DESCRIPTION = ("Encodes the prompts with ComfyUI's own CLIP (a T5-XXL loaded by CLIPLoader, any "
                   "type), applying CogVideoX's 226-token rule; with prompts_per_line, one prompt per "
                   "line (one video each).")
    CATEGORY = "CogVideoX/conditioning"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"clip": tip("CLIP", "A T5-XXL text encoder from ComfyUI's CLIPLoader."),
                             **_prompt_inputs()},
                "optional": _batch_inputs()}

    def encode(self, clip: Any, positive: str, negative: str = "", prompts_per_line: bool = False,
               prefix: str = "") -> tuple[PromptConditioning]:
        prompts = prompt_texts(positive, prompts_per_line, prefix)
        pos = encode_each(prompts, lambda text: self._states(clip, text))
        return (PromptConditioning(pos, self._states(clip, negative)),)

    @staticmethod
    def _states(clip: Any, text: str) -> torch.Tensor:
        out = clip.encode_from_tokens(cogvideox_tokens(clip.tokenize(text)), return_pooled=False)
        states = out[0] if isinstance(out, (tuple, list)) else out  # [1, 226, D]
        if states.ndim != 3 or states.shape[1] != MAX_LENGTH:
            raise ValueError(f"clip: encoded to shape {tuple(states.shape)}, expected [1, {MAX_LENGTH}, D]: "
                             "load the T5-XXL file alone (not together with CLIP-L/G)")
        return host.to_intermediate(states)


NODES: dict[str, Any] = {
    "CogVideoXTextEncode": (CogVideoXTextEncode, "CogVideoX Text Encode (T5)"),
    "CogVideoXCLIPTextEncode": (CogVideoXCLIPTextEncode, "CogVideoX Text Encode (CLIP)"),
}
