"""A Python client for whisperwire (and any endpoint speaking PROTOCOL.md).

Stream audio you already have::

    async with connect(url, api_key=key, streaming_params={"sample_rate": 16000}) as stream:
        await stream.send(pcm)            # as many frames as you like
        await stream.close()              # no more audio: finalize everything, then end
        async for message in stream:      # finals (and partials, if enabled) as they come
            print(message.transcript)

Or a whole file, paced like a live source: ``await audiofile.stream_file("talk.mp3", url)``.

Messages and errors: iterating the stream yields ``protocol.Transcription`` messages only.
Every error message from the server is raised as ``ServerError`` (``code``, ``message``,
``field``). When the error ends the session, it is raised once the close that follows it has
arrived, so ``close_code`` is set too; ``close_code`` None means the session goes on (only
``unknown_control``, a bad control message) and you may keep iterating. A close other than 1000
without an error message is raised as ``SessionClosed``. Every exception this module raises is
a ``WhisperwireError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Awaitable, Callable, Generator, Mapping
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import urlsplit

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
from whisperwire.values import SAMPLE_RATE

__all__ = [
    "DEFAULT_URL",
    "AuthenticationError",
    "ConnectError",
    "HandshakeError",
    "ServerError",
    "SessionClosed",
    "Stream",
    "WhisperwireError",
    "connect",
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


def metadata_payload(
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


def declared_format(metadata: Mapping[str, Any]) -> tuple[str, int]:
    """The (encoding, sample_rate) a metadata object declares, in either schema."""
    params: dict[str, Any] = {}
    for section in ("streaming_whisper_params", "streaming_params"):
        value = metadata.get(section)
        if isinstance(value, Mapping):
            params.update(value)
    return str(params.get("encoding", "pcm_s16le")), int(params.get("sample_rate", SAMPLE_RATE))


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
        self.metadata = metadata_payload(metadata, metadata_fields)
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
