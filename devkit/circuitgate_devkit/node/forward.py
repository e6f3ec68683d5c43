"""Forward a host loopback port into the node's network namespace, so tests, kubectl and helm
on the host reach the API server there without any change to the host's network.

Started inside the namespace (``nsenter --net``) with a listening socket opened on the host's
loopback and inherited as a file descriptor: the socket stays in the host's namespace, the
connections it makes are in the node's.

    python -m circuitgate_devkit.node.forward --listen-fd 3 --to 10.213.0.1:6443
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


async def _serve(listener: socket.socket, host: str, port: int) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(host, port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--to", required=True, help="HOST:PORT inside the namespace")
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    listener = socket.socket(fileno=args.listen_fd)
    asyncio.run(_serve(listener, host, int(port)))


if __name__ == "__main__":
    main()
