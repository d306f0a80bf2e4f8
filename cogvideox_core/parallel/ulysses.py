"""Ulysses sequence parallelism (Jacobs et al. 2023, DeepSpeed-Ulysses) for the CogVideoX blocks.

Each of K ranks keeps the T5 text tokens whole and 1/K of the video tokens. Everything in a
block but attention works token by token, so it runs on the shard as it is. Attention needs
every token: an all-to-all turns the video shards of all heads into the whole video of H/K
heads, the rank attends over [text | video] for those heads, and a second all-to-all turns
the result back into its video shard of all heads; the text rows, computed once per head
group, are all-gathered over heads (every rank keeps the whole text stream).

Padding: N video tokens become K shards of ceil(N / K); the pad tokens (zeros, at the end of
the last shard) run through the per-token layers harmlessly and are cut out of q, k, v before
the attention call, so no real token ever attends to one (exact, no mask needed). Positions:
the additive tables are added before the blocks (on the whole sequence), and the RoPE rows
are sliced like the tokens. The shards are gathered before the final norm and unpatchify.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..models.transformer import Rope, run_all_blocks
from ..ops import AttentionFn
from .comm import Group, all_gather, all_to_all


def shard_size(tokens: int, k: int) -> int:
    """Video tokens per rank: ceil(N / K); the last shard holds K * shard - N pad tokens."""
    return math.ceil(tokens / k)


def pad_rows(x: torch.Tensor, rows: int, dim: int) -> torch.Tensor:
    """``x`` with ``rows`` zero rows appended along ``dim``."""
    if rows == 0:
        return x
    shape = list(x.shape)
    shape[dim] = rows
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def take_shard(x: torch.Tensor, tokens: int, k: int, rank: int, dim: int) -> torch.Tensor:
    """Shard ``rank`` of K of the first ``tokens`` rows of ``x`` along ``dim``, zero-padded."""
    n = shard_size(tokens, k)
    return pad_rows(x, n * k - tokens, dim).narrow(dim, rank * n, n)


@dataclass(frozen=True)
class UlyssesAttention:
    """``attention(q, k, v, heads)`` over a shard: q, k, v [B, L + n, H*Dh] with the L text
    rows first and this rank's n video rows after; calls ``inner`` on [B, L + N, H/K*Dh]."""

    inner: AttentionFn
    group: Group
    k: int
    rank: int
    text_len: int
    video_len: int  # N, the real (unpadded) video tokens

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        if heads % self.k:
            raise ValueError(f"attention heads={heads} do not divide by ulysses={self.k}")
        got = all_to_all(self._video_to_send(q, k, v), self.group)  # [K, 3, B, n, H/K*Dh]
        joint = self._joint(q, k, v, got)  # [3, B, L + N, H/K*Dh]
        del got
        out = self.inner(joint[0], joint[1], joint[2], heads // self.k)  # [B, L + N, H/K*Dh]
        del joint
        return self._back(out)  # [B, L + n, H*Dh]

    def _video_to_send(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[K, 3, B, n, H/K*Dh]: chunk j holds this rank's video rows of the heads of rank j."""
        b, s, inner = q.shape
        n, part = s - self.text_len, inner // self.k
        send = q.new_empty(self.k, 3, b, n, part)
        for i, t in enumerate((q, k, v)):
            send[:, i].copy_(t[:, self.text_len:].reshape(b, n, self.k, part).permute(2, 0, 1, 3))
        return send

    def _joint(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
        """[text | whole video] rows of this rank's heads, pad rows left out: no real token
        ever attends to them. ``got`` [K, 3, B, n, .]: chunk j is video shard j."""
        _, three, b, n, part = got.shape
        lt = self.text_len
        joint = q.new_empty(three, b, lt + self.video_len, part)
        mine = slice(self.rank * part, (self.rank + 1) * part)  # the replicated text: no communication
        for i, t in enumerate((q, k, v)):
            joint[i, :, :lt].copy_(t[:, :lt, mine])
        for j in range(self.k):
            rows = min(n, self.video_len - j * n)  # the last shard may end in pad rows
            if rows > 0:
                joint[:, :, lt + j * n:lt + j * n + rows].copy_(got[j, :, :, :rows])
        return joint

    def _back(self, out: torch.Tensor) -> torch.Tensor:
        """[B, L + N, H/K*Dh] of this rank's heads -> [B, L + n, H*Dh] of this rank's rows:
        the text rows all-gathered over head groups, the video rows by a second all-to-all."""
        b, _, part = out.shape
        lt, n = self.text_len, shard_size(self.video_len, self.k)
        send = out.new_zeros(self.k, b, n, part)  # chunk j: shard j's rows, for rank j
        for j in range(self.k):
            rows = min(n, self.video_len - j * n)
            if rows > 0:
                send[j, :, :rows].copy_(out[:, lt + j * n:lt + j * n + rows])
        text = all_gather(out[:, :lt], self.group)  # K x [B, L, H/K*Dh]
        got = all_to_all(send, self.group)  # chunk j: my rows, the heads of rank j
        result = out.new_empty(b, lt + n, self.k * part)
        result[:, :lt].copy_(torch.cat(text, dim=-1))
        result[:, lt:].view(b, n, self.k, part).copy_(got.permute(1, 2, 0, 3))
        return result


class UlyssesBlocks:
    """A :class:`~cogvideox_core.models.transformer.BlockRunner` that runs the block stack on
    this rank's video shard with :class:`UlyssesAttention` and returns the whole video
    [B, N, D] (gathered, padding cut) and the text [B, L, D]."""

    def __init__(self, group: Group, k: int, rank: int) -> None:
        self.group, self.k, self.rank = group, k, rank
        self._attention: dict[tuple, AttentionFn] = {}

    def attention(self, inner: AttentionFn, text_len: int, video_len: int) -> AttentionFn:
        """The Ulysses attention around ``inner`` for these lengths, one object per key (so a
        compiled block's guard on the attention's identity holds from step to step), run
        eagerly under torch.compile (its collectives would break the graph anyway; only when
        dynamo is loaded: importing it costs tens of MB in runs that never compile)."""
        key = (inner, text_len, video_len)
        if key not in self._attention:
            attn: AttentionFn = UlyssesAttention(inner, self.group, self.k, self.rank, text_len, video_len)
            if "torch._dynamo" in sys.modules:  # torch.compile was called: blocks may be compiled
                attn = torch.compiler.disable(attn)
            self._attention[key] = attn
        return self._attention[key]

    def run(self, blocks: Sequence[nn.Module], video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
            rope: Rope | None, attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = video.shape[1]  # N
        shard = take_shard(video, tokens, self.k, self.rank, dim=1)  # [B, n, D]
        if rope is not None:  # (cos, sin) [N, Dh] -> [n, Dh]
            rope = tuple(take_shard(r, tokens, self.k, self.rank, dim=0) for r in rope)  # type: ignore[assignment]
        attn = self.attention(attention, text.shape[1], tokens)
        shard, text = run_all_blocks(blocks, shard, text, temb, rope, attn)
        whole = torch.cat(all_gather(shard, self.group), dim=1)  # [B, K*n, D]
        return whole[:, :tokens], text


__all__ = ["UlyssesAttention", "UlyssesBlocks", "shard_size", "pad_rows", "take_shard"]
