"""The call model: SIP dialog observations → call states → `CallEvent` (schema v1).

Sans-I/O: imports `gateway.sip` (and may import config/stats), never transport, proxy,
api or bus. `CallTracker.observe()` is the entry point; `events` holds the wire schema.
"""

from gateway.calls.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    CallEvent,
    Cause,
    Device,
    Diversion,
    Lookup,
    Originate,
    Party,
    Peer,
    ScreenPop,
    Transfer,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    uuid7,
)
from gateway.calls.model import State
from gateway.calls.tracker import CallTracker, Meta, MetaLike

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "CallEvent",
    "CallTracker",
    "Cause",
    "Device",
    "Diversion",
    "Lookup",
    "Meta",
    "MetaLike",
    "Originate",
    "Party",
    "Peer",
    "ScreenPop",
    "State",
    "Transfer",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
    "uuid7",
]
