"""The CogVideoX model families as data.

Every family is a :class:`Family`: a typed transformer config plus the facts the rest of the
pack needs (VAE scale and compression, scheduler shift, frame rate, frame and size rules,
conditioning kind). Each rule lives here once (frames <-> latent frames and the 4k+1 rule, the
pixel size unit, the positional tables' limits: Fun-2B's 13 latents, 5B-I2V's fixed size, 1.5's
RoPE table and temporal padding) and the transformer, the conditioning planner, the context
windows, the tiler, the CLI and the nodes ask it rather than restate it. Families are detected
from a state dict's keys and shapes (:func:`detect_transformer_config`), never from a file name.
Numbers come from the public checkpoints' configs (see ``../shared/SPEC.md``).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

logger = logging.getLogger(__name__)

PositionKind = Literal["sincos", "sincos_resized", "rope_linspace", "rope_slice"]
ConditioningKind = Literal["t2v", "i2v", "inp", "control"]

LATENT_CHANNELS = 16  # every CogVideoX VAE
SPATIAL_COMPRESSION = 8  # VAE: one latent per 8x8 pixels
TEMPORAL_COMPRESSION = 4  # VAE: 4k+1 pixel frames <-> k+1 latent frames (causal: frame 0 alone)
PATCH_SIZE = 2  # every CogVideoX transformer patches 2x2 latents
SIZE_UNIT = SPATIAL_COMPRESSION * PATCH_SIZE  # 16: pixel sizes are multiples of it
DEFAULT_FPS = 8  # the 1.0 and Fun families (1.5: 16)
DEFAULT_OFS = 2.0  # diffusers CogVideoXImageToVideoPipeline: latents.new_full((1,), 2.0)


# ---- frames and sizes -----------------------------------------------------------------------

def latent_frames(frames: int, temporal_compression: int = TEMPORAL_COMPRESSION) -> int:
    """Latent frames for ``frames`` pixel frames: ``(F - 1) // 4 + 1`` (49 -> 13), and 0 -> 0.

    The causal VAE turns 4k+1 pixel frames into k+1 latents (frame 0 on its own, then 4 per
    latent). The same rule converts a context-window overlap (as ComfyUI's Wan context-window
    node does), so an overlap of 0 stays 0 and 1..4 pixel frames become one latent.
    """
    return (frames - 1) // temporal_compression + 1 if frames > 0 else 0


def pixel_frames(latents: int, temporal_compression: int = TEMPORAL_COMPRESSION) -> int:
    """Pixel frames of ``latents`` latent frames: ``4 (n - 1) + 1`` (13 -> 49), and 0 -> 0."""
    return (latents - 1) * temporal_compression + 1 if latents > 0 else 0


def check_frames(name: str, frames: int, temporal_compression: int = TEMPORAL_COMPRESSION) -> int:
    """The latent frames of ``frames`` pixel frames; ``ValueError`` naming ``name`` unless
    ``frames`` is 4k+1 (1, 5, 9, ..., 49, ..., 81), with the nearest counts that are in the message."""
    tc = temporal_compression
    if frames < 1 or (frames - 1) % tc:
        below = pixel_frames(max(latent_frames(frames, tc), 1), tc)
        near = sorted({below, pixel_frames(latent_frames(frames, tc) + 1, tc)})
        raise ValueError(f"{name}={frames} must be {tc}k+1 (1, {tc + 1}, {2 * tc + 1}, ...: the causal "
                         f"VAE turns {tc}k+1 frames into k+1 latents); nearest: {' or '.join(map(str, near))}")
    return latent_frames(frames, tc)


def check_size(name: str, value: int, unit: int = SIZE_UNIT) -> None:
    """``ValueError`` naming ``name`` unless the pixel size ``value`` is a positive multiple of
    ``unit`` (16: the VAE's 8x times the transformer's 2x2 patch), with the nearest that are."""
    if value < unit or value % unit:
        lower = value - value % unit
        near = sorted({max(lower, unit), lower + unit})
        raise ValueError(f"{name}={value} must be a multiple of {unit}, at least {unit} (VAE "
                         f"{SPATIAL_COMPRESSION}x, patch {unit // SPATIAL_COMPRESSION}); nearest: "
                         f"{' or '.join(map(str, near))}")


def latent_shape(frames: int, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int, int]:
    """The VAE latent shape [B, 16, F_lat, H/8, W/8] of ``batch`` videos of ``frames`` x
    ``height`` x ``width`` pixels (ComfyUI's video LATENT layout), after checking the units."""
    check_size("width", width)
    check_size("height", height)
    lat = check_frames("frames", frames)
    if batch < 1:
        raise ValueError(f"batch_size={batch} must be at least 1")
    return (batch, LATENT_CHANNELS, lat, height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION)


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
    in_channels: int = LATENT_CHANNELS  # plus the conditioning channels (I2V, Fun)
    out_channels: int = LATENT_CHANNELS
    text_dim: int = 4096  # text_embed_dim
    time_embed_dim: int = 512
    ofs_embed_dim: int | None = None  # 1.5-I2V only
    patch_size: int = PATCH_SIZE
    patch_size_t: int | None = None  # 2 for the 1.5 families
    patch_bias: bool = True  # the 1.0 conv patch embed only; the 1.5 Linear always has a bias (as diffusers)
    positions: PositionKind = "sincos"
    learned_positions: bool = False  # 5B-I2V: `patch_embed.pos_embedding` is a weight
    sample_height: int = 60
    sample_width: int = 90
    sample_frames: int = 49
    temporal_compression: int = TEMPORAL_COMPRESSION
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
        return latent_frames(self.sample_frames, self.temporal_compression)

    @property
    def max_latent_frames(self) -> int | None:
        """The most latent frames one model call takes, or None: Fun-2B's resized sincos table
        covers the frames of its trained grid (13 for the released weights) and no more."""
        return self.sample_latent_frames if self.positions == "sincos_resized" else None

    @property
    def fixed_latent_size(self) -> tuple[int, int] | None:
        """(height, width) in latents of the one size a learned positional table covers
        (5B-I2V: 60 x 90), or None."""
        return (self.sample_height, self.sample_width) if self.learned_positions else None

    @property
    def max_latent_size(self) -> tuple[int, int] | None:
        """The largest (height, width) in latents the 1.5 RoPE table covers (300 x 300, i.e.
        150 positions per axis), or None where positions have no limit."""
        return (self.sample_height, self.sample_width) if self.positions == "rope_slice" else None

    @property
    def default_ofs(self) -> float | None:
        """The ofs value passed with a model that has an ofs embedding (1.5-I2V: 2.0), else None."""
        return DEFAULT_OFS if self.ofs_embed_dim else None

    def temporal_padding(self, latents: int) -> int:
        """Latent frames to prepend so that ``latents`` fits the temporal patch (0 for 1.0).

        diffusers' 1.5 pipelines add ``pt - F % pt`` frames of noise in front of the latents,
        denoise them with the rest and drop them before decoding (21 latents -> 22).
        """
        pt = self.patch_size_t or 1
        return (pt - latents % pt) % pt

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
            kwargs["out_channels"] = LATENT_CHANNELS
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
    latent_channels: int = LATENT_CHANNELS
    layers_per_block: int = 3
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression: int = TEMPORAL_COMPRESSION
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
    """One CogVideoX family: the transformer plus the rules around it.

    Sizes are pixels and frames pixel frames here; the limits come from the transformer's
    positional tables (:class:`TransformerConfig`), so a tiny test model with a small trained
    grid has small limits too.
    """

    name: str
    transformer: TransformerConfig
    conditioning: ConditioningKind
    vae_scaling_factor: float = 0.7
    invert_scale_latents: bool = False  # 1.5-I2V image latents are divided by the scale
    snr_shift_scale: float = 1.0  # the shipped scheduler_config.json's (2B: 3.0)
    fps: int = DEFAULT_FPS
    default_frames: int = 49
    default_height: int = 480
    default_width: int = 720
    add_noise_in_inpaint: bool = False
    bf16_trained: bool = True  # fp16 gives NaN or black video (the 5B and 1.5 weights)
    recommended_sampler: str = "dpm"
    # the envelope of the training data (1.5: short side 768, long side 768..1360, 16k+1 frames);
    # outside it the model runs but drifts from what it learned: a warning, not a refusal
    trained_short_side: int | None = None
    trained_long_side: int | None = None
    trained_frame_step: int = TEMPORAL_COMPRESSION

    @property
    def latent_frames_even(self) -> bool:
        """1.5 families patch time by 2: the latent frame count is made even."""
        return self.transformer.patch_size_t == 2

    @property
    def pads_odd_latents(self) -> bool:
        """1.5 T2V/I2V take an odd latent count by padding it (diffusers' pipelines); the Fun
        1.5 models take even counts only (8m+5 frames)."""
        return self.latent_frames_even and self.conditioning in ("t2v", "i2v")

    @property
    def max_latent_frames(self) -> int | None:
        """The most latent frames one model call takes (Fun-2B: 13), or None."""
        return self.transformer.max_latent_frames

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(height, width) in pixels of the only size the family takes (5B-I2V: 480 x 720), or None."""
        return _pixels(self.transformer.fixed_latent_size)

    @property
    def max_size(self) -> tuple[int, int] | None:
        """The largest (height, width) in pixels the family takes (1.5: 2400 x 2400), or None."""
        return _pixels(self.transformer.max_latent_size)

    @property
    def size_unit(self) -> int:
        """Pixel sizes are multiples of this: the VAE's 8 times the patch size (16)."""
        return SPATIAL_COMPRESSION * self.transformer.patch_size

    @property
    def ofs(self) -> float | None:
        """The ofs value the family's model is called with (1.5-I2V: 2.0), or None."""
        return self.transformer.default_ofs

    def temporal_padding(self, latents: int) -> int:
        """Latents the sampler prepends to ``latents`` (1.5 T2V/I2V with an odd count: 1)."""
        return self.transformer.temporal_padding(latents) if self.pads_odd_latents else 0

    def check_frames(self, frames: int, windowed: bool = False) -> int:
        """The latent frames of ``frames``; ``ValueError`` naming the value and the rule unless
        the family takes them: 4k+1, at most :attr:`max_latent_frames` in one model call (not
        checked when ``windowed``: context windows bound each call instead), an even latent
        count where the family does not pad odd ones (Fun 1.5)."""
        lat = check_frames("frames", frames, self.transformer.temporal_compression)
        most = None if windowed else self.max_latent_frames
        if most is not None and lat > most:
            raise ValueError(f"frames={frames} ({lat} latent frames): {self.name} takes at most "
                             f"{self._pixel_frames(most)} frames ({most} latent frames, the size of "
                             "its position table)")
        if self.latent_frames_even and lat % 2 and not self.pads_odd_latents:
            raise ValueError(f"frames={frames} ({lat} latent frames) for {self.name}: the Fun 1.5 "
                             "models take an even latent count (8m+5 frames: 45, 53, 85); nearest: "
                             f"{self.nearest_even(lat)}")
        return lat

    def untrained(self, frames: int, height: int, width: int) -> list[str]:
        """Warnings for a request outside the family's training envelope (it runs, but less
        well): 1.5 was trained with the short side 768, the long side up to 1360 and 16k+1
        frames."""
        notes = []
        step = self.trained_frame_step
        if (frames - 1) % step:
            below = (frames - 1) // step * step + 1
            notes.append(f"frames={frames}: {self.name} was trained on {step}k+1 frames; nearest: "
                         f"{' or '.join(str(n) for n in (below, below + step) if n > 1)}")
        short, long_ = min(height, width), max(height, width)
        if self.trained_short_side is not None and short != self.trained_short_side:
            notes.append(f"height x width={height}x{width}: {self.name} was trained with the short side "
                         f"{self.trained_short_side} (e.g. {self.default_height}x{self.default_width})")
        if self.trained_long_side is not None and long_ > self.trained_long_side:
            notes.append(f"height x width={height}x{width}: {self.name} was trained with the long side "
                         f"at most {self.trained_long_side}")
        return notes

    def nearest_even(self, latents: int) -> str:
        """The pixel frame counts of the even latent counts next to an odd ``latents``, for messages."""
        return " or ".join(str(self._pixel_frames(n)) for n in (latents - 1, latents + 1) if n > 0)

    def _pixel_frames(self, latents: int) -> int:
        return pixel_frames(latents, self.transformer.temporal_compression)

    def check_size(self, height: int, width: int) -> None:
        """``ValueError`` naming the value and the rule unless the family takes ``height`` x
        ``width`` pixels: multiples of :attr:`size_unit`, the fixed size of a learned table,
        at most the 1.5 RoPE table."""
        check_size("height", height, self.size_unit)
        check_size("width", width, self.size_unit)
        fixed, top = self.fixed_size, self.max_size
        if fixed is not None and (height, width) != fixed:
            raise ValueError(f"height x width={height}x{width}: {self.name} takes only "
                             f"{fixed[0]}x{fixed[1]} (its learned position table covers that size)")
        if top is not None and (height > top[0] or width > top[1]):
            raise ValueError(f"height x width={height}x{width}: {self.name} takes at most "
                             f"{top[0]}x{top[1]} (its RoPE table)")


def _pixels(latent_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if latent_size is None:
        return None
    return latent_size[0] * SPATIAL_COMPRESSION, latent_size[1] * SPATIAL_COMPRESSION


_T2B = TransformerConfig(num_layers=30, num_heads=30)
_T5B = TransformerConfig(num_layers=42, num_heads=48, positions="rope_linspace")
_T15 = TransformerConfig(num_layers=42, num_heads=48, positions="rope_slice", patch_size_t=2,
                         patch_bias=False, sample_height=300, sample_width=300, sample_frames=81)


_TRAINED_15: dict[str, Any] = {"trained_short_side": 768, "trained_long_side": 1360,
                               "trained_frame_step": 16}


def _with(cfg: TransformerConfig, **changes: object) -> TransformerConfig:
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("2b", _T2B, "t2v", vae_scaling_factor=1.15258426, snr_shift_scale=3.0,
           bf16_trained=False, recommended_sampler="ddim"),
    Family("5b", _T5B, "t2v"),
    Family("5b-i2v", _with(_T5B, in_channels=32, learned_positions=True), "i2v"),  # 480x720 only
    Family("1.5-5b", _T15, "t2v", fps=16, default_frames=81, default_height=768,
           default_width=1360, **_TRAINED_15),
    Family("1.5-5b-i2v", _with(_T15, in_channels=32, ofs_embed_dim=512), "i2v", fps=16,
           default_frames=81, default_height=768, default_width=1360, invert_scale_latents=True,
           **_TRAINED_15),
    Family("fun-2b-inp", _with(_T2B, in_channels=33, positions="sincos_resized"), "inp",
           bf16_trained=False, recommended_sampler="ddim"),  # at most 13 latent frames
    Family("fun-5b-inp", _with(_T5B, in_channels=33), "inp"),
    Family("fun-1.5-5b-inp", _with(_T15, in_channels=33), "inp", default_frames=85,
           default_height=512, default_width=512, add_noise_in_inpaint=True),
    Family("fun-2b-control", _with(_T2B, in_channels=32), "control", bf16_trained=False,
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
    config_source: str = "config.json",
) -> tuple[str, TransformerConfig]:
    """Family name and transformer config from diffusers-layout keys and their shapes.

    ``shapes`` maps every key of the (diffusers-layout) state dict to its shape. Rules (SPEC.md):
    ``patch_embed.proj.weight`` is a 4-D conv [D, C, 2, 2] for 1.0 families and a 2-D Linear
    [D, C*2*2*2] for 1.5; ``patch_embed.pos_embedding`` means a learned table (5B-I2V);
    ``ofs_embedding.*`` means 1.5-I2V; the count of ``transformer_blocks.N`` gives layers;
    ``attn1.norm_q.weight`` gives the head dim. The 1.0 2B/5B split (sincos vs RoPE positions)
    is not in the shapes: ``diffusers_config``'s ``use_rotary_positional_embeddings`` tells it
    (a ``config.json``), else a released width (1920: 2B-class, 3072: 5B-class).

    ``family`` is taken from the caller only where the files cannot tell: a 1.0 transformer of
    another width (tiny test models, custom trainings) without a config leaves the split open,
    and ``family`` picks among the families that fit (2b/5b, fun-2b-inp/fun-5b-inp,
    fun-2b-control/fun-5b-control, and fun-2b-control/5b-i2v where a position table is stored:
    2B files may carry their sincos table); without it the width decides (below 3072: 2B-class),
    with a warning. Everywhere else the files decide, and a ``family`` other than theirs is a
    ``ValueError`` naming what they say and where (``config_source``: the config's path, for
    that message); the same name is accepted. Shapes always decide the sizes.
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
    layout = _Layout(inner, len(proj) == 2, int(proj[1]) // 8 if len(proj) == 2 else int(proj[1]),
                     "patch_embed.pos_embedding" in shapes, "ofs_embedding.linear_1.weight" in shapes)
    name = _choose_family(layout, _rope_evidence(layout, diffusers_config, config_source), family)
    cfg = _with(FAMILIES[name].transformer, num_layers=_count_blocks(shapes),
                num_heads=inner // head_dim, head_dim=head_dim, in_channels=layout.in_channels,
                text_dim=int(shapes["patch_embed.text_proj.weight"][1]))
    if "time_embedding.linear_1.weight" in shapes:
        cfg = _with(cfg, time_embed_dim=int(shapes["time_embedding.linear_1.weight"][0]))
    if layout.has_ofs:
        cfg = _with(cfg, ofs_embed_dim=int(shapes["ofs_embedding.linear_1.weight"][1]))
    if "proj_out.weight" in shapes:
        per_patch = cfg.patch_size ** 2 * (cfg.patch_size_t or 1)
        cfg = _with(cfg, out_channels=int(shapes["proj_out.weight"][0]) // per_patch)
    if diffusers_config is not None:
        cfg = _with(cfg, **_sample_fields(diffusers_config))
    return name, cfg


_RELEASED_WIDTHS = {1920: False, 3072: True}  # inner width -> RoPE (CogVideoX-2B, CogVideoX-5B)


@dataclass(frozen=True)
class _Layout:
    """What the shapes of a transformer show of its family."""

    inner: int
    is15: bool  # a Linear patch embed over 2x2x2 patches
    in_channels: int
    has_table: bool  # `patch_embed.pos_embedding` stored: 5B-I2V's learned table or 2B's sincos one
    has_ofs: bool

    def describe(self) -> str:
        """What the shapes show, as the subject of "says" in messages."""
        extra = ", a position table" * self.has_table + ", an ofs embedding" * self.has_ofs
        return (f"the tensor shapes' layout ({'1.5' if self.is15 else '1.0'} patch embedding, "
                f"{self.in_channels} input channels{extra})")

    def family(self, rope: bool) -> str:
        """The family these shapes are with (``rope``) or without RoPE positions (1.0)."""
        return _family_name(self.inner, self.in_channels, self.is15, self.has_table, self.has_ofs,
                            rope or self.is15)


def _rope_evidence(layout: _Layout, cfg: Mapping[str, object] | None,
                   source: str) -> tuple[bool | None, str]:
    """(RoPE positions, what in the files says so, as the subject of "says"); None where
    the files cannot tell."""
    if layout.is15:
        return True, layout.describe()
    if cfg is not None and "use_rotary_positional_embeddings" in cfg:
        rope = bool(cfg["use_rotary_positional_embeddings"])
        return rope, f"{source} (use_rotary_positional_embeddings={str(rope).lower()})"
    if layout.inner in _RELEASED_WIDTHS:
        rope = _RELEASED_WIDTHS[layout.inner]
        return rope, f"the tensor shapes' width {layout.inner} (CogVideoX-{'5B' if rope else '2B'}'s)"
    return None, f"width {layout.inner} is not a released width (1920 or 3072) and no config.json says"


def _choose_family(layout: _Layout, rope: tuple[bool | None, str], family: str | None) -> str:
    """The files' family, or ``family`` where it is one the files cannot tell from theirs."""
    value, said_by = rope
    fits = [layout.family(r) for r in ((value,) if value is not None else (False, True))]
    detected = fits[0] if len(fits) == 1 else fits[layout.inner >= 3072]
    if family is None:
        if len(fits) > 1:
            logger.warning("transformer %s whether its positions are sincos (2B-class) or RoPE "
                           "(5B-class): taking it as %r; pass family=%s to choose",
                           said_by, detected, " or ".join(fits))
        return detected
    get_family(family)  # a ValueError for an unknown name
    if family in fits:
        return family
    # the layout fits the name at the other positions: the positions' source contradicts it
    source = said_by if family in {layout.family(r) for r in (False, True)} else layout.describe()
    hint = ("leave it out to use the detected one" if len(fits) == 1 else "pass one of those (the "
            f"files cannot tell which) or leave it out to use the detected one ({detected!r})")
    raise ValueError(f"family={family!r} does not fit these weights: {source} says "
                     f"{' or '.join(map(repr, fits))}; {hint}")


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
           "detect_transformer_config", "NotCogVideoXError", "LATENT_CHANNELS", "SPATIAL_COMPRESSION",
           "TEMPORAL_COMPRESSION", "PATCH_SIZE", "SIZE_UNIT", "DEFAULT_FPS", "DEFAULT_OFS",
           "latent_frames", "pixel_frames", "check_frames", "check_size", "latent_shape"]
