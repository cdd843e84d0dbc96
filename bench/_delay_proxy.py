"""A TCP proxy that delays every byte by a fixed time each way: a
storage server "across a network" for the benchmarks, on one host.

    python bench/_delay_proxy.py LISTEN_PORT TARGET_PORT ONE_WAY_MS

Runs in its own process (its work is not the front end's), on
127.0.0.1; order is kept (each direction is one queue), and an EOF
one way is passed on as a half-close, the other way open till its own.
It prints ``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import sys


async def pipe(reader, writer, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds late."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                # EOF passed on as a half-close: the other direction
                # carries on until its own EOF (a peer that shuts down
                # its sending side still reads the answers).
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(1 << 16)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (ConnectionError, asyncio.CancelledError):
        sender.cancel()
        writer.close()


async def main(listen: int, target: int, delay: float) -> None:
    async def handle(client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                pipe(client_reader, server_writer, delay),
                pipe(server_reader, client_writer, delay),
                return_exceptions=True,
            )
        finally:
            # Both directions ended (EOF each way, or an error).
            client_writer.close()
            server_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000))
