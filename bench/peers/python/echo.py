"""Python `websockets` echo server for scripts/bench-peers (the deflate row).

As the websockets documentation writes an echo server: the asyncio
implementation, `async for message in websocket: await websocket.send(message)`.
Compression is websockets' default (permessage-deflate on, with its default
settings) unless the third argument is `none`.

Usage: python echo.py PORT [MAX_MESSAGE_BYTES] [deflate|none]
"""

import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(websocket):
    async for message in websocket:
        await websocket.send(message)


async def main(port: int, max_size: int, compression):
    async with serve(
        echo, "127.0.0.1", port, max_size=max_size, compression=compression
    ) as server:
        print(f"websockets echo listening on 127.0.0.1:{port}", file=sys.stderr)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        port = int(sys.argv[1])
        max_size = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
        mode = sys.argv[3] if len(sys.argv) > 3 else "deflate"
        if mode not in ("deflate", "none"):
            raise ValueError(mode)
    except (IndexError, ValueError):
        print("usage: python echo.py PORT [MAX_MESSAGE_BYTES] [deflate|none]", file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(port, max_size, "deflate" if mode == "deflate" else None))
