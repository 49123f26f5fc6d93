"""The client library and `whisperwire stream`, against a scripted fake server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import struct
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from whisperwire.audiofile import decode_file, stream_file
from whisperwire.client import AuthenticationError, ConnectError, ServerError, SessionClosed, connect
from whisperwire.console import add_stream_arguments, format_message, run_stream
from whisperwire.protocol import (
    Control,
    ErrorCode,
    ErrorMessage,
    Metadata,
    ProtocolError,
    Segment,
    StreamingParams,
    Transcription,
    WordTimestamp,
    parse_control,
    parse_metadata,
)



# --------------------------------------------------------------------------- fake server


@dataclass
class FakeServer:
    """Speaks just enough of PROTOCOL.md: one final per finalize/terminate, errors on demand."""

    api_key: str | None = None
    fail_after_bytes: int | None = None  # send invalid_audio and close 1007 past this much audio
    terminate_close_code: int = 1000
    drain_on_close: bool = True  # False: stop reading at an error, as a careless server might
    url: str = ""
    frames: list[tuple[float, str | bytes]] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)

    @property
    def text_frames(self) -> list[str]:
        return [frame for _, frame in self.frames if isinstance(frame, str)]

    @property
    def audio_frames(self) -> list[bytes]:
        return [frame for _, frame in self.frames if isinstance(frame, bytes)]

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        given = request.headers.get("Authorization")
        self.authorization.append(given)
        if self.api_key is not None and given != f"Api-Key {self.api_key}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid or missing API key\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        metadata: Metadata | None = None
        received = 0
        number = 0
        async for frame in ws:
            self.frames.append((time.monotonic(), frame))
            try:
                if metadata is None:
                    if isinstance(frame, bytes):
                        raise ProtocolError(ErrorCode.BINARY_BEFORE_METADATA, "metadata first")
                    metadata = parse_metadata(frame)
                    continue
                if isinstance(frame, bytes):
                    received += len(frame)
                    if self.fail_after_bytes is not None and received > self.fail_after_bytes:
                        raise ProtocolError(ErrorCode.INVALID_AUDIO, "audio cannot be decoded")
                    continue
                control = parse_control(frame)
            except ProtocolError as error:
                await ws.send(ErrorMessage.from_error(error).model_dump_json())
                if error.close_code is not None:
                    await self._close(ws, error.close_code, error.message)
                    return
                continue
            for message in _utterance(metadata, number, received / 32_000):
                await ws.send(message.model_dump_json())
            number += 1
            if control is Control.TERMINATE:
                await ws.close(self.terminate_close_code)
                return

    async def _close(self, ws: ServerConnection, code: int, reason: str) -> None:
        if not self.drain_on_close:
            await asyncio.sleep(0.2)  # let the client's audio fill the input queue
            await ws.close(code, reason)
            return
        # Frames still queued would keep the client's close reply from being read.
        closing = asyncio.create_task(ws.close(code, reason))
        async for _ in ws:
            pass
        await closing


def _utterance(metadata: Metadata, number: int, end: float) -> list[Transcription]:
    words = None
    if metadata.whisper_params.show_word_timestamps:
        words = [WordTimestamp(word=" utterance", start_time=0.0, end_time=end, prob=0.9)]
    segment = Segment(
        text=f" utterance {number}", log_prob=-0.1, start_time=0.0, end_time=end,
        word_timestamps=words,
    )  # fmt: skip
    final = Transcription(
        transcription_num=number,
        is_final=True,
        transcript=segment.text,
        confidence=0.9,
        language_code="en",
        language_prob=None,
        segments=[segment],
    )
    if not metadata.streaming_params.enable_partial_transcripts:
        return [final]
    return [final.model_copy(update={"is_final": False}), final]


@contextlib.asynccontextmanager
async def fake_server(**options: object) -> AsyncIterator[FakeServer]:
    server = FakeServer(**options)  # type: ignore[arg-type]
    async with serve(server.handler, "127.0.0.1", 0, process_request=server.process_request) as ws:
        port = ws.sockets[0].getsockname()[1]
        server.url = f"ws://127.0.0.1:{port}/v1/websocket"
        yield server
        for connection in server.connections:
            connection.transport.abort()  # a stalled close would hold up shutdown for 10 s


def _tone_wav(path: Path, seconds: float, rate: int = 16_000) -> Path:
    count = int(seconds * rate)
    samples = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(count))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return _tone_wav(tmp_path / "tone.wav", 2.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- decode_file


def test_decode_file_gives_every_sample_as_s16le(audio_dir) -> None:
    path = audio_dir / "en_timit_LDC93S1.wav"
    with wave.open(str(path)) as source:
        assert source.getframerate() == 16_000
        frames = source.getnframes()
        original = source.readframes(frames)
    pcm = decode_file(path)
    assert len(pcm) == 2 * frames
    assert pcm == original  # same rate, mono, s16: nothing to change


def test_decode_file_resamples(audio_dir) -> None:
    path = audio_dir / "en_harvard_birch_canoe.wav"
    full = len(decode_file(path)) // 2
    half = len(decode_file(path, sample_rate=8_000)) // 2
    assert abs(half - full / 2) <= 1


# --------------------------------------------------------------------------- connect / Stream


async def test_session_flow_with_typed_messages() -> None:
    async with fake_server() as server:
        metadata = {"streaming_params": {"sample_rate": 16_000, "enable_partial_transcripts": True}}
        async with connect(server.url, metadata=metadata) as stream:
            await stream.send(b"\x00\x01" * 1600)
            await stream.finalize()
            first = [await anext(stream), await anext(stream)]
            await stream.send(b"\x00\x01" * 800)
            await stream.close()
            rest = [message async for message in stream]
            assert stream.close_code == 1000

    assert json.loads(server.text_frames[0]) == metadata
    assert server.text_frames[1:] == ["finalize", '{"type": "terminate"}']
    assert all(type(message) is Transcription for message in first + rest)
    assert [(m.transcription_num, m.is_final) for m in first + rest] == [
        (0, False), (0, True), (1, False), (1, True),
    ]  # fmt: skip
    assert rest[-1].segments[0].end_time == pytest.approx(0.15)
    assert rest[-1].segments[0].word_timestamps is None


async def test_metadata_keywords_and_model_are_sent_as_given() -> None:
    async with fake_server() as server:
        async with connect(server.url, whisper_params={"show_word_timestamps": True}) as stream:
            await stream.close()
            messages = [message async for message in stream]
        model = Metadata(streaming_params=StreamingParams(sample_rate=8_000))
        async with connect(server.url, metadata=model) as stream:
            await stream.close()

    assert json.loads(server.text_frames[0]) == {"whisper_params": {"show_word_timestamps": True}}
    assert json.loads(server.text_frames[2]) == {"streaming_params": {"sample_rate": 8000}}
    words = messages[0].segments[0].word_timestamps
    assert words is not None and words[0].word == " utterance"


async def test_metadata_given_twice_is_refused() -> None:
    with pytest.raises(TypeError, match="whisper_params"):
        connect("ws://x", metadata={"whisper_params": {}}, whisper_params={})


async def test_unknown_control_is_raised_and_session_goes_on() -> None:
    async with fake_server() as server, connect(server.url) as stream:
        await stream.send_control("flush")
        with pytest.raises(ServerError) as caught:
            await anext(stream)
        await stream.send_control({"terminate_session": True})
        rest = [message async for message in stream]

    assert caught.value.code == "unknown_control"
    assert caught.value.close_code is None
    assert [type(m) for m in rest] == [Transcription]


async def test_fatal_error_is_raised_with_code_field_and_close_code() -> None:
    async with fake_server() as server:
        async with connect(server.url, streaming_params={"sample_rate": 4000}) as stream:
            with pytest.raises(ServerError) as caught:
                async for _ in stream:
                    pass
            assert stream.close_code == 1007

    error = caught.value
    assert error.code == "invalid_metadata"
    assert error.field == "streaming_params.sample_rate"
    assert "8000" in error.message
    assert error.close_code == 1007
    assert "1007" in str(error)


async def test_close_without_error_message_raises_session_closed() -> None:
    async with fake_server(terminate_close_code=1001) as server, connect(server.url) as stream:
        await stream.close()
        with pytest.raises(SessionClosed) as caught:
            async for _ in stream:
                pass
    assert caught.value.close_code == 1001
    assert "shutting down" in str(caught.value)


async def test_authentication() -> None:
    async with fake_server(api_key="secret") as server:
        with pytest.raises(AuthenticationError) as caught:
            async with connect(server.url):
                pass
        async with connect(server.url, api_key="secret") as stream:
            await stream.close()
            assert len([message async for message in stream]) == 1

    assert caught.value.status_code == 401
    assert "401" in str(caught.value)
    assert server.authorization == [None, "Api-Key secret"]


async def test_connection_refused_is_a_connect_error() -> None:
    with pytest.raises(ConnectError):
        async with connect(f"ws://127.0.0.1:{_free_port()}/v1/websocket"):
            pass


# --------------------------------------------------------------------------- stream_file


async def test_stream_file_sends_all_audio_in_frames_then_terminates(clip: Path) -> None:
    received: list[object] = []
    async with fake_server() as server:
        messages = await stream_file(clip, server.url, speed=0, on_message=received.append)

    audio = server.audio_frames
    assert b"".join(audio) == decode_file(clip)
    assert {len(frame) for frame in audio[:-1]} == {640}  # 20 ms of 16 kHz s16
    assert 0 < len(audio[-1]) <= 640
    assert json.loads(server.text_frames[0]) == {}
    assert server.text_frames[-1] == '{"type": "terminate"}'
    assert messages == received
    assert [type(m) for m in messages] == [Transcription]
    assert messages[0].segments[0].end_time == pytest.approx(2.0)


async def test_stream_file_uses_declared_rate_and_frame_size(clip: Path) -> None:
    metadata = {"streaming_params": {"sample_rate": 8_000}}
    async with fake_server() as server:
        await stream_file(clip, server.url, metadata=metadata, speed=0, frame_ms=100)

    audio = server.audio_frames
    assert len(b"".join(audio)) == len(decode_file(clip, sample_rate=8_000))
    assert {len(frame) for frame in audio[:-1]} == {1600}


async def test_stream_file_paces_in_real_time(clip: Path) -> None:
    async with fake_server() as server:
        started = time.monotonic()
        await stream_file(clip, server.url, speed=1)
        real_time = time.monotonic() - started
    async with fake_server() as fast_server:
        started = time.monotonic()
        await stream_file(clip, fast_server.url, speed=0)
        fastest = time.monotonic() - started

    assert 1.8 <= real_time <= 3.5
    assert fastest < real_time / 2  # relative: a loaded machine slows both
    # Frames were spread over the clip, not sent in a burst at the end.
    arrivals = [t for t, frame in server.frames if isinstance(frame, bytes)]
    assert 0.7 <= arrivals[len(arrivals) // 2] - arrivals[0] <= 1.5


async def test_stream_file_raises_server_error_mid_stream(clip: Path) -> None:
    async with fake_server(fail_after_bytes=16_000) as server:
        with pytest.raises(ServerError) as caught:
            await stream_file(clip, server.url, speed=0)
    assert caught.value.code == "invalid_audio"
    assert caught.value.close_code == 1007


async def test_server_that_stops_reading_does_not_stall_the_error(clip: Path) -> None:
    async with fake_server(fail_after_bytes=0, drain_on_close=False) as server:
        started = time.monotonic()
        with pytest.raises(ServerError) as caught:
            await stream_file(clip, server.url, speed=0)
        elapsed = time.monotonic() - started
    assert caught.value.close_code == 1007
    assert elapsed < 4.0  # not the server's 10 s close timeout


# --------------------------------------------------------------------------- command line


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_stream_arguments(parser)
    return parser.parse_args(argv)


async def test_cli_prints_partials_and_finals(
    clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fake_server() as server:
        args = _args(str(clip), "--url", server.url, "--speed", "0", "--partials")
        args.language = "auto"
        assert await asyncio.to_thread(run_stream, args) == 0

    assert capsys.readouterr().out.splitlines() == [
        "[partial] utterance 0",
        "[final 0.00-2.00] utterance 0",
    ]
    assert json.loads(server.text_frames[0]) == {
        "streaming_params": {
            "encoding": "pcm_s16le",
            "sample_rate": 16000,
            "enable_partial_transcripts": True,
        },
        "whisper_params": {"audio_language": "auto"},
    }


async def test_cli_json_and_api_key_from_environment(
    clip: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHISPERWIRE_API_KEY", "secret")
    async with fake_server(api_key="secret") as server:
        args = _args(str(clip), "--url", server.url, "--speed", "0", "--json")
        assert await asyncio.to_thread(run_stream, args) == 0

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    message = json.loads(lines[0])
    assert message["type"] == "transcription" and message["is_final"] is True
    assert "word_timestamps" not in message["segments"][0]


async def test_cli_server_error_exits_1(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with fake_server() as server:
        args = _args(str(clip), "--url", server.url, "--speed", "0", "--partial-interval", "99")
        assert await asyncio.to_thread(run_stream, args) == 1
    err = capsys.readouterr().err
    assert "invalid_metadata" in err and "partial_transcript_interval_s" in err


async def test_cli_wrong_key_exits_1(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with fake_server(api_key="secret") as server:
        args = _args(str(clip), "--url", server.url, "--api-key", "wrong")
        assert await asyncio.to_thread(run_stream, args) == 1
    assert "401" in capsys.readouterr().err


def test_cli_connection_refused_exits_2(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(str(clip), "--url", f"ws://127.0.0.1:{_free_port()}/v1/websocket")
    assert run_stream(args) == 2
    assert "whisperwire serve" in capsys.readouterr().err


def test_cli_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.wav"
    bogus.write_bytes(b"not audio at all")
    assert run_stream(_args(str(bogus), "--url", "ws://127.0.0.1:9/v1/websocket")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_pace_options() -> None:
    assert _args("a.wav").speed == 1.0
    assert _args("a.wav", "--speed", "0").speed == 0.0
    assert _args("a.wav", "--realtime").speed == 1.0
    with pytest.raises(SystemExit):
        _args("a.wav", "--speed", "-1")


def _hallo(words: list[WordTimestamp] | None = None) -> Transcription:
    """A final of one German word at 1.0-1.4 s, language detected with 0.97."""
    segment = Segment(text=" Hallo", log_prob=-0.2, start_time=1.0, end_time=1.4, word_timestamps=words)
    return Transcription(
        transcription_num=0,
        is_final=True,
        transcript=" Hallo",
        confidence=0.8,
        language_code="de",
        language_prob=0.97,
        segments=[segment],
    )


def test_format_message_shows_detected_language_and_words() -> None:
    message = _hallo([WordTimestamp(word=" Hallo", start_time=1.0, end_time=1.4, prob=0.88)])
    assert format_message(message).splitlines() == [
        "[final 1.00-1.40 de 0.97] Hallo",
        "       1.00-1.40  Hallo  (0.88)",
    ]


def test_format_message_details_show_language_and_confidence() -> None:
    detected = _hallo()
    given = detected.model_copy(update={"language_code": "en", "language_prob": None})
    partial = given.model_copy(update={"is_final": False})
    assert format_message(detected, details=True) == "[final 1.00-1.40 de 0.97 conf 0.80] Hallo"
    assert format_message(given, details=True) == "[final 1.00-1.40 en conf 0.80] Hallo"
    assert format_message(given) == "[final 1.00-1.40] Hallo"
    assert format_message(partial, details=True) == "[partial en] Hallo"
