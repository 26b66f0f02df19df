"""The merge rule of trunk health across nodes (gateway/proxy/trunk_health.py) and the
wire form of a report (gateway/runtime/shared_health.py), with a hand-moved clock."""

from __future__ import annotations

import json

import msgpack
import pytest

from gateway.proxy.trunk_health import DownTrunk, Flip, HealthView, NodeReport
from gateway.runtime.shared_health import (
    decode_report,
    encode_report,
    pack_report,
    unpack_report,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(node: str, *down: str, seq: int = 1, started: int = 1, ttl: float = 3.0) -> NodeReport:
    entries = tuple(DownTrunk("acme", trunk, 1.7e9, "no answer") for trunk in down)
    return NodeReport(node, started, seq, ttl, entries)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def view(clock: Clock) -> HealthView:
    return HealthView("node-b", clock=clock)


def test_a_trunk_is_down_while_any_node_reports_it_down(view: HealthView) -> None:
    view.set_local(report("node-b"))  # our prober: everything up
    view.apply(report("node-a", "carrier"))
    view.apply(report("node-c"))
    assert view.is_down("acme", "carrier")
    assert not view.is_down("acme", "backup")
    assert not view.is_down("globex", "carrier"), "trunk names are per tenant"
    assert view.down_by("acme", "carrier") == ("node-a",)
    view.apply(report("node-c", "carrier", seq=2))
    assert view.down_by("acme", "carrier") == ("node-a", "node-c")
    view.apply(report("node-a", seq=2))  # A finds it up again; C still does not
    assert view.is_down("acme", "carrier") and view.down_by("acme", "carrier") == ("node-c",)
    view.apply(report("node-c", seq=3))
    assert not view.is_down("acme", "carrier") and view.down_trunks() == []


def test_a_report_lapses_unless_refreshed(view: HealthView, clock: Clock) -> None:
    view.apply(report("node-a", "carrier", ttl=3.0))
    clock.now += 2.9
    assert view.is_down("acme", "carrier")
    view.apply(report("node-a", "carrier", ttl=3.0))  # a refresh: same version, renewed
    clock.now += 2.9
    assert view.is_down("acme", "carrier")
    clock.now += 0.2  # three seconds without a refresh: the node is gone
    assert not view.is_down("acme", "carrier")
    assert view.down_by("acme", "carrier") == () and view.reports() == []
    view.expire()
    assert view.flips() == []  # it was never shown down: no flip either way


def test_a_report_read_from_a_snapshot_counts_its_age(view: HealthView, clock: Clock) -> None:
    view.apply(report("node-a", "carrier", ttl=3.0), age=2.5)
    assert view.is_down("acme", "carrier")
    clock.now += 0.6
    assert not view.is_down("acme", "carrier")


def test_our_own_probers_report_never_lapses_and_is_not_overridden(
    view: HealthView, clock: Clock
) -> None:
    view.set_local(report("node-b", "carrier", ttl=3.0))
    clock.now += 3600
    assert view.is_down("acme", "carrier")
    # Our own report echoed by Redis (or an old one) changes nothing: the prober is here.
    assert view.apply(report("node-b", seq=99)) is False
    assert view.is_down("acme", "carrier")
    view.set_local(report("node-b"))
    assert not view.is_down("acme", "carrier")


def test_an_older_version_never_replaces_a_newer_one(view: HealthView) -> None:
    # A sibling worker hears node B's worker 0 both by envelope and through Redis.
    assert view.apply(report("node-b", "carrier", seq=2))
    assert view.apply(report("node-b", seq=1)) is False, "late message of an older state"
    assert view.is_down("acme", "carrier") and view.stale == 1
    assert view.apply(report("node-b", seq=3))
    assert not view.is_down("acme", "carrier")
    # A restarted prober (a later start) starts counting again.
    assert view.apply(report("node-b", "carrier", seq=0, started=2))
    assert view.is_down("acme", "carrier")


def test_resync_forgets_nodes_redis_no_longer_holds(view: HealthView) -> None:
    view.apply(report("node-a", "carrier"))
    view.apply(report("node-b", "backup"))  # our own node, as a sibling worker hears it
    view.apply(report("node-c", "carrier"))
    view.resync([(report("node-c", "carrier", seq=1), 0.5)])
    assert view.down_by("acme", "carrier") == ("node-c",)
    assert view.is_down("acme", "backup"), "our own node's report also comes by envelope"


def test_flips_say_when_the_merged_state_changes(view: HealthView, clock: Clock) -> None:
    view.apply(report("node-a", "carrier"))
    assert view.flips() == [Flip("acme", "carrier", True, ("node-a",))]
    view.apply(report("node-c", "carrier"))
    assert view.flips() == [], "a second node agreeing is no change of routing"
    view.apply(report("node-a", seq=2))
    view.apply(report("node-c", seq=2))
    assert view.flips() == [Flip("acme", "carrier", False, ())]
    view.apply(report("node-a", "backup", seq=3))
    clock.now += 10
    view.expire()
    assert view.flips() == [], "down and lapsed between two looks: nothing to say"


def test_the_wire_form_round_trips_through_msgpack_and_json() -> None:
    sent = NodeReport(
        "node-a", 1_700_000_000_000, 7, 3.0,
        (DownTrunk("acme", "carrier", 1_700_000_123.456, "no answer to OPTIONS within 1.6 s"),),
    )  # fmt: skip
    assert unpack_report(pack_report(sent)) == sent
    assert decode_report(json.loads(json.dumps(encode_report(sent)))) == sent


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        ["node-a", 1, 1, 3.0],
        ["", 1, 1, 3.0, []],
        ["node-a", -1, 1, 3.0, []],
        ["node-a", 1, True, 3.0, []],
        ["node-a", 1, 1, 0, []],
        ["node-a", 1, 1, float("inf"), []],
        ["node-a", 1, 1, 3.0, "carrier"],
        ["node-a", 1, 1, 3.0, [["acme", "carrier", 1]]],
        ["node-a", 1, 1, 3.0, [["acme", "x" * 129, 1, "r"]]],
        ["node-a", 1, 1, 3.0, [["acme", "carrier", 1, b"bytes"]]],
        ["node-a", 1, 1, 3.0, [["acme", "carrier", 1, "r"]] * 5000],
    ],
)
def test_a_malformed_report_is_refused(value: object) -> None:
    assert decode_report(value) is None
    assert unpack_report(msgpack.packb(value)) is None


def test_garbage_bytes_are_refused_and_reasons_are_bounded() -> None:
    assert unpack_report(b"\xc1not msgpack") is None
    long = decode_report(["node-a", 1, 1, 3.0, [["acme", "carrier", 1, "r" * 5000]]])
    assert long is not None and len(long.down[0].reason) == 256
