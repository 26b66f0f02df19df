"""Call events, schema v1 (DESIGN.md "Call events"; docs/event-schema.json; docs/events.md).

`CallEvent` is what every consumer sees: the bus appends its `to_dict()` form to the
tenant's stream, the API sends it as JSON or msgpack. It is a frozen dataclass; the
optional parts (`Party`, `Device`, `Cause`, …) are frozen dataclasses too.

Wire form rules, fixed by the schema:

- `to_dict()` returns only JSON-ready values (str, int, float, bool, list, dict) in a
  stable field order (envelope first, then the call, then the optional parts). An absent
  optional part is *omitted*, never `null`.
- Timestamps are RFC 3339 strings in UTC with microseconds and a `Z`
  (`2024-05-01T12:00:00.123456Z`); `rfc3339()` makes them from epoch seconds.
- `event_id` is a UUIDv7 (RFC 9562 §5.7): sortable by creation time, unique, and
  monotonic within one process, so a consumer can deduplicate by it.
- `from_dict(to_dict(e)) == e`. Unknown keys are ignored (a newer node may add fields to
  v1); a wrong type or a missing envelope field raises `ValueError`.

Encode once, send many: `encode_json` / `encode_msgpack` turn the dict into the bytes
that go unchanged to every subscriber.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self, cast

import msgpack

from gateway.sip.random_ids import random_bytes

__all__ = [
    "CAUSES",
    "DIRECTIONS",
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "CallEvent",
    "CallerDisplay",
    "Cause",
    "Device",
    "Diversion",
    "Lookup",
    "Originate",
    "Party",
    "Peer",
    "ScreenPop",
    "Transfer",
    "UUID7Generator",
    "Webhook",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
    "parse_rfc3339",
    "rfc3339",
    "uuid7",
]

SCHEMA_VERSION = 1

EVENT_TYPES: tuple[str, ...] = (
    "call.originated",
    "call.offered",
    "call.delivered",
    "call.established",
    "call.held",
    "call.retrieved",
    "call.transferred",
    "call.diverted",
    "call.failed",
    "call.cleared",
    "call.recognized",
    "peer.up",
    "peer.down",
    "webhook.disabled",
)
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)

DIRECTIONS: tuple[str, ...] = ("inbound", "outbound", "internal")

# cause.normalized (see causes.py for how SIP codes map onto it). "diverted" is the one
# addition to DESIGN.md's list: a call attempt that ended with a 3xx redirection.
CAUSES: tuple[str, ...] = (
    "normal",
    "busy",
    "no_answer",
    "cancelled",
    "rejected",
    "diverted",
    "replaced",
    "timeout",
    "error",
)

# --- time -----------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_last_second: list[tuple[int, str]] = [(0, "1970-01-01T00:00:00")]  # one-entry cache


def rfc3339(ts: float) -> str:
    """Epoch seconds → `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, always 6 fraction digits)."""
    second, micros = divmod(round(ts * 1_000_000), 1_000_000)
    cached_second, text = _last_second[0]
    if second != cached_second:
        text = f"{_EPOCH + timedelta(seconds=second):%Y-%m-%dT%H:%M:%S}"
        _last_second[0] = (second, text)
    return f"{text}.{micros:06d}Z"


def parse_rfc3339(text: str) -> float:
    """The inverse of `rfc3339` (also accepts any RFC 3339 offset)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without time zone: {text!r}")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) + delta.microseconds / 1_000_000


# --- UUIDv7 ---------------------------------------------------------------------------

_COUNTER_BITS = 42  # rand_a (12 bits) + the top 30 bits of rand_b: RFC 9562 §6.2 method 1
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1


class UUID7Generator:
    """UUIDv7 per RFC 9562 §5.7, monotonic within one generator (§6.2, method 1).

    Layout: 48-bit Unix time in ms | version 7 | 12 bits | variant 0b10 | 62 bits. The 12
    bits and the top 30 of the 62 form a 42-bit counter, seeded at random (top bit clear,
    so it has room to count) at each new millisecond and incremented within one; the
    other 32 bits are random for every UUID. If the clock goes back, or the counter
    overflows, the last timestamp is kept (or moved 1 ms on), so every UUID sorts after
    the previous one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def __call__(self, now: float | None = None) -> str:
        ms = int((time.time() if now is None else now) * 1000)
        if ms < 0 or ms >= 1 << 48:
            raise ValueError("timestamp outside the UUIDv7 range")
        with self._lock:  # the pool of random bytes is shared: draw under the lock too
            random = int.from_bytes(random_bytes(10), "big")
            if ms > self._last_ms:
                counter = (random >> 32) & (_COUNTER_MAX >> 1)
            else:
                ms = self._last_ms
                counter = self._counter + 1
                if counter > _COUNTER_MAX:
                    ms += 1
                    counter = (random >> 32) & (_COUNTER_MAX >> 1)
            self._last_ms, self._counter = ms, counter
        tail = random & 0xFFFF_FFFF
        value = (
            (ms << 80)
            | (0x7 << 76)
            | ((counter >> 30) << 64)
            | (0b10 << 62)
            | ((counter & 0x3FFF_FFFF) << 32)
            | tail
        )
        text = f"{value:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


uuid7 = UUID7Generator()
"""`uuid7(now=None) -> str`: a new UUIDv7 (time from `now`, epoch seconds, if given)."""


# --- parts ----------------------------------------------------------------------------

_Spec = tuple[tuple[str, str, tuple[type, ...]], ...]  # (attribute, key, accepted types)
_STR = (str,)
_INT = (int,)
_NUM = (int, float)


_SPECS: dict[type[_Part], _Spec] = {}


def _checked(owner: str, key: str, value: Any, types: tuple[type, ...]) -> Any:
    if isinstance(value, bool) and bool not in types:
        raise ValueError(f"{owner}.{key}: expected {types[0].__name__}, got bool")
    if not isinstance(value, types):
        raise ValueError(f"{owner}.{key}: expected {types[0].__name__}, got {type(value).__name__}")
    if float in types:  # a number is a float, even if sent as an int
        return float(cast("int | float", value))
    return value


class _Part:
    """A flat optional part of an event: `to_dict()` omits `None`, `from_dict()` checks.

    What it holds is its entry in `_SPECS`, beside each class rather than a class
    variable in it: mypyc lists every class attribute as a dataclass field.
    """

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr, key, _ in _SPECS[type(self)]:
            value = getattr(self, attr)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected an object")
        kwargs: dict[str, Any] = {}
        for attr, key, types in _SPECS[cls]:
            value = data.get(key)
            if value is not None:
                kwargs[attr] = _checked(cls.__name__, key, value, types)
        try:
            return cls(**kwargs)
        except TypeError as err:  # a required field is missing
            raise ValueError(f"{cls.__name__}: {err}") from None


@dataclass(slots=True, unsafe_hash=True)
class Party(_Part):
    """The calling or called party. `number_e164` is filled by recognition, or here when
    the raw number already is E.164."""

    number_raw: str | None = None
    number_e164: str | None = None
    display: str | None = None
    uri: str | None = None


_SPECS[Party] = (
    ("number_raw", "number_raw", _STR),
    ("number_e164", "number_e164", _STR),
    ("display", "display", _STR),
    ("uri", "uri", _STR),
)


@dataclass(slots=True, unsafe_hash=True)
class Device(_Part):
    """The extension's phone: its User-Agent (or Server), Contact and where it sent from."""

    user_agent: str | None = None
    contact: str | None = None
    source: str | None = None


_SPECS[Device] = (
    ("user_agent", "user_agent", _STR),
    ("contact", "contact", _STR),
    ("source", "source", _STR),
)


@dataclass(slots=True, unsafe_hash=True)
class Cause(_Part):
    """Why a call failed or was cleared: `normalized` is one of `CAUSES`."""

    normalized: str
    sip_code: int | None = None
    sip_reason: str | None = None


_SPECS[Cause] = (
    ("normalized", "normalized", _STR),
    ("sip_code", "sip_code", _INT),
    ("sip_reason", "sip_reason", _STR),
)


@dataclass(slots=True, unsafe_hash=True)
class Transfer(_Part):
    """A REFER: `kind` blind|attended, the Refer-To target, the transferor, and for an
    attended transfer the dialog it replaces (Replaces header value)."""

    kind: str
    refer_to: str | None = None
    referred_by: str | None = None
    replaces: str | None = None


_SPECS[Transfer] = (
    ("kind", "kind", _STR),
    ("refer_to", "refer_to", _STR),
    ("referred_by", "referred_by", _STR),
    ("replaces", "replaces", _STR),
)


@dataclass(slots=True, unsafe_hash=True)
class Diversion(_Part):
    """A diversion: RFC 5806 reason (unconditional, user-busy, no-answer, deflection, …),
    the party that diverted (`from`) and, when known, the new target (`to`)."""

    reason: str
    from_: str | None = None
    to: str | None = None


_SPECS[Diversion] = (
    ("reason", "reason", _STR),
    ("from_", "from", _STR),
    ("to", "to", _STR),
)


@dataclass(slots=True, unsafe_hash=True)
class Originate(_Part):
    """Click-to-dial: the request it came from, who asked, how the phone was answered."""

    request_id: str
    requested_by: str | None = None
    auto_answer: str | None = None


_SPECS[Originate] = (
    ("request_id", "request_id", _STR),
    ("requested_by", "requested_by", _STR),
    ("auto_answer", "auto_answer", _STR),
)


Scalar = str | int | float | bool | None
_SCALARS = (str, int, float, bool)


@dataclass(slots=True, unsafe_hash=True)
class Lookup(_Part):
    """Caller recognition: status hit|miss|pending|timeout|error, the local cache's
    answer (hit|miss), the time it took and its budget, the contact source the contact
    came from and the contact's fields (only those the tenant configured; values are
    scalars). The source is stored so that unlinking it can remove its contact data
    from the stored events at once (api/contacts.py)."""

    status: str
    cache: str | None = None
    latency_ms: float | None = None
    budget_ms: float | None = None
    contact: Mapping[str, Scalar] | None = field(default=None, hash=False)
    source: str | None = None  # after contact: older code builds Lookup positionally

    def to_dict(self) -> dict[str, Any]:
        out = _Part.to_dict(self)
        if self.contact is not None:
            out["contact"] = dict(self.contact)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        part = super(Lookup, cls).from_dict(data)
        contact = data.get("contact")
        if contact is None:
            return part
        if not isinstance(contact, Mapping) or not all(
            isinstance(k, str) and (v is None or isinstance(v, _SCALARS))
            for k, v in contact.items()
        ):
            raise ValueError("Lookup.contact: expected an object of scalars")
        return dataclasses.replace(part, contact=dict(contact))


_SPECS[Lookup] = (
    ("status", "status", _STR),
    ("cache", "cache", _STR),
    ("latency_ms", "latency_ms", _NUM),
    ("budget_ms", "budget_ms", _NUM),
    ("source", "source", _STR),
)


@dataclass(slots=True, unsafe_hash=True)
class CallerDisplay(_Part):
    """The recognized caller's name that the INVITE showed the callee's phone
    (gateway/proxy/caller_display.py): the name as written, what answered in time
    (the node's contact ``cache``, or ``redis`` within the tenant's wait), the headers
    it went into, and the contact source it came from (unlinking that source removes
    this part from stored events, like the contact itself)."""

    name: str
    answered_by: str
    headers: tuple[str, ...] = ()
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = _Part.to_dict(self)
        out["headers"] = list(self.headers)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        part = super(CallerDisplay, cls).from_dict(data)
        headers = data.get("headers", [])
        if not isinstance(headers, list) or not all(isinstance(h, str) for h in headers):
            raise ValueError("CallerDisplay.headers: expected a list of strings")
        return dataclasses.replace(part, headers=tuple(headers))


_SPECS[CallerDisplay] = (
    ("name", "name", _STR),
    ("answered_by", "answered_by", _STR),
    ("source", "source", _STR),
)


@dataclass(slots=True, unsafe_hash=True)
class ScreenPop(_Part):
    """One rendered screen-pop URL and the name of its template."""

    name: str
    url: str


_SPECS[ScreenPop] = (("name", "name", _STR), ("url", "url", _STR))


@dataclass(slots=True, unsafe_hash=True)
class Peer(_Part):
    """A SIP peer (trunk) whose OPTIONS health changed: peer.up / peer.down."""

    name: str
    address: str | None = None
    reason: str | None = None


_SPECS[Peer] = (
    ("name", "name", _STR),
    ("address", "address", _STR),
    ("reason", "reason", _STR),
)


@dataclass(slots=True, unsafe_hash=True)
class Webhook(_Part):
    """A webhook subscription the gateway stopped delivering to: webhook.disabled
    (gateway/webhooks)."""

    id: str
    url: str
    reason: str | None = None
    failing_since: str | None = None  # when the failures in a row began


_SPECS[Webhook] = (
    ("id", "id", _STR),
    ("url", "url", _STR),
    ("reason", "reason", _STR),
    ("failing_since", "failing_since", _STR),
)


# --- the event --------------------------------------------------------------------------

_PARTS: dict[str, type[_Part]] = {
    "calling": Party,
    "called": Party,
    "device": Device,
    "cause": Cause,
    "transfer": Transfer,
    "diversion": Diversion,
    "originate": Originate,
    "lookup": Lookup,
    "caller_display": CallerDisplay,
    "peer": Peer,
    "webhook": Webhook,
}


@dataclass(slots=True, unsafe_hash=True)
class CallEvent:
    """One event of schema v1. Field order here is the wire order of `to_dict()`."""

    # envelope
    type: str
    occurred_at: str
    node: str
    tenant: str
    event_id: str = field(default_factory=uuid7)
    seq: str | None = None  # the tenant stream id, set by the bus
    v: int = SCHEMA_VERSION
    # the call
    call_id: str | None = None
    sip_call_id: str | None = None
    from_tag: str | None = None
    to_tag: str | None = None
    conversation_id: str | None = None
    parent_call_id: str | None = None
    direction: str | None = None
    state: str | None = None
    prev_state: str | None = None
    calling: Party | None = None
    called: Party | None = None
    extension: str | None = None
    device: Device | None = None
    created_at: str | None = None
    answered_at: str | None = None
    ended_at: str | None = None
    duration_ms: int | None = None
    cause: Cause | None = None
    missed: bool | None = None
    transfer: Transfer | None = None
    diversion: Diversion | None = None
    originate: Originate | None = None
    lookup: Lookup | None = None
    screen_pop: tuple[ScreenPop, ...] | None = None
    caller_display: CallerDisplay | None = None
    peer: Peer | None = None
    webhook: Webhook | None = None

    def __post_init__(self) -> None:
        if self.type not in _EVENT_TYPE_SET:
            raise ValueError(f"unknown event type {self.type!r}")

    def with_seq(self, seq: str) -> CallEvent:
        """The same event with its stream id (what the bus hands to subscribers)."""
        return dataclasses.replace(self, seq=seq)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "event_id": self.event_id}
        if self.seq is not None:
            out["seq"] = self.seq
        out["type"] = self.type
        out["occurred_at"] = self.occurred_at
        out["node"] = self.node
        out["tenant"] = self.tenant
        for name in _BODY_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, _Part):
                out[name] = value.to_dict()
            elif name == "screen_pop":
                out[name] = [pop.to_dict() for pop in value]
            else:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallEvent:
        if not isinstance(data, Mapping):
            raise ValueError("event: expected an object")
        version = data.get("v")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise ValueError(f"event: unsupported schema version {version!r}")
        kwargs: dict[str, Any] = {}
        for key in ("type", "occurred_at", "node", "tenant", "event_id"):
            value = data.get(key)
            if not isinstance(value, str):
                raise ValueError(f"event.{key}: missing or not a string")
            kwargs[key] = value
        seq = data.get("seq")
        if seq is not None:
            kwargs["seq"] = _checked("event", "seq", seq, _STR)
        for name in _BODY_FIELDS:
            value = data.get(name)
            if value is None:
                continue
            part = _PARTS.get(name)
            if part is not None:
                kwargs[name] = part.from_dict(value)
            elif name == "screen_pop":
                if not isinstance(value, list):
                    raise ValueError("event.screen_pop: expected a list")
                kwargs[name] = tuple(ScreenPop.from_dict(item) for item in value)
            else:
                kwargs[name] = _checked("event", name, value, _SCALAR_FIELDS.get(name, _STR))
        return cls(**kwargs)


_ENVELOPE = ("type", "occurred_at", "node", "tenant", "event_id", "seq", "v")
_BODY_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(CallEvent) if f.name not in _ENVELOPE
)
_SCALAR_FIELDS: dict[str, tuple[type, ...]] = {"duration_ms": _INT, "missed": (bool,)}


# --- wire formats -----------------------------------------------------------------------


def encode_json(event: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an event dict, in its own (stable) field order."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )


def encode_msgpack(event: Mapping[str, Any]) -> bytes:
    """msgpack of an event dict (str as msgpack str, field order kept)."""
    return cast(bytes, msgpack.packb(event, use_bin_type=True))


def decode_msgpack(data: bytes) -> dict[str, Any]:
    """The event dict back from `encode_msgpack` bytes; `ValueError` if it is not one."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as err:  # msgpack raises several unrelated exception types
        raise ValueError(f"not a msgpack event: {err}") from None
    if not isinstance(value, dict):
        raise ValueError("not a msgpack event: expected a map")
    return cast(dict[str, Any], value)
