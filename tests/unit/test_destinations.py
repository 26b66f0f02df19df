"""The destination policy (gateway/proxy/destinations.py): where SIP may go."""

from __future__ import annotations

import pytest

from gateway.proxy.destinations import DestinationPolicy
from gateway.proxy.record_route import RouteSigner


def policy(**overrides: object) -> DestinationPolicy:
    options: dict[str, object] = {
        "services": [("127.0.0.1", 6379), ("0.0.0.0", 8080), ("10.0.0.5", 6380)],
        "sip_ports": lambda: frozenset({5060}),
        "local_hosts": ["192.0.2.10"],
        "is_peer": lambda host, port: (host, port) == ("127.0.0.1", 5080),
    }
    options.update(overrides)
    return DestinationPolicy(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "port", "flow", "why"),
    [
        ("203.0.113.7", 5060, False, None),  # a phone or carrier on the internet
        ("127.0.0.1", 6379, True, "own_service"),  # Redis, even as a "flow"
        ("::ffff:127.0.0.1", 6379, True, "own_service"),  # the mapped spelling
        ("192.0.2.10", 8080, False, "own_service"),  # HTTP on a wildcard, our address
        ("127.0.0.2", 8080, False, "own_service"),  # ... and any loopback address
        ("10.0.0.5", 6380, False, "own_service"),  # a remote Redis
        ("10.0.0.5", 5060, False, None),  # its host otherwise
        ("169.254.169.254", 80, False, "denied_network"),  # cloud metadata
        ("224.0.0.1", 5060, False, "denied_network"),
        ("255.255.255.255", 5060, True, "denied_network"),
        ("fe80::1", 5060, False, "denied_network"),
        ("127.0.0.1", 5432, False, "loopback"),  # another service beside us
        ("192.0.2.10", 5432, False, "loopback"),  # the same through our own address
        ("127.0.0.1", 5432, True, None),  # where a message came from
        ("127.0.0.1", 5080, False, None),  # a configured trunk
        ("127.0.0.1", 5060, True, "own_service"),  # our SIP listener
        ("carrier.example", 5060, False, None),  # names: checked once resolved
    ],
)
def test_refusals(host: str, port: int, flow: bool, why: str | None) -> None:
    assert policy().refusal(host, port, flow=flow) == why


def test_a_trunk_may_spiral_back_to_our_sip_listener() -> None:
    spiral = policy(is_peer=lambda host, port: port == 5060)
    assert spiral.refusal("127.0.0.1", 5060) is None


def test_the_deny_list_is_configurable() -> None:
    assert policy(deny=["203.0.113.0/24"]).refusal("203.0.113.7", 5060) == "denied_network"
    assert policy(deny=[]).refusal("169.254.169.254", 80) is None


@pytest.mark.parametrize(
    ("contact", "source", "why"),
    [
        (("203.0.113.7", 5060), "203.0.113.7", None),
        (("198.51.100.1", 5060), "203.0.113.7", None),  # reached over its flow anyway
        (("127.0.0.1", 6379), "127.0.0.1", "own_service"),
        (("127.0.0.1", 5070), "127.0.0.1", None),  # a phone on our host, at its flow
        (("127.0.0.1", 5070), "203.0.113.7", "loopback"),  # "I am on your host"
        (("169.254.169.254", 80), "203.0.113.7", "denied_network"),
    ],
)
def test_register_contacts(contact: tuple[str, int], source: str, why: str | None) -> None:
    assert policy().contact_refusal(*contact, source) == why


def test_a_route_signature_names_one_dialog() -> None:
    signer = RouteSigner(b"0123456789abcdef0123456789")
    signature = signer.sign("call-1", "tag-a")
    assert signer.verify(signature, "call-1", ("tag-a", None))
    assert signer.verify(signature.upper(), "call-1", (None, "tag-a"))  # folded, callee side
    assert not signer.verify(signature, "call-2", ("tag-a",))
    assert not signer.verify(signature, "call-1", ("tag-b",))
    assert not signer.verify(None, "call-1", ("tag-a",))
    assert not RouteSigner(b"another-secret-0123456789").verify(signature, "call-1", ("tag-a",))
