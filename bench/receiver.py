"""A callback receiver for the delivery benchmarks, run as a process of its own.

    python bench/receiver.py [--delay-ms D]

Prints the loopback port it listens on, then answers every POST `200` (after D ms, as a distant
receiver would) and notes when each webhook-id first arrived; `GET /arrivals` returns those
times (epoch seconds), `DELETE /arrivals` forgets them. One asyncio loop, keep-alive, a minimal
HTTP/1.1 reader: it costs little of the CPU the dispatcher is measured on, and any number of
deliveries may wait on it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

_arrivals: dict[str, float] = {}


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            length, webhook_id, close = 0, None, False
            for line in lines:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "webhook-id":
                    webhook_id = value.strip()
                elif name == "connection":
                    close = value.strip().lower() == "close"
            if length:
                await reader.readexactly(length)
            body = b""
            if path == "/arrivals":
                body = json.dumps(_arrivals).encode() if method == "GET" else b"{}"
                if method == "DELETE":
                    _arrivals.clear()
            else:
                if webhook_id:
                    _arrivals.setdefault(webhook_id, time.time())
                if delay:
                    await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
                len(body), b"Connection: close\r\n" if close else b"", body))
            await writer.drain()
            if close:
                return
    finally:
        writer.close()


async def _main(delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: _serve(r, w, delay), "127.0.0.1", 0,
                                        backlog=512)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args.delay_ms / 1000))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
