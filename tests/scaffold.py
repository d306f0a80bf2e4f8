"""Scaffolding the test modules share: one definition each of the VAE norm randomiser, the
progress-recording runtime and the seeded random tiny diffusers transformer.

Imported as a plain module (``tests`` is on pytest's ``pythonpath``).
"""
from __future__ import annotations

import torch
from torch import nn

from cogvideox_core.families import TransformerConfig
from cogvideox_core.runtime import TorchRuntime
from cogvideox_core.tiny import tiny_transformer_config

TEXT_DIM = 8  # text_dim of the parity and weight-loader tiny transformers


def randomize_norms(model: nn.Module, gen: torch.Generator | None = None, other_std: float | None = None) -> nn.Module:
    """Moves GroupNorm (and every other ``norm``) affine params away from 1/0 (weight 1 + N(0, 0.2),
    bias N(0, 0.2)) so they are exercised. ``gen=None`` draws from the global RNG. ``other_std``:
    first sets every parameter to N(0, other_std), drawn from the same generator in parameter
    order (interleaved with the norm draws)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if other_std is not None:
                p.copy_(torch.randn(p.shape, generator=gen) * other_std)
            if "norm" in name and "conv" not in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    return model


class RecordingRuntime(TorchRuntime):
    """A plain-torch runtime without a progress bar that keeps every progress call in ``steps``
    (and its preview in ``previews``). ``stop_at``: the step at which it asks for an interrupt;
    ``free``: the free memory it reports (default: the real one)."""

    def __init__(self, stop_at: int | None = None, free: int | None = None,
                 device: str | torch.device | None = "cpu") -> None:
        super().__init__(device=device, show_progress=False)
        self.stop_at, self.free = stop_at, free
        self.steps: list[tuple[int, int]] = []
        self.previews: list[torch.Tensor | None] = []

    def free_memory(self) -> int:
        return super().free_memory() if self.free is None else self.free

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        self.steps.append((step, total))
        self.previews.append(preview)
        if step == self.stop_at:
            self.interrupt_event.set()


def tiny_config(name: str, small_sample: bool = True) -> TransformerConfig:
    """The family's config at 2 layers, 2 heads x 16, text_dim 8. ``small_sample``: an 8x12
    (1.5: 12x12) latent sample grid, which only a folder's config.json can tell the loader;
    otherwise the family's real sample sizes, which a single file implies."""
    return tiny_transformer_config(name, text_dim=TEXT_DIM, small_grid=small_sample)


def random_transformer(cfg: TransformerConfig, seed: int = 0):
    """A seeded random diffusers transformer of ``cfg`` (global RNG: every parameter N(0, 0.2),
    a learned position table N(0, 1)), in eval mode."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    ref = CogVideoXTransformer3DModel(**cfg.to_diffusers()).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
        if cfg.learned_positions:
            ref.patch_embed.pos_embedding.normal_()
    return ref
