"""A Python client for whisperwire (and any endpoint speaking PROTOCOL.md).

Stream audio you already have::

    async with connect(url, api_key=key, streaming_params={"sample_rate": 16000}) as stream:
        await stream.send(pcm)            # as many frames as you like
        await stream.close()              # no more audio: finalize everything, then end
        async for message in stream:      # finals (and partials, if enabled) as they come
            print(message.transcript)

Or a whole file, paced like a live source: ``await stream_file("talk.mp3", url)``.

Messages and errors: iterating the stream yields ``protocol.Transcription`` messages only.
Every error message from the server is raised as ``ServerError`` (``code``, ``message``,
``field``). When the error ends the session, it is raised once the close that follows it has
arrived, so ``close_code`` is set too; ``close_code`` None means the session goes on (only
``unknown_control``, a bad control message) and you may keep iterating. A close other than 1000
without an error message is raised as ``SessionClosed``. Every exception this module raises is
a ``WhisperwireError``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import ipaddress
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TextIO, cast
from urllib.parse import urlsplit

import av
import pydantic
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.frames import Close

from whisperwire.protocol import (
    CLOSE_CODE_FOR,
    CloseCode,
    ErrorCode,
    Metadata,
    Transcription,
)
from whisperwire.subtitles import SubtitleFormat, SubtitleWriter

__all__ = [
    "DEFAULT_URL",
    "AuthenticationError",
    "ConnectError",
    "HandshakeError",
    "ServerError",
    "SessionClosed",
    "Stream",
    "WhisperwireError",
    "add_stream_arguments",
    "connect",
    "decode_file",
    "run_stream",
    "stream_file",
]

DEFAULT_URL = "ws://127.0.0.1:8000/v1/websocket"
API_KEY_ENV = "WHISPERWIRE_API_KEY"
# Once close frames are exchanged, the server owes only the TCP close; RFC 6455 7.1.1 lets
# the client drop the socket if that takes too long. A healthy server takes one round trip.
CLOSE_TIMEOUT_S = 2.0

MessageCallback = Callable[[Transcription], Awaitable[object] | object]


# --------------------------------------------------------------------------- errors


class WhisperwireError(Exception):
    """Base of every error this client raises.

    ``code``/``field`` come from the server's error message when there was one; ``close_code``
    and ``close_reason`` from the WebSocket close when the session has ended.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        close_code: int | None = None,
        close_reason: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        self.close_code = close_code
        self.close_reason = close_reason


class ConnectError(WhisperwireError):
    """The server could not be reached at all (refused, unresolvable, timed out)."""


class HandshakeError(WhisperwireError):
    """The server answered the WebSocket upgrade with an HTTP error."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthenticationError(HandshakeError):
    """HTTP 401: the API key is missing or wrong."""


class ServerError(WhisperwireError):
    """The server sent an error message and ended the session."""

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}"
        return text if self.close_code is None else f"{text} (close code {self.close_code})"


class SessionClosed(WhisperwireError):
    """The session ended without a normal close and without an error message to explain it."""


_CLOSE_DESCRIPTIONS: dict[int, str] = {
    CloseCode.GOING_AWAY: "the server is shutting down",
    CloseCode.MESSAGE_TOO_BIG: "a frame was larger than the server accepts",
    CloseCode.INTERNAL_ERROR: "internal server error",
    CloseCode.TRY_AGAIN_LATER: "the server is at capacity; try again later",
    1006: "the connection was lost",
}


def _keeps_session_open(code: object) -> bool:
    try:
        known = ErrorCode(str(code))
    except ValueError:
        return False  # an error this client does not know: assume it ends the session
    return CLOSE_CODE_FOR[known] is None


def _close_of(exc: ConnectionClosed) -> tuple[int, str]:
    frame: Close | None = exc.rcvd
    return (frame.code, frame.reason) if frame is not None else (1006, "")


def _session_closed(code: int, reason: str) -> SessionClosed:
    description = _CLOSE_DESCRIPTIONS.get(code, "the server closed the session")
    detail = f": {reason}" if reason else ""
    return SessionClosed(
        f"{description} (close code {code}){detail}", close_code=code, close_reason=reason
    )


# --------------------------------------------------------------------------- metadata


def _metadata_payload(
    metadata: Mapping[str, Any] | Metadata | None, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """The metadata object to send: ``metadata`` as given, plus top-level ``fields``."""
    if isinstance(metadata, Metadata):
        # Only what the caller set: the server owns the defaults.
        payload = metadata.model_dump(mode="json", exclude_unset=True)
    else:
        payload = dict(metadata or {})
    clashes = sorted(set(payload) & set(fields))
    if clashes:
        raise TypeError(f"metadata key {clashes[0]!r} given both in metadata and as a keyword")
    payload.update(fields)
    return payload


def _declared_format(metadata: Mapping[str, Any]) -> tuple[str, int]:
    """The (encoding, sample_rate) a metadata object declares, in either schema."""
    params: dict[str, Any] = {}
    for section in ("streaming_whisper_params", "streaming_params"):
        value = metadata.get(section)
        if isinstance(value, Mapping):
            params.update(value)
    return str(params.get("encoding", "pcm_s16le")), int(params.get("sample_rate", 16_000))


# --------------------------------------------------------------------------- the stream


class Stream:
    """One transcription session. Create it with :func:`connect`.

    Sending and iterating may run in different tasks at once; only one task may iterate.
    """

    def __init__(self, websocket: ClientConnection, metadata: dict[str, Any]) -> None:
        self._ws = websocket
        self.metadata = metadata
        self._terminating = False
        self._close: tuple[int, str] | None = None

    # -- sending

    async def send(self, audio: bytes | bytearray | memoryview) -> None:
        """Send audio in the encoding and sample rate the metadata declared.

        Frames may have any length. Raises ``SessionClosed`` if the server has already ended the
        session; iterate the stream to get the reason (a ``ServerError`` when it sent one).
        """
        if self._terminating:
            raise WhisperwireError("cannot send audio after close()")
        await self._send_frame(bytes(audio))

    async def finalize(self) -> None:
        """End the current utterance now and get its final; the session goes on."""
        if self._terminating:
            raise WhisperwireError("cannot finalize after close()")
        await self.send_control("finalize")

    async def close(self) -> None:
        """Say no more audio is coming.

        The server finalizes what it holds, sends those finals and closes: keep iterating to
        receive them. Iteration ends when the server has closed. Calling it twice is harmless.
        """
        if self._terminating or self._ended:
            return
        self._terminating = True
        await self.send_control({"type": "terminate"})

    async def send_control(self, message: str | Mapping[str, Any]) -> None:
        """Send a raw control message: a string as is, a mapping as JSON.

        For control messages :meth:`finalize` and :meth:`close` do not cover, such as the
        original API's ``{"terminate_session": true}``.
        """
        text = message if isinstance(message, str) else json.dumps(message)
        await self._send_frame(text)

    async def _send_frame(self, frame: str | bytes) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed as exc:
            raise _session_closed(*_close_of(exc)) from None

    # -- receiving

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Transcription:
        if self._close is not None:
            raise StopAsyncIteration
        try:
            frame = await self._ws.recv()
        except ConnectionClosed as exc:
            code, reason = self._record_close(exc)
            if code == CloseCode.NORMAL:
                raise StopAsyncIteration from None
            raise _session_closed(code, reason) from None
        return await self._parse(frame)

    async def _parse(self, frame: str | bytes) -> Transcription:
        if isinstance(frame, bytes):
            raise WhisperwireError("the server sent a binary frame; expected JSON text")
        try:
            data = json.loads(frame)
        except json.JSONDecodeError:
            raise WhisperwireError(f"the server sent invalid JSON: {frame[:200]!r}") from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "error":
            await self._raise_error(data)
        if kind != "transcription":
            raise WhisperwireError(f"unexpected message type {kind!r} from the server")
        try:
            return Transcription.model_validate(data)
        except pydantic.ValidationError as exc:
            raise WhisperwireError(f"malformed transcription from the server: {exc}") from None

    async def _raise_error(self, data: dict[str, Any]) -> NoReturn:
        detail = data.get("error")
        if not isinstance(detail, dict):
            detail = {}
        code = detail.get("code")
        close_code: int | None = None
        close_reason = ""
        if not _keeps_session_open(code):
            # The session is over: wait for the close so the exception can carry its code.
            close_code, close_reason = await self._await_close()
        raise ServerError(
            str(detail.get("message", "")),
            code=None if code is None else str(code),
            field=detail.get("field"),
            close_code=close_code,
            close_reason=close_reason,
        )

    async def _await_close(self) -> tuple[int | None, str]:
        # Wait for the close frame, not for the end of TCP: a server whose input queue is full
        # never reads our reply, and keeps the socket open until its own close timeout.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TIMEOUT_S
        while (frame := self._ws.protocol.close_rcvd) is None:
            if self._ws.close_code is not None:  # dropped without a close frame
                self._close = (self._ws.close_code, "")
                return self._close
            if loop.time() > deadline:
                return None, ""
            await asyncio.sleep(0.01)
        self._close = (frame.code, frame.reason)
        return self._close

    def _record_close(self, exc: ConnectionClosed) -> tuple[int, str]:
        # Only the reader records the end: messages queued before the close are still read.
        self._close = _close_of(exc)
        return self._close

    # -- state

    @property
    def _ended(self) -> bool:
        return self._close is not None or self._ws.close_code is not None

    @property
    def close_code(self) -> int | None:
        """The close code once the session has ended (1000 after a normal end), else None."""
        return self._close[0] if self._close is not None else self._ws.close_code

    @property
    def close_reason(self) -> str | None:
        """The close reason once the session has ended, else None."""
        return self._close[1] if self._close is not None else self._ws.close_reason

    async def aclose(self) -> None:
        """Close the connection now; the server drops anything not yet transcribed."""
        await self._ws.close()


class connect:  # lower case: used like a function, as websockets' own connect
    """Open a session: ``async with connect(...) as stream``, or ``stream = await connect(...)``
    and ``await stream.aclose()`` when done.

    ``url``: the WebSocket endpoint, e.g. ``ws://127.0.0.1:8000/v1/websocket``.
    ``api_key``: sent as ``Authorization: Api-Key <key>``.
    ``metadata``: the metadata object of PROTOCOL.md §3, sent as given as the first frame: a
    dict (``{"streaming_params": {"sample_rate": 8000}}``) or a ``protocol.Metadata``.
    ``**metadata_fields``: top-level metadata keys, added to ``metadata``; so
    ``connect(url, whisper_params={"audio_language": "auto"})`` sends exactly that object.
    Nothing is validated here: the server's error message names the field at fault.

    Raises ``ConnectError`` if the server cannot be reached, ``AuthenticationError`` on
    HTTP 401 and ``HandshakeError`` on any other refusal.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        metadata: Mapping[str, Any] | Metadata | None = None,
        *,
        open_timeout: float = 10.0,
        **metadata_fields: Any,
    ) -> None:
        self.url = url
        self.api_key = api_key
        self.metadata = _metadata_payload(metadata, metadata_fields)
        self._metadata_text = json.dumps(self.metadata)  # fail before connecting, not after
        self.open_timeout = open_timeout
        self._stream: Stream | None = None

    async def _open(self) -> Stream:
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else {}
        try:
            websocket = await ws_connect(
                self.url,
                additional_headers=headers,
                # PCM barely compresses; deflate would only cost CPU on both ends.
                compression=None,
                open_timeout=self.open_timeout,
                close_timeout=CLOSE_TIMEOUT_S,
                proxy=None if _is_loopback(self.url) else True,
            )
        except InvalidStatus as exc:
            raise _handshake_error(exc) from None
        except InvalidURI as exc:
            raise ConnectError(f"invalid URL {self.url!r}: {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise ConnectError(f"cannot connect to {self.url}: {exc}") from exc
        stream = Stream(websocket, self.metadata)
        # Closed at once (e.g. at capacity)? Then iterating the stream raises the server's error.
        with contextlib.suppress(SessionClosed):
            await stream._send_frame(self._metadata_text)
        return stream

    def __await__(self) -> Generator[Any, None, Stream]:
        return self._open().__await__()

    async def __aenter__(self) -> Stream:
        self._stream = await self._open()
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            await self._stream.aclose()


def _is_loopback(url: str) -> bool:
    # A proxy from the environment must not capture connections to a local server.
    return is_loopback_host(urlsplit(url).hostname or "")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _handshake_error(exc: InvalidStatus) -> HandshakeError:
    status = exc.response.status_code
    body = exc.response.body.decode("utf-8", "replace").strip()[:200] if exc.response.body else ""
    detail = f": {body}" if body else ""
    if status == 401:
        return AuthenticationError(
            f"the server refused the API key (HTTP 401){detail}", status_code=status
        )
    return HandshakeError(
        f"the server refused the connection (HTTP {status}){detail}", status_code=status
    )


# --------------------------------------------------------------------------- files


def decode_file(path: str | os.PathLike[str], sample_rate: int = 16_000) -> bytes:
    """Decode any audio file PyAV can read to mono 16-bit little-endian PCM at ``sample_rate``."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    pcm = bytearray()
    with av.open(os.fspath(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        for frame in container.decode(container.streams.audio[0]):
            for converted in resampler.resample(frame):
                pcm += converted.to_ndarray().tobytes()
    # The resampler holds back a few samples until it is told the input has ended.
    for converted in resampler.resample(None):
        pcm += converted.to_ndarray().tobytes()
    return bytes(pcm)


async def stream_file(
    path: str | os.PathLike[str],
    url: str = DEFAULT_URL,
    api_key: str | None = None,
    metadata: Mapping[str, Any] | Metadata | None = None,
    *,
    speed: float = 1.0,
    frame_ms: float = 20,
    on_message: MessageCallback | None = None,
) -> list[Transcription]:
    """Transcribe a file as if it were a live source; return every message received.

    The file is decoded to the sample rate the metadata declares (16 kHz by default), then sent
    in ``frame_ms`` frames at ``speed`` times real time (0: as fast as possible) while messages
    are received. At the end it sends terminate and waits for the server to close.
    ``on_message`` (plain or async) is called with each message as it arrives. Server errors
    are raised as described in the module docstring.
    """
    if speed < 0:
        raise ValueError("speed must be >= 0")
    if frame_ms <= 0:
        raise ValueError("frame_ms must be > 0")
    payload = _metadata_payload(metadata, {})
    encoding, sample_rate = _declared_format(payload)
    if encoding != "pcm_s16le":
        raise ValueError(f"stream_file sends pcm_s16le; the metadata declares {encoding}")
    pcm = await asyncio.to_thread(decode_file, path, sample_rate)

    async with connect(url, api_key=api_key, metadata=payload) as stream:
        sender = asyncio.create_task(_send_paced(stream, pcm, sample_rate, speed, frame_ms))
        receiver = asyncio.create_task(_receive_all(stream, on_message))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_EXCEPTION)
            failure = sender.exception() if sender.done() else None
            # SessionClosed while sending: the server ended the session, the receiver says why.
            if failure is not None and not isinstance(failure, SessionClosed):
                raise failure
            return await receiver
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)


async def _send_paced(
    stream: Stream, pcm: bytes, sample_rate: int, speed: float, frame_ms: float
) -> None:
    bytes_per_second = sample_rate * 2
    frame_bytes = max(2, round(bytes_per_second * frame_ms / 1000) // 2 * 2)
    start = time.monotonic()
    for offset in range(0, len(pcm), frame_bytes):
        frame = pcm[offset : offset + frame_bytes]
        if speed > 0:
            # A live source delivers a frame once its last sample exists. Deadlines come from
            # the clock, not from summed sleeps, so pacing does not drift.
            due = start + (offset + len(frame)) / bytes_per_second / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # let the receiver run between frames
        await stream.send(frame)
    await stream.close()


async def _receive_all(stream: Stream, on_message: MessageCallback | None) -> list[Transcription]:
    messages: list[Transcription] = []
    async for message in stream:
        messages.append(message)
        if on_message is not None:
            result = on_message(message)
            if inspect.isawaitable(result):
                await result
    return messages


# --------------------------------------------------------------------------- command line

OUTPUT_FORMATS = ("text", "jsonl", "srt", "vtt")


def add_session_arguments(parser: argparse.ArgumentParser, *, partials: bool) -> None:
    """The server and metadata options every client command has (``stream``, ``mic``)."""
    parser.add_argument("--url", default=DEFAULT_URL, help=f"WebSocket endpoint [{DEFAULT_URL}]")
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"API key [environment variable {API_KEY_ENV}]",
    )
    parser.add_argument(
        "--partials",
        action=argparse.BooleanOptionalAction,
        default=partials,
        help=f"ask for partial transcripts [{'on' if partials else 'off'}]",
    )
    parser.add_argument(
        "--partial-interval",
        type=float,
        metavar="S",
        help="seconds of audio between partials (implies --partials) [server default 0.5]",
    )
    parser.add_argument(
        "--language", metavar="CODE", help='language code, or "auto" to detect it [en]'
    )
    parser.add_argument("--word-timestamps", action="store_true", help="ask for word timings")


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``whisperwire stream``."""
    parser.add_argument("file", type=Path, help="audio file in any format ffmpeg reads")
    add_session_arguments(parser, partials=False)
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=_non_negative,
        default=1.0,
        metavar="X",
        help="pace as a multiple of real time; 0 sends as fast as possible [1]",
    )
    pace.add_argument(
        "--realtime", dest="speed", action="store_const", const=1.0, help="same as --speed 1"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="text",
        help="text lines, one JSON message per line, or SRT/WebVTT subtitles of the finals "
        "(cut at word timings with --word-timestamps) [text]",
    )
    output.add_argument(
        "--json", dest="format", action="store_const", const="jsonl", help="same as --format jsonl"
    )


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def session_metadata(args: argparse.Namespace, sample_rate: int = 16_000) -> dict[str, Any]:
    """The metadata the command-line options ask for, for s16le audio at ``sample_rate``."""
    streaming: dict[str, Any] = {"encoding": "pcm_s16le", "sample_rate": sample_rate}
    if args.partials or args.partial_interval is not None:
        streaming["enable_partial_transcripts"] = True
    if args.partial_interval is not None:
        streaming["partial_transcript_interval_s"] = args.partial_interval
    whisper: dict[str, Any] = {}
    if args.language:
        whisper["audio_language"] = args.language
    if args.word_timestamps:
        whisper["show_word_timestamps"] = True
    metadata: dict[str, Any] = {"streaming_params": streaming}
    if whisper:
        metadata["whisper_params"] = whisper
    return metadata


def api_key_of(args: argparse.Namespace) -> str | None:
    return args.api_key or os.environ.get(API_KEY_ENV) or None


def message_tag(message: Transcription, *, details: bool = False) -> str:
    """``[final 0.00-3.42]``; a detected language adds ``de 0.97``. ``details`` always shows
    the language and adds the confidence: ``[final 0.00-3.42 en conf 0.91]``."""
    tags = ["final" if message.is_final else "partial"]
    if message.is_final and message.segments:
        tags.append(f"{message.segments[0].start_time:.2f}-{message.segments[-1].end_time:.2f}")
    if message.language_prob is not None:
        tags.append(f"{message.language_code} {message.language_prob:.2f}")
    elif details and message.language_code:
        tags.append(message.language_code)
    if details and message.is_final and message.confidence is not None:
        tags.append(f"conf {message.confidence:.2f}")
    return f"[{' '.join(tags)}]"


def word_lines(message: Transcription) -> list[str]:
    """One line per word of a final that carries word timestamps."""
    if not message.is_final:
        return []
    return [
        f"    {word.start_time:7.2f}-{word.end_time:.2f}  {word.word.strip()}  ({word.prob:.2f})"
        for segment in message.segments
        for word in segment.word_timestamps or ()
    ]


def format_message(message: Transcription, *, details: bool = False) -> str:
    """A human-readable rendering: ``[partial] text`` or ``[final 0.00-3.42] text``, then the
    words' timings when the final carries them."""
    head = f"{message_tag(message, details=details)} {message.transcript.strip()}".rstrip()
    return "\n".join([head, *word_lines(message)])


def message_writer(
    kind: str, out: TextIO, *, by_words: bool = False
) -> Callable[[Transcription], None]:
    """What ``stream --format KIND`` does with each message as it arrives."""
    if kind in ("srt", "vtt"):
        return SubtitleWriter(cast(SubtitleFormat, kind), out, by_words=by_words).write

    def show(message: Transcription) -> None:
        text = message.model_dump_json() if kind == "jsonl" else format_message(message)
        print(text, file=out, flush=True)

    return show


def report_failure(exc: WhisperwireError, err: TextIO) -> int:
    """Say on ``err`` why a session failed; return the exit status (2: never reached the
    server, 1: the server refused or ended the session)."""
    if isinstance(exc, ConnectError):
        print(f"error: {exc} (is `whisperwire serve` running?)", file=err)
        return 2
    if isinstance(exc, ServerError):
        field = f" [{exc.field}]" if exc.field else ""
        print(f"error: server: {exc}{field}", file=err)
    elif isinstance(exc, AuthenticationError):
        print(f"error: {exc}; pass --api-key or set {API_KEY_ENV}", file=err)
    else:
        print(f"error: {exc}", file=err)
    return 1


def run_stream(args: argparse.Namespace) -> int:
    """Run ``whisperwire stream``. Exit status: 0 done, 1 the server refused or failed the
    session, 2 the session could not start (unreadable file, server unreachable)."""
    out, err = sys.stdout, sys.stderr
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path}: no such file", file=err)
        return 2
    try:
        asyncio.run(
            stream_file(
                path,
                args.url,
                api_key_of(args),
                session_metadata(args),
                speed=args.speed,
                on_message=message_writer(args.format, out, by_words=args.word_timestamps),
            )
        )
    except WhisperwireError as exc:
        if isinstance(exc, ServerError) and args.format == "jsonl":
            error = {"code": exc.code, "message": exc.message, "field": exc.field}
            print(json.dumps({"type": "error", "error": error}), file=out, flush=True)
        return report_failure(exc, err)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        # Decoding happens before connecting, so these are about the file.
        print(f"error: cannot read {path}: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
