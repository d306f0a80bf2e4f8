"""``python -m cogvideox_core COMMAND``: the core from a command line.

Each command is a subparser added by a ``_add_<command>(subparsers)`` function that sets
``run=<function(args) -> exit code>``; :func:`build_parser` lists them, :func:`main` dispatches.
Every failure ends the command with one line on stderr and exit code 1 (an interrupt: 130),
never a traceback; ``--verbose`` adds the traceback. Out of memory, device and file-system
failures get a hint on what to change.

``info PATH [--json]``: the family and components at PATH (model root, component folder or one
``.safetensors`` file), read from headers and config files only: instant on a 10 GB file.
``generate`` and ``demo`` live in :mod:`cogvideox_core.cli.generate` (``add_commands``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from typing import Sequence

from .convert import add_commands as _add_convert_commands
from .generate import add_commands as _add_generate_commands
from ..errors import CogVideoXError, Interrupted, InterruptedKeeping
from ..loading.weights import ModelInfo, file_format, inspect_path
from ..loading.quantized import describe as describe_quantization

logger = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cogvideox_core",
                                     description="CogVideoX video models on plain torch.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at DEBUG level and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_info(sub)
    _add_generate_commands(sub)  # generate, demo
    _add_convert_commands(sub)  # convert
    for command in sub.choices.values():  # -v after the command too
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log at DEBUG level and show tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("cogvideox_core.models.step_cache").setLevel(logging.INFO)  # the cache's summary
    logging.getLogger("cogvideox_core.models.compile").setLevel(logging.INFO)  # --compile: sizes compiled
    try:
        return int(args.run(args))
    except (Exception, KeyboardInterrupt) as e:  # every failure: one line (+ traceback with -v)
        message, code = describe_failure(e)
        if args.verbose:
            traceback.print_exc()
        sys.stderr.write(f"{message}\n")
        return code


def describe_failure(e: BaseException) -> tuple[str, int]:
    """(one line for stderr, exit code) for a failure of a command."""
    if isinstance(e, InterruptedKeeping):
        return str(e), EXIT_INTERRUPTED
    if isinstance(e, Interrupted):
        return f"{e}: nothing written", EXIT_INTERRUPTED
    if isinstance(e, KeyboardInterrupt):
        return "interrupted: nothing written", EXIT_INTERRUPTED
    text = " ".join(str(e).split())
    if isinstance(e, (CogVideoXError, ValueError)):
        return f"error: {text}", EXIT_ERROR
    if _out_of_memory(e):
        return (f"error: out of memory ({_first_line(text)}): use fewer --frames, a smaller "
                "--height/--width, --context-frames, --cfg-sequential or --dtype bfloat16"), EXIT_ERROR
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"error: {where}{e.strerror or text} (file system; check the path, space and "\
               "permissions)", EXIT_ERROR
    return (f"error: {type(e).__name__}: {_first_line(text)} (run with --verbose for the "
            "traceback)"), EXIT_ERROR


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text
                                            or "DefaultCPUAllocator" in text)


def _first_line(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---- info -----------------------------------------------------------------------------------

def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="family and components of a model folder or file",
                       description="Family and components at PATH, from file headers only.")
    p.add_argument("path", metavar="PATH", help="model root, component folder or .safetensors file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    info = inspect_path(args.path)
    text = json.dumps(info.to_dict(), indent=2) if args.json else format_info(info)
    sys.stdout.write(text + "\n")
    return 0


def format_info(info: ModelInfo) -> str:
    """The human-readable ``info`` report."""
    lines = [f"path: {info.path}", f"family: {info.family or 'none (no transformer)'}",
             f"components: {', '.join(info.component_names)}"]
    for name in info.component_names:
        comp = info.components[name]
        if not comp.index:
            lines.append(f"  {name}: {len(comp.files)} file(s)")
            continue
        dtypes = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in comp.dtypes().items())
        where = comp.found.layout if comp.found else "?"
        prefix = f", prefix {comp.found.prefix!r}" if comp.found and comp.found.prefix else ""
        fmt = file_format(comp)  # safetensors unsaid; e.g. ", SAT checkpoint (.pt)"
        quant = describe_quantization(comp)  # e.g. "scaled fp8 (float8_e4m3fn)"
        lines.append(f"  {name}: {len(comp.index)} tensors in {len(comp.files)} file(s), "
                     f"{where} layout{prefix}{'' if fmt == 'safetensors' else ', ' + fmt}"
                     f"{', ' + quant if quant else ''}; {dtypes}")
    cfg = info.transformer_config
    if cfg is not None:
        lines.append(f"  transformer config: {cfg.num_layers} layers, "
                     f"{cfg.num_heads} heads x {cfg.head_dim}, "
                     f"{cfg.in_channels} input channels, positions {cfg.positions}"
                     + (", learned table" if cfg.learned_positions else ""))
    return "\n".join(lines)


__all__ = ["build_parser", "main", "describe_failure", "format_info"]
