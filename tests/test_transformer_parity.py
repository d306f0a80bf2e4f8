"""Parity of :class:`cogvideox_core.models.transformer.CogVideoXTransformer` with diffusers.

For every family a tiny diffusers ``CogVideoXTransformer3DModel`` is built from the family's
config (2 layers, 2 heads x 16, small embeddings, sample grid 8x12 latents, or 12x12 for 1.5),
given seeded random weights (every parameter, and the learned table of 5B-I2V), loaded into our
model with ``strict=True`` and run on the same inputs in float32 on the CPU. The RoPE tables
diffusers needs are computed by the pipelines' own ``_prepare_rotary_positional_embeddings``,
and 1.5-I2V gets ``ofs = [2.0]`` as the pipeline passes it. The Fun-2B resized table has no
diffusers counterpart away from the sample size: there the reference is diffusers with its
positional table replaced by an independent computation of the Fun definition.

Run ``python tests/test_transformer_parity.py`` for the table of max abs diffs per family.
"""
from __future__ import annotations

import dataclasses
import logging
import types
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_sincos_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import CogVideoXImageToVideoPipeline
from torch import nn

import scaffold
from scaffold import random_transformer

from cogvideox_core.families import FAMILIES, TransformerConfig
from cogvideox_core.ops import default_ops, sdpa_attention
from cogvideox_core.models.positions import sincos_resized
from cogvideox_core.models.transformer import CogVideoXTransformer, fit_text

logger = logging.getLogger(__name__)

TOL = 1e-5
TEXT_DIM = scaffold.TEXT_DIM
BATCH = 2

# (frames_lat, height_lat, width_lat, text_len) per family; the first entry is the trained
# (sample) size. Sample grids: 1.0 = 3 latent frames x 8 x 12; 1.5 = 5 (-> 6) x 12 x 12.
SIZES_SINCOS = [(3, 8, 12, 226), (2, 6, 10, 226), (5, 10, 8, 226), (1, 8, 12, 226)]
SIZES_ROPE = [(3, 8, 12, 226), (2, 6, 10, 226), (4, 12, 8, 226), (3, 16, 16, 226), (1, 4, 4, 11)]
SIZES_LEARNED = [(3, 8, 12, 226), (2, 8, 12, 226), (5, 8, 12, 226)]
SIZES_15 = [(6, 12, 12, 226), (2, 8, 10, 226), (4, 12, 6, 226), (2, 4, 4, 9)]
SIZES_FUN2B = [(3, 8, 12, 226), (2, 8, 12, 226), (1, 8, 12, 226)]  # spatial = sample: diffusers
SIZES_FUN2B_RESIZED = [(3, 6, 10, 226), (2, 12, 16, 226), (3, 10, 8, 226)]

SIZES: dict[str, list[tuple[int, int, int, int]]] = {
    "2b": SIZES_SINCOS, "fun-2b-control": SIZES_SINCOS,
    "5b": SIZES_ROPE, "fun-5b-inp": SIZES_ROPE, "fun-5b-control": SIZES_ROPE,
    "5b-i2v": SIZES_LEARNED,
    "1.5-5b": SIZES_15, "1.5-5b-i2v": SIZES_15, "fun-1.5-5b-inp": SIZES_15,
    "fun-2b-inp": SIZES_FUN2B,
}

MAX_DIFFS: dict[str, dict[str, float]] = {}  # family -> {"trained": d, "other": d}


def tiny_config(name: str) -> TransformerConfig:
    return scaffold.tiny_config(name)


def build_pair(name: str, seed: int = 0) -> tuple[CogVideoXTransformer3DModel, CogVideoXTransformer]:
    """A seeded random diffusers model and ours with its state dict loaded strictly."""
    cfg = tiny_config(name)
    ref = random_transformer(cfg, seed)
    ours = CogVideoXTransformer(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


def pipeline_rope(ref: CogVideoXTransformer3DModel, frames: int, height: int, width: int):
    """The RoPE tables as the diffusers pipelines compute them (pixel sizes = latent * 8)."""
    if not ref.config.use_rotary_positional_embeddings:
        return None
    pipe_cls = CogVideoXImageToVideoPipeline if ref.config.in_channels == 32 else CogVideoXPipeline
    fake_pipe = types.SimpleNamespace(vae_scale_factor_spatial=8, transformer=ref)
    return pipe_cls._prepare_rotary_positional_embeddings(fake_pipe, height * 8, width * 8, frames,
                                                         torch.device("cpu"))


def inputs(cfg: TransformerConfig, frames: int, height: int, width: int, text_len: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, frames, cfg.in_channels, height, width, generator=g)
    context = torch.randn(BATCH, text_len, TEXT_DIM, generator=g)
    timestep = torch.tensor([999.0, 437.5])
    return x, timestep, context


def run_both(ref, ours, size, ofs: float = 2.0) -> float:
    """Max abs diff between diffusers (as its pipelines call it) and ours at one size."""
    cfg = ours.config
    frames, height, width, text_len = size
    x, t, ctx = inputs(cfg, frames, height, width, text_len)
    ref_ofs = torch.full((1,), ofs) if cfg.ofs_embed_dim else None
    our_ofs = None if (cfg.ofs_embed_dim is None or ofs == 2.0) else torch.tensor(ofs)
    with torch.no_grad():
        expected = ref(x, ctx, t, ofs=ref_ofs, image_rotary_emb=pipeline_rope(ref, frames, height, width),
                       return_dict=False)[0]
        got = ours(x, t, ctx, ofs=our_ofs)
    assert got.shape == expected.shape == (BATCH, frames, cfg.out_channels, height, width)
    return (got - expected).abs().max().item()


def record(name: str, kind: str, diff: float) -> None:
    entry = MAX_DIFFS.setdefault(name, {})
    entry[kind] = max(entry.get(kind, 0.0), diff)
    logger.info("transformer parity %-16s %-8s max abs diff %.3g", name, kind, diff)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_parity_with_diffusers(name: str) -> None:
    ref, ours = build_pair(name)
    for i, size in enumerate(SIZES[name]):
        diff = run_both(ref, ours, size)
        record(name, "trained" if i == 0 else "other", diff)
        assert diff <= TOL, f"{name} at {size}: max abs diff {diff}"


def test_every_family_is_covered() -> None:
    assert set(SIZES) == set(FAMILIES)


def test_ofs_value_reaches_the_model() -> None:
    ref, ours = build_pair("1.5-5b-i2v")
    diff = run_both(ref, ours, SIZES_15[1], ofs=3.0)
    record("1.5-5b-i2v", "other", diff)
    assert diff <= TOL


def test_timestep_int_and_scalar_forms() -> None:
    _, ours = build_pair("5b")
    x, _, ctx = inputs(ours.config, 3, 8, 12, 226)
    with torch.no_grad():
        a = ours(x, torch.tensor([500, 500]), ctx)
        b = ours(x, torch.tensor(500.0), ctx)
    assert torch.equal(a, b)


# ---- CogVideoX-Fun 2B: the sample table resized, not recomputed ---------------------------

def fun_table(cfg: TransformerConfig, frames: int, height: int, width: int) -> torch.Tensor:
    """Independent Fun-2B definition: diffusers' sincos table of the sample grid, float32,
    trilinear (align_corners=False) to (sample frames, H/p, W/p), first ``frames`` kept."""
    p, t0 = cfg.patch_size, cfg.sample_latent_frames
    h0, w0 = cfg.sample_height // p, cfg.sample_width // p
    table = get_3d_sincos_pos_embed(cfg.inner_dim, (w0, h0), t0, cfg.spatial_interpolation_scale,
                                    cfg.temporal_interpolation_scale).float()  # [T0, H0*W0, D]
    table = table.reshape(1, t0, h0, w0, -1).permute(0, 4, 1, 2, 3)
    table = F.interpolate(table, size=(t0, height // p, width // p), mode="trilinear", align_corners=False)
    return table.permute(0, 2, 3, 4, 1)[0, :frames].reshape(-1, cfg.inner_dim)  # [N, D]


def test_fun2b_table_matches_its_definition() -> None:
    cfg = tiny_config("fun-2b-inp")
    p = cfg.patch_size
    sample = (cfg.sample_latent_frames, cfg.sample_height // p, cfg.sample_width // p)
    for frames, height, width, _ in SIZES_FUN2B + SIZES_FUN2B_RESIZED:
        got = sincos_resized(cfg.inner_dim, sample, (frames, height // p, width // p),
                             cfg.spatial_interpolation_scale, cfg.temporal_interpolation_scale)
        assert torch.equal(got, fun_table(cfg, frames, height, width))


def test_fun2b_resized_sizes_against_patched_diffusers() -> None:
    """Away from the sample size, diffusers with its table swapped for the Fun definition."""
    ref, ours = build_pair("fun-2b-inp")
    cfg = ours.config

    def fun_positional_embeddings(height, width, pixel_frames, device=None):
        frames = (pixel_frames - 1) // cfg.temporal_compression + 1
        video = fun_table(cfg, frames, height, width)
        return torch.cat([video.new_zeros(cfg.max_text_len, cfg.inner_dim), video])[None]

    ref.patch_embed._get_positional_embeddings = fun_positional_embeddings
    for size in SIZES_FUN2B_RESIZED:
        diff = run_both(ref, ours, size)
        record("fun-2b-inp", "other", diff)
        assert diff <= TOL, f"fun-2b-inp at {size}: max abs diff {diff}"


def test_fun2b_resized_differs_from_recomputed_sincos() -> None:
    """The resized table is not the 2B recomputed one (else the test above proves nothing)."""
    cfg = tiny_config("fun-2b-inp")
    frames, height, width, _ = SIZES_FUN2B_RESIZED[0]
    recomputed = get_3d_sincos_pos_embed(cfg.inner_dim, (width // 2, height // 2), frames,
                                         cfg.spatial_interpolation_scale).flatten(0, 1).float()
    assert (fun_table(cfg, frames, height, width) - recomputed).abs().max() > 1e-2


def test_a_model_of_fewer_text_rows_reads_the_first_states() -> None:
    """A 2B model made for 32 text states (max_text_seq_length 32, as the tiny world's) equals
    diffusers' given the first 32 of the 226 the pack encodes; RoPE models and 2B models of 226
    rows read the states as given."""
    cfg = dataclasses.replace(tiny_config("2b"), max_text_len=32)
    ref = random_transformer(cfg, 0)
    ours = CogVideoXTransformer(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, t, ctx = inputs(cfg, 3, 8, 12, 226)
    with torch.no_grad():
        expected = ref(x, ctx[:, :32], t, return_dict=False)[0]
        got = ours.eval()(x, t, fit_text(cfg, ctx))
    assert (got - expected).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="text_len=226 must be exactly 32"):
        ours.check_input(3, 8, 12, 226)
    for name in ("2b", "5b", "1.5-5b"):
        assert fit_text(tiny_config(name), ctx) is ctx
    assert fit_text(tiny_config("5b"), ctx[:, :11]).shape[1] == 11


# ---- refused sizes -------------------------------------------------------------------------

REFUSED = [
    ("2b", dict(frames_lat=3, height_lat=9, width_lat=12), "height_lat=9"),
    ("5b", dict(frames_lat=3, height_lat=8, width_lat=13), "width_lat=13"),
    ("2b", dict(frames_lat=3, height_lat=8, width_lat=12, text_len=100), "text_len=100"),
    ("fun-2b-inp", dict(frames_lat=3, height_lat=8, width_lat=12, text_len=77), "text_len=77"),
    ("5b-i2v", dict(frames_lat=3, height_lat=8, width_lat=12, text_len=77), "text_len=77"),
    ("fun-2b-inp", dict(frames_lat=4, height_lat=8, width_lat=12), "frames_lat=4"),
    ("5b-i2v", dict(frames_lat=3, height_lat=6, width_lat=12), "6x12"),
    ("1.5-5b", dict(frames_lat=5, height_lat=12, width_lat=12), "frames_lat=5"),
    ("1.5-5b-i2v", dict(frames_lat=21, height_lat=12, width_lat=12), "frames_lat=21"),
    ("1.5-5b", dict(frames_lat=4, height_lat=14, width_lat=12), "height_lat=14"),
    ("fun-1.5-5b-inp", dict(frames_lat=4, height_lat=12, width_lat=16), "width_lat=16"),
    ("5b", dict(frames_lat=0, height_lat=8, width_lat=12), "frames_lat=0"),
]


@pytest.mark.parametrize("name,kwargs,needle", REFUSED)
def test_refused_sizes(name: str, kwargs: dict, needle: str) -> None:
    model = CogVideoXTransformer(tiny_config(name), device="meta")
    with pytest.raises(ValueError, match=needle):
        model.check_input(**kwargs)


def test_forward_refuses_odd_15_frames_and_names_padding() -> None:
    _, ours = build_pair("1.5-5b")
    x, t, ctx = inputs(ours.config, 5, 8, 8, 226)
    with pytest.raises(ValueError, match=r"frames_lat=5.*prepend 1"):
        ours(x, t, ctx)
    assert ours.config.temporal_padding(21) == 1 and ours.config.temporal_padding(22) == 0
    assert tiny_config("5b").temporal_padding(13) == 0


def test_accepted_sizes_pass_check() -> None:
    for name, sizes in SIZES.items():
        model = CogVideoXTransformer(tiny_config(name), device="meta")
        for frames, height, width, text_len in sizes:
            model.check_input(frames, height, width, text_len)


def test_forward_refuses_bad_tensors() -> None:
    _, ours = build_pair("2b")
    x, t, ctx = inputs(ours.config, 3, 8, 12, 226)
    with pytest.raises(ValueError, match="frames before channels"):
        ours(x.transpose(1, 2), t, ctx)
    with pytest.raises(ValueError, match="ofs"):
        ours(x, t, ctx, ofs=torch.tensor(2.0))
    with pytest.raises(ValueError, match="timestep has 3 values"):
        ours(x, torch.tensor([1.0, 2.0, 3.0]), ctx)


# ---- injected ops and attention ------------------------------------------------------------

class CountingOps(default_ops):
    """default_ops whose layers count their calls."""

    calls: Counter = Counter()

    class Linear(default_ops.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            CountingOps.calls["Linear"] += 1
            return super().forward(x)

    class Conv2d(default_ops.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            CountingOps.calls["Conv2d"] += 1
            return super().forward(x)

    class LayerNorm(default_ops.LayerNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            CountingOps.calls["LayerNorm"] += 1
            return super().forward(x)


@pytest.mark.parametrize("name", ["2b", "1.5-5b-i2v"])
def test_injected_ops_and_attention_are_used(name: str) -> None:
    ref, default = build_pair(name)
    attention_calls = []

    def counting_attention(q, k, v, heads):
        attention_calls.append((tuple(q.shape), heads))
        return sdpa_attention(q, k, v, heads)

    ours = CogVideoXTransformer(default.config, ops=CountingOps, attention=counting_attention)
    ours.load_state_dict(ref.state_dict(), strict=True)
    for module in ours.modules():
        for base in ("Linear", "Conv2d", "LayerNorm"):
            if isinstance(module, getattr(nn, base)):
                assert isinstance(module, getattr(CountingOps, base)), f"{type(module)} not from ops"
    CountingOps.calls.clear()
    size = SIZES[name][1]
    x, t, ctx = inputs(ours.config, *size)
    with torch.no_grad():
        assert torch.equal(ours(x, t, ctx), default(x, t, ctx))
    layers = ours.config.num_layers
    assert len(attention_calls) == layers and all(h == ours.config.num_heads for _, h in attention_calls)
    # per block: q, k, v, out, two modulations, two ff; plus text, time (2), ofs (2), out (2)
    linears = 8 * layers + 1 + 2 + (2 if ours.config.ofs_embed_dim else 0) + 2
    linears += 1 if ours.config.patch_size_t else 0  # 1.5 patch embed is a Linear
    assert CountingOps.calls["Linear"] == linears
    assert CountingOps.calls["Conv2d"] == (0 if ours.config.patch_size_t else 1)
    assert CountingOps.calls["LayerNorm"] == 6 * layers + 2


def test_dtype_and_device_reach_every_parameter() -> None:
    model = CogVideoXTransformer(tiny_config("5b-i2v"), dtype=torch.float64, device="meta")
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(p.dtype == torch.float64 and p.device.type == "meta" for p in tensors)
    assert "patch_embed.pos_embedding" in model.state_dict()
    assert "patch_embed.pos_embedding" not in CogVideoXTransformer(tiny_config("2b"), device="meta").state_dict()


def parity_table() -> str:
    """Markdown table of the max abs diffs per family (runs every parity check)."""
    for name in sorted(SIZES):
        test_parity_with_diffusers(name)
    test_ofs_value_reaches_the_model()
    test_fun2b_resized_sizes_against_patched_diffusers()
    rows = ["| family | trained size | other sizes |", "|---|---|---|"]
    for name in FAMILIES:
        d = MAX_DIFFS[name]
        rows.append(f"| {name} | {d['trained']:.3g} | {d.get('other', float('nan')):.3g} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(parity_table())
