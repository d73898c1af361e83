"""A small HTTP/1.1 client for the gateway's hop to vLLM.

Why not a general client: a relayed short answer spends most of its time waiting for
vLLM, and then the gateway runs its own code cold (caches churned by vLLM, or by the host
while the process slept), so what it costs follows how much code a request touches; with
httpx or aiohttp for this hop the gateway added several times what a bare proxy adds
(bench/README.md, "Serving overhead").
This client does what the hop needs and nothing else: one POST at a time per keep-alive
connection, the response parsed by httptools (the C parser uvicorn uses), the body read
whole or piece by piece as it arrives. No redirects, cookies, proxies, compression or TLS:
vLLM is reached by address on a private network.

Errors: `UpstreamConnectError` when no connection could be made (the replica is down),
`TimeoutError` when vLLM is silent longer than the read timeout, `UpstreamBroken` when the
connection drops or the answer is not HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

# Reading pauses while this much of a body waits for the relay, so a slow client holds
# back vLLM through TCP instead of filling the gateway's memory.
HIGH_WATER = 256 * 1024


class UpstreamConnectError(ConnectionError):
    """No connection to the server could be made (refused, unreachable, or too slow)."""


class UpstreamBroken(ConnectionError):
    """The connection dropped, or the server's answer was not valid HTTP/1.1."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the parser's callbacks fill in the current response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.headers_done = False
        self.keep_alive = False
        self.complete = False
        self.error: Exception | None = None
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"invalid HTTP from the server: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(UpstreamBroken(f"the server closed the connection{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        # Asked here: llhttp knows the answer only while the message is current.
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._wake()

    # used by UpstreamResponse
    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until the parser reports something new (headers, body, the end) or an error."""
        if self.error is not None:
            raise self.error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        return data

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """A response whose headers have arrived. Read the body with `read()` or `chunks()`,
    then `release()` it (the connection is kept only if the body was read whole)."""

    def __init__(self, client: UpstreamClient, key: tuple[str, int], conn: _Connection, timeout: float):
        self._client, self._key, self._conn, self._timeout = client, key, conn, timeout
        self.status = conn.status
        self.headers = conn.headers

    @property
    def complete(self) -> bool:
        return self._conn.complete

    async def read(self) -> bytes:
        conn = self._conn
        parts = []
        while True:
            parts.append(conn.take())  # taking as it comes keeps a large body from pausing the reads
            if conn.complete:
                return b"".join(parts)
            await conn.wait(self._timeout)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each piece as soon as it is there, whatever its size."""
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                return
            else:
                await conn.wait(self._timeout)

    def release(self) -> None:
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.closed and conn.error is None:
            self._client._put_back(self._key, conn)
        else:
            # Unread or broken: closing is also how vLLM learns the client left.
            conn.close()


class UpstreamClient:
    def __init__(self, *, headers: dict[str, str], timeout: float, connect_timeout: float, keepalive: float):
        self._default_headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.timeout, self.connect_timeout, self.keepalive = timeout, connect_timeout, keepalive
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def post(
        self, base_url: str, path: str, body: bytes, headers: dict[str, str] | None = None, timeout: float | None = None
    ) -> UpstreamResponse:
        """POST `body` (JSON) and return once the response headers have arrived."""
        timeout = self.timeout if timeout is None else timeout
        parts = urlsplit(base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        conn = self._idle_connection((host, port)) or await self._connect(host, port)
        conn._reset()
        head = (
            f"POST {parts.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n{self._default_headers}"
            + "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        assert conn.transport is not None
        conn.transport.write(head.encode("latin-1") + body)
        try:
            while not conn.headers_done:
                await conn.wait(timeout)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(self, (host, port), conn, timeout)

    def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            # Older than `keepalive`: the server may be closing it right now.
            if not conn.closed and now - conn.idle_since < self.keepalive:
                return conn
            conn.close()
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, host, port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        return conn

    def _put_back(self, key: tuple[str, int], conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
