"""A loopback TCP forwarder in front of a real service whose faults a test switches at run time,
in the manner of toxiproxy: ``delay_s`` holds every chunk a client sends (so each request) that
long before forwarding it, ``down``
closes the listener (connections are refused) and cuts open ones, ``up`` listens again."""

from __future__ import annotations

import asyncio
import threading


class FaultProxy:
    def __init__(self, target_port: int, port: int):
        self.target_port, self.port, self.delay_s = target_port, port, 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="fault-proxy").start()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def up(self) -> None:
        async def start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self._call(start())

    def down(self) -> None:
        async def stop():
            self._server.close()
            await self._server.wait_closed()
            for w in list(self._writers):
                w.transport.abort()
        self._call(stop())

    def close(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._server.is_serving():
            self.down()
        self._call(cancel_all())
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer, delayed=True), self._pipe(up_reader, writer))
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, locals().get("up_writer")):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                if delayed and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
