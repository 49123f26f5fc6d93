"""OpenAI Realtime transcription sessions: ``/v1/realtime?intent=transcription``.

A Realtime client's events are translated into the Baseten protocol's frames at the edge, and
the session's messages back into Realtime events: the connection, the session core, the VAD and
the scheduler are the ones every stream uses. What maps onto what is in docs/integrations.md.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from .connection import Connection, Frame, Host, InboxItem
from .endpointer import Progress
from .logs import SESSION_ID
from .openai_api import model_not_served, serves
from .protocol import CloseCode, ErrorMessage, Transcription
from .session import State
from .values import SAMPLE_RATE, Event

PATH = "/v1/realtime"
# Realtime's audio: 16-bit PCM at 24 kHz, or G.711 at 8 kHz (beta names, then GA names).
_FORMATS = {
    "pcm16": ("pcm_s16le", 24_000),
    "g711_ulaw": ("pcm_mulaw", 8_000),
    "g711_alaw": ("pcm_alaw", 8_000),
    "audio/pcm": ("pcm_s16le", 24_000),
    "audio/pcmu": ("pcm_mulaw", 8_000),
    "audio/pcma": ("pcm_alaw", 8_000),
}
_UPDATES = ("session.update", "transcription_session.update")
# The session's frames for a commit and a clear: both end the turn being spoken (finalize).
COMMIT = '{"type": "finalize"}'
CLEAR = '"finalize"'
# Without turn detection a turn ends at the client's commit, as OpenAI's do; the VAD's silence
# window is then its longest, so pauses do not end turns (the 30 s limit still does).
COMMIT_ONLY_SILENCE_MS = 10_000
# Audio appended before the first session.update waits for it, up to this much (1 s of the
# default 24 kHz PCM); then the defaults apply. Clients send their update right after
# session.created, and audio may overtake it.
HOLD_BYTES = 48_000
_ids = itertools.count(1)


class RealtimeError(Exception):
    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def _event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "event_id": f"event_{next(_ids)}", **fields})


def _error(message: str, code: str, param: str | None = None) -> str:
    return _event("error", error={"type": "invalid_request_error", "code": code, "message": message, "param": param})


def _item(num: int) -> str:
    return f"item_{num:06d}"


def _completed(num: int, transcript: str) -> str:
    return _event("conversation.item.input_audio_transcription.completed", item_id=_item(num), content_index=0, transcript=transcript)


def _ms(sample: int) -> int:
    return round(sample * 1000 / SAMPLE_RATE)


class RealtimeTransport:
    """The WebSocket as connection.Connection sees it: Realtime events in, the Baseten protocol's
    frames out to the session; the session's messages in, Realtime events out to the client."""

    def __init__(self, websocket: WebSocket, model: str, multilingual: bool) -> None:
        self.websocket = websocket
        self.model = model
        self.multilingual = multilingual
        self.connection: Connection | None = None
        self.configured: dict[str, Any] | None = None  # the session object, once given
        self.metadata: dict[str, Any] | None = None  # what it became, sent to the session
        self.update_kind = "session.update"
        self.server_vad = True  # speech_started/stopped events; turn_detection null turns them off
        self._pending: list[dict[str, Any]] = []  # frames for the session, in order
        self._held: list[dict[str, Any]] = []  # audio frames that came before any configuration

    # ------------------------------------------------------------------ client to session

    async def receive(self) -> dict[str, Any]:
        while not self._pending:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return message
            if message.get("text") is None:
                self.own(_error("send events as JSON text frames", "invalid_event"))
                continue
            try:
                event = json.loads(message["text"])
                if not isinstance(event, dict):
                    raise ValueError("not an object")
                self._client_event(event)
            except ValueError:
                self.own(_error("an event must be a JSON object with a 'type'", "invalid_event"))
            except RealtimeError as error:
                self.own(_error(error.message, error.code, error.param))
        return self._pending.pop(0)

    def _client_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in _UPDATES:
            session = event.get("session") or {}
            if not isinstance(session, dict):
                raise RealtimeError("session must be an object", "invalid_value", "session")
            self._configure(session, kind)
        elif kind == "input_audio_buffer.append":
            try:
                audio = base64.b64decode(event.get("audio") or "", validate=True)
            except (binascii.Error, TypeError):
                raise RealtimeError("audio must be base64", "invalid_value", "audio") from None
            if audio:
                (self._pending if self.metadata is not None else self._held).append({"type": "websocket.receive", "bytes": audio})
            if self.metadata is None and sum(len(f["bytes"]) for f in self._held) >= HOLD_BYTES:
                self._configure_if_needed()
        elif kind in ("input_audio_buffer.commit", "input_audio_buffer.clear"):
            self._configure_if_needed()
            self._pending.append({"type": "websocket.receive", "text": COMMIT if kind.endswith("commit") else CLEAR})
        else:
            raise RealtimeError(f"unknown event type {kind!r}; this endpoint serves transcription sessions", "invalid_event", "type")

    def _configure(self, session: dict[str, Any], kind: str) -> None:
        metadata, server_vad = self._metadata(session)
        if self.metadata is not None:
            # The stream's format, language and VAD are fixed by its first configuration; a
            # client that sends the same again (Pipecat does, after its first audio) is answered.
            if (metadata, server_vad) != (self.metadata, self.server_vad):
                raise RealtimeError(
                    "the audio format, language, prompt and turn detection are fixed once the session "
                    "has its first configuration or audio; open a new session to change them",
                    "session_already_configured",
                    "session",
                )
            self.configured, self.update_kind = session, kind
            self.own(self.updated())
            return
        self.update_kind, self.configured, self.metadata, self.server_vad = kind, session, metadata, server_vad
        self._pending.append({"type": "websocket.receive", "text": json.dumps(metadata)})
        self._pending += self._held
        self._held = []

    def _configure_if_needed(self) -> None:
        if self.metadata is None:  # audio before any update: the defaults
            self._configure({}, "session.update")

    def _metadata(self, session: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The Baseten metadata of a Realtime session object, and whether VAD events are wanted."""
        audio_in = (session.get("audio") or {}).get("input") or {}
        fmt = audio_in.get("format") or session.get("input_audio_format") or {"type": "audio/pcm"}
        name = fmt.get("type") if isinstance(fmt, dict) else fmt
        if name not in _FORMATS:
            raise RealtimeError(f"audio format {name!r} is not served; use audio/pcm at 24 kHz, audio/pcmu or audio/pcma", "invalid_value", "format")
        encoding, rate = _FORMATS[name]
        if isinstance(fmt, dict) and fmt.get("rate", rate) != rate:
            raise RealtimeError(f"{name} is {rate} Hz, not {fmt['rate']}", "invalid_value", "format.rate")
        transcription = audio_in.get("transcription") or session.get("input_audio_transcription") or {}
        model = transcription.get("model")
        if model is not None and not serves(model, self.model):
            raise RealtimeError(model_not_served(model, self.model), "model_not_found", "model")
        default = "auto" if self.multilingual else "en"
        whisper: dict[str, Any] = {"audio_language": transcription.get("language") or default}
        if transcription.get("prompt"):
            whisper["prompt"] = transcription["prompt"]
        metadata: dict[str, Any] = {"streaming_params": {"encoding": encoding, "sample_rate": rate}, "whisper_params": whisper}
        turns = audio_in["turn_detection"] if "turn_detection" in audio_in else session.get("turn_detection", {})
        if turns:
            if turns.get("type", "server_vad") != "server_vad":
                raise RealtimeError(f"turn_detection {turns.get('type')!r} is not served; use server_vad", "invalid_value", "turn_detection.type")
            vad = {"threshold": turns.get("threshold"), "min_silence_duration_ms": turns.get("silence_duration_ms"), "speech_pad_ms": turns.get("prefix_padding_ms")}
            metadata["streaming_vad_config"] = {k: v for k, v in vad.items() if v is not None}
        elif turns is None:
            metadata["streaming_vad_config"] = {"min_silence_duration_ms": COMMIT_ONLY_SILENCE_MS}
        return metadata, turns is not None

    # ------------------------------------------------------------------ session to client

    async def send_text(self, text: str) -> None:
        await self.websocket.send_text(text)  # Realtime events already (RealtimeConnection._send)

    async def close(self, code: int, reason: str = "") -> None:
        await self.websocket.close(code, reason)

    def updated(self) -> str:
        """The answer to the client's update: ``session.updated`` or the beta name."""
        return _event(self.update_kind.replace(".update", ".updated"), session=self.session_object())

    def session_object(self) -> dict[str, Any]:
        assert self.connection is not None
        session_id = f"sess_{self.connection.session.session_id}"
        return {"type": "transcription", "object": "realtime.transcription_session", "id": session_id, **(self.configured or {})}

    def own(self, text: str) -> None:
        assert self.connection is not None
        self.connection.send_own(text)


class RealtimeConnection(Connection):
    """A Connection whose messages leave as Realtime events, which also tells the client where
    speech starts and stops as the VAD hears it. Events are made when they are queued, in the
    order the session gives them, so an item is never completed twice."""

    def __init__(self, transport: RealtimeTransport, app: Host) -> None:
        super().__init__(transport, app)  # type: ignore[arg-type] - plays a WebSocket
        self.transport = transport
        transport.connection = self
        self._configured = False
        self._speaking: int | None = None
        self._announced = -1  # the highest utterance number a speech_started went out for
        self._committed = -1  # ... a committed
        self._completed = -1  # ... a completed
        self._cleared: set[int] = set()  # utterances the client cleared: their finals are not sent

    async def _handle(self, item: InboxItem | None) -> list[Event]:
        before = self.session.progress
        if isinstance(item, Frame) and item.data == CLEAR:
            # Here, in order with the audio before it, not when the event arrived.
            if before is not None and before.speaking is not None:
                self._cleared.add(before.speaking)
            self.send_own(_event("input_audio_buffer.cleared"))
        events = await super()._handle(item)
        if isinstance(item, Frame) and item.data == COMMIT and not self.transport.server_vad:
            after = self.session.progress
            if before is not None and after is not None and before.speaking is None and after.opened == before.opened:
                self.send_own(_error("the commit holds no speech: nothing was said since the last turn", "input_audio_buffer_commit_empty"))
        return events

    def _act(self, events: list[Event]) -> bool:
        closed = super()._act(events)
        if not closed:
            self._report()
        return closed

    def _send(self, message: Transcription | ErrorMessage) -> None:
        if isinstance(message, ErrorMessage):
            self.app.metrics.errors.labels(code=message.error.code.value).inc()
            error = message.error
            self.send_own(_error(error.message, error.code.value, error.field))
        elif message.is_final:
            self._final(message)

    def _final(self, message: Transcription) -> None:
        num = message.transcription_num
        self._settle(num)
        self._completed = num
        if num in self._cleared:
            return
        if self.transport.server_vad and num > self._announced and message.segments:
            # Opened and ended within one batch of audio: announced now.
            self._announced = num
            start, end = message.segments[0].start_time, message.segments[-1].end_time
            self.send_own(_event("input_audio_buffer.speech_started", item_id=_item(num), audio_start_ms=round(start * 1000)))
            self.send_own(_event("input_audio_buffer.speech_stopped", item_id=_item(num), audio_end_ms=round(end * 1000)))
        self._commit(num)
        # whisper-1's way: one delta with the turn's whole text, then the completed event.
        self.send_own(_event("conversation.item.input_audio_transcription.delta", item_id=_item(num), content_index=0, delta=message.transcript))
        self.send_own(_completed(num, message.transcript), final_num=num)

    def _commit(self, num: int) -> None:
        if num > self._committed and num not in self._cleared:
            # The item before is the last one committed: numbers of turns with no words are skipped.
            previous = _item(self._committed) if self._committed >= 0 else None
            self._committed = num
            self.send_own(_event("input_audio_buffer.committed", item_id=_item(num), previous_item_id=previous))

    def _settle(self, below: int) -> None:
        """Items announced before ``below`` that held no words are completed empty, as OpenAI does."""
        last = min(below, self._announced + 1) - 1
        for num in range(self._completed + 1, last + 1):
            if num not in self._cleared:
                self._commit(num)
                self.send_own(_completed(num, ""))
        self._completed = max(self._completed, last)

    def _report(self) -> None:
        progress = self.session.progress
        if progress is None:
            return
        if not self._configured and self.session.state is State.STREAMING:
            self._configured = True
            self.send_own(self.transport.updated())
        if self.transport.server_vad:
            self._speech_events(progress)
        self._settle(progress.settled_below)

    def _speech_events(self, progress: Progress) -> None:
        if self._speaking is not None and progress.speaking != self._speaking:
            num, self._speaking = self._speaking, None
            self.send_own(_event("input_audio_buffer.speech_stopped", item_id=_item(num), audio_end_ms=_ms(progress.last_end)))
            self._commit(num)
        # A turn before this one that opened and ended within one batch of audio (sent faster than
        # real time) is announced at its final; until then this one waits, so items go in order.
        waiting = max(self._announced, self._completed, progress.settled_below - 1) + 1 < (progress.speaking or 0)
        if progress.speaking is not None and progress.speaking != self._speaking and not waiting:
            self._speaking = progress.speaking
            self._announced = max(self._announced, progress.speaking)
            self.send_own(_event("input_audio_buffer.speech_started", item_id=_item(progress.speaking), audio_start_ms=_ms(progress.heard_from)))


async def serve(websocket: WebSocket, app: Host) -> None:
    """One Realtime WebSocket, accepted by the server's checks (key, origin, admission)."""
    await websocket.accept()
    if websocket.query_params.get("intent") != "transcription":
        try:
            await websocket.send_text(_error("this endpoint serves transcription sessions only: connect with ?intent=transcription", "invalid_intent", "intent"))
            await websocket.close(int(CloseCode.POLICY_VIOLATION), "transcription sessions only")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        return
    transport = RealtimeTransport(websocket, app.engine.info.name, app.engine.info.multilingual)
    connection = RealtimeConnection(transport, app)
    SESSION_ID.set(connection.session.session_id)  # this task's log lines, and its children's
    app.connections.add(connection)
    try:
        await websocket.send_text(_event("session.created", session=transport.session_object()))
        await connection.run()
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        app.connections.discard(connection)
