"""Monitor mode: the SIP a PBX copies to us over HEP, as input of the call tracker.

Beside the proxy (which feeds the tracker what it routes), a `[monitor]` node feeds it
what `[[monitor.sources]]` saw: the runtime's HEP listener has checked the sender and
decoded the packet (`gateway.calls.hep`); here the payload is parsed and given the
routing facts a proxy would have known (tenant, direction, extension), taken from the
capture's addresses: from a configured trunk is inbound, to one is outbound, anything
else internal. Events are dated by the capture time, not by their arrival.
"""

from __future__ import annotations

from collections import Counter

from gateway.calls.events import CallEvent
from gateway.calls.hep import HepPacket
from gateway.calls.tracker import CallTracker
from gateway.config import MonitorSource
from gateway.proxy.observe import Observed
from gateway.sip.errors import SIPParseError
from gateway.sip.message import Request, parse_message


class Monitor:
    def __init__(self, tracker: CallTracker, dropped: Counter[str]) -> None:
        self.tracker = tracker
        self.dropped = dropped  # sipgw_hep_dropped_total: bad_sip is counted here

    def observe(self, payload: bytes, packet: HepPacket, source: MonitorSource) -> list[CallEvent]:
        """The call events one captured SIP message causes (none if it is not SIP)."""
        try:
            msg = parse_message(payload)
            msg.validate()
        except SIPParseError:
            self.dropped["bad_sip"] += 1
            return []
        direction: str | None = None
        extension: str | None = None
        if isinstance(msg, Request) and msg.method == "INVITE" and not msg.to.tag:
            if source.is_trunk(packet.src_ip, packet.src_port):
                direction, extension = "inbound", _user(msg.uri)
            elif source.is_trunk(packet.dst_ip, packet.dst_port):
                direction, extension = "outbound", _user(msg.from_.uri)
            else:
                direction, extension = "internal", _user(msg.uri)
        info = Observed(
            tenant=source.tenant if direction else None,
            direction=direction,
            extension=extension,
            local=False,
            source=f"hep:{packet.src_ip}:{packet.src_port}",
            user_agent=msg.get("User-Agent" if isinstance(msg, Request) else "Server"),
        )
        return self.tracker.observe(msg, info, now=packet.timestamp)


def _user(uri: object) -> str | None:
    user = getattr(uri, "user", None) or getattr(uri, "number", None)
    return str(user) if user else None
