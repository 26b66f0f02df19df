"""Webhooks may not be aimed into the gateway's own network (SSRF, issue #15 part 4).

A tenant admin chooses a webhook's URL, so it is an attacker's input: loopback,
link-local (cloud metadata), private networks and the gateway's own services are
refused, when the webhook is made and again at every connection, after the name is
resolved. Each attack aims at a canary listener, and passes only if the canary gets
no byte and no connection.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import ADMIN
from tests.integration.webhook_receiver import Publisher, make_webhook
from tests.security.canary import Canary
from tests.waiting import wait_until_true

pytestmark = pytest.mark.timeout(60)

QUICK_RETRIES = (
    "[webhooks]\nretry_initial = 0.05\nretry_max = 0.2\nrefresh_interval = 0.2\nlease_ttl = 1.0"
)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:{port}/hook",
        "https://127.0.0.2:{port}/hook",
        "https://localhost:{port}/hook",
        "https://LOCALHOST.:{port}/hook",
        "https://[::1]:{port}/hook",
        "https://[::ffff:127.0.0.1]:{port}/hook",
        "http://127.0.0.1:{port}/hook",
        "https://0.0.0.0:{port}/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/hook",
        "https://172.16.0.1/hook",
        "https://192.168.1.1/hook",
        "https://[fd00::1]/hook",
        "https://user:pw@crm.example/hook",
        "ftp://crm.example/hook",
    ],
)
async def test_a_webhook_to_an_internal_address_is_refused_when_made(
    gateway_factory: GatewayFactory, url: str
) -> None:
    async with Canary() as canary:
        gw = await gateway_factory(extra=QUICK_RETRIES)
        token = await gw.login(ADMIN)
        status, raw = await gw.http(
            "POST", "/v1/webhooks", {"url": url.format(port=canary.port)}, token=token
        )
        assert status == 422, raw
        assert json.loads(raw)["detail"].startswith("url:")
        status, raw = await gw.http("GET", "/v1/webhooks", token=token)
        assert json.loads(raw) == {"webhooks": []}
    assert canary.received == []


@pytest.mark.parametrize("host", ["127.1", "2130706433"])
async def test_a_name_that_resolves_to_loopback_is_refused_at_connect_time(
    gateway_factory: GatewayFactory, host: str
) -> None:
    """``127.1`` and ``2130706433`` are not IP literals to the URL check but the
    resolver makes them 127.0.0.1: only the check of the resolved address stops them."""
    async with Canary() as canary:
        gw = await gateway_factory(extra=QUICK_RETRIES)
        token = await gw.login(ADMIN)
        made = await make_webhook(gw, token, url=f"https://{host}:{canary.port}/hook")
        async with Publisher(gw.redis_url) as publisher:
            await publisher.publish(1)

            async def refused_twice() -> bool:
                found = re.search(
                    rf'sipgw_webhook_deliveries_total\{{[^}}]*outcome="refused"[^}}]*'
                    rf'subscription="{made["id"]}"[^}}]*\}} (\d+)',
                    await gw.metrics(),
                )
                return found is not None and int(found[1]) >= 2

            await wait_until_true(refused_twice, timeout=15, what="refused attempts")
    assert canary.received == []
    assert any("resolves to 127.0.0.1" in str(r.get("reason")) for r in gw.log_records())


async def test_loopback_allowed_still_never_reaches_redis_or_the_gateway(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(extra=QUICK_RETRIES + "\nallow_loopback = true")
    token = await gw.login(ADMIN)
    redis_port = gw.redis_url.rsplit(":", 1)[1].split("/")[0]
    for port in (redis_port, gw.ports.http, gw.ports.sip):
        status, raw = await gw.http(
            "POST", "/v1/webhooks", {"url": f"http://127.0.0.1:{port}/"}, token=token
        )
        assert status == 422, raw
        assert "own_service" in json.loads(raw)["detail"]
