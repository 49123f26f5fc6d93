"""The ASGI app: moves bytes between WebSockets and sessions, and nothing else.

Starlette on uvicorn rather than the bare `websockets` server: the same app serves HTTP routes
(health, readiness, metrics, the browser page), runs under any ASGI host, and can refuse a
handshake with a real HTTP status through the WebSocket denial-response extension.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from .values import Engine, Result
from .logs import SESSION_ID
from .metrics import LiveState, Metrics
from .protocol import CloseCode, ErrorCode, ErrorMessage, ProtocolError, SessionLimits, Transcription
from .scheduler import Scheduler, Superseded
from .settings import Settings
from .session import (
    CancelInference,
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
WEB_DIR = Path(__file__).parent / "web"  # the browser page: plain files, no build step
# Frames waiting for their session before the reader stops taking more; uvicorn then stops
# reading the socket and TCP pushes back on the client.
INBOX_BYTES = 4 * 1024 * 1024
# How long a finished session's last messages and close frame may take to leave.
FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServerConfig:
    api_keys: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    limits: SessionLimits = field(default_factory=SessionLimits)
    send_buffer_bytes: int = 1024 * 1024
    drain_timeout_s: float = 30.0
    # Admission control: a new stream is refused (server_busy, 1013) at max_sessions open
    # sessions (None: no limit), or while a final has waited longer than max_queue_wait_s for
    # the inference thread, which means the streams already admitted are falling behind.
    max_sessions: int | None = 64
    max_queue_wait_s: float | None = 3.0
    draft_finals: bool = True  # start finals during the silence window (session.py, drafts)
    vad_batch: int = 3  # VAD windows per run: under half the CPU per window, seen up to 64 ms later
    context_prompt: bool = False  # prompt each utterance with the previous one's text
    # Recognitions in flight at once: 1 for an engine in this process, more for a remote one.
    inference_workers: int = 1


def server_config(settings: Settings, **changes: Any) -> ServerConfig:
    """The server's part of `whisperwire serve`'s settings (the rest pick the model and socket)."""
    config = ServerConfig(
        api_keys=settings.api_keys,
        allowed_origins=settings.allowed_origins,
        limits=settings.limits,
        send_buffer_bytes=settings.send_buffer_bytes,
        drain_timeout_s=settings.drain_timeout,
        max_sessions=settings.max_sessions or None,
        max_queue_wait_s=settings.max_queue_wait or None,
        draft_finals=settings.draft_finals,
        context_prompt=settings.context_prompt,
    )
    return replace(config, **changes)


class Whisperwire:
    """What the routes share: one engine, one scheduler, one VAD model, the live connections."""

    def __init__(self, engine: Engine, config: ServerConfig, vad: SileroVAD | None = None) -> None:
        self.engine = engine
        self.config = config
        self.vad = vad or SileroVAD()
        self.metrics = Metrics(self._live)
        self.scheduler = Scheduler(
            engine, on_inference=self.metrics.observe_inference, workers=config.inference_workers
        )
        self.connections: set[Connection] = set()
        self.draining = False
        self.partials_dropped = 0  # from the send buffers of clients that do not read
        self._origins = {_origin(o) for o in config.allowed_origins}

    def _live(self) -> LiveState:
        return LiveState(
            active_sessions=len(self.connections),
            queue_depth=self.scheduler.queue_depth,
            partials_superseded=self.scheduler.stats.partials_superseded,
            partials_dropped_slow_client=self.partials_dropped,
            send_buffer_bytes=sum(c.send_backlog for c in self.connections),
        )

    def refusal(self, websocket: WebSocket) -> tuple[int, str, str] | None:
        """Why a handshake is refused, as (HTTP status, metrics reason, message); None to accept."""
        if not self.origin_allowed(websocket.headers.get("origin")):
            return 403, "origin", "origin not allowed"
        if not self.authorized(websocket):
            return 401, "unauthorized", "missing or invalid API key"
        if self.draining:
            return 503, "draining", "server shutting down"
        return None

    def origin_allowed(self, origin: str | None) -> bool:
        # Browsers always send Origin on a WebSocket handshake; other clients need not, and
        # could send any value anyway. The check protects browser users from other sites.
        if not self._origins or origin is None:
            return True
        return "*" in self._origins or _origin(origin) in self._origins

    def authorized(self, websocket: WebSocket) -> bool:
        if not self.config.api_keys:
            return True
        offered = _offered_key(websocket.headers.get("authorization"), websocket.query_params.get("api_key"))
        if offered is None:
            return False
        # Check every key, so timing says nothing about which one nearly matched.
        matches = [hmac.compare_digest(offered.encode(), key.encode()) for key in self.config.api_keys]
        return any(matches)

    def not_ready(self) -> list[str]:
        reasons = []
        if not self.scheduler.running:
            reasons.append("model not serving")
        if self.draining:
            reasons.append("draining")
        if self.admission_refusal() is not None:
            reasons.append("at capacity")
        return reasons

    def admission_refusal(self) -> str | None:
        """Why a new stream cannot be taken now, or None if it can."""
        limit = self.config.max_sessions
        if limit is not None and len(self.connections) >= limit:
            return f"server at capacity: {len(self.connections)} sessions open, the limit is {limit}; try again later"
        wait_limit = self.config.max_queue_wait_s
        waited = self.scheduler.load().oldest_final_wait_s
        if wait_limit is not None and waited > wait_limit:
            return (
                f"server overloaded: finals are waiting {waited:.1f} s for recognition "
                f"(limit {wait_limit:g} s); try again later"
            )
        return None

    async def drain(self) -> None:
        """Stop taking sessions; flush every live one's finals and close it with 1001.

        Sessions whose finals are not out within the drain timeout are closed with 1001 anyway.
        """
        self.draining = True
        connections = list(self.connections)
        for connection in connections:
            connection.post(("shutdown",))
        if not await _all_done(connections, self.config.drain_timeout_s):
            late = [c for c in connections if not c.done.is_set()]
            log.warning("drain timeout: closing %d sessions before their finals", len(late))
            for connection in late:
                connection.post(("stop",))
            await _all_done(late, FLUSH_TIMEOUT_S)


async def _all_done(connections: list[Connection], timeout: float) -> bool:
    if not connections:
        return True
    waiters = [asyncio.ensure_future(c.done.wait()) for c in connections]
    _, pending = await asyncio.wait(waiters, timeout=timeout)
    for waiter in pending:
        waiter.cancel()
    return not pending


def _origin(value: str) -> str:
    return value.strip().rstrip("/").lower()


def _offered_key(header: str | None, query: str | None) -> str | None:
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() in {"api-key", "bearer"} and value.strip():
            return value.strip()
        return None
    return query or None


# --------------------------------------------------------------------------- the send buffer


@dataclass(frozen=True)
class _Outgoing:
    text: str
    size: int
    partial: bool = False
    final_num: int | None = None


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class Outbox:
    """Messages on their way to one client, bounded in bytes.

    Over the bound, waiting partials give way first, oldest first (a newer partial carries the
    same utterance further). Finals and errors are never dropped: a client whose finals alone
    exceed the bound is not reading, and `overflowing` tells the connection to close it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[_Outgoing | _Close] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()

    @property
    def size(self) -> int:
        return self._bytes

    @property
    def overflowing(self) -> bool:
        return self._bytes > self.limit

    def put(self, text: str, *, partial: bool = False, final_num: int | None = None) -> int:
        """Queue a message; returns how many waiting partials were dropped to make room."""
        item = _Outgoing(text, len(text.encode()), partial, final_num)
        self._items.append(item)
        self._bytes += item.size
        self._ready.set()
        dropped = 0
        while self.overflowing:
            victim = next((i for i in self._items if isinstance(i, _Outgoing) and i.partial), None)
            if victim is None:
                break
            self._items.remove(victim)
            self._bytes -= victim.size
            dropped += 1
        return dropped

    def close(self, code: int, reason: str) -> None:
        self._items.append(_Close(code, reason))
        self._ready.set()

    async def get(self) -> _Outgoing | _Close:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, _Outgoing):
            self._bytes -= item.size
        return item


# --------------------------------------------------------------------------- one connection


class Connection:
    """One WebSocket and its session; every session call happens in _process(), one at a time.

    Three tasks: the reader puts frames in the inbox, _process feeds them (and inference
    results, timeouts, the drain signal) to the session, and the writer sends what the session
    says from the outbox, so a client that does not read never holds up the session.
    """

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
            draft_finals=app.config.draft_finals,
            vad_batch=app.config.vad_batch,
            context_prompt=app.config.context_prompt,
        )
        self.done = asyncio.Event()
        self._inbox: deque[tuple[float, tuple[Any, ...]]] = deque()
        self._inbox_bytes = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._outbox = Outbox(app.config.send_buffer_bytes)
        self._arrived = 0.0  # when the item being handled reached the inbox
        self._final_asked: dict[int, float] = {}  # transcription_num -> when its audio ended
        self._audio_counted = 0.0

    @property
    def send_backlog(self) -> int:
        """Bytes of messages waiting for the client to read the ones before them."""
        return self._outbox.size

    def post(self, item: tuple[Any, ...]) -> None:
        self._inbox.append((self.loop.time(), item))
        if item[0] in ("bytes", "text"):
            self._inbox_bytes += len(item[1])
        self._wakeup.set()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        writer = asyncio.create_task(self._write())
        try:
            if await self._process():
                await self._flush(writer)
        finally:
            reader.cancel()
            writer.cancel()
            self.app.scheduler.cancel_session(self.session.session_id)
            self.done.set()

    async def _flush(self, writer: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait_for(writer, FLUSH_TIMEOUT_S)
        except TimeoutError:
            log.warning("client did not take its last messages within %g s", FLUSH_TIMEOUT_S)

    # ------------------------------------------------------------------ the reader

    async def _read(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    if message.get("code") == CloseCode.MESSAGE_TOO_BIG:
                        # uvicorn closed it for a frame over the limit; the session never saw it.
                        self.app.metrics.errors.labels(code=ErrorCode.FRAME_TOO_LARGE.value).inc()
                    break
                if message.get("bytes") is not None:
                    self.post(("bytes", message["bytes"]))
                elif message.get("text") is not None:
                    self.post(("text", message["text"]))
                while self._inbox_bytes > INBOX_BYTES:
                    self._room.clear()
                    await self._room.wait()
        except (WebSocketDisconnect, RuntimeError):
            pass
        self.post(("disconnect",))

    def _take(self) -> tuple[Any, ...]:
        arrived, item = self._inbox.popleft()
        if item[0] in ("bytes", "text"):
            self._inbox_bytes -= len(item[1])
            if self._inbox_bytes <= INBOX_BYTES:
                self._room.set()
        self._arrived = arrived
        return item

    async def _next(self) -> tuple[Any, ...] | None:
        """The next inbox item, or None when the session's deadline passed first."""
        while not self._inbox:
            self._wakeup.clear()
            deadline = self.session.deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.loop.time())
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                self._arrived = self.loop.time()
                return None
        return self._take()

    # ------------------------------------------------------------------ the session

    async def _process(self) -> bool:
        """Feed the session until it closes (True) or the client leaves (False)."""
        while True:
            item = await self._next()
            if item is not None and item[0] == "disconnect":
                return False  # the client is gone, nobody to tell
            try:
                events = await self._handle(item)
            except Exception:  # a bug must cost one session, not the server
                log.exception("internal error")
                events = self.session.internal_error("internal error")
            if self._act(events):
                return True

    async def _handle(self, item: tuple[Any, ...] | None) -> list[Event]:
        session = self.session
        now = self.loop.time()
        if item is None:
            return session.timeout(now)
        kind = item[0]
        if kind == "bytes":
            frames, first_arrived = [item[1]], self._arrived
            while self._inbox and self._inbox[0][1][0] == "bytes":
                frames.append(self._take()[1])
            # A final asked for in this batch is timed from its first frame: an upper bound.
            self._arrived = first_arrived
            # Decoding, resampling and VAD leave the event loop: other sessions keep flowing.
            events = await asyncio.to_thread(self._feed, frames, now)
            self._count_audio()
            return events
        if kind == "text":
            return session.receive_text(item[1], now)
        if kind == "result":
            return self._result(item[1], item[2])
        if kind == "shutdown":
            return session.shutdown()
        if kind == "stop":
            return session.stop(CloseCode.GOING_AWAY, "server shutting down")
        raise AssertionError(f"unknown inbox item {kind!r}")

    def _feed(self, frames: list[bytes], now: float) -> list[Event]:
        events: list[Event] = []
        for frame in frames:
            events += self.session.receive_bytes(frame, now)
        return events

    def _count_audio(self) -> None:
        received = self.session.audio_received_s
        self.app.metrics.audio_received.inc(received - self._audio_counted)
        self._audio_counted = received

    def _result(self, request: InferenceRequest, future: asyncio.Future[Result]) -> list[Event]:
        if future.cancelled():
            return []
        error = future.exception()
        if isinstance(error, Superseded):
            return []
        if error is not None:
            log.error("inference failed: %r", error)
            return self.session.inference_failed(request, error)
        return self.session.inference_done(request, future.result())

    def _act(self, events: list[Event]) -> bool:
        """Carry out the session's events; True once the session has closed."""
        for event in events:
            if isinstance(event, SendMessage):
                self._send(event.message)
            elif isinstance(event, RunInference):
                self._submit(event.request)
            elif isinstance(event, CancelInference):
                self.app.scheduler.withdraw(event.request)
            elif isinstance(event, CloseConnection):
                log.info("closing with %d %s", event.code, event.reason)
                self._outbox.close(int(event.code), event.reason)
                return True
        if self._outbox.overflowing:
            limit = self._outbox.limit
            return self._act(
                self.session.abort(
                    ProtocolError(
                        ErrorCode.CLIENT_TOO_SLOW,
                        f"the client is not reading its messages: more than {limit} bytes are waiting",
                    )
                )
            )
        return False

    def _send(self, message: Transcription | ErrorMessage) -> None:
        if isinstance(message, ErrorMessage):
            self.app.metrics.errors.labels(code=message.error.code.value).inc()
        final = isinstance(message, Transcription) and message.is_final
        partial = isinstance(message, Transcription) and not message.is_final
        dropped = self._outbox.put(
            message.model_dump_json(),
            partial=partial,
            final_num=message.transcription_num if final else None,
        )
        self.app.partials_dropped += dropped

    def _submit(self, request: InferenceRequest) -> None:
        if request.kind == "final":
            self._final_asked[request.transcription_num] = self._arrived
        future = self.app.scheduler.submit(request)
        future.add_done_callback(lambda f: self._inference_over(request, f))

    def _inference_over(self, request: InferenceRequest, future: asyncio.Future[Result]) -> None:
        if not future.cancelled():
            # Marks the error as seen: a session that has ended never looks at its result, and
            # asyncio would log every superseded partial of a vanished client as unhandled.
            future.exception()
        self.post(("result", request, future))

    # ------------------------------------------------------------------ the writer

    async def _write(self) -> None:
        try:
            while True:
                item = await self._outbox.get()
                if isinstance(item, _Close):
                    await self.websocket.close(item.code, item.reason)
                    return
                await self.websocket.send_text(item.text)
                if item.final_num is not None:
                    self._final_sent(item.final_num)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client is gone; the reader tells the session

    def _final_sent(self, num: int) -> None:
        metrics = self.app.metrics
        metrics.utterances_finalised.inc()
        asked = self._final_asked.pop(num, None)
        if asked is not None:
            metrics.final_latency.observe(self.loop.time() - asked)
        # Finals go out in number order: older entries were utterances with no words.
        for older in [n for n in self._final_asked if n < num]:
            del self._final_asked[older]


async def _refuse(websocket: WebSocket, reason: str) -> None:
    log.warning("refused a session: %s", reason)
    error = ProtocolError(ErrorCode.SERVER_BUSY, reason)
    await websocket.accept()
    try:
        await websocket.send_text(ErrorMessage.from_error(error).model_dump_json())
        await websocket.close(int(CloseCode.TRY_AGAIN_LATER), ErrorCode.SERVER_BUSY.value)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client left first


def create_app(engine: Engine, config: ServerConfig | None = None, vad: SileroVAD | None = None) -> Starlette:
    state = Whisperwire(engine, config or ServerConfig(), vad)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        refusal = state.refusal(websocket)
        if refusal is not None:
            status, reason, message = refusal
            state.metrics.rejected.labels(reason=reason).inc()
            await websocket.send_denial_response(PlainTextResponse(message, status_code=status))
            return
        refusal = state.admission_refusal()
        if refusal is not None:
            state.metrics.rejected.labels(reason="capacity").inc()
            await _refuse(websocket, refusal)
            return
        connection = Connection(websocket, state)
        SESSION_ID.set(connection.session.session_id)  # this task's log lines, and its children's
        state.connections.add(connection)  # before any await: the limit holds for concurrent handshakes
        try:
            await websocket.accept()
            log.info("opened")
            await connection.run()
        finally:
            state.connections.discard(connection)

    async def unknown_path(websocket: WebSocket) -> None:
        # Starlette's own answer is a bare 403, which reads like a refused key or origin.
        paths = " or ".join(WEBSOCKET_PATHS)
        message = f"no WebSocket endpoint at {websocket.url.path}; connect to {paths}"
        await websocket.send_denial_response(PlainTextResponse(message, status_code=404))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        reasons = state.not_ready()
        return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=Metrics.CONTENT_TYPE)

    async def page(request: Request) -> Response:
        return FileResponse(WEB_DIR / "index.html")

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
    routes += [Route("/health", health), Route("/ready", ready), Route("/metrics", metrics)]
    routes += [
        Route("/", page),
        Mount("/web", StaticFiles(directory=WEB_DIR), name="web"),
        WebSocketRoute("/{path:path}", unknown_path),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.whisperwire = state
    return app
