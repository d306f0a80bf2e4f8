"""Tiny VAE configs with the real layout (4 levels, 8x spatial, 4x temporal, conv shortcuts where
the width changes) for the VAE parity and tiling tests: one narrow with a 4-channel latent and
one block per level, one with the real 16-channel latent, two blocks per level and 2 groups."""
from __future__ import annotations

from cogvideox_core.families import VAEConfig

TINY_VAE_CONFIGS = {
    "c8-z4-l1-g4": VAEConfig(block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1,
                             norm_num_groups=4),
    "c8-z16-l2-g2": VAEConfig(block_out_channels=(8, 16, 16, 16), latent_channels=16, layers_per_block=2,
                              norm_num_groups=2),
}
