from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.integration.gateway import GatewayProcess

GatewayFactory = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
async def gateway_factory(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Start sipgw processes with their own config; every one is stopped and checked."""
    started: list[GatewayProcess] = []

    async def start(**options: object) -> GatewayProcess:
        workdir = tmp_path / f"gw{len(started)}"
        workdir.mkdir()
        gw = GatewayProcess(workdir, **options)  # type: ignore[arg-type]
        started.append(gw)
        return await gw.start()

    yield start
    for gw in started:
        # Shown by pytest only when the test failed.
        print(f"--- sipgw log ({gw.workdir}):\n{gw.log_tail(80)}")
        code = await gw.stop()
        assert code == 0, f"sipgw exited with {code}\n{gw.log_tail()}"
        assert gw.errors() == [], f"sipgw logged errors:\n{gw.log_tail()}"


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> GatewayProcess:
    return await gateway_factory()
