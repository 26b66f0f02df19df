"""Webhooks without Redis: the signature (Standard Webhooks' own test vector), the
retry schedule, what an admin may subscribe, and the HTTP client's limits against a
local server (redirects not followed, answers cut at the size limit, timeouts)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from gateway.config import Settings, WebhookSettings
from gateway.webhooks import signing
from gateway.webhooks.client import DeliveryError, DestinationRefused, Poster
from gateway.webhooks.delivery import retry_delay
from gateway.webhooks.destinations import WebhookDestinations
from gateway.webhooks.subscriptions import (
    Invalid,
    Subscription,
    check_extensions,
    check_types,
    check_url,
    is_id,
    new_id,
)


def test_the_signature_matches_the_standard_webhooks_test_vector() -> None:
    # From the Standard Webhooks reference libraries' tests.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    got = signing.signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                            b'{"test": 2432232314}')  # fmt: skip
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_new_secret_is_32_random_bytes_in_the_whsec_form() -> None:
    first, second = signing.new_secret(), signing.new_secret()
    assert first != second and signing.is_secret(first)
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert not signing.is_secret("whsec_not base64!") and not signing.is_secret("abc")


def test_retries_double_up_to_the_maximum_each_jittered_by_up_to_half() -> None:
    assert retry_delay(1, 1.0, 300.0, 0.0) == 1.0
    assert retry_delay(1, 1.0, 300.0, 0.999) == pytest.approx(0.5005)
    assert [retry_delay(n, 1.0, 300.0, 0.0) for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert retry_delay(40, 1.0, 300.0, 0.0) == 300.0
    assert retry_delay(10_000, 1.0, 300.0, 0.5) == 225.0  # no overflow


def test_ids_and_the_record_round_trip_without_showing_the_secret() -> None:
    sub = Subscription(new_id(), "acme", "https://crm.example/h", signing.new_secret(),
                       ("call.offered",), ("201",), "CRM", 1.0, "203")  # fmt: skip
    assert is_id(sub.id) and not is_id("wh_../../x")
    assert Subscription.from_json("acme", sub.to_json()) == sub
    assert "secret" not in sub.public() and sub.secret not in str(sub.public())
    disabled = sub.disabled(2.0, "HTTP 503")
    assert not disabled.enabled and disabled.enabled_again() == sub
    assert sub.event_filter({"type": "call.offered", "extension": "201"})
    assert not sub.event_filter({"type": "peer.down"})


def test_types_and_extensions_are_checked() -> None:
    assert check_types(["call.offered", "call.offered"]) == ("call.offered",)
    with pytest.raises(Invalid, match="types"):
        check_types(["call.ringing"])
    with pytest.raises(Invalid):
        check_types("call.offered")
    assert check_extensions(["201"], frozenset({"201"})) == ("201",)
    for bad in (["20x"], ["999"], [201]):
        with pytest.raises(Invalid, match="extensions"):
            check_extensions(bad, frozenset({"201"}))


def policy(**webhooks: object) -> WebhookDestinations:
    settings = Settings()
    return WebhookDestinations(replace(settings, webhooks=WebhookSettings(**webhooks)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "port", "why"),
    [
        ("203.0.113.7", 443, None),
        ("2001:db8::7", 443, None),
        ("10.0.0.1", 443, "denied_network"),
        ("192.168.0.10", 443, "denied_network"),
        ("100.64.1.1", 443, "denied_network"),
        ("fd12::1", 443, "denied_network"),
        ("::ffff:10.0.0.1", 443, "denied_network"),
        ("169.254.169.254", 80, "denied_network"),
        ("0.0.0.0", 443, "denied_network"),
        ("127.0.0.1", 443, "loopback"),
        ("::1", 443, "loopback"),
        ("127.0.0.1", 6379, "own_service"),  # the configured Redis
    ],
)
def test_the_destination_policy_of_webhooks(address: str, port: int, why: str | None) -> None:
    assert policy().refusal(address, port) == why


def test_the_allowances_open_what_they_name_and_nothing_else() -> None:
    open_ = policy(allow_loopback=True, allow_private=True)
    assert open_.refusal("127.0.0.1", 8443) is None
    assert open_.refusal("10.0.0.1", 443) is None
    assert open_.refusal("127.0.0.1", 6379) == "own_service"
    assert open_.refusal("169.254.169.254", 80) == "denied_network"


def test_urls() -> None:
    closed, loop = policy(), policy(allow_loopback=True)

    def check(url: str, destinations: WebhookDestinations = closed) -> str:
        return check_url(url, allow_loopback=destinations.allow_loopback,
                         refusal=destinations.refusal)  # fmt: skip

    assert check("https://crm.example/hook?x=1") == "https://crm.example/hook?x=1"
    assert check("http://127.0.0.1:8443/h", loop) == "http://127.0.0.1:8443/h"
    for bad in (
        "http://crm.example/hook",  # plain http beyond loopback
        "https://127.0.0.1/h", "https://localhost/h", "https://[::1]/h",
        "https://crm.example/h#frag", "https://a@crm.example/h", "https://crm.example:99999/",
        "https://crm.example/a b", "https:///nohost", "javascript:alert(1)",
        "https://" + "a" * 2100 + ".example/",
    ):  # fmt: skip
        with pytest.raises(Invalid, match=r"^url: "):
            check(bad)


# -- the client against a local server (plain HTTP on loopback) -------------------------

Answer = Callable[[bytes], bytes]


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Answer], asyncio.Future[int]]]:
    servers: list[asyncio.Server] = []

    def start(answer: Answer) -> asyncio.Future[int]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            writer.write(answer(request))
            await writer.drain()
            writer.close()

        async def bind() -> int:
            made = await asyncio.start_server(serve, "127.0.0.1", 0)
            servers.append(made)
            return int(made.sockets[0].getsockname()[1])

        return asyncio.ensure_future(bind())

    yield start
    for made in servers:
        made.close()


def poster(port: int, **limits: float) -> Poster:
    return Poster(
        f"http://127.0.0.1:{port}/hook", refusal=lambda address, port: None, tls=None,
        connect_timeout=limits.get("connect_timeout", 2.0),
        timeout=limits.get("timeout", 2.0), max_response=int(limits.get("max_response", 1024)),
    )  # fmt: skip


async def test_a_redirect_is_an_answer_not_followed(
    server: Callable[[Answer], asyncio.Future[int]],
) -> None:
    port = await server(lambda req: b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\n"
                                    b"Content-Length: 0\r\n\r\n")  # fmt: skip
    assert await poster(port).post(b"{}", []) == 302


async def test_an_answer_is_read_up_to_the_limit_only(
    server: Callable[[Answer], asyncio.Future[int]],
) -> None:
    big = b"x" * 1_000_000
    port = await server(
        lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    )
    client = poster(port, max_response=2048)
    assert await client.post(b"{}", []) == 200
    assert client._stream is None  # the rest was not read: the connection is dropped


async def test_a_receiver_that_never_answers_times_out(
    server: Callable[[Answer], asyncio.Future[int]],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    made = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        client = poster(made.sockets[0].getsockname()[1], timeout=0.3)
        with pytest.raises(DeliveryError, match=r"no answer within 0\.3 s"):
            await client.post(b"{}", [])
    finally:
        made.close()


async def test_a_refused_address_is_never_connected_to() -> None:
    accepted: list[bool] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(True)
        writer.close()

    made = await asyncio.start_server(count, "127.0.0.1", 0)
    try:
        client = Poster(
            f"http://127.1:{made.sockets[0].getsockname()[1]}/", refusal=policy().refusal,
            tls=None, connect_timeout=1, timeout=1, max_response=1024,
        )  # fmt: skip
        with pytest.raises(DestinationRefused, match=r"resolves to 127\.0\.0\.1: loopback"):
            await client.post(b"{}", [])
    finally:
        made.close()
    assert accepted == []
