"""Key names, tenant and seq validation, and the live message format of the bus."""

from __future__ import annotations

import msgpack
import pytest

from gateway.bus import keys


@pytest.mark.parametrize("tenant", ["a", "acme", "acme-01", "0", "x" * 32])
def test_valid_tenants(tenant: str) -> None:
    assert keys.validate_tenant(tenant) == tenant
    assert keys.events_key(tenant) == "{" + tenant + "}:events"
    assert keys.live_channel(tenant) == "{" + tenant + "}:live"
    assert keys.tenant_of_channel(keys.live_channel(tenant).encode()) == tenant


@pytest.mark.parametrize(
    "tenant", ["", "Acme", "a_b", "a b", "x" * 33, "a}b", "a:b", "a*", "é", None, 3, b"acme"]
)
def test_invalid_tenants_never_become_keys(tenant: object) -> None:
    assert not keys.is_valid_tenant(tenant)
    with pytest.raises(ValueError, match="invalid tenant id"):
        keys.validate_tenant(tenant)
    with pytest.raises(ValueError):
        keys.events_key(tenant)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "channel", [b"acme:live", b"{acme}:events", b"{Acme}:live", b"{}:live", b"{a}b}:live"]
)
def test_foreign_channels_have_no_tenant(channel: bytes) -> None:
    assert keys.tenant_of_channel(channel) is None


def test_seq_parse_and_order() -> None:
    assert keys.parse_seq("0-0") == (0, 0)
    assert keys.parse_seq("1718000000000-12") == (1718000000000, 12)
    # Numeric, not textual, order: 9-0 < 10-0 and 5-9 < 5-10.
    assert keys.parse_seq("9-0") < keys.parse_seq("10-0")
    assert keys.parse_seq("5-9") < keys.parse_seq("5-10")
    assert keys.format_seq((5, 10)) == "5-10"
    assert keys.validate_seq("1-2") == "1-2"


@pytest.mark.parametrize(
    "seq", ["", "1", "1-", "-1", "a-b", "1-2-3", " 1-2", "1-2\n", "(1-2", "+", "-", "$",
            "99999999999999999999-0", "1" * 21 + "-0", None, 12]
)
def test_bad_seq_is_a_clear_value_error(seq: object) -> None:
    with pytest.raises(ValueError, match="invalid event id"):
        keys.parse_seq(seq)


def test_live_message_round_trip() -> None:
    event = {"type": "call.offered", "tenant": "acme", "seq": None, "blob": "a\nb"}
    payload = keys.encode_payload(event)
    message = keys.encode_live("1718000000000-3", payload)
    assert message.startswith(b"1718000000000-3\n")
    seq, decoded = keys.decode_live(message)
    assert seq == "1718000000000-3"
    assert decoded == {**event, "seq": "1718000000000-3"}


@pytest.mark.parametrize(
    "message",
    [b"no separator", b"abc\n" + msgpack.packb({}), b"1-1\n\xc1", b"1-1\n" + msgpack.packb([1]),
     b"1-1\n" + msgpack.packb({}) + b"x"],
)
def test_foreign_live_messages_are_value_errors(message: bytes) -> None:
    with pytest.raises(ValueError):
        keys.decode_live(message)
