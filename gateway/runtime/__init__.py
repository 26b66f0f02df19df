"""The runtime: where sipgw meets the event loop, the sockets and Redis.

Everything below it (``gateway.sip``, the transaction layer, ``gateway.proxy``'s
decisions, ``gateway.calls``) is sans-I/O and imports no asyncio, redis or socket (an
import-linter contract in pyproject.toml). Here live the thin asyncio classes that feed
it: the SIP server loop (`sip_server`), the registrations shared through Redis
(`shared_location`) and the HEP listener of monitor mode (`hep_listener`). The SIP
sockets themselves are `gateway.transport`, and the one Redis reconnect/backoff helper
is `gateway.redis_link`.
"""
