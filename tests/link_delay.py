"""A TCP relay that delays: each chunk read from one side is written to the other
`--delay` seconds after it arrived, in order, both ways. The rig (tests/netns.py) puts
one on the host end of a node's link where the kernel has no netem.

    python -m tests.link_delay --listen 10.213.0.1:7000 --to 127.0.0.1:8000 --delay 0.1
"""

import argparse
import asyncio
import contextlib
import signal


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float):
    loop = asyncio.get_running_loop()
    held: asyncio.Queue = asyncio.Queue()

    async def deliver():
        while (item := await held.get()) is not None:
            due, chunk = item
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(chunk)
            await writer.drain()
        writer.close()

    delivering = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(65536):
            held.put_nowait((loop.time() + delay, chunk))
    except (ConnectionError, OSError):
        pass
    held.put_nowait(None)
    with contextlib.suppress(ConnectionError, OSError):
        await delivering


async def _relay(client_reader, client_writer, *, host: str, port: int, delay: float):
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        _pump(client_reader, server_writer, delay),
        _pump(server_reader, client_writer, delay),
    )


async def main(listen: str, to: str, delay: float) -> None:
    listen_host, listen_port = listen.rsplit(":", 1)
    host, port = to.rsplit(":", 1)
    server = await asyncio.start_server(
        lambda r, w: _relay(r, w, host=host, port=int(port), delay=delay),
        listen_host,
        int(listen_port),
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    async with server:
        await stopped.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="address:port to accept on")
    parser.add_argument("--to", required=True, help="address:port to relay to")
    parser.add_argument("--delay", type=float, required=True, help="seconds, each direction")
    options = parser.parse_args()
    asyncio.run(main(options.listen, options.to, options.delay))
