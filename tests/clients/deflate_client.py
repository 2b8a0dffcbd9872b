#!/usr/bin/env python3
"""permessage-deflate against a roomcast node with Python's `websockets` client, as it comes.

Run by tests/it/compression.rs: `deflate_client.py WS_URL`. Two clients negotiate compression
with the library's default offer; one publishes a 5 KB message (the library compresses it), the
other must receive it intact (the node compressed it for it); a third sends a small compressed
frame that inflates to 4 MB and must be closed with 1009. Prints one JSON line of findings.
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 10


async def recv_type(ws, kind):
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if frame.get("type") == kind:
            return frame


async def main(url):
    found = {}
    data = [{"user": f"user-{i % 7}", "text": f"message number {i} in the thread", "n": i}
            for i in range(80)]
    async with connect(url) as sender, connect(url) as member:
        found["extensions"] = sender.response.headers.get("Sec-WebSocket-Extensions")
        for ws in (sender, member):
            await recv_type(ws, "welcome")
            await ws.send(json.dumps({"type": "join", "room": "py", "id": "j"}))
            await recv_type(ws, "joined")
        await sender.send(json.dumps({"type": "publish", "room": "py", "data": data, "id": "p"}))
        found["acked"] = (await recv_type(sender, "ack"))["id"] == "p"
        message = await recv_type(member, "message")
        found["received_intact"] = message["data"] == data
    async with connect(url, max_size=None) as bomber:
        await recv_type(bomber, "welcome")
        bomb = '{"type":"publish","room":"py","data":"x' + " " * (4 << 20) + '"}'
        await bomber.send(bomb)
        try:
            while True:
                await asyncio.wait_for(bomber.recv(), TIMEOUT)
        except ConnectionClosed as closed:
            found["bomb_close"] = closed.rcvd.code if closed.rcvd else None
    print(json.dumps(found))


asyncio.run(main(sys.argv[1]))
