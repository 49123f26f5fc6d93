"""One WebSocket connection: its reader, inbox, session handling, send buffer and writer.

The session (session.py) decides; this only moves bytes and events. Every session call happens
in one coroutine, one at a time; decoding, resampling and VAD run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect

from .capacity import Capacity
from .config import ServerConfig
from .metrics import Metrics
from .protocol import CloseCode, ErrorCode, ErrorMessage, ProtocolError, Transcription
from .scheduler import Scheduler, Superseded
from .session import Session
from .values import (CancelInference, CloseConnection, Engine, Event, InferenceRequest, Result, RunInference,
                     SendMessage, Timing)

log = logging.getLogger("whisperwire.server")

# Frames waiting for their session before the reader stops taking more; uvicorn then stops
# reading the socket and TCP pushes back on the client.
INBOX_BYTES = 4 * 1024 * 1024
# How long a finished session's last messages and close frame may take to leave.
FLUSH_TIMEOUT_S = 10.0


class VADModel(Protocol):
    def new_stream(self): ...  # noqa: ANN201 - a vad.VADStream


class ConnectionHost(Protocol):
    """What a connection needs of the app that accepted it (server.Whisperwire)."""

    engine: Engine
    vad: VADModel
    config: ServerConfig
    scheduler: Scheduler
    metrics: Metrics
    capacity: Capacity
    partials_dropped: int


class Host(ConnectionHost, Protocol):
    """What a front door (the Baseten WebSocket, OpenAI's REST and Realtime) needs of the app
    (server.Whisperwire): the handshake's checks, admission, the set of live connections."""

    connections: set[Connection]

    def refusal(self, request: HTTPConnection) -> tuple[int, str, str] | None: ...

    def admission_refusal(self) -> str | None: ...


# --------------------------------------------------------------------------- the inbox


@dataclass(frozen=True)
class Frame:
    """A WebSocket message from the client: bytes (audio) or text (metadata, control)."""

    data: bytes | str


@dataclass(frozen=True)
class Recognised:
    """A recognition is over: its result, or why not, is in the future."""

    request: InferenceRequest
    future: asyncio.Future[Result]


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


SHUTDOWN = _Signal("SHUTDOWN")  # the server drains: flush buffered speech, then 1001
STOP = _Signal("STOP")  # the drain timed out: close now
DISCONNECTED = _Signal("DISCONNECTED")  # the client went away

InboxItem = Frame | Recognised | _Signal


def _is_audio(item: InboxItem) -> bool:
    return isinstance(item, Frame) and isinstance(item.data, bytes)


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

    def __init__(self, websocket: WebSocket, app: ConnectionHost) -> None:
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
        self._inbox: deque[tuple[float, InboxItem]] = deque()
        self._inbox_bytes = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._outbox = Outbox(app.config.send_buffer_bytes)
        self._arrived = 0.0  # when the item being handled reached the inbox
        self._final_asked: dict[int, float] = {}  # transcription_num -> when its audio ended
        self._timing: dict[int, Timing] = {}  # transcription_num -> its latest draft's or final's
        self._audio_counted = 0.0

    @property
    def send_backlog(self) -> int:
        """Bytes of messages waiting for the client to read the ones before them."""
        return self._outbox.size

    def send_own(self, text: str, final_num: int | None = None) -> None:
        """Queue a message of the transport's own (not the session's), after those waiting;
        ``final_num`` marks the one that delivers that utterance's final (for the metrics)."""
        self._outbox.put(text, final_num=final_num)

    def post(self, item: InboxItem) -> None:
        self._inbox.append((self.loop.time(), item))
        if isinstance(item, Frame):
            self._inbox_bytes += len(item.data)
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
                    self.post(Frame(message["bytes"]))
                elif message.get("text") is not None:
                    self.post(Frame(message["text"]))
                while self._inbox_bytes > INBOX_BYTES:
                    self._room.clear()
                    await self._room.wait()
        except (WebSocketDisconnect, RuntimeError):
            pass
        self.post(DISCONNECTED)

    def _take(self) -> InboxItem:
        arrived, item = self._inbox.popleft()
        if isinstance(item, Frame):
            self._inbox_bytes -= len(item.data)
            if self._inbox_bytes <= INBOX_BYTES:
                self._room.set()
        self._arrived = arrived
        return item

    async def _next(self) -> InboxItem | None:
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
            if item is DISCONNECTED:
                return False  # the client is gone, nobody to tell
            try:
                events = await self._handle(item)
            except Exception:  # a bug must cost one session, not the server
                log.exception("internal error")
                events = self.session.internal_error("internal error")
            if self._act(events):
                return True

    async def _handle(self, item: InboxItem | None) -> list[Event]:
        session = self.session
        now = self.loop.time()
        if item is None:
            return session.timeout(now)
        if isinstance(item, Frame) and isinstance(item.data, bytes):
            frames, first_arrived = [item.data], self._arrived
            while self._inbox and _is_audio(self._inbox[0][1]):
                frames.append(self._take().data)  # type: ignore[union-attr]
            # A final asked for in this batch is timed from its first frame: an upper bound.
            self._arrived = first_arrived
            # Decoding, resampling and VAD leave the event loop: other sessions keep flowing.
            events = await asyncio.to_thread(self._feed, frames, now)
            self._count_audio()
            return events
        if isinstance(item, Frame):
            assert isinstance(item.data, str)
            return session.receive_text(item.data, now)
        if isinstance(item, Recognised):
            return self._result(item.request, item.future)
        if item is SHUTDOWN:
            return session.shutdown()
        if item is STOP:
            return session.stop(CloseCode.GOING_AWAY, "server shutting down")
        raise AssertionError(f"unknown inbox item {item!r}")

    def _feed(self, frames: list[bytes], now: float) -> list[Event]:
        events: list[Event] = []
        for frame in frames:
            events += self.session.receive_bytes(frame, now)
        return events

    def _count_audio(self) -> None:
        received = self.session.audio_received_s
        self.app.metrics.audio_received.inc(received - self._audio_counted)
        self.app.capacity.received(received - self._audio_counted)
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
        result = future.result()
        if request.kind != "partial" and result.timing is not None:
            self._timing[request.transcription_num] = result.timing
        return self.session.inference_done(request, result)

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
        if final:  # a final a draft answered during the silence window was never submitted
            self._final_asked.setdefault(message.transcription_num, self._arrived)  # type: ignore[union-attr]
        partial = isinstance(message, Transcription) and not message.is_final
        dropped = self._outbox.put(
            message.model_dump_json(),
            partial=partial,
            final_num=message.transcription_num if final else None,
        )
        self.app.partials_dropped += dropped

    def _submit(self, request: InferenceRequest) -> None:
        if request.kind == "final" and not request.again:  # a final asked again is late from the first ask
            self._final_asked[request.transcription_num] = self._arrived
        future = self.app.scheduler.submit(request)
        future.add_done_callback(lambda f: self._inference_over(request, f))

    def _inference_over(self, request: InferenceRequest, future: asyncio.Future[Result]) -> None:
        if not future.cancelled():
            # Marks the error as seen: a session that has ended never looks at its result, and
            # asyncio would log every superseded partial of a vanished client as unhandled.
            future.exception()
        self.post(Recognised(request, future))

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
        asked, timing, now = self._final_asked.pop(num, None), self._timing.pop(num, None), self.loop.time()
        if asked is not None:
            metrics.final_latency.observe(now - asked)
            if timing is not None:
                _observe_stages(metrics, asked, timing, now)
        # Finals go out in number order: older entries were utterances with no words.
        for table in (self._final_asked, self._timing):
            for older in [n for n in table if n < num]:
                del table[older]


def _observe_stages(metrics: Metrics, asked: float, timing: Timing, sent: float) -> None:
    stage = metrics.final_stage
    stage.labels(stage="queue").observe(max(0.0, timing.started_at - asked))
    stage.labels(stage="recognition").observe(max(0.0, timing.ended_at - max(timing.started_at, asked)))
    if timing.encode_s is not None:
        stage.labels(stage="encode").observe(timing.encode_s)
    stage.labels(stage="send").observe(max(0.0, sent - max(timing.ended_at, asked)))
