"""The CogVideoX model families as data.

Every family is a :class:`Family`: a typed transformer config plus the facts the rest of the
pack needs (VAE scale, scheduler shift, frame rules, conditioning kind). Families are detected
from a state dict's keys and shapes (:func:`detect_family`), never from a file name.

Numbers come from the public checkpoints' configs (see ``../shared/SPEC.md``).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

logger = logging.getLogger(__name__)

PositionKind = Literal["sincos", "sincos_resized", "rope_linspace", "rope_slice"]
ConditioningKind = Literal["t2v", "i2v", "inp", "control"]


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of one CogVideoX diffusion transformer (diffusers' config names in comments).

    ``sample_*`` are in latent units for height/width and pixel frames for ``sample_frames``,
    exactly as diffusers stores them; they define the trained grid that positional tables are
    built from (sincos table, RoPE base grid, learned table).
    """

    num_layers: int = 30
    num_heads: int = 30  # num_attention_heads
    head_dim: int = 64  # attention_head_dim
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096  # text_embed_dim
    time_embed_dim: int = 512
    ofs_embed_dim: int | None = None  # 1.5-I2V only
    patch_size: int = 2
    patch_size_t: int | None = None  # 2 for the 1.5 families
    patch_bias: bool = True  # the 1.0 conv patch embed only; the 1.5 Linear always has a bias (as diffusers)
    positions: PositionKind = "sincos"
    learned_positions: bool = False  # 5B-I2V: `patch_embed.pos_embedding` is a weight
    sample_height: int = 60
    sample_width: int = 90
    sample_frames: int = 49
    temporal_compression: int = 4
    max_text_len: int = 226  # max_text_seq_length
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def uses_rope(self) -> bool:
        return self.positions.startswith("rope")

    @property
    def sample_latent_frames(self) -> int:
        """Latent frames of the trained clip: (F - 1) // 4 + 1 (13 for 49 frames)."""
        return (self.sample_frames - 1) // self.temporal_compression + 1

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, object], positions: PositionKind | None = None) -> "TransformerConfig":
        """Build from a diffusers ``config.json`` dict; unknown keys are logged, not used."""
        rename = {
            "num_attention_heads": "num_heads",
            "attention_head_dim": "head_dim",
            "text_embed_dim": "text_dim",
            "max_text_seq_length": "max_text_len",
            "temporal_compression_ratio": "temporal_compression",
        }
        ignored = {"_class_name", "_diffusers_version", "_name_or_path", "dropout", "attention_bias",
                   "activation_fn", "timestep_activation_fn", "norm_elementwise_affine",
                   "use_rotary_positional_embeddings", "use_learned_positional_embeddings"}
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, object] = {}
        for key, value in cfg.items():
            name = rename.get(key, key)
            if name in names:
                kwargs[name] = value
            elif key not in ignored:
                logger.warning("transformer config key %r is not used by this pack", key)
        if kwargs.get("out_channels") is None:
            kwargs["out_channels"] = 16
        if positions is None:
            positions = _positions_from_diffusers(cfg)
        kwargs["positions"] = positions
        kwargs["learned_positions"] = bool(cfg.get("use_learned_positional_embeddings", False))
        return cls(**kwargs)  # type: ignore[arg-type]

    def to_diffusers(self) -> dict[str, object]:
        """The diffusers ``CogVideoXTransformer3DModel`` kwargs for this config."""
        return {
            "num_attention_heads": self.num_heads, "attention_head_dim": self.head_dim,
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "flip_sin_to_cos": self.flip_sin_to_cos, "freq_shift": self.freq_shift,
            "time_embed_dim": self.time_embed_dim, "ofs_embed_dim": self.ofs_embed_dim,
            "text_embed_dim": self.text_dim, "num_layers": self.num_layers,
            "sample_width": self.sample_width, "sample_height": self.sample_height,
            "sample_frames": self.sample_frames, "patch_size": self.patch_size,
            "patch_size_t": self.patch_size_t,
            "temporal_compression_ratio": self.temporal_compression,
            "max_text_seq_length": self.max_text_len, "norm_eps": self.norm_eps,
            "spatial_interpolation_scale": self.spatial_interpolation_scale,
            "temporal_interpolation_scale": self.temporal_interpolation_scale,
            "use_rotary_positional_embeddings": self.uses_rope,
            "use_learned_positional_embeddings": self.learned_positions,
            "patch_bias": self.patch_bias,
        }


def _positions_from_diffusers(cfg: Mapping[str, object]) -> PositionKind:
    if not cfg.get("use_rotary_positional_embeddings", False):
        return "sincos"
    return "rope_slice" if cfg.get("patch_size_t") else "rope_linspace"


@dataclass(frozen=True)
class VAEConfig:
    """The causal 3D VAE (diffusers ``AutoencoderKLCogVideoX`` config names)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression: int = 4
    scaling_factor: float = 1.15258426
    invert_scale_latents: bool = False

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, object]) -> "VAEConfig":
        kwargs: dict[str, object] = {}
        for key in ("in_channels", "out_channels", "latent_channels", "layers_per_block",
                    "norm_eps", "norm_num_groups", "scaling_factor", "invert_scale_latents"):
            if key in cfg and cfg[key] is not None:
                kwargs[key] = cfg[key]
        if "block_out_channels" in cfg:
            kwargs["block_out_channels"] = tuple(cfg["block_out_channels"])  # type: ignore[arg-type]
        if "temporal_compression_ratio" in cfg:
            kwargs["temporal_compression"] = int(cfg["temporal_compression_ratio"])  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]

    def to_diffusers(self) -> dict[str, object]:
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "block_out_channels": self.block_out_channels, "latent_channels": self.latent_channels,
            "layers_per_block": self.layers_per_block, "norm_eps": self.norm_eps,
            "norm_num_groups": self.norm_num_groups,
            "temporal_compression_ratio": self.temporal_compression,
            "scaling_factor": self.scaling_factor, "invert_scale_latents": self.invert_scale_latents,
        }


@dataclass(frozen=True)
class Family:
    """One CogVideoX family: the transformer plus the rules around it."""

    name: str
    transformer: TransformerConfig
    conditioning: ConditioningKind
    vae_scaling_factor: float = 0.7
    invert_scale_latents: bool = False  # 1.5-I2V image latents are divided by the scale
    snr_shift_scale: float = 1.0
    fps: int = 8
    default_frames: int = 49
    default_height: int = 480
    default_width: int = 720
    ofs: float | None = None  # 1.5-I2V: 2.0
    fixed_size: tuple[int, int] | None = None  # 5B-I2V: (480, 720)
    max_latent_frames: int | None = None  # Fun-2B: its sincos table has 13 frames
    add_noise_in_inpaint: bool = False
    recommended_sampler: str = "dpm"
    notes: str = ""

    @property
    def latent_frames_even(self) -> bool:
        """1.5 families patch time by 2: the latent frame count is made even."""
        return self.transformer.patch_size_t == 2


_T2B = TransformerConfig(num_layers=30, num_heads=30)
_T5B = TransformerConfig(num_layers=42, num_heads=48, positions="rope_linspace")
_T15 = TransformerConfig(num_layers=42, num_heads=48, positions="rope_slice", patch_size_t=2,
                         patch_bias=False, sample_height=300, sample_width=300, sample_frames=81)


def _with(cfg: TransformerConfig, **changes: object) -> TransformerConfig:
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("2b", _T2B, "t2v", vae_scaling_factor=1.15258426, snr_shift_scale=3.0,
           recommended_sampler="ddim"),
    Family("5b", _T5B, "t2v"),
    Family("5b-i2v", _with(_T5B, in_channels=32, learned_positions=True), "i2v",
           fixed_size=(480, 720)),
    Family("1.5-5b", _T15, "t2v", fps=16, default_frames=81, default_height=768,
           default_width=1360),
    Family("1.5-5b-i2v", _with(_T15, in_channels=32, ofs_embed_dim=512), "i2v", fps=16,
           default_frames=81, default_height=768, default_width=1360, ofs=2.0,
           invert_scale_latents=True),
    Family("fun-2b-inp", _with(_T2B, in_channels=33, positions="sincos_resized"), "inp",
           max_latent_frames=13, recommended_sampler="ddim"),
    Family("fun-5b-inp", _with(_T5B, in_channels=33), "inp"),
    Family("fun-1.5-5b-inp", _with(_T15, in_channels=33), "inp", default_frames=85,
           default_height=512, default_width=512, add_noise_in_inpaint=True),
    Family("fun-2b-control", _with(_T2B, in_channels=32), "control",
           recommended_sampler="ddim"),
    Family("fun-5b-control", _with(_T5B, in_channels=32), "control"),
)}

FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def get_family(name: str) -> Family:
    """The family called ``name``; a ``ValueError`` listing the known names otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"family={name!r} is not a CogVideoX family; known: {', '.join(FAMILY_NAMES)}") from None


class NotCogVideoXError(ValueError):
    """The weights given are not a CogVideoX transformer."""


def detect_transformer_config(
    shapes: Mapping[str, Sequence[int]],
    diffusers_config: Mapping[str, object] | None = None,
    family: str | None = None,
) -> tuple[str, TransformerConfig]:
    """Family name and transformer config from diffusers-layout keys and their shapes.

    ``shapes`` maps every key of the (diffusers-layout) state dict to its shape. Rules (SPEC.md):
    ``patch_embed.proj.weight`` is a 4-D conv [D, C, 2, 2] for 1.0 families and a 2-D Linear
    [D, C*2*2*2] for 1.5; ``patch_embed.pos_embedding`` means a learned table (5B-I2V);
    ``ofs_embedding.*`` means 1.5-I2V; the count of ``transformer_blocks.N`` gives layers;
    ``attn1.norm_q.weight`` gives the head dim. Without a ``config.json`` the 2B/5B split
    (sincos vs RoPE) follows the inner dim: 1920 is 2B-class, 3072 5B-class (other widths are
    not real checkpoints: below 3072 counts as 2B-class, with a warning). ``family`` overrides
    the detected name (shapes still decide the sizes) and is checked against the shapes.
    """
    proj = shapes.get("patch_embed.proj.weight")
    if proj is None or "patch_embed.text_proj.weight" not in shapes:
        raise NotCogVideoXError("no 'patch_embed.proj.weight' / 'patch_embed.text_proj.weight': "
                                "not a CogVideoX transformer")
    inner = int(proj[0])
    head_dim = int(shapes.get("transformer_blocks.0.attn1.norm_q.weight", (64,))[0])
    if inner % head_dim:
        raise NotCogVideoXError(f"patch_embed.proj.weight has inner dim {inner}, not a multiple "
                                f"of the head dim {head_dim}")
    is15 = len(proj) == 2
    in_ch = int(proj[1]) // 8 if is15 else int(proj[1])
    learned = "patch_embed.pos_embedding" in shapes
    has_ofs = "ofs_embedding.linear_1.weight" in shapes
    rope = _uses_rope(inner, is15, diffusers_config)
    detected = _family_name(inner, in_ch, is15, learned, has_ofs, rope)
    name = detected if family is None else _check_override(family, detected)
    cfg = _with(FAMILIES[name].transformer, num_layers=_count_blocks(shapes),
                num_heads=inner // head_dim, head_dim=head_dim, in_channels=in_ch,
                text_dim=int(shapes["patch_embed.text_proj.weight"][1]))
    if "time_embedding.linear_1.weight" in shapes:
        cfg = _with(cfg, time_embed_dim=int(shapes["time_embedding.linear_1.weight"][0]))
    if has_ofs:
        cfg = _with(cfg, ofs_embed_dim=int(shapes["ofs_embedding.linear_1.weight"][1]))
    if "proj_out.weight" in shapes:
        per_patch = cfg.patch_size ** 2 * (cfg.patch_size_t or 1)
        cfg = _with(cfg, out_channels=int(shapes["proj_out.weight"][0]) // per_patch)
    if diffusers_config is not None:
        cfg = _with(cfg, **_sample_fields(diffusers_config))
    return name, cfg


def _uses_rope(inner: int, is15: bool, diffusers_config: Mapping[str, object] | None) -> bool:
    if is15:
        return True
    if diffusers_config is not None and "use_rotary_positional_embeddings" in diffusers_config:
        return bool(diffusers_config["use_rotary_positional_embeddings"])
    if inner not in (1920, 3072):
        logger.warning("transformer width %d is not a released CogVideoX width (1920 or 3072); "
                       "taking it as %s-class", inner, "5B" if inner >= 3072 else "2B")
    return inner >= 3072


def _check_override(family: str, detected: str) -> str:
    wanted = get_family(family)
    got = FAMILIES[detected].transformer
    same_layout = (wanted.transformer.in_channels == got.in_channels
                   and wanted.transformer.patch_size_t == got.patch_size_t
                   and wanted.transformer.learned_positions == got.learned_positions
                   and (wanted.transformer.ofs_embed_dim is None) == (got.ofs_embed_dim is None))
    if not same_layout:
        raise ValueError(f"family={family!r} does not fit these weights: their shapes say "
                         f"{detected!r} ({got.in_channels} input channels)")
    return family


def _sample_fields(cfg: Mapping[str, object]) -> dict[str, object]:
    keys = {"sample_height": "sample_height", "sample_width": "sample_width",
            "sample_frames": "sample_frames", "max_text_seq_length": "max_text_len",
            "spatial_interpolation_scale": "spatial_interpolation_scale",
            "temporal_interpolation_scale": "temporal_interpolation_scale",
            "patch_size": "patch_size", "norm_eps": "norm_eps",
            "flip_sin_to_cos": "flip_sin_to_cos", "freq_shift": "freq_shift",
            "temporal_compression_ratio": "temporal_compression"}
    return {ours: cfg[theirs] for theirs, ours in keys.items() if cfg.get(theirs) is not None}


def _count_blocks(shapes: Mapping[str, Sequence[int]]) -> int:
    idx = {int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks.")}
    if not idx or idx != set(range(max(idx) + 1)):
        raise NotCogVideoXError(f"transformer_blocks are not numbered 0..N-1 (found {sorted(idx)[:8]}...)")
    return max(idx) + 1


def _family_name(inner: int, in_ch: int, is15: bool, learned: bool, has_ofs: bool,
                 rope: bool) -> str:
    size = "5b" if rope else "2b"
    if is15:
        table = {16: "1.5-5b", 32: "1.5-5b-i2v" if has_ofs else None, 33: "fun-1.5-5b-inp"}
    elif size == "2b":
        table = {16: "2b", 32: "fun-2b-control", 33: "fun-2b-inp"}
    else:
        table = {16: "5b", 32: "5b-i2v" if learned else "fun-5b-control", 33: "fun-5b-inp"}
    name = table.get(in_ch)
    if name is None:
        raise NotCogVideoXError(f"patch embed takes {in_ch} channels (inner dim {inner}, "
                                f"{'1.5' if is15 else '1.0'} layout): no CogVideoX family has that")
    return name


__all__ = ["TransformerConfig", "VAEConfig", "Family", "FAMILIES", "FAMILY_NAMES", "get_family",
           "detect_transformer_config", "NotCogVideoXError"]
