"""The core's import graph: sub-packages in layers, imports pointing down, no cycles.

Every import of every module of ``cogvideox_core`` is read from its source (function-level imports
included) and checked against the layers below; a module may import its own package and any
lower layer, never a higher one or a sibling package of its own layer, and the module graph has
no cycle. The core never imports ComfyUI or the node layer.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "cogvideox_core"
LAYERS = [  # lowest first; a name is a top-level module or sub-package of cogvideox_core
    {"__init__", "errors", "families", "ops", "attention", "runtime", "video_io", "gguf_quants"},
    {"models", "vae", "sampling", "quant"},
    {"loading", "memory"},
    {"generation"},
    {"parallel"},
    {"long_video"},
    {"tiny"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
FORBIDDEN = ("comfy", "folder_paths", "nodes", "server", "execution")


def _module(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _imports(path: Path, here: str | None = None) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``path`` (the module ``here``, default: from
    its path): core modules as dotted paths under cogvideox_core, anything else as its absolute
    name prefixed with '!'."""
    here = here or _module(path)
    package = here.split(".") if path.name == "__init__.py" and here != "__init__" else here.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
                out += [(name or "__init__", node.lineno) for name in names]
            elif node.module and node.module.startswith("cogvideox_core"):
                out.append((node.module.removeprefix("cogvideox_core").lstrip(".") or "__init__", node.lineno))
            else:
                out.append(("!" + (node.module or ""), node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                out.append((name.removeprefix("cogvideox_core").lstrip(".") or "__init__", node.lineno)
                           if name.startswith("cogvideox_core") else ("!" + name, node.lineno))
    return out


MODULES = {_module(p): p for p in sorted(CORE.rglob("*.py"))}
EDGES = {m: _imports(p) for m, p in MODULES.items()}


def _top(module: str) -> str:
    return module.split(".")[0]


def test_every_module_is_in_a_layer() -> None:
    assert {_top(m) for m in MODULES} <= set(RANK), sorted({_top(m) for m in MODULES} - set(RANK))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    bad = []
    for target, line in EDGES[module]:
        if target.startswith("!"):
            if target[1:].split(".")[0] in FORBIDDEN:
                bad.append(f"line {line}: imports {target[1:]} (the core never imports the host)")
            continue
        src, dst = _top(module), _top(target)
        if src == dst or dst == "__init__" or (RANK[src] == RANK[dst] == 0):
            continue  # own package, or the flat base layer (its cycles are the test below's)
        if RANK[dst] >= RANK[src]:
            bad.append(f"line {line}: {module} ({src}, layer {RANK[src]}) imports {target} "
                       f"({dst}, layer {RANK[dst]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = {m: {t for t, _ in EDGES[m] if not t.startswith("!") and t in MODULES and t != m}
             for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The parser finds relative, absolute and function-level imports (so the checks can fail)."""
    path = tmp_path / "probe.py"
    path.write_text("from .x import a\nimport cogvideox_core.cli\ndef f():\n    from ..tiny import b\n")
    found = {t for t, _ in _imports(path, here="generation.probe")}
    assert found == {"generation.x", "cli", "tiny"}, found
