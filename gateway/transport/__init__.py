"""asyncio endpoints (UDP, TCP, TLS): framing and addresses only, no SIP semantics."""
