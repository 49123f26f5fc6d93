"""The ASGI app: moves bytes between WebSockets and sessions, and nothing else.

Starlette on uvicorn rather than the bare `websockets` server: the same app serves HTTP routes
(health, the browser page), runs under any ASGI host, and can refuse a handshake with a real
HTTP 401 through the WebSocket denial-response extension.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .engine import Engine, Result
from .protocol import SessionLimits
from .scheduler import Scheduler, Superseded
from .session import (
    CloseConnection,
    Event,
    InferenceRequest,
    RunInference,
    SendMessage,
    Session,
)
from .vad import SileroVAD

log = logging.getLogger("whisperwire.server")

WEBSOCKET_PATHS = ("/v1/websocket", "/environments/production/websocket")


@dataclass(frozen=True)
class ServerConfig:
    api_keys: tuple[str, ...] = ()
    limits: SessionLimits = field(default_factory=SessionLimits)
    drain_timeout_s: float = 30.0
    # Recognitions in flight at once: 1 for an engine in this process, more for a remote one.
    inference_workers: int = 1


class Whisperwire:
    """What the routes share: one engine, one scheduler, one VAD model, the live connections."""

    def __init__(self, engine: Engine, config: ServerConfig, vad: SileroVAD | None = None) -> None:
        self.engine = engine
        self.config = config
        self.vad = vad or SileroVAD()
        self.scheduler = Scheduler(engine, workers=config.inference_workers)
        self.connections: set[Connection] = set()
        self.draining = False

    def authorized(self, websocket: WebSocket) -> bool:
        if not self.config.api_keys:
            return True
        offered = _offered_key(websocket.headers.get("authorization"), websocket.query_params.get("api_key"))
        if offered is None:
            return False
        # Check every key, so timing says nothing about which one nearly matched.
        matches = [hmac.compare_digest(offered.encode(), key.encode()) for key in self.config.api_keys]
        return any(matches)

    async def drain(self) -> None:
        """Stop taking sessions; flush every live one's finals and close it with 1001."""
        self.draining = True
        connections = list(self.connections)
        for connection in connections:
            connection.post(("shutdown",))
        waiters = [connection.done.wait() for connection in connections]
        if waiters:
            await asyncio.wait(
                [asyncio.ensure_future(w) for w in waiters], timeout=self.config.drain_timeout_s
            )


def _offered_key(header: str | None, query: str | None) -> str | None:
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() in {"api-key", "bearer"} and value.strip():
            return value.strip()
        return None
    return query or None


class Connection:
    """One WebSocket and its session; every session call happens in run(), one at a time."""

    def __init__(self, websocket: WebSocket, app: Whisperwire) -> None:
        self.websocket = websocket
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.session = Session(
            uuid.uuid4().hex[:12],
            model=app.engine.info,
            count_tokens=app.engine.count_tokens,
            new_vad=app.vad.new_stream,
            limits=app.config.limits,
            now=self.loop.time(),
        )
        self.done = asyncio.Event()
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._wakeup = asyncio.Event()

    def post(self, item: tuple[Any, ...]) -> None:
        self._inbox.append(item)
        self._wakeup.set()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        try:
            await self._process()
        finally:
            reader.cancel()
            self.app.scheduler.cancel_session(self.session.session_id)
            self.done.set()

    async def _read(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    self.post(("bytes", message["bytes"]))
                elif message.get("text") is not None:
                    self.post(("text", message["text"]))
        except (WebSocketDisconnect, RuntimeError):
            pass
        self.post(("disconnect",))

    async def _next(self) -> tuple[Any, ...] | None:
        """The next inbox item, or None when the session's deadline passed first."""
        while not self._inbox:
            self._wakeup.clear()
            deadline = self.session.deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.loop.time())
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return None
        return self._inbox.popleft()

    async def _process(self) -> None:
        session = self.session
        while True:
            item = await self._next()
            now = self.loop.time()
            if item is None:
                events = session.timeout(now)
            elif item[0] == "bytes":
                frames = [item[1]]
                while self._inbox and self._inbox[0][0] == "bytes":
                    frames.append(self._inbox.popleft()[1])
                # Decoding, resampling and VAD leave the event loop: other sessions keep flowing.
                events = await asyncio.to_thread(self._feed, frames, now)
            elif item[0] == "text":
                events = session.receive_text(item[1], now)
            elif item[0] == "result":
                events = self._result(item[1], item[2])
            elif item[0] == "shutdown":
                events = session.shutdown()
            else:  # disconnect: the client is gone, nobody to tell
                return
            if await self._act(events):
                return

    def _feed(self, frames: list[bytes], now: float) -> list[Event]:
        events: list[Event] = []
        for frame in frames:
            events += self.session.receive_bytes(frame, now)
        return events

    def _result(self, request: InferenceRequest, future: asyncio.Future[Result]) -> list[Event]:
        if future.cancelled():
            return []
        error = future.exception()
        if isinstance(error, Superseded):
            return []
        if error is not None:
            log.error("session %s: inference failed: %r", self.session.session_id, error)
            return self.session.inference_failed(request, error)
        return self.session.inference_done(request, future.result())

    async def _act(self, events: list[Event]) -> bool:
        """Carry out the session's events; True once the connection is finished."""
        try:
            for event in events:
                if isinstance(event, SendMessage):
                    await self.websocket.send_text(event.message.model_dump_json())
                elif isinstance(event, RunInference):
                    self._submit(event.request)
                elif isinstance(event, CloseConnection):
                    log.info("session %s: closing with %d %s", self.session.session_id, event.code, event.reason)
                    await self.websocket.close(int(event.code), event.reason)
                    return True
        except (WebSocketDisconnect, RuntimeError, OSError):
            return True  # the client is gone
        return False

    def _submit(self, request: InferenceRequest) -> None:
        future = self.app.scheduler.submit(request)
        future.add_done_callback(lambda f: self.post(("result", request, f)))


def create_app(engine: Engine, config: ServerConfig | None = None, vad: SileroVAD | None = None) -> Starlette:
    state = Whisperwire(engine, config or ServerConfig(), vad)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        if not state.authorized(websocket):
            await websocket.send_denial_response(
                PlainTextResponse("missing or invalid API key", status_code=401)
            )
            return
        if state.draining:
            await websocket.send_denial_response(
                PlainTextResponse("server shutting down", status_code=503)
            )
            return
        await websocket.accept()
        connection = Connection(websocket, state)
        state.connections.add(connection)
        log.info("session %s: opened", connection.session.session_id)
        try:
            await connection.run()
        finally:
            state.connections.discard(connection)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        ok = not state.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.scheduler.start()
        try:
            yield
        finally:
            if state.connections and not state.draining:
                await state.drain()
            await asyncio.to_thread(state.scheduler.stop)

    routes: list[Any] = [WebSocketRoute(path, websocket_endpoint) for path in WEBSOCKET_PATHS]
    routes += [Route("/health", health), Route("/ready", ready)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.whisperwire = state
    return app
