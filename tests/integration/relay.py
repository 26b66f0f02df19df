"""A TCP relay on loopback that delays what the server sends back, on demand.

Put in front of redis-server, it makes Redis slow on purpose (a congested network or a
busy Redis, as the gateway sees it) without touching the server: each chunk from the
server is forwarded `delay` seconds after it arrived (latency, not a bandwidth limit:
chunks in flight do not wait for each other). The delay can change while connections
are open.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.peers.ports import free_tcp_port


class DelayRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_tcp_port()
        self.delay = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> DelayRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Closing both ends lets every connection's handler return by itself (a cancelled
        # handler would be logged as an error by asyncio's server).
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        self._writers.update((client_w, server_w))
        try:
            await asyncio.gather(
                self._pump(client_r, server_w, delayed=False),
                self._pump(server_r, client_w, delayed=True),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            client_w.close()
            server_w.close()
            self._writers.difference_update((client_w, server_w))
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.close()
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # the point of the relay: a late answer
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(forward())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + (self.delay if delayed else 0.0), data))
            queue.put_nowait((loop.time(), b""))
            await sender
        finally:
            sender.cancel()
