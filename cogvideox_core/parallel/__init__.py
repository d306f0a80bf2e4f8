"""Generation on several processes with torch.distributed: CFG parallel (the two guidance
branches on two ranks) and Ulysses sequence parallel (the video tokens split over K ranks),
launched with ``torchrun --nproc-per-node N``; both equal the single-process result.

- :mod:`.config`: ``ParallelConfig.parse("cfg=2,ulysses=4")`` and its checks.
- :mod:`.groups`: the process group from torchrun's environment and the CFG/Ulysses sub-groups.
- :mod:`.comm`: the collectives, one clear error when a peer is gone, bytes sent.
- :mod:`.cfg`: the guided denoiser with one branch per CFG rank.
- :mod:`.ulysses`: the block runner and attention that split the video tokens.
- :mod:`.hooks`: what sampling does differently on a mesh, as one object the pipeline can call.
- :mod:`.run`: a whole generation on a mesh, composed of the pipeline's public pieces.
- :mod:`.local`: spawning N local ranks the torchrun way (tests, benchmarks).
"""
from __future__ import annotations

from .cfg import cfg_parallel_pair, parallel_cfg_denoiser
from .comm import ParallelError
from .config import ParallelConfig
from .groups import Mesh, close, init_from_env, join_from_env, make_mesh
from .hooks import MeshHooks, blocks_runner, make_parallel_denoiser
from .run import check_family, check_request, generate, generate_latents, quiet_other_ranks, sample_latents
from .ulysses import UlyssesAttention, UlyssesBlocks

__all__ = ["ParallelConfig", "ParallelError", "Mesh", "init_from_env", "join_from_env", "make_mesh", "close",
           "cfg_parallel_pair", "parallel_cfg_denoiser", "UlyssesAttention", "UlyssesBlocks",
           "blocks_runner", "check_family", "check_request", "make_parallel_denoiser", "sample_latents",
           "generate_latents", "generate", "quiet_other_ranks", "MeshHooks"]
