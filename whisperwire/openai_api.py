"""OpenAI-compatible file transcription: ``POST /v1/audio/transcriptions``.

An upload is recognised as a stream is: its audio, decoded with PyAV, goes through a
connection.Connection as one-second frames and a ``terminate_session``, so the one session core
endpoints it, the one scheduler recognises it next to every live stream, and the same rules
judge Whisper's text. Only the request and the response are OpenAI's (docs/integrations.md).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import av
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)

from .audiofile import decode_file
from .connection import DISCONNECTED, Connection, Host
from .protocol import ErrorMessage, Transcription
from .subtitles import SubtitleWriter
from .values import SAMPLE_RATE

log = logging.getLogger("whisperwire.server")

PATH = "/v1/audio/transcriptions"
# OpenAI's own limit on an upload.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
FRAME_BYTES = SAMPLE_RATE * 2  # one second of 16-bit PCM: well under the frame size limit
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
# What the session's error fields are called in OpenAI's request.
_PARAMS = {"whisper_params.audio_language": "language", "whisper_params.prompt": "prompt"}
# The codes of a refused handshake (server.Whisperwire.refusal) in OpenAI's words.
_REFUSAL_CODES = {"unauthorized": "invalid_api_key", "origin": "origin_not_allowed", "draining": "server_shutting_down"}


@dataclass(frozen=True)
class OpenAIError(Exception):
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


@dataclass(frozen=True)
class TranscriptionRequest:
    audio: bytes  # mono 16-bit PCM at 16 kHz
    language: str | None
    prompt: str | None
    response_format: str
    words: bool
    segments: bool
    stream: bool

    @property
    def duration_s(self) -> float:
        return len(self.audio) / 2 / SAMPLE_RATE

    def metadata(self, multilingual: bool) -> str:
        language = self.language or ("auto" if multilingual else "en")
        whisper: dict[str, Any] = {"audio_language": language, "show_word_timestamps": self.words}
        if self.prompt:
            whisper["prompt"] = self.prompt
        return json.dumps({"whisper_params": whisper})


class Upload:
    """The client side of a session, played by an upload: what connection.Connection reads of a
    WebSocket (the metadata, the audio frames, terminate_session), and what it writes."""

    def __init__(self, metadata: str, audio: bytes) -> None:
        frames = [{"type": "websocket.receive", "text": metadata}]
        frames += [{"type": "websocket.receive", "bytes": audio[i : i + FRAME_BYTES]} for i in range(0, len(audio), FRAME_BYTES)]
        frames.append({"type": "websocket.receive", "text": '{"terminate_session": true}'})
        self._frames = deque(frames)
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self.messages: asyncio.Queue[Transcription | ErrorMessage | None] = asyncio.Queue()  # None: closed

    async def receive(self) -> dict[str, Any]:
        if self._frames:
            return self._frames.popleft()
        await self._closed.wait()
        return {"type": "websocket.disconnect", "code": self.close_code}

    async def send_text(self, text: str) -> None:
        data = json.loads(text)
        message = ErrorMessage.model_validate(data) if data.get("type") == "error" else Transcription.model_validate(data)
        self.messages.put_nowait(message)

    async def close(self, code: int, reason: str = "") -> None:
        self.close_code = code
        self._closed.set()
        self.messages.put_nowait(None)


async def transcriptions(request: Request, host: Host) -> Response:
    """The route: parse, recognise through a session, answer in the format asked for."""
    info = host.engine.info
    try:
        denied = host.refusal(request)
        if denied is not None:
            status, reason, message = denied
            host.metrics.rejected.labels(reason=reason).inc()
            raise OpenAIError(status, message, code=_REFUSAL_CODES.get(reason, reason))
        parsed = await _parse(request, info.name)
        refusal = host.admission_refusal()  # after the upload: the load may have changed
        if refusal is not None:
            host.metrics.rejected.labels(reason="capacity").inc()
            raise OpenAIError(503, refusal, code="server_busy", type="server_error")
    except OpenAIError as error:
        return error.response()
    upload = Upload(parsed.metadata(info.multilingual), parsed.audio)
    connection = Connection(upload, host)  # type: ignore[arg-type] - plays a WebSocket
    host.connections.add(connection)
    task = asyncio.create_task(_run(connection, host))
    finals = _finals(upload)
    try:
        # An error before the first final (a language the model lacks) is still an HTTP error.
        first = await anext(finals, None)
        if parsed.stream:
            return StreamingResponse(_events(first, finals, connection, task), media_type="text/event-stream")
        rest = [m async for m in finals]
    except OpenAIError as error:
        await task
        return error.response()
    await task
    return _response(parsed, [first, *rest] if first is not None else [])


async def _run(connection: Connection, host: Host) -> None:
    try:
        await connection.run()
    finally:
        host.connections.discard(connection)


async def _finals(upload: Upload) -> AsyncIterator[Transcription]:
    """The upload's finals with words, in order, until the session closes; its error raised."""
    while (message := await upload.messages.get()) is not None:
        if isinstance(message, ErrorMessage):
            error = message.error
            status = 503 if error.code.value == "server_busy" else 400
            param = _PARAMS.get(error.field or "", error.field)
            raise OpenAIError(status, error.message, param=param, code=error.code.value)
        if message.is_final and message.transcript:
            yield message
    if upload.close_code not in (1000, 1001):
        raise OpenAIError(500, f"the recognition ended with close code {upload.close_code}", type="server_error")


async def _events(
    first: Transcription | None, finals: AsyncIterator[Transcription], connection: Connection, task: asyncio.Task[None]
) -> AsyncIterator[str]:
    """Server-sent events: a ``transcript.text.delta`` per final, then ``transcript.text.done``."""
    texts: list[str] = []

    async def all_finals() -> AsyncIterator[Transcription]:
        if first is not None:
            yield first
        async for final in finals:
            yield final

    try:
        async for final in all_finals():
            delta = final.transcript if not texts else " " + final.transcript
            texts.append(final.transcript)
            yield _sse({"type": "transcript.text.delta", "delta": delta})
        yield _sse({"type": "transcript.text.done", "text": " ".join(texts)})
    except OpenAIError as error:
        yield _sse(error.body())
    finally:
        if not task.done():  # the client went away: so does its session
            connection.post(DISCONNECTED)
        await task


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


# --------------------------------------------------------------------------- the request


def serves(asked: str, served: str) -> bool:
    """Whether a request for ``asked`` is one for the served model: its own name, or one of
    OpenAI's transcription models (whisper-1, gpt-4o-transcribe, ...), which clients written for
    OpenAI send by default."""
    name = asked.lower()
    return asked == served or name == "whisper-1" or (name.startswith("gpt-") and ("transcribe" in name or "whisper" in name))


def model_not_served(asked: str, served: str) -> str:
    return f"the model {asked!r} is not served here; this server serves {served!r} (also under OpenAI's transcription model names, such as 'whisper-1')"


async def _parse(request: Request, model: str) -> TranscriptionRequest:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_UPLOAD_BYTES + 1024 * 1024:
        raise OpenAIError(413, f"the upload is {int(size)} bytes; at most {MAX_UPLOAD_BYTES} bytes of audio are accepted", "file")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise OpenAIError(400, "send the audio as multipart/form-data, with the audio in a 'file' field", "file")
    try:
        form = await request.form(max_files=1)
    except (HTTPException, MultiPartException) as error:  # a malformed body, or one file too many
        detail = error.detail if isinstance(error, HTTPException) else error.message
        raise OpenAIError(400, f"could not read the multipart form: {detail}", "file") from None
    try:
        return await _fields(form, model)
    finally:
        await form.close()


async def _fields(form: FormData, model: str) -> TranscriptionRequest:
    asked = _text(form, "model")
    if not asked:
        raise OpenAIError(400, "model is required", "model")
    if not serves(asked, model):
        raise OpenAIError(404, model_not_served(asked, model), "model", "model_not_found")
    response_format = _text(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise OpenAIError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {response_format!r}", "response_format")
    granularities = [str(g) for g in form.getlist("timestamp_granularities[]")]
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise OpenAIError(400, f"timestamp_granularities[] may hold word and segment, not {unknown[0]!r}", "timestamp_granularities[]")
    if granularities and response_format != "verbose_json":
        raise OpenAIError(400, "timestamp_granularities[] needs response_format verbose_json", "timestamp_granularities[]")
    temperature = _text(form, "temperature")
    if temperature and _number(temperature, "temperature") != 0:
        raise OpenAIError(400, "only temperature 0 is supported: decoding is deterministic (docs/protocol.md)", "temperature")
    stream = (_text(form, "stream") or "false").lower()
    if stream not in ("true", "false"):
        raise OpenAIError(400, f"stream must be true or false, not {stream!r}", "stream")
    if stream == "true" and response_format not in ("json", "text"):
        raise OpenAIError(400, "stream=true gives text events; use response_format json or text", "stream")
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise OpenAIError(400, "the audio file is missing: send it in a 'file' field", "file")
    if file.size is not None and file.size > MAX_UPLOAD_BYTES:
        raise OpenAIError(413, f"the file is {file.size} bytes; at most {MAX_UPLOAD_BYTES}", "file")
    return TranscriptionRequest(
        audio=await asyncio.to_thread(_decode, file.file, file.filename),
        language=_text(form, "language") or None,
        prompt=_text(form, "prompt") or None,
        response_format=response_format,
        words="word" in granularities,
        segments="segment" in granularities or not granularities,
        stream=stream == "true",
    )


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise OpenAIError(400, f"{name} must be a form field, not a file", name)
    return None if value is None else value.strip()


def _number(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise OpenAIError(400, f"{name} must be a number, not {value!r}", name) from None


def _decode(file: BinaryIO, name: str | None) -> bytes:
    try:
        return decode_file(file)
    except (av.FFmpegError, ValueError) as error:
        raise OpenAIError(400, f"could not decode {name or 'the file'} as audio: {error}", "file", "invalid_audio") from None


# --------------------------------------------------------------------------- the response


def _response(request: TranscriptionRequest, finals: list[Transcription]) -> Response:
    text = " ".join(f.transcript for f in finals)
    kind = request.response_format
    if kind == "text":
        return PlainTextResponse(text + "\n")
    if kind in ("srt", "vtt"):
        out = io.StringIO()
        writer = SubtitleWriter(kind, out)  # type: ignore[arg-type] - checked in _fields
        for final in finals:
            writer.write(final)
        return PlainTextResponse(out.getvalue())
    if kind == "json":
        return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": round(request.duration_s)}})
    return JSONResponse(_verbose(request, finals, text))


def _verbose(request: TranscriptionRequest, finals: list[Transcription], text: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": finals[0].language_code if finals else (request.language or "en"),
        "duration": round(request.duration_s, 3),
        "text": text,
    }
    segments = [s for f in finals for s in f.segments]
    if request.segments:
        body["segments"] = [
            {
                "id": i,
                "start": s.start_time,
                "end": s.end_time,
                "text": s.text,
                "avg_logprob": s.log_prob,
                "temperature": 0.0,
            }
            for i, s in enumerate(segments)
        ]
    if request.words:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start_time, "end": w.end_time} for s in segments for w in s.word_timestamps or ()
        ]
    body["usage"] = {"type": "duration", "seconds": round(request.duration_s)}
    return body
