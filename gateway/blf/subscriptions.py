"""Dialog-event subscriptions (RFC 6665, RFC 4235): one per accepted SUBSCRIBE, its
NOTIFY flow as a state table, and the index the notifier finds them by.

A subscription sends one NOTIFY at a time: a change while one is in flight is folded
into the next (full state, so nothing is lost but intermediate states nobody could have
acted on), which keeps `version` and the phone's view in order whatever the network
reorders, and keeps a burst of calls from flooding a phone. Ending it (expiry, an
un-SUBSCRIBE) sends a final NOTIFY with ``Subscription-State: terminated``; a NOTIFY
that fails (481, any final error, a timeout, a transport error) ends it without one,
since the subscriber is gone (RFC 6665 §4.2.2).

    state          input        → state          do
    IDLE           CHANGE         SENDING         NOTIFY
    IDLE           END            ENDING          FINAL_NOTIFY
    SENDING        CHANGE         SENDING_STALE   -
    SENDING        ANSWERED       IDLE            -
    SENDING        FAILED         ENDED           FORGET
    SENDING        END            ENDING          FINAL_NOTIFY
    SENDING_STALE  CHANGE         SENDING_STALE   -
    SENDING_STALE  ANSWERED       SENDING         NOTIFY
    SENDING_STALE  FAILED         ENDED           FORGET
    SENDING_STALE  END            ENDING          FINAL_NOTIFY
    ENDING         FINAL_DONE     ENDED           FORGET
    ENDING         anything else  ENDING          -
    ENDED          anything       ENDED           -
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.blf.dialog_info import DialogView
from gateway.proxy.timers import TimerHandle
from gateway.transport.addresses import Target

_K = TypeVar("_K")


class SubState(enum.Enum):
    IDLE = "idle"  # active, no NOTIFY in flight
    SENDING = "sending"  # a NOTIFY in flight
    SENDING_STALE = "sending_stale"  # ... and a newer state waits for its answer
    ENDING = "ending"  # the final NOTIFY is out
    ENDED = "ended"


class SubInput(enum.Enum):
    CHANGE = "change"  # the extension's dialogs changed, or the subscription was refreshed
    ANSWERED = "answered"  # a 2xx to a NOTIFY
    FAILED = "failed"  # a NOTIFY failed: 481, another final error, a timeout
    END = "end"  # expired, or un-SUBSCRIBEd
    FINAL_DONE = "final_done"  # the final NOTIFY was answered or failed


class Do(enum.Enum):
    NOTHING = "nothing"
    NOTIFY = "notify"
    FINAL_NOTIFY = "final_notify"
    FORGET = "forget"


S, In = SubState, SubInput
TRANSITIONS: dict[tuple[SubState, SubInput], tuple[SubState, Do]] = {
    (S.IDLE, In.CHANGE): (S.SENDING, Do.NOTIFY),
    (S.IDLE, In.END): (S.ENDING, Do.FINAL_NOTIFY),
    (S.SENDING, In.CHANGE): (S.SENDING_STALE, Do.NOTHING),
    (S.SENDING, In.ANSWERED): (S.IDLE, Do.NOTHING),
    (S.SENDING, In.FAILED): (S.ENDED, Do.FORGET),
    (S.SENDING, In.END): (S.ENDING, Do.FINAL_NOTIFY),
    (S.SENDING_STALE, In.CHANGE): (S.SENDING_STALE, Do.NOTHING),
    (S.SENDING_STALE, In.ANSWERED): (S.SENDING, Do.NOTIFY),
    (S.SENDING_STALE, In.FAILED): (S.ENDED, Do.FORGET),
    (S.SENDING_STALE, In.END): (S.ENDING, Do.FINAL_NOTIFY),
    (S.ENDING, In.FINAL_DONE): (S.ENDED, Do.FORGET),
}


def advance(state: SubState, event: SubInput) -> tuple[SubState, Do]:
    """The table above; pairs it does not list change nothing (ENDING and ENDED)."""
    return TRANSITIONS.get((state, event), (state, Do.NOTHING))


@dataclass(eq=False)
class Subscription:
    """One accepted SUBSCRIBE: the dialog it made (we are its UAS) and what the
    subscriber has been told."""

    tenant: str
    extension: str
    subscriber: str  # the authenticated username: what the per-subscriber limit counts
    entity: str  # sip:201@acme.example: the body's entity
    call_id: str
    local_tag: str  # ours (the To tag of our 2xx)
    remote_tag: str  # the subscriber's From tag
    local_uri: str  # the SUBSCRIBE's To, without a tag: our NOTIFY's From
    remote_uri: str  # the SUBSCRIBE's From, without a tag: our NOTIFY's To
    remote_target: str  # its Contact: our NOTIFY's Request-URI
    event_id: str | None  # Event: dialog;id=…, echoed in every NOTIFY (RFC 6665 §8.2.3)
    target: Target  # the subscriber's own flow: where every NOTIFY goes
    source_host: str  # in-dialog SUBSCRIBEs must come from there
    expires_at: float
    state: SubState = SubState.IDLE
    version: int = -1  # of the last body sent; the first is 0 (RFC 4235 §4.1)
    cseq: int = 0  # of our last NOTIFY
    remote_cseq: int = 0  # of the subscriber's last SUBSCRIBE
    expiry: TimerHandle | None = None
    # Dialogs that ended since this subscriber's last NOTIFY: each is shown to it once
    # as terminated, however the NOTIFYs were folded.
    ended: dict[str, DialogView] = field(default_factory=dict)
    end_reason: str = "timeout"  # of the final Subscription-State

    @property
    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)


class SubscriptionTable:
    """Every subscription of this process: by dialog, by watched extension, and the
    counts the limits read."""

    def __init__(self) -> None:
        self.by_dialog: dict[tuple[str, str], Subscription] = {}
        self._watching: dict[tuple[str, str], dict[Subscription, None]] = {}
        self._per_subscriber: Counter[tuple[str, str]] = Counter()
        self._per_tenant: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.by_dialog)

    def add(self, sub: Subscription) -> None:
        self.by_dialog[sub.key] = sub
        self._watching.setdefault((sub.tenant, sub.extension), {})[sub] = None
        self._per_subscriber[(sub.tenant, sub.subscriber)] += 1
        self._per_tenant[sub.tenant] += 1

    def remove(self, sub: Subscription) -> None:
        if self.by_dialog.get(sub.key) is not sub:
            return
        del self.by_dialog[sub.key]
        watchers = self._watching[(sub.tenant, sub.extension)]
        del watchers[sub]
        if not watchers:
            del self._watching[(sub.tenant, sub.extension)]
        _decrement(self._per_subscriber, (sub.tenant, sub.subscriber))
        _decrement(self._per_tenant, sub.tenant)

    def watching(self, tenant: str, extension: str) -> list[Subscription]:
        return list(self._watching.get((tenant, extension), ()))

    def of_subscriber(self, tenant: str, subscriber: str) -> int:
        return self._per_subscriber[(tenant, subscriber)]

    def of_tenant(self, tenant: str) -> int:
        return self._per_tenant[tenant]

    def tenants(self) -> set[str]:
        return set(self._per_tenant)


def _decrement(counter: Counter[_K], key: _K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
