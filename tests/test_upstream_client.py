"""service/api/upstream.py, the gateway's HTTP/1.1 client, against a small asyncio server
on loopback whose answers each test chooses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from service.api.upstream import UpstreamBroken, UpstreamClient, UpstreamConnectError
from service.cli.devservers import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return head + await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


def run(handler: Handler, test: Callable[[UpstreamClient, str], Awaitable[None]], **client_options: float) -> list[int]:
    """Serve `handler` on a free port, run `test` with a client, return how many connections the server saw."""
    connections: list[int] = []

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        port = free_port()
        server = await asyncio.start_server(counting, "127.0.0.1", port)
        options = {"timeout": 5.0, "connect_timeout": 2.0, "keepalive": 4.0, **client_options}
        client = UpstreamClient(headers={"Authorization": "Bearer s3cret"}, **options)
        try:
            await test(client, f"http://127.0.0.1:{port}")
        finally:
            await client.close()
            server.close()

    asyncio.run(main())
    return connections


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        request = await read_request(reader)
        writer.write(answer(request.split(b"\r\n\r\n", 1)[1], b"x-head: " + request.split(b"\r\n", 1)[0] + b"\r\n"))
        await writer.drain()


def test_keep_alive_connections_are_reused_and_requests_are_well_formed() -> None:
    async def test(client: UpstreamClient, url: str) -> None:
        for i in range(3):
            response = await client.post(url, "/v1/chat/completions", b'{"n": %d}' % i, {"X-Request-Id": "req_1"})
            assert (response.status, await response.read()) == (200, b'{"n": %d}' % i)
            assert response.headers["x-head"] == "POST /v1/chat/completions HTTP/1.1"
            response.release()

    assert len(run(echo_forever, test)) == 1


def test_a_body_larger_than_the_read_buffer_is_read_whole() -> None:
    big = b"x" * (3 * 1024 * 1024)

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(big))
        await writer.drain()
        await read_request(reader)

    async def test(client: UpstreamClient, url: str) -> None:
        response = await client.post(url, "/x", b"{}")
        assert await asyncio.wait_for(response.read(), 5) == big

    run(large, test)


def test_a_connection_idle_past_keepalive_is_not_reused() -> None:
    async def test(client: UpstreamClient, url: str) -> None:
        for _ in range(2):
            response = await client.post(url, "/x", b"{}")
            await response.read()
            response.release()
            await asyncio.sleep(0.3)

    assert len(run(echo_forever, test, keepalive=0.1)) == 2


def test_a_response_left_unfinished_closes_the_connection() -> None:
    closed_by_client = asyncio.Event()

    async def partial_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not closed_by_client.is_set():
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\npart")
            await writer.drain()
            assert await reader.read() == b""  # the client hung up: that is how vLLM learns to abort
            closed_by_client.set()
            return
        await echo_forever(reader, writer)

    async def test(client: UpstreamClient, url: str) -> None:
        (await client.post(url, "/x", b"{}")).release()  # the client leaves before the body is whole
        await asyncio.wait_for(closed_by_client.wait(), 5)
        response = await client.post(url, "/x", b"{}")  # a new connection
        assert await response.read() == b"{}"
        response.release()

    assert len(run(partial_then_echo, test)) == 2


def test_a_chunked_stream_arrives_piece_by_piece() -> None:
    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(3):
            event = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # the connection is kept for the next request

    async def test(client: UpstreamClient, url: str) -> None:
        response = await client.post(url, "/x", b"{}")
        loop = asyncio.get_running_loop()
        pieces = [(chunk, loop.time()) async for chunk in response.chunks()]
        assert [chunk for chunk, _ in pieces] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
        assert pieces[-1][1] - pieces[0][1] > 0.3  # relayed as they came, not at the end
        assert response.complete

    run(stream, test)


def test_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(3)

    async def breaks_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()

    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"hello there\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def times_out(client: UpstreamClient, url: str) -> None:
        with pytest.raises(TimeoutError):
            await client.post(url, "/x", b"{}")

    async def broken(client: UpstreamClient, url: str) -> None:
        response = await client.post(url, "/x", b"{}")
        with pytest.raises(UpstreamBroken, match="closed"):
            await response.read()

    async def garbled(client: UpstreamClient, url: str) -> None:
        with pytest.raises(UpstreamBroken, match="invalid HTTP"):
            await client.post(url, "/x", b"{}")

    run(silent, times_out, timeout=0.3)
    run(breaks_off, broken)
    run(not_http, garbled)

    async def refused() -> None:
        client = UpstreamClient(headers={}, timeout=1, connect_timeout=1, keepalive=4)
        with pytest.raises(UpstreamConnectError):
            await client.post(f"http://127.0.0.1:{free_port()}", "/x", b"{}")

    asyncio.run(refused())
