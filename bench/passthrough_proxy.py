"""The least any HTTP hop can cost: a proxy that only forwards bytes, for comparison with
the gateway in bench/serve_overhead.py.

It checks nothing and parses only what framing needs (the head and Content-Length), one
upstream connection per client connection, on uvloop as `tailor serve` runs. Whatever the
gateway adds beyond this proxy is the gateway's own work; what this proxy adds over going
direct is the price of one more process on the path, on this machine.

    python bench/passthrough_proxy.py PORT UPSTREAM_HOST:UPSTREAM_PORT

Only for requests and answers with a Content-Length (short non-streamed completions).
"""

from __future__ import annotations

import asyncio
import sys


async def read_message(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def main(port: int, upstream: str) -> None:
    host, upstream_port = upstream.rsplit(":", 1)

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(upstream_port))
        try:
            while True:
                up_writer.write(await read_message(client_reader))
                client_writer.write(await read_message(up_reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # either side left
        finally:
            up_writer.close()
            client_writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
