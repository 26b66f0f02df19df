"""EventBus.publish without Redis: never blocks, never raises, counts what it drops;
argument validation of replay; setting seq on events."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.bus import EventBus
from gateway.bus.keys import parse_seq
from gateway.bus.streams import _set_seq, _trimmed_after
from gateway.stats import Counters

# Nothing listens here: the bus is never started in these tests, so no connection is made.
URL = "redis://127.0.0.1:1/0"


@dataclass
class Ev:
    tenant: str = "acme"
    seq: str | None = None
    body: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "seq": self.seq, **self.body}


@dataclass(frozen=True)
class FrozenEv:
    tenant: str = "acme"
    seq: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Exploding:
    @property
    def tenant(self) -> str:
        raise RuntimeError("boom")

    def to_dict(self) -> dict[str, Any]:
        raise RuntimeError("boom")


async def test_queue_full_drops_and_warns_at_most_once_per_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(URL, counters=Counters(), max_queue=3)
    caplog.set_level(logging.WARNING, logger="sipgw.bus")
    assert [bus.publish(Ev()) for _ in range(3)] == [True] * 3
    assert [bus.publish(Ev()) for _ in range(100)] == [False] * 100
    assert bus.queued == 3
    assert bus.dropped == {"queue_full": 100}
    assert len([r for r in caplog.records if r.getMessage() == "bus: event dropped"]) == 1
    assert await bus.stop() == 3  # never started: all three are left
    assert bus.dropped["shutdown"] == 3


async def test_bad_events_are_dropped_never_raised() -> None:
    bus = EventBus(URL, counters=Counters())
    assert not bus.publish(Ev(tenant="Not Valid"))
    assert not bus.publish(Ev(tenant="a}b"))
    assert not bus.publish(Exploding())
    assert not bus.publish(None)  # type: ignore[arg-type]
    assert bus.dropped == {"bad_tenant": 2, "bad_event": 2}
    assert bus.queued == 0
    await bus.stop()


async def test_publish_after_stop_is_refused() -> None:
    bus = EventBus(URL, counters=Counters())
    assert await bus.stop() == 0
    assert not bus.publish(Ev())
    assert bus.dropped == {"stopped": 1}


async def test_replay_validates_before_touching_redis() -> None:
    bus = EventBus(URL, counters=Counters())
    with pytest.raises(ValueError, match="invalid event id"):
        await bus.replay("acme", "garbage")
    with pytest.raises(ValueError, match="invalid event id"):
        await bus.replay("acme", "1-2-3")
    with pytest.raises(ValueError, match="invalid tenant"):
        await bus.replay("ACME", None)
    with pytest.raises(ValueError, match="count"):
        await bus.replay("acme", None, count=0)
    await bus.stop()


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        EventBus(URL, counters=Counters(), max_queue=0)
    with pytest.raises(ValueError):
        EventBus(URL, counters=Counters(), stream_max_age=0)


def test_seq_is_set_on_plain_and_frozen_events() -> None:
    plain, frozen = Ev(), FrozenEv()
    _set_seq(plain, "5-1")
    _set_seq(frozen, "5-2")
    assert plain.seq == "5-1"
    assert frozen.seq == "5-2"
    # nowhere to put it: ignored, never raised
    _set_seq(object(), "5-3")  # type: ignore[arg-type]


def test_min_id_for_age_trimming() -> None:
    bus = EventBus(URL, counters=Counters(), stream_max_age=60, clock=lambda: 1000.5)
    assert bus._min_id() == "940500-0"
    assert EventBus(URL, counters=Counters())._min_id() == ""


def _info(length: int, added: int, first: str | None, last: str = "9-9") -> list[object]:
    reply: list[object] = [b"length", length, b"entries-added", added,
                           b"last-generated-id", last.encode()]
    if first is not None:
        reply += [b"first-entry", [first.encode(), [b"e", b"..."]]]
    return reply


@pytest.mark.parametrize(
    ("info", "after", "expected"),
    [
        (_info(5, 5, "1-0"), "0-0", None),  # nothing was ever deleted
        (_info(5, 9, "7-0"), "7-0", None),  # the cursor is still in the stream
        (_info(5, 9, "7-0"), "8-3", None),  # ... or beyond its head
        (_info(5, 9, "7-4"), "7-3", None),  # the head is provably the next id
        (_info(5, 9, "7-0"), "6-0", "7-0"),  # something may lie between: say so
        (_info(5, 9, "7-0"), "0-0", "7-0"),  # "everything" asked, the start is gone
        (_info(0, 9, None), "3-0", ""),  # all trimmed, the cursor was older
        (_info(0, 9, None, last="3-0"), "3-0", None),  # all trimmed, the cursor saw all
        ({"length": 5, "entries-added": 9, "first-entry": ("7-0", {})}, "6-0", "7-0"),
        ("garbage", "6-0", None),
    ],
)
def test_trimmed_gap_detection(info: object, after: str, expected: str | None) -> None:
    assert _trimmed_after(info, parse_seq(after)) == expected
