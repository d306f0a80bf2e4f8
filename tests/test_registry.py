"""Comfy Registry metadata (pyproject.toml): `comfy node validate` passes, and what it reads is complete.

`comfy node validate` (comfy-cli, pinned in .ci/requirements-test.txt) parses pyproject.toml the way
`comfy node publish` does and runs ruff's exec/eval/one-line-statement rules. It exits 0 even when it
warns (a malformed classifier, license or `requires-comfyui` is dropped with a "Warning:" line, and
security findings are printed instead of the success line), so the tests here also refuse its
warnings and look at the configuration it extracts: that is what the registry receives.

comfy-cli runs in a subprocess with stdin closed, telemetry off (DO_NOT_TRACK), HOME in a temporary
folder (its config.ini goes there, never into the user's), ruff's cache out of the repository, and
no network: validate contacts nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.version import InvalidVersion, Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SUCCESS = "All validation checks passed successfully"
TIMEOUT_S = 300

# pip's requirements-file comment rule (the one comfy-cli's `node init` uses): `#` starts a comment
# at the start of a line or after whitespace.
_COMMENT = re.compile(r"(^|\s+)#.*$")
# The registry's node id: under 100 characters, letters, digits, `-`, `_`, `.`, no two special
# characters in a row, starting with a letter (https://docs.comfy.org/registry/specifications).
_NODE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*$")
_ICON = re.compile(r"https://\S+\.(svg|png|jpe?g|gif)(\?\S*)?$", re.IGNORECASE)
_FLAGGED = re.compile(r"\b(warning|error)\b", re.IGNORECASE)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements() -> list[str]:
    lines = [_COMMENT.sub("", raw).strip() for raw in (ROOT / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line]


def _env(tmp_path: Path) -> dict[str, str]:
    # Nothing inherited may point git at another repository (a pre-commit hook sets GIT_DIR) or
    # change comfy-cli's output mode, workspace or telemetry.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "COMFY_", "POSTHOG_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(
        HOME=str(home), USERPROFILE=str(home),
        DO_NOT_TRACK="1", COMFY_NO_TELEMETRY="1",
        RUFF_CACHE_DIR=str(tmp_path / "ruff_cache"),
        NO_COLOR="1", TERM="dumb", COLUMNS="200", PYTHONIOENCODING="utf-8",
    )
    return env


def _run(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=ROOT, env=_env(tmp_path), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
        errors="replace", timeout=TIMEOUT_S,
    )


def _comfy_cli_python(tmp_path: Path, code: str) -> str:
    """Runs `code` with comfy-cli importable; its stdout (a failure carries its output)."""
    result = _run(tmp_path, ["-c", code])
    assert result.returncode == 0, (
        f"comfy-cli helper failed (is comfy-cli installed? bash .ci/setup):\n{result.stdout}")
    return result.stdout


def test_comfy_node_validate_passes(tmp_path):
    result = _run(tmp_path, ["-m", "comfy_cli", "--skip-prompt", "--no-json", "node", "validate"])
    out = result.stdout
    assert "No module named comfy_cli" not in out, "comfy-cli is missing: run bash .ci/setup"
    assert result.returncode == 0, f"comfy node validate exited {result.returncode}:\n{out}"
    assert "Security warnings found" not in out, f"ruff's security rules flag code:\n{out}"
    assert SUCCESS in out, f"comfy node validate did not report success:\n{out}"
    flagged = [line for line in out.splitlines() if _FLAGGED.search(line)]
    assert not flagged, "comfy node validate warned (the registry drops such fields):\n" + "\n".join(flagged)


def test_registry_sees_complete_metadata(tmp_path):
    """The configuration comfy-cli extracts, i.e. what `comfy node publish` would send."""
    code = (
        "import json, sys\n"
        "from comfy_cli.registry import extract_node_configuration\n"
        f"config = extract_node_configuration({str(ROOT / 'pyproject.toml')!r})\n"
        # dataclasses all the way down; tomlkit's values are str and list subclasses
        "sys.stdout.write('\\n' + json.dumps(config, default=vars))\n"
    )
    out = _comfy_cli_python(tmp_path, code)
    lines = out.splitlines()
    # Anything printed before the JSON is a warning of the parser's.
    assert not [line for line in lines[:-1] if line.strip()], f"comfy-cli warned while parsing:\n{out}"
    config = json.loads(lines[-1])
    project, comfy = config["project"], config["tool_comfy"]

    name = project["name"]
    assert len(name) < 100 and _NODE_ID.match(name), f"not a valid registry node id: {name!r}"
    version = project["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"registry versions are X.Y.Z: {version!r}"
    assert project["description"].strip()
    assert project["license"]["text"] or project["license"]["file"], "no license"
    if project["license"]["file"]:
        assert (ROOT / project["license"]["file"]).is_file(), f"no license file {project['license']['file']}"
    assert project["urls"]["repository"].startswith("https://"), project["urls"]
    assert project["dependencies"] == _requirements()
    # Each of these is dropped (set empty) when malformed, with only a warning.
    assert project["supported_os"], "no valid `Operating System ::` classifier"
    assert project["supported_accelerators"], "no valid `Environment :: GPU/NPU ::` classifier"
    assert project["supported_comfyui_version"], "`[tool.comfy] requires-comfyui` missing or malformed"

    assert comfy["publisher_id"].strip(), "[tool.comfy] PublisherId is required"
    assert comfy["display_name"].strip()
    if comfy["icon"]:
        assert _ICON.match(comfy["icon"]), f"Icon must be an https URL of an SVG/PNG/JPG/GIF: {comfy['icon']}"
    if comfy["banner_url"]:
        assert comfy["banner_url"].startswith("https://"), comfy["banner_url"]
    for include in comfy["includes"]:
        assert (ROOT / include).exists(), f"[tool.comfy] includes names a missing path: {include}"


def test_dependencies_equal_requirements():
    deps = _pyproject()["project"]["dependencies"]
    assert deps == _requirements(), "pyproject's [project] dependencies must equal requirements.txt, in order"
    assert not [d for d in deps if re.match(r"torch\b", d, re.IGNORECASE)], "never torch: the host owns it"


def test_version_is_pep440():
    version = _pyproject()["project"]["version"]
    try:
        parsed = Version(version)
    except InvalidVersion as e:
        raise AssertionError(f"[project] version {version!r} is not a PEP 440 version") from e
    assert str(parsed) == version, f"[project] version {version!r} is not in normal form ({parsed})"


def test_published_archive_holds_data_and_workflows(tmp_path):
    """`comfy node publish` uploads git-tracked files (less .comfyignore) plus [tool.comfy] includes:
    the shipped tokenizer and the workflows must be among them."""
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], check=False, env=_env(tmp_path),
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    # Without git, comfy-cli would zip the whole folder (.venv included): never get there.
    assert tracked.returncode == 0 and tracked.stdout.strip(), f"not a git checkout:\n{tracked.stderr}"
    archive = tmp_path / "node.zip"
    code = (
        "from comfy_cli.file_utils import zip_files\n"
        "from comfy_cli.registry import extract_node_configuration\n"
        f"config = extract_node_configuration({str(ROOT / 'pyproject.toml')!r})\n"
        f"zip_files({str(archive)!r}, includes=config.tool_comfy.includes)\n"
    )
    _comfy_cli_python(tmp_path, code)
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
    wanted = {"__init__.py", "nodes/__init__.py", "requirements.txt", "pyproject.toml", "README.md"}
    data = {p for p in tracked.stdout.splitlines() if p.startswith("cogvideox_core/data/")}
    flows = {p for p in tracked.stdout.splitlines() if p.startswith("workflows/") and p.endswith(".json")}
    assert data and flows, "no tracked tokenizer data or workflows"
    wanted |= data | flows
    missing = sorted(p for p in wanted if (ROOT / p).exists() and p not in names)
    assert not missing, f"left out of the registry archive: {missing}"
    stray = sorted(n for n in names if n.split("/")[0] in {".venv", ".cache", ".git", "out"})
    assert not stray, f"in the registry archive but should not be: {stray[:10]}"
