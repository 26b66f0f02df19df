"""One webhook delivery: an HTTP/1.1 POST over a connection to a checked address.

HTTP itself is h11's (sans-I/O, the same library uvicorn serves with); this module
resolves, checks, connects, feeds bytes in and takes events out. Per subscription one
`Poster` keeps one connection open between deliveries (keep-alive), so a webhook that
receives a burst of events pays one TLS handshake, not one per event.

Limits: ``connect_timeout`` covers resolving, connecting and the TLS handshake; the
whole request and answer must take less than ``timeout``; the answer's body is read up
to ``max_response`` bytes (then the connection is dropped, the status still counts);
header blocks beyond 16 KiB are refused. Redirects are answers like any other: never
followed.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import h11

from gateway import __version__

MAX_HEADER_BYTES = 16 * 1024
USER_AGENT = f"sipgw/{__version__} webhooks"


class DeliveryError(Exception):
    """The attempt failed before a status arrived; the message is short and safe to log
    (no secret, no body)."""


class DestinationRefused(DeliveryError):
    """The URL's host is, or resolves to, an address webhooks may not reach (SSRF)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as in the URL, IPv6 without brackets
    port: int
    path: str  # path and query, what the request line carries
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        host = parts.hostname or ""
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        shown = f"[{host}]" if ":" in host else host
        header = shown if port == default else f"{shown}:{port}"
        return cls(parts.scheme, host, port, path, header)


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Certificates checked against the system's CAs (and ``ca_file``), TLS 1.2 or later."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Poster:
    """POSTs to one webhook URL, one request at a time."""

    def __init__(
        self,
        url: str,
        *,
        refusal: Callable[[str, int], str | None],
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        timeout: float,
        max_response: int,
    ) -> None:
        self.target = Target.parse(url)
        self._refusal = refusal
        self._tls = tls if self.target.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._max_response = max_response
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._http: h11.Connection | None = None
        self._answered = False  # the current exchange got a status line

    async def post(self, body: bytes, headers: list[tuple[str, str]]) -> int:
        """The answer's status code; DeliveryError (DestinationRefused) when none came."""
        reused = self._stream is not None
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    return await self._exchange(body, headers)
                except (DeliveryError, OSError, h11.ProtocolError):
                    if not reused or self._answered:
                        raise
                    # A kept-alive connection the receiver had closed meanwhile: once
                    # more on a new one (the receiver deduplicates by webhook-id).
                    self.close()
                    return await self._exchange(body, headers)
        except TimeoutError:
            self.close()
            raise DeliveryError(f"no answer within {self._timeout:g} s") from None
        except ssl.SSLError as exc:
            self.close()
            raise DeliveryError(f"TLS: {exc.reason or exc}") from None
        except OSError as exc:
            self.close()
            raise DeliveryError(f"connection: {exc.strerror or exc}") from None
        except h11.ProtocolError as exc:
            self.close()
            raise DeliveryError(f"not an HTTP/1.1 answer: {exc}") from None
        except DeliveryError:
            self.close()
            raise

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
        self._stream = None
        self._http = None

    # -- one exchange --------------------------------------------------------------------
    async def _exchange(self, body: bytes, headers: list[tuple[str, str]]) -> int:
        self._answered = False
        if self._stream is None:
            self._stream = await self._connect()
            self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        reader, writer = self._stream
        http = self._http
        assert http is not None
        request = h11.Request(
            method="POST",
            target=self.target.path,
            headers=[
                ("Host", self.target.host_header),
                ("User-Agent", USER_AGENT),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                *headers,
            ],
        )
        writer.write(http.send(request) + (http.send(h11.Data(data=body)) or b""))
        writer.write(http.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        status, complete = await self._answer(reader, http)
        if complete and http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()  # keep-alive: the next delivery reuses it
        else:
            self.close()
        return status

    async def _answer(self, reader: asyncio.StreamReader, http: h11.Connection) -> tuple[int, bool]:
        """(status, whether the answer was read whole)."""
        status: int | None = None
        read = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await reader.read(65_536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                self._answered = True
            elif isinstance(event, h11.Data):
                read += len(event.data)
                if read > self._max_response:
                    assert status is not None
                    return status, False  # the rest is not read: the connection goes
            elif isinstance(event, h11.EndOfMessage):
                assert status is not None
                return status, True
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                if status is None:
                    raise DeliveryError("connection closed before an answer")
                return status, False

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Resolve, check every address, connect to a checked one (TLS: verified
        against the URL's host name)."""
        target = self.target
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                try:
                    infos = await loop.getaddrinfo(
                        target.host, target.port, type=socket.SOCK_STREAM
                    )
                except socket.gaierror as exc:
                    raise DeliveryError(f"cannot resolve {target.host}: {exc.strerror}") from None
                addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
                for address in addresses:
                    why = self._refusal(address, target.port)
                    if why is not None:
                        raise DestinationRefused(f"{target.host} resolves to {address}: {why}")
                failure: OSError | None = None
                for address in addresses:
                    try:
                        return await asyncio.open_connection(
                            address,
                            target.port,
                            ssl=self._tls,
                            server_hostname=target.host if self._tls is not None else None,
                            limit=MAX_HEADER_BYTES * 4,
                        )
                    except ssl.SSLError:
                        raise
                    except OSError as exc:
                        failure = exc
                raise failure or DeliveryError(f"{target.host}: no address")
        except TimeoutError:
            raise DeliveryError(f"no connection within {self._connect_timeout:g} s") from None
