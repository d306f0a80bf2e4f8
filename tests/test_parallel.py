"""CFG-parallel and Ulysses sequence-parallel generation (cogvideox_core.parallel) against the
single-process pipeline, on gloo process groups of 2 and 4 CPU ranks spawned the torchrun way.

Tiny models of every positional kind, with 4 heads so that ulysses=4 divides them: 2B (additive
sincos, 226 text rows), 5B (RoPE linspace), 1.5 (RoPE slice, temporal patch 2, an odd latent
count padded to even) and Fun-2B InP (resized sincos, 33 input channels, VAE-encoded start
image). Sizes give odd video-token counts (9, 15), so Ulysses pads 1 (K=2) or 3 (K=4) tokens.

Tolerance ATOL = 1e-5 in float32, for latents of magnitude up to about 3: a parallel rank runs
the same operations on differently shaped tensors (batch 1 instead of the [uncond, cond]
batch, a token shard, a head group), so a BLAS may sum in another order. Observed on this CPU:
0 against the single-process run with the same batch composition (CFG parallel against
cfg_batched=False, Ulysses alone against the same batching, padding included) and up to 5e-6
against the other batching mode, a difference single-process runs already have between
themselves (cfg 5 amplifies it). Across the ranks of one run the latents must be
bit-identical (they start from rank 0's broadcast and receive identical collective results).
One process launch per world size runs all its cases (spawning costs seconds).
"""
from __future__ import annotations

import dataclasses
import logging
import time

import pytest
import torch

from cogvideox_core.errors import Interrupted
from cogvideox_core.generation.pipeline import GenerateRequest, Models, generate, sample_latents, validate
from cogvideox_core.models.step_cache import CacheOptions
from cogvideox_core.models.transformer import CogVideoXTransformer
from cogvideox_core.parallel import ParallelConfig, ParallelError, check_request, join_from_env, make_mesh
from cogvideox_core.parallel import run as prun
from cogvideox_core.parallel.groups import env_rank
from cogvideox_core.parallel.local import RankFailure, run_local
from cogvideox_core.runtime import TorchRuntime
from cogvideox_core.sampling.windows import ContextOptions
from cogvideox_core.tiny import demo_inputs, init_random, tiny_family, tiny_vae_config
from cogvideox_core.vae.model import CogVideoXVAE

ATOL = 1e-5  # float32 summation order only; see the module docstring
TEXT = 226  # T5 rows: the additive-sincos families need exactly 226
SIZES = {  # family: (frames, height, width) -> video tokens N
    "2b": (9, 16, 48),  # 3 latents x 1 x 3 = 9
    "5b": (9, 16, 80),  # 3 x 1 x 5 = 15
    "1.5-5b": (17, 16, 48),  # 5 latents (odd) + 1 padding = 6 -> 3 token frames x 1 x 3 = 9
    "fun-2b-inp": (9, 16, 48),  # 9, with [noise 16 | mask 1 | masked video 16] channels
}
SAMPLERS = {"2b": "ddim", "5b": "dpm", "1.5-5b": "dpm", "fun-2b-inp": "ddim"}  # dpm draws noise every step


def tiny_models(name: str) -> Models:
    """A tiny random model of ``name`` with 4 heads x 16 (the VAE only where conditioning needs it)."""
    family = tiny_family(name)
    family = dataclasses.replace(family, transformer=dataclasses.replace(family.transformer, num_heads=4))
    transformer = init_random(CogVideoXTransformer(family.transformer), 11).eval()
    vae = init_random(CogVideoXVAE(tiny_vae_config(family)), 12).eval() if name == "fun-2b-inp" else None
    return Models(transformer, family, vae)


def request(name: str, **changes: object) -> GenerateRequest:
    frames, height, width = SIZES[name]
    gen = torch.Generator().manual_seed(5)
    cond, uncond = (torch.randn(1, TEXT, 32, generator=gen) for _ in range(2))
    family = tiny_family(name)
    base = dict(frames=frames, height=height, width=width, steps=3, cfg=5.0, seed=3,
                sampler=SAMPLERS[name], prompt_embeds=cond, negative_embeds=uncond,
                inputs=demo_inputs(family, frames, height, width))
    return GenerateRequest(**{**base, **changes})  # type: ignore[arg-type]


# (case id, family, parallel config, request changes)
CASES_2 = [
    ("2b-cfg2-dyn", "2b", "cfg=2", dict(dynamic_cfg="diffusers")),
    ("5b-cfg2-seq", "5b", "cfg=2", dict(cfg_batched=False)),
    ("1.5-cfg2-dyn", "1.5-5b", "cfg=2", dict(dynamic_cfg="step")),
    ("inp-cfg2", "fun-2b-inp", "cfg=2", {}),
    ("2b-u2", "2b", "ulysses=2", {}),
    ("5b-u2", "5b", "ulysses=2", {}),
    ("1.5-u2", "1.5-5b", "ulysses=2", {}),
    ("inp-u2", "fun-2b-inp", "ulysses=2", {}),
    ("5b-u2-unguided", "5b", "ulysses=2", dict(cfg=1.0)),
    ("5b-cfg2-windows", "5b", "cfg=2", dict(frames=17, context=ContextOptions(5, 1))),
    ("5b-cfg2-unguided", "5b", "cfg=2", dict(cfg=1.0)),  # both CFG ranks run the one branch
]
CASES_4 = [
    ("2b-u4", "2b", "ulysses=4", {}),
    ("5b-u4", "5b", "ulysses=4", dict(cfg_batched=False)),
    ("1.5-u4", "1.5-5b", "ulysses=4", {}),
    ("inp-u4", "fun-2b-inp", "ulysses=4", {}),
    ("2b-cfg2u2", "2b", "cfg=2,ulysses=2", dict(dynamic_cfg="step")),
    ("5b-cfg2u2", "5b", "cfg=2,ulysses=2", {}),
    ("1.5-cfg2u2", "1.5-5b", "cfg=2,ulysses=2", {}),
    ("5b-u4-windows", "5b", "ulysses=4", dict(frames=17, context=ContextOptions(5, 1))),
]
FRAMES_CASE = ("inp-cfg2u2-frames", "fun-2b-inp", "cfg=2,ulysses=2", {})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread here too: the ranks have one each, and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- what runs on every rank -----------------------------------------------------------------

def _meshes(configs: list[str]) -> dict[str, object]:
    join_from_env("cpu", timeout_s=60)
    return {c: make_mesh(ParallelConfig.parse(c), timeout_s=60) for c in dict.fromkeys(configs)}


def parity_worker(cases: list[tuple], frames_case: tuple | None) -> dict[str, torch.Tensor | None]:
    """Each case's scaled final latents of this rank (raw: before any agreement broadcast), and
    the decoded frames of ``frames_case`` (rank 0; None elsewhere)."""
    logging.basicConfig(level=logging.WARNING)
    meshes = _meshes([c[2] for c in cases] + ([frames_case[2]] if frames_case else []))
    out: dict[str, torch.Tensor | None] = {}
    runtime = TorchRuntime(show_progress=False)
    for case_id, name, config, changes in cases:
        models, req = tiny_models(name), request(name, **changes)
        out[case_id] = prun.sample_latents(models, req, runtime, validate(models, req), meshes[config])
    if frames_case:
        case_id, name, config, changes = frames_case
        out[case_id] = prun.generate(tiny_models(name), request(name, **changes), meshes[config], runtime)
    return out


def reference(case: tuple, batched: bool | None = None) -> torch.Tensor:
    _id, name, _config, changes = case
    models, req = tiny_models(name), request(name, **changes)
    if batched is not None:
        req = dataclasses.replace(req, cfg_batched=batched)
    return sample_latents(models, req, TorchRuntime(show_progress=False), validate(models, req))


def _check_parity(cases: list[tuple], results: list[dict]) -> None:
    failures = [r for r in results if isinstance(r, RankFailure)]
    assert not failures, "\n".join(f.trace for f in failures)
    for case in cases:
        ranks = [r[case[0]] for r in results]
        for other in ranks[1:]:  # one latent state on every rank, bit for bit
            assert torch.equal(other, ranks[0]), case[0]
        for batched in (True, False):  # equal to either single-process CFG batching
            diff = (ranks[0] - reference(case, batched)).abs().max().item()
            assert diff <= ATOL, f"{case[0]} (cfg_batched={batched}): max diff {diff:.3g}"


def test_cfg_and_ulysses_on_2_ranks_equal_one_process() -> None:
    start = time.monotonic()
    results = run_local(parity_worker, 2, CASES_2, None, timeout_s=240)
    logging.getLogger(__name__).info("2 ranks: %.1f s", time.monotonic() - start)
    _check_parity(CASES_2, results)


def test_ulysses_4_and_cfg2_ulysses2_on_4_ranks_equal_one_process() -> None:
    results = run_local(parity_worker, 4, CASES_4, FRAMES_CASE, timeout_s=240)
    _check_parity(CASES_4, results)
    frames = results[0][FRAMES_CASE[0]]
    _id, name, _config, changes = FRAMES_CASE
    ref = generate(tiny_models(name), request(name, **changes))
    assert frames is not None and frames.shape == ref.shape == (SIZES[name][0], 16, 48, 3)
    assert (frames - ref).abs().max().item() <= ATOL
    assert all(r[FRAMES_CASE[0]] is None for r in results[1:])  # rank 0 alone decodes


# ---- stopping: interrupts and failing ranks ----------------------------------------------------

class _InterruptAt(TorchRuntime):
    """A runtime whose interrupt check raises at the ``step``-th check."""

    def __init__(self, step: int) -> None:
        super().__init__(show_progress=False)
        self.step, self.calls = step, 0

    def check_interrupt(self) -> None:
        self.calls += 1
        if self.calls == self.step:
            raise Interrupted("interrupted")


class _FailAt(torch.nn.Module):
    """The transformer, raising at its ``call``-th forward."""

    def __init__(self, inner: torch.nn.Module, call: int) -> None:
        super().__init__()
        self.inner, self.call, self.calls = inner, call, 0

    def check_input(self, *args, **kwargs) -> None:
        self.inner.check_input(*args, **kwargs)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.call:
            raise RuntimeError("simulated failure in the model")
        return self.inner(*args, **kwargs)


def stop_worker() -> dict[str, object]:
    """An interrupt on rank 1 before sampling and at step 2, then (same group) a model failure on rank 1 while
    rank 1 stays alive: what each rank raised and how long rank 0 waited."""
    mesh = _meshes(["cfg=2"])["cfg=2"]
    rank = mesh.rank  # type: ignore[attr-defined]
    models, req = tiny_models("5b"), request("5b", steps=4)
    plan = validate(models, req)
    out: dict[str, object] = {}
    try:  # the interrupt check before sampling, on rank 1 only
        runtime = _InterruptAt(1) if rank == 1 else TorchRuntime(show_progress=False)
        prun.sample_latents(models, req, runtime, plan, mesh)  # type: ignore[arg-type]
    except Interrupted as e:
        out["early"] = str(e)
    runtime = _InterruptAt(3) if rank == 1 else TorchRuntime(show_progress=False)  # 1st check: before sampling
    try:
        prun.sample_latents(models, req, runtime, plan, mesh)  # type: ignore[arg-type]
    except Interrupted as e:
        out["interrupt"] = str(e)
    if rank == 1:
        models = dataclasses.replace(models, transformer=_FailAt(models.transformer, 2))
    start = time.monotonic()
    try:
        prun.sample_latents(models, req, TorchRuntime(show_progress=False), plan, mesh)  # type: ignore[arg-type]
    except (ParallelError, RuntimeError) as e:
        out["failure"] = f"{type(e).__name__}: {e}"
    out["waited"] = time.monotonic() - start
    if rank == 1:
        time.sleep(3)  # alive: rank 0 must not need this process to exit to stop
    return out


def test_an_interrupt_or_a_failing_rank_stops_every_rank_with_a_clear_error() -> None:
    results = run_local(stop_worker, 2, timeout_s=120)
    failures = [r for r in results if isinstance(r, RankFailure)]
    assert not failures, "\n".join(f.trace for f in failures)
    first, second = results
    assert first["early"] == "interrupted on rank 1 before sampling" and second["early"] == "interrupted"
    assert first["interrupt"] == "interrupted on rank 1 at step 2/4" and second["interrupt"] == "interrupted"
    assert second["failure"] == "RuntimeError: simulated failure in the model"
    assert first["failure"].startswith("ParallelError: rank 0: all_gather with ranks [0, 1] failed")
    assert first["waited"] < 20  # the group timeout is 60 s: rank 1 closed its group, rank 0 saw it


# ---- refusals, before any process group ------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("cfg=3", "parallel cfg=3: must be 1 or 2"),
    ("ulysses=0", "parallel ulysses=0: must be at least 1"),
    ("ring=2", "'ring=2' is not cfg=N or ulysses=N"),
    ("cfg=2,cfg=2", "cfg given twice"),
    ("ulysses=two", "ulysses='two' must be a whole number"),
    ("", "'' is not cfg=N or ulysses=N"),
])
def test_parallel_config_refuses_bad_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ParallelConfig.parse(text)


def test_parallel_config_parses_and_checks_the_world_and_heads() -> None:
    config = ParallelConfig.parse("cfg=2, ulysses=4")
    assert (config.cfg, config.ulysses, config.world_size) == (2, 4, 8)
    assert ParallelConfig.parse("ulysses=3") == ParallelConfig(1, 3)
    with pytest.raises(ValueError, match=r"needs cfg \* ulysses = 8 processes, the launch has WORLD_SIZE=4"):
        config.check_world(4)
    with pytest.raises(ValueError, match=r"the 5b family has 48 attention heads, which do not divide by 5; "
                                         r"ulysses must divide 48 \(1, 2, 3, 4, 6, 8, 12, 16, 24, 48\)"):
        ParallelConfig(ulysses=5).check_heads(48, "5b")


def test_step_caches_and_odd_head_splits_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    models = tiny_models("5b")
    with pytest.raises(ValueError, match="cache='teacache' with --parallel cfg=2,ulysses=1: not supported"):
        check_request(models, request("5b", cache=CacheOptions("teacache")), ParallelConfig(cfg=2))
    with pytest.raises(ValueError, match="the 5b family has 4 attention heads, which do not divide by 3"):
        check_request(models, request("5b"), ParallelConfig(ulysses=3))
    for key in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="needs torchrun's environment; RANK, WORLD_SIZE"):
        env_rank()
