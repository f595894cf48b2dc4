"""A TCP relay on loopback that delays every byte by DELAY_MS in each direction: a client across a network, for
benchmarks (scripts/bench-inspection-latency.sh CLIENT_DELAY_MS=…). Listens on 127.0.0.1:LISTEN_PORT, connects
each client to 127.0.0.1:TARGET_PORT; prints "READY" once it listens.

  python3 scripts/delay-relay.py LISTEN_PORT TARGET_PORT DELAY_MS
"""
import asyncio
import sys


async def pipe(reader, writer, delay):
    """Copies reader to writer, each chunk held until `delay` seconds after it arrived (order kept)."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            if data is None:
                writer.close()
                return
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    while True:
        data = await reader.read(65536)
        queue.put_nowait((loop.time() + delay, data or None))
        if not data:
            break
    await sender


async def main():
    listen, target, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000

    async def handle(client_reader, client_writer):
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(
            pipe(client_reader, upstream_writer, delay), pipe(upstream_reader, client_writer, delay),
            return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
