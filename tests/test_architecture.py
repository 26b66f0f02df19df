"""Code-level rules that CI enforces: the layer contract, lint and types.

The import rule of DESIGN.md (arrows point down only; sip/ imports nothing of the
project) is the import-linter contract in pyproject.toml; ruff and mypy keep the code
as the style guide says. Each runs as the developer would run it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / tool
    if not exe.exists():
        found = shutil.which(tool)
        if found is None:
            pytest.fail(f"{tool} is not installed (pip install -e '.[dev]')")
        exe = Path(found)
    return subprocess.run([str(exe), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)


def test_import_layers_point_down_only() -> None:
    result = run("lint-imports")
    assert result.returncode == 0, result.stdout + result.stderr


def test_sip_layer_imports_nothing_of_the_project() -> None:
    for path in (REPO / "gateway" / "sip").glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import gateway", "from gateway")):
                assert stripped.startswith("from gateway.sip"), f"{path.name}: {stripped}"


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", "gateway", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
