"""Signed webhooks (issue #15 part 4) through a real gateway, a real Redis and a real
HTTPS receiver (tests/integration/webhook_receiver.py). Events are appended to the
tenant's stream by an EventBus of the test, as the gateway's own workers append them:
the gateway delivers whatever the stream holds."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import ADMIN, GatewayProcess, RedisProcess
from tests.integration.webhook_receiver import (
    Publisher,
    Receiver,
    make_webhook,
    signature_ok,
    webhook_settings,
)
from tests.waiting import wait_until_true

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    found = await Receiver(tmp_path / "receiver").start()
    yield found
    await found.stop()


def collapsed(ids: list[str]) -> list[str]:
    """At least once: an event may come again right after itself (its 2xx lost on the
    way, the same event sent again); nothing else may repeat or move."""
    return [i for n, i in enumerate(ids) if n == 0 or ids[n - 1] != i]


async def test_1000_events_arrive_signed_and_in_order(
    gateway_factory: GatewayFactory, receiver: Receiver
) -> None:
    gw = await gateway_factory(extra=webhook_settings(receiver.ca))
    token = await gw.login(ADMIN)
    made = await make_webhook(gw, token, url=receiver.url, description="CRM")
    secret = str(made["secret"])
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
    # Shown once: the list and the record never carry it.
    status, raw = await gw.http("GET", "/v1/webhooks", token=token)
    assert status == 200 and secret not in raw.decode() and "secret" not in json.loads(raw)

    async with Publisher(gw.redis_url) as publisher:
        sent = await publisher.publish(1000)
        await receiver.wait_for(1000, timeout=60)
    events = [d.event for d in receiver.received]
    assert collapsed(receiver.ids()) == sent
    assert [e["event_id"] for e in events[:1000]] == sent[: len(events[:1000])]
    seqs = [tuple(map(int, e["seq"].split("-"))) for e in events]
    assert seqs == sorted(seqs)
    now = time.time()
    for delivery in receiver.received:
        assert signature_ok(secret, delivery), delivery.headers
        assert delivery.headers["webhook-id"] == delivery.event["event_id"]
        assert abs(int(delivery.headers["webhook-timestamp"]) - now) < 120
        assert delivery.headers["content-type"] == "application/json"
    # A wrong secret does not verify: the check above can fail.
    assert not signature_ok("whsec_" + "A" * 43 + "=", receiver.received[0])
    await wait_until_true(
        lambda: _state_says(gw, token, str(made["id"]), delivered=1000), timeout=10
    )
    metrics = await gw.metrics()
    line = f'outcome="delivered",subscription="{made["id"]}",tenant="acme"}} '
    assert f"sipgw_webhook_deliveries_total{{{line}1000.0" in metrics
    status, raw = await gw.http_get("/openapi.json")
    paths = json.loads(raw)["paths"]
    assert {"/v1/webhooks", "/v1/webhooks/{sub_id}", "/v1/webhooks/{sub_id}:enable"} <= set(paths)


async def _state_says(gw: GatewayProcess, token: str, sub_id: str, **expected: object) -> bool:
    status, raw = await gw.http("GET", f"/v1/webhooks/{sub_id}", token=token)
    found = json.loads(raw) if status == 200 else {}
    return all(found.get(k) == v for k, v in expected.items())


async def test_a_receiver_down_for_30_s_then_gets_every_event_in_order(
    gateway_factory: GatewayFactory, receiver: Receiver
) -> None:
    gw = await gateway_factory(extra=webhook_settings(receiver.ca))
    token = await gw.login(ADMIN)
    await make_webhook(gw, token, url=receiver.url)
    async with Publisher(gw.redis_url) as publisher:
        sent = await publisher.publish(50)
        await receiver.wait_for(50, timeout=20)
        await receiver.stop()
        down_at = time.monotonic()
        # 30 s down while events keep coming: every retry meets a refused connection.
        while time.monotonic() - down_at < 30:
            sent += await publisher.publish(10)
            await asyncio.sleep(1.0)
        await receiver.start()
        await receiver.wait_for(len(sent), timeout=30)
    assert collapsed(receiver.ids()) == sent
    assert len(sent) >= 330
    metrics = await gw.metrics()
    failed = re.search(
        r'sipgw_webhook_deliveries_total\{[^}]*outcome="failed"[^}]*\} (\d+)', metrics
    )
    assert failed and int(failed[1]) > 10  # it kept trying while the receiver was away


async def test_a_slow_receiver_does_not_delay_another_webhook(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    slow = await Receiver(tmp_path / "slow", delay=2.0).start()
    fast = await Receiver(tmp_path / "fast", cert=slow.cert).start()
    try:
        gw = await gateway_factory(extra=webhook_settings(slow.ca))
        token = await gw.login(ADMIN)
        await make_webhook(gw, token, url=slow.url)
        await make_webhook(gw, token, url=fast.url)
        async with Publisher(gw.redis_url) as publisher:
            sent = await publisher.publish(20)
            started = time.monotonic()
            await fast.wait_for(20, timeout=10)
            took = time.monotonic() - started
        # The slow one answers one event per 2 s: had it held the fast one up, 20 events
        # would take 40 s.
        assert collapsed(fast.ids()) == sent
        assert took < 5.0 and len(slow.received) <= 4
    finally:
        await slow.stop()
        await fast.stop()


async def test_another_node_resumes_where_the_first_stopped(
    gateway_factory: GatewayFactory, receiver: Receiver, tmp_path: Path
) -> None:
    redis = RedisProcess.start(tmp_path / "shared-redis")
    try:
        settings = webhook_settings(receiver.ca)
        first = await gateway_factory(redis_url=redis.url, extra=settings, node="gw-a")
        token = await first.login(ADMIN)
        made = await make_webhook(first, token, url=receiver.url)
        async with Publisher(redis.url) as publisher:
            sent = await publisher.publish(40)
            await receiver.wait_for(40, timeout=20)
            second = await gateway_factory(redis_url=redis.url, extra=settings, node="gw-b")
            first.signal(signal.SIGTERM)  # it stops, giving its lease up
            assert await first.stop() == 0
            sent += await publisher.publish(40)
            await receiver.wait_for(80, timeout=20)
        assert collapsed(receiver.ids()) == sent  # resumed after the 40th: none again
        other = await second.login(ADMIN)
        await wait_until_true(
            lambda: _state_says(second, other, str(made["id"]), delivering_node="gw-b"),
            timeout=10,
        )
    finally:
        redis.stop()


async def test_a_failing_webhook_is_disabled_with_an_event_and_enabled_again(
    gateway_factory: GatewayFactory, receiver: Receiver
) -> None:
    receiver.status = 503
    gw = await gateway_factory(extra=webhook_settings(receiver.ca, disable_after=2.0))
    token = await gw.login(ADMIN)
    failing = await make_webhook(gw, token, url=receiver.url, types=["call.offered"])
    async with Publisher(gw.redis_url) as publisher:
        # A second webhook that wants the notice (events of no extension included).
        watcher = await Receiver(receiver.directory, cert=receiver.cert).start()
        try:
            await make_webhook(gw, token, url=watcher.url, types=["webhook.disabled"])
            sent = await publisher.publish(1)
            await wait_until_true(
                lambda: _state_says(gw, token, str(failing["id"]), enabled=False), timeout=15
            )
            await watcher.wait_for(1, timeout=10)
        finally:
            await watcher.stop()
        notice = watcher.received[0].event
        assert notice["type"] == "webhook.disabled"
        assert notice["webhook"]["id"] == failing["id"]
        assert notice["webhook"]["reason"] == "HTTP 503"
        tried = len(receiver.received)
        assert tried >= 2 and set(receiver.ids()) == set(sent)
        status, raw = await gw.http("GET", f"/v1/webhooks/{failing['id']}", token=token)
        assert json.loads(raw)["disabled_reason"] == "HTTP 503"

        # Enabled again: from the event it never got.
        receiver.status = 200
        status, raw = await gw.http("POST", f"/v1/webhooks/{failing['id']}:enable", {}, token=token)
        assert status == 200, raw
        await receiver.wait_for(tried + 1, timeout=10)
        assert receiver.received[-1].headers["webhook-id"] == sent[0]


def sipgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


async def test_the_cli_adds_lists_enables_and_removes_webhooks(
    gateway_factory: GatewayFactory, receiver: Receiver
) -> None:
    gw = await gateway_factory(extra=webhook_settings(receiver.ca))
    config = ["--tenant", "acme", "--config", str(gw.config)]
    refused = await asyncio.to_thread(sipgw, "webhook", "add", "https://169.254.169.254/", *config)
    assert refused.returncode == 1 and "denied_network" in refused.stderr

    added = await asyncio.to_thread(
        sipgw, "webhook", "add", receiver.url, "--type", "call.offered", *config
    )
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    listed = await asyncio.to_thread(sipgw, "webhook", "list", "--json", *config)
    row = json.loads(listed.stdout)
    assert row["url"] == receiver.url and secret not in listed.stdout

    async with Publisher(gw.redis_url) as publisher:
        sent = await publisher.publish(3)
        await receiver.wait_for(3, timeout=10)  # a running gateway picked it up
        assert collapsed(receiver.ids()) == sent
        assert all(signature_ok(secret, d) for d in receiver.received)

        enabled = await asyncio.to_thread(
            sipgw, "webhook", "enable", row["id"], "--from-now", *config
        )
        assert enabled.returncode == 0 and "0 events skipped" in enabled.stderr
        removed = await asyncio.to_thread(sipgw, "webhook", "remove", row["id"], *config)
        assert removed.returncode == 0, removed.stderr
        await wait_until_true(lambda: _has_none(gw), timeout=10)
    again = await asyncio.to_thread(sipgw, "webhook", "remove", row["id"], *config)
    assert again.returncode == 1


async def _has_none(gw: GatewayProcess) -> bool:
    return "sipgw_webhook_subscriptions_held 0.0" in await gw.metrics()
