"""The compiled SIP core (mypyc, `make native`): built from the tree, it passes the unit
suite and carries real calls, as the pure-Python core does in the rest of the suite.

The build takes about a minute on two cores; it is made once for this module, into a
temporary directory (the work tree's own `.native/` is left alone).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.native import MODULES
from tests.integration.conftest import GatewayFactory
from tests.integration.test_sipp_calls import trunk_to_did

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.timeout(900)]

# What a compiled module does not allow: a test that patches one. These run pure Python.
PATCHING = ("tests/unit/test_quick_options.py",)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("native") / "build"
    subprocess.run(
        [sys.executable, "scripts/build_native.py", "--out", str(out), "--quiet"],
        cwd=ROOT, check=True, timeout=600,
    )  # fmt: skip
    yield out


def compiled_env(build: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTEST_SIPGW_NATIVE": "1",  # tests/conftest.py leaves SIPGW_NATIVE alone
        "SIPGW_NATIVE": "1",  # and an unusable build is an error, never pure Python
        "SIPGW_NATIVE_DIR": str(build),
    }


def test_the_build_loads_every_listed_module_compiled(build: Path) -> None:
    probe = (
        "import importlib, gateway.native as n\n"
        "assert n.status().compiled, n.status()\n"
        "for name in n.MODULES:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(n.os.environ['SIPGW_NATIVE_DIR']), module\n"
        "print(n.status().describe())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=compiled_env(build),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"compiled by mypyc ({len(MODULES)} modules)"


def test_the_unit_suite_passes_compiled(build: Path) -> None:
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit",
        "--ignore", "tests/unit/test_native.py",  # asserts the suite's pure-Python core
        *(arg for path in PATCHING for arg in ("--ignore", path)),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=compiled_env(build), capture_output=True, text=True, timeout=800
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary, summary


async def test_a_compiled_gateway_carries_real_calls(
    build: Path, gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in compiled_env(build).items():
        monkeypatch.setenv(name, value)
    gw = await gateway_factory()
    started = [r for r in gw.log_records() if r.get("msg") == "gateway started"]
    expected = f"compiled by mypyc ({len(MODULES)} modules)"
    assert started and started[0].get("sip_core") == expected, started

    await trunk_to_did(gw, "uas", "uac", 200, rate=100, timeout=60)

    families = {f.name: f for f in text_string_to_metric_families(await gw.metrics())}
    invites = [
        s.value for s in families["sipgw_sip_requests"].samples
        if s.name == "sipgw_sip_requests_total" and s.labels.get("method") == "INVITE"
        and s.labels.get("direction") == "in"
    ]  # fmt: skip
    assert sum(invites) == 200
    published = families["sipgw_events_published"].samples[0].value
    assert published >= 200 * 3  # offered, answered, ended at least, per call
