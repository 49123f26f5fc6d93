"""The ASGI app: handshake checks, admission, routes and drain; each accepted WebSocket is a
connection.Connection.

Starlette on uvicorn rather than the bare `websockets` server: the same app serves HTTP routes
(health, readiness, metrics, the browser page), runs under any ASGI host, and can refuse a
handshake with a real HTTP status through the WebSocket denial-response extension.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import realtime
from .capacity import Capacity
from .config import ServerConfig
from .connection import FLUSH_TIMEOUT_S, SHUTDOWN, STOP, Connection
from .logs import SESSION_ID
from .metrics import LiveState, Metrics
from .openai_api import PATH as OPENAI_TRANSCRIPTIONS_PATH
from .openai_api import transcriptions
from .protocol import CloseCode, ErrorCode, ErrorMessage, ProtocolError
from .scheduler import Scheduler
from .vad import SileroVAD
from .values import Engine

log = logging.getLogger("whisperwire.server")

WEBSOCKET_PATHS = ("/v1/websocket", "/environments/production/websocket")
WEB_DIR = Path(__file__).parent / "web"  # the browser page: plain files, no build step


class Whisperwire:
    """What the routes share: one engine, one scheduler, one VAD model, the live connections."""

    def __init__(self, engine: Engine, config: ServerConfig, vad: SileroVAD | None = None) -> None:
        self.engine = engine
        self.config = config
        self.vad = vad or SileroVAD()
        self.metrics = Metrics(self._live)
        self.scheduler = Scheduler(
            engine, on_inference=self._inference_done, workers=config.inference_workers, batch=config.inference_batch
        )
        self.capacity = Capacity(config.inference_workers, config.stream_cost_prior, lambda: self.scheduler.clock())
        self.connections: set[Connection] = set()
        self.draining = False
        self.partials_dropped = 0  # from the send buffers of clients that do not read
        self._origins = {_origin(o) for o in config.allowed_origins}

    def _inference_done(self, kind: str, seconds: float) -> None:
        self.metrics.observe_inference(kind, seconds)
        if kind == "final":
            self.capacity.recognised(seconds)

    def _live(self) -> LiveState:
        return LiveState(
            active_sessions=len(self.connections),
            queue_depth=self.scheduler.queue_depth,
            partials_superseded=self.scheduler.stats.partials_superseded,
            drafts={
                "promoted": self.scheduler.stats.drafts_promoted,
                "withdrawn": self.scheduler.stats.drafts_withdrawn,
                "wasted": self.scheduler.stats.drafts_wasted,
            },
            finals_batched=self.scheduler.stats.finals_batched,
            finals_again=self.scheduler.stats.finals_again,
            partials_dropped_slow_client=self.partials_dropped,
            send_buffer_bytes=sum(c.send_backlog for c in self.connections),
        )

    def refusal(self, websocket: HTTPConnection) -> tuple[int, str, str] | None:
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

    def authorized(self, websocket: HTTPConnection) -> bool:
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
        held = self.capacity.streams()
        if held is not None and len(self.connections) >= held:
            return (
                f"server at capacity: {len(self.connections)} streams open, and at the recent cost of "
                f"recognition ({self.capacity.cost():.2f} s per second of audio) the server holds {held}; "
                "try again later"
            )
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
            connection.post(SHUTDOWN)
        if not await _all_done(connections, self.config.drain_timeout_s):
            late = [c for c in connections if not c.done.is_set()]
            log.warning("drain timeout: closing %d sessions before their finals", len(late))
            for connection in late:
                connection.post(STOP)
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

    async def admitted(websocket: WebSocket) -> bool:
        refusal = state.refusal(websocket)
        if refusal is not None:
            status, reason, message = refusal
            state.metrics.rejected.labels(reason=reason).inc()
            await websocket.send_denial_response(PlainTextResponse(message, status_code=status))
            return False
        refusal = state.admission_refusal()
        if refusal is not None:
            state.metrics.rejected.labels(reason="capacity").inc()
            await _refuse(websocket, refusal)
            return False
        return True

    async def websocket_endpoint(websocket: WebSocket) -> None:
        if not await admitted(websocket):
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

    async def realtime_endpoint(websocket: WebSocket) -> None:
        if await admitted(websocket):
            await realtime.serve(websocket, state)

    async def unknown_path(websocket: WebSocket) -> None:
        # Starlette's own answer is a bare 403, which reads like a refused key or origin.
        paths = " or ".join(WEBSOCKET_PATHS)
        message = (
            f"no WebSocket endpoint at {websocket.url.path}; connect to {paths} "
            f"(or {realtime.PATH}?intent=transcription for OpenAI's Realtime API)"
        )
        await websocket.send_denial_response(PlainTextResponse(message, status_code=404))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        reasons = state.not_ready()
        return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=Metrics.CONTENT_TYPE)

    async def openai_transcriptions(request: Request) -> Response:
        return await transcriptions(request, state)

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
    routes.append(WebSocketRoute(realtime.PATH, realtime_endpoint))
    routes += [Route("/health", health), Route("/ready", ready), Route("/metrics", metrics)]
    routes.append(Route(OPENAI_TRANSCRIPTIONS_PATH, openai_transcriptions, methods=["POST"]))
    routes += [
        Route("/", page),
        Mount("/web", StaticFiles(directory=WEB_DIR), name="web"),
        WebSocketRoute("/{path:path}", unknown_path),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.whisperwire = state
    return app
