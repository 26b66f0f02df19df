"""Tenant event streams in Redis, replay, and the node's live fan-out (DESIGN.md "Bus and
subscriptions"; docs/events-contract.md "gateway/bus")."""

from gateway.bus.live import (
    LiveHub,
    LiveSubscription,
    SubscriberOverflow,
    SubscriberResync,
)
from gateway.bus.replay import BusUnavailable, EventFilter, events_since
from gateway.bus.streams import EventBus, EventsLost, Publishable, ReplayPage

__all__ = [
    "BusUnavailable",
    "EventBus",
    "EventFilter",
    "EventsLost",
    "LiveHub",
    "LiveSubscription",
    "Publishable",
    "ReplayPage",
    "SubscriberOverflow",
    "SubscriberResync",
    "events_since",
]
