"""What the proxy needs of the gateway's own event notifier (the busy lamp field,
gateway/blf): it takes the out-of-dialog SUBSCRIBEs it serves, and the in-dialog
requests of its subscriptions."""

from __future__ import annotations

from typing import Protocol

from gateway.proxy.context import ServerContext
from gateway.proxy.routing import Decision
from gateway.sip.message import Request
from gateway.transport.addresses import Source


class EventNotifier(Protocol):
    def takes(self, req: Request) -> bool:
        """An out-of-dialog SUBSCRIBE this notifier answers."""

    def subscribe(self, ctx: ServerContext) -> Decision:
        """Authenticate and answer it (a challenge, a refusal, or the 200)."""

    def handles(self, req: Request, source: Source) -> bool:
        """Take an in-dialog request of one of its subscriptions (True), or leave it."""
