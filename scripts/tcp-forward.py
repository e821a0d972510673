#!/usr/bin/env python3
"""A TCP forwarder: accepts on 127.0.0.1:LISTEN_PORT and relays each connection to TARGET_HOST:TARGET_PORT.

    scripts/tcp-forward.py LISTEN_PORT TARGET_HOST:TARGET_PORT

scripts/rehearsal.sh runs it as the stand-in for `postgres-rw-infra`, the Service Linkerd mirrors into the
apps cluster: a different address in front of the same PostgreSQL. A connection whose target cannot be reached
is closed at once (as a gateway does while the database is away); the forwarder itself keeps running. It
prints one line, "listening on 127.0.0.1:PORT", once it accepts connections. Python's standard library only.
"""

import asyncio
import sys

CHUNK = 64 * 1024


async def pump(reader, writer):
    """Copies reader to writer until end of stream (or an error on either)."""
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass


async def relay(client_reader, client_writer, host, port):
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    # PostgreSQL's protocol does not half-close: once either side ends, so does the relay.
    pumps = [
        asyncio.ensure_future(pump(client_reader, upstream_writer)),
        asyncio.ensure_future(pump(upstream_reader, client_writer)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pumps:
            task.cancel()
        for writer in (upstream_writer, client_writer):
            writer.close()


async def main():
    if len(sys.argv) != 3 or ":" not in sys.argv[2]:
        sys.exit("usage: tcp-forward.py LISTEN_PORT TARGET_HOST:TARGET_PORT")
    listen_port = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    server = await asyncio.start_server(
        lambda reader, writer: relay(reader, writer, host, int(port)), "127.0.0.1", listen_port
    )
    print(f"listening on 127.0.0.1:{listen_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
