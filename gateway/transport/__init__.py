"""asyncio endpoints (UDP, TCP, TLS): framing and addresses only, no SIP semantics."""

from gateway.transport.addresses import Source, Target
from gateway.transport.layer import Listen, TransportLayer

__all__ = ["Listen", "Source", "Target", "TransportLayer"]
